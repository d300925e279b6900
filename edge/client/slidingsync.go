package client

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"

	"edge/edge/room"
	"edge/edge/store"
)

// Simplified sliding sync (MSC4186), the only sync Element X speaks.
//
// A client names windows (lists, each a set of ranges over the rooms it
// matches, newest first by bump_stamp) and rooms it cares about
// (room_subscriptions); the server answers for the rooms inside them and
// remembers, per connection (user, device, conn_id), what it sent of each
// room at each pos it handed out. An incremental request (with pos) then
// only gets what changed since: new timeline events, changed
// required_state, counts. That memory lives in a bounded LRU: a pos the
// server no longer knows (evicted, or from before a restart) is
// M_UNKNOWN_POS and the client starts afresh, as the MSC says.
//
// The rooms, timelines, state and ephemeral data come from /sync's
// helpers (sync.go); extensions are in slidingsync_ext.go.

const (
	slidingSyncPath = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
	// maxSSConnections bounds the connections remembered (each holds a
	// few positions of per-room bookkeeping).
	maxSSConnections = 4096
	// maxSSRanges and maxSSLists bound a request's shape.
	maxSSLists, maxSSRanges = 100, 100
	// bumpScanLimit is how far back a room's timeline is searched for
	// its last message-like event before falling back to the membership.
	bumpScanLimit = 200
	// maxSSBumps bounds the rooms whose bump_stamp is remembered.
	maxSSBumps = 65536
	// maxSSPositions bounds the positions a connection remembers (the
	// client's last pos and the one just handed out, normally).
	maxSSPositions = 4
	// maxSSConnsPerDevice bounds one device's connections, so that one
	// client cannot push everyone else's out of the LRU.
	maxSSConnsPerDevice = 16
)

// bumpTypes are the events that move a room up a list (as Synapse's
// default bump event types): messages, not state or reactions.
var bumpTypes = map[string]bool{
	"m.room.create": true, "m.room.message": true, "m.room.encrypted": true, "m.sticker": true,
	"m.call.invite": true, "m.poll.start": true, "m.beacon_info": true,
}

func (s *Server) routesSlidingSync() {
	st := &ssState{}
	st.conns, _ = lru.New[ssConnKey, *ssConn](maxSSConnections)
	st.bumps, _ = lru.New[string, [2]uint64](maxSSBumps)
	s.authed("POST "+slidingSyncPath, func(r *http.Request, sess *Session) (any, error) {
		return s.slidingSync(r, sess, st)
	})
	s.authed("GET "+threadSubsChangesPath, s.threadSubscriptionChanges)
}

// ssState is sliding sync's memory: connections, and each room's
// bump_stamp as of its last timeline position (every request orders all
// of a user's rooms, and most rooms have not moved since the last one).
type ssState struct {
	mu    sync.Mutex // serialises addConn's count-and-evict
	conns *lru.Cache[ssConnKey, *ssConn]
	bumps *lru.Cache[string, [2]uint64] // room ID → {LastPos, bump stamp}
}

// ssRequest is the request body.
type ssRequest struct {
	ConnID string `json:"conn_id"`
	// TxnID, from older clients, is echoed back.
	TxnID string `json:"txn_id"`
	// Pos belongs in the query string; Complement's MSC4308 test sends it
	// in the body, so both are read.
	Pos string `json:"pos"`
	// Timeout (ms) and SetPresence: the MSC's latest text moves these
	// into the body too; the query string wins.
	Timeout           *int64                   `json:"timeout"`
	SetPresence       string                   `json:"set_presence"`
	Lists             map[string]*ssList       `json:"lists"`
	RoomSubscriptions map[string]*ssRoomConfig `json:"room_subscriptions"`
	Extensions        ssExtensions             `json:"extensions"`
}

// ssRoomConfig is what to send of a room.
type ssRoomConfig struct {
	RequiredState ssRequiredState `json:"required_state"`
	TimelineLimit int             `json:"timeline_limit"`
	// required are the required_state of every rule the room matched
	// (an event is sent if any of them asks for it).
	required []ssRequiredState
}

type ssList struct {
	RequiredState ssRequiredState `json:"required_state"`
	TimelineLimit int             `json:"timeline_limit"`
	Ranges        [][]int         `json:"ranges"`
	// Range is the MSC's latest form: one range.
	Range   []int      `json:"range"`
	Filters *ssFilters `json:"filters"`
}

// ssRequiredState is a rule's required_state, in either form: the
// [[type, state_key], …] pairs Synapse and Element X use ("*" wildcards,
// $ME, and ["m.room.member", "$LAZY"] for lazy members), or the MSC's
// latest {include: [{type, state_key}], exclude: […], lazy_members}.
type ssRequiredState struct {
	include, exclude [][2]string // "*" matches anything
	lazy             bool
}

func (rs *ssRequiredState) UnmarshalJSON(data []byte) error {
	var pairs [][]string
	if json.Unmarshal(data, &pairs) == nil {
		*rs = ssRequiredState{}
		for _, p := range pairs {
			if len(p) != 2 {
				return errInvalidParam("required_state entries are [event type, state key]")
			}
			if p[0] == "m.room.member" && p[1] == "$LAZY" {
				rs.lazy = true
				continue
			}
			rs.include = append(rs.include, [2]string{p[0], p[1]})
		}
		return nil
	}
	type element struct {
		Type     *string `json:"type"`
		StateKey *string `json:"state_key"`
	}
	var obj struct {
		Include     []element `json:"include"`
		Exclude     []element `json:"exclude"`
		LazyMembers bool      `json:"lazy_members"`
	}
	if err := json.Unmarshal(data, &obj); err != nil {
		return errInvalidParam("required_state must be a list of [type, state_key] or an object")
	}
	conv := func(els []element) [][2]string {
		var out [][2]string
		for _, e := range els {
			p := [2]string{"*", "*"}
			if e.Type != nil {
				p[0] = *e.Type
			}
			if e.StateKey != nil {
				p[1] = *e.StateKey
			}
			out = append(out, p)
		}
		return out
	}
	*rs = ssRequiredState{include: conv(obj.Include), exclude: conv(obj.Exclude), lazy: obj.LazyMembers}
	return nil
}

// key is a canonical form of rs.
func (rs ssRequiredState) key() string {
	var parts []string
	for _, p := range rs.include {
		parts = append(parts, "+"+p[0]+"\x1f"+p[1])
	}
	for _, p := range rs.exclude {
		parts = append(parts, "-"+p[0]+"\x1f"+p[1])
	}
	if rs.lazy {
		parts = append(parts, "lazy")
	}
	sort.Strings(parts)
	return strings.Join(parts, "\x1d")
}

// wants tells whether rs asks for a state event (lazy members aside).
func (rs ssRequiredState) wants(ev *room.Event, self string) bool {
	match := func(ps [][2]string) bool {
		for _, p := range ps {
			if p[0] != "*" && p[0] != ev.Type {
				continue
			}
			if p[1] == "*" || p[1] == *ev.StateKey || (p[1] == "$ME" && *ev.StateKey == self) {
				return true
			}
		}
		return false
	}
	return match(rs.include) && !match(rs.exclude)
}

type ssFilters struct {
	IsDM        *bool `json:"is_dm"`
	IsEncrypted *bool `json:"is_encrypted"`
	IsInvite    *bool `json:"is_invite"`
	// IsInvited is is_invite's name in the MSC's latest text.
	IsInvited *bool    `json:"is_invited"`
	Spaces    []string `json:"spaces"`
	// RoomTypes and NotRoomTypes hold null for "no type" (a plain room).
	RoomTypes    []*string `json:"room_types"`
	NotRoomTypes []*string `json:"not_room_types"`
	// Tags and NotTags match the room's m.tag account data: any of
	// Tags, none of NotTags (which wins).
	Tags    []string `json:"tags"`
	NotTags []string `json:"not_tags"`
	// children is what Spaces names, worked out once per request.
	children map[string]bool
}

// merge widens c to also cover a rule's timeline_limit and required_state
// (a room in several lists, or also subscribed).
func (c *ssRoomConfig) merge(limit int, rs ssRequiredState) {
	c.TimelineLimit = max(c.TimelineLimit, limit)
	if !slices.ContainsFunc(c.required, func(x ssRequiredState) bool { return x.key() == rs.key() }) {
		c.required = append(c.required, rs)
	}
}

// key is a canonical form, to notice a changed configuration.
func (c *ssRoomConfig) key() string {
	parts := make([]string, len(c.required))
	for i, rs := range c.required {
		parts[i] = rs.key()
	}
	sort.Strings(parts)
	return strings.Join(parts, "\x1e")
}

// allMembers tells whether a rule asks for every member event.
func (c *ssRoomConfig) allMembers() bool {
	for _, rs := range c.required {
		for _, p := range rs.include {
			if (p[0] == "*" || p[0] == "m.room.member") && p[1] == "*" {
				return true
			}
		}
	}
	return false
}

// lazy tells whether any rule asks for lazy members.
func (c *ssRoomConfig) lazy() bool {
	return slices.ContainsFunc(c.required, func(rs ssRequiredState) bool { return rs.lazy })
}

// addConn remembers a new connection, forgetting the device's least
// recently used one beyond maxSSConnsPerDevice.
func (st *ssState) addConn(key ssConnKey, conn *ssConn) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.conns.Add(key, conn)
	var mine []ssConnKey
	for _, k := range st.conns.Keys() { // oldest first
		if k.user == key.user && k.device == key.device {
			mine = append(mine, k)
		}
	}
	for i := 0; i < len(mine)-maxSSConnsPerDevice; i++ {
		st.conns.Remove(mine[i])
	}
}

// ssConnKey names a connection.
type ssConnKey struct{ user, device, conn string }

// ssConn is one connection's memory: what was sent as of each recent pos.
type ssConn struct {
	mu        sync.Mutex
	id        string // random, so a pos from an earlier connection is unknown
	seq       uint64
	positions map[uint64]*ssSnapshot
}

// ssSnapshot is what the client holds after a response.
type ssSnapshot struct {
	stream syncToken
	rooms  map[string]ssSent
	lists  map[string]int // list → count sent
}

// ssSent is what a client last got of a room.
type ssSent struct {
	pos              uint64 // stream position the room was sent up to
	membership       string
	config           string // ssRoomConfig.key() it was sent with
	name, avatar     string
	heroes           string
	joined, invited  int
	notif, highlight int
	bump             uint64
	inviteStatePos   uint64
	timelineLimit    int
	dm               bool
}

// token renders a pos: connection, sequence number, and the stream
// position the snapshot is at (which MSC4308's thread_subscriptions
// endpoint reads from a pos given as its `to`).
func (c *ssConn) token(seq, stream uint64) string {
	return c.id + "_" + strconv.FormatUint(seq, 10) + "_" + strconv.FormatUint(stream, 10)
}

// posStream is the stream position inside a pos token.
func posStream(pos string) (uint64, bool) {
	parts := strings.Split(pos, "_")
	if len(parts) != 3 || parts[0] == "" || strings.Trim(parts[0], "0123456789abcdef") != "" {
		return 0, false
	}
	if _, err := strconv.ParseUint(parts[1], 10, 64); err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(parts[2], 10, 64)
	return v, err == nil
}

// lookup finds the snapshot a pos names.
func (c *ssConn) lookup(pos string) (*ssSnapshot, uint64, bool) {
	parts := strings.Split(pos, "_")
	if len(parts) != 3 || parts[0] != c.id {
		return nil, 0, false
	}
	seq, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return nil, 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	snap, ok := c.positions[seq]
	return snap, seq, ok
}

// store records a new snapshot and forgets those older than base (the
// pos the client sent: it may retry that one, never an older one).
func (c *ssConn) store(snap *ssSnapshot, base uint64) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.positions[c.seq] = snap
	for seq := range c.positions {
		if seq < base {
			delete(c.positions, seq)
		}
	}
	// A client forking from many old positions is still bounded.
	for len(c.positions) > maxSSPositions {
		oldest := c.seq
		for seq := range c.positions {
			oldest = min(oldest, seq)
		}
		delete(c.positions, oldest)
	}
	return c.token(c.seq, snap.stream.pos)
}

func newSSConn() *ssConn {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &ssConn{id: hex.EncodeToString(b), positions: map[uint64]*ssSnapshot{}}
}

func errUnknownPos() *Error {
	return newErr(http.StatusBadRequest, "M_UNKNOWN_POS", "Unknown or expired pos; start a new connection without pos")
}

// slidingSync: POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync
func (s *Server) slidingSync(r *http.Request, sess *Session, st *ssState) (any, error) {
	conns := st.conns
	var req ssRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	pos := q.Get("pos")
	if pos == "" {
		pos = req.Pos
	}
	tv := q.Get("timeout")
	if tv == "" && req.Timeout != nil {
		tv = strconv.FormatInt(*req.Timeout, 10)
	}
	timeout, err := syncTimeout(tv)
	if err != nil {
		return nil, err
	}
	presence := q.Get("set_presence")
	if presence == "" {
		presence = req.SetPresence
	}
	key := ssConnKey{sess.UserID, sess.DeviceID, req.ConnID}
	var conn *ssConn
	var base *ssSnapshot
	var baseSeq uint64
	if pos != "" {
		var ok bool
		if conn, ok = conns.Get(key); !ok {
			return nil, errUnknownPos()
		}
		if base, baseSeq, ok = conn.lookup(pos); !ok {
			return nil, errUnknownPos()
		}
	} else {
		// A request without pos starts the connection afresh.
		conn = newSSConn()
		st.addConn(key, conn)
	}
	switch presence {
	case "":
		presence = "online" // omitted: the polling client is online, as for /sync
	case "online", "offline", "unavailable":
	default:
		return nil, errInvalidParam("set_presence must be online, offline or unavailable")
	}
	if s.SetPresence != nil {
		s.SetPresence(sess.UserID, presence)
	}
	var resp map[string]any
	var snap *ssSnapshot
	err = s.longPoll(r.Context(), sess.UserID, timeout, base != nil, func() (news bool, err error) {
		err = s.Store.View(func(tx *store.Tx) error {
			resp, snap, news, err = s.slidingOnce(tx, st, sess, &req, base)
			return err
		})
		return news, err
	})
	if err != nil {
		return nil, err
	}
	resp["pos"] = conn.store(snap, baseSeq)
	return resp, nil
}

// validate rejects malformed lists and configurations.
func (req *ssRequest) validate() error {
	if len(req.Lists) > maxSSLists || len(req.RoomSubscriptions) > maxSSLists*10 {
		return errInvalidParam("Too many lists or room subscriptions")
	}
	checkConfig := func(_ ssRequiredState, limit int) error {
		if limit < 0 {
			return errInvalidParam("timeline_limit must not be negative")
		}
		return nil
	}
	for name, l := range req.Lists {
		if l == nil {
			return errInvalidParam("List %q is null", name)
		}
		if l.Range != nil {
			l.Ranges = append(l.Ranges, l.Range)
		}
		if l.Filters != nil && l.Filters.IsInvite == nil {
			l.Filters.IsInvite = l.Filters.IsInvited
		}
		if len(l.Ranges) > maxSSRanges {
			return errInvalidParam("Too many ranges")
		}
		for _, rg := range l.Ranges {
			if len(rg) != 2 || rg[0] < 0 || rg[1] < rg[0] {
				return errInvalidParam("A range is [start, end] with 0 <= start <= end")
			}
		}
		if err := checkConfig(l.RequiredState, l.TimelineLimit); err != nil {
			return err
		}
	}
	for id, c := range req.RoomSubscriptions {
		if c == nil || !validRoomID(id) {
			return errInvalidParam("Invalid room subscription %q", id)
		}
		if err := checkConfig(c.RequiredState, c.TimelineLimit); err != nil {
			return err
		}
	}
	return nil
}

// ssCandidate is a room the user may see in a list.
type ssCandidate struct {
	roomID     string
	membership string
	m          *store.Membership // nil for an invite to a room this server is not in
	remote     *remoteInvite
	bump       uint64
	r          *store.Room
	state      *room.State // current state (nil: not in the room)
	// what the filters ask, from state or the invite's stripped state
	encrypted bool
	roomType  *string
	dm        bool
	tags      map[string]bool // read only when a list filters by tags
}

// ssCandidates gathers the rooms to list: joined, invited and knocked
// rooms, plus rooms left since the client last saw them (so it learns).
func (s *Server) ssCandidates(tx *store.Tx, st *ssState, sess *Session, base *ssSnapshot) ([]*ssCandidate, error) {
	ms, err := tx.Memberships(sess.UserID)
	if err != nil {
		return nil, err
	}
	ignored := s.ignoredUsers(tx, sess.UserID)
	dms := s.directRooms(tx, sess.UserID)
	var out []*ssCandidate
	seen := map[string]bool{}
	for _, m := range ms {
		c := &ssCandidate{roomID: m.RoomID, membership: m.Membership, m: m, bump: m.Pos, dm: dms[m.RoomID]}
		switch m.Membership {
		case "join":
		case "invite":
			if len(ignored) > 0 && s.invitedByIgnored(tx, m, ignored) {
				continue
			}
		case "knock":
		case "leave", "ban":
			// A kick or ban stays listed (the user may not have seen it);
			// a room the user left is shown once, to a connection that
			// had it, so the client learns of the leave (MSC4186).
			if m.Forgotten {
				continue
			}
			if !s.removedByOther(tx, sess.UserID, m) {
				if base == nil {
					continue
				}
				if prev, ok := base.rooms[m.RoomID]; !ok || prev.membership == "leave" || prev.membership == "ban" {
					continue
				}
			}
		default:
			continue
		}
		seen[m.RoomID] = true
		if r, err := tx.Room(m.RoomID); err == nil {
			c.r = r
			if m.Membership == "join" {
				c.state, _ = s.Rooms.State(tx, r.State)
				c.bump = s.bumpStamp(tx, st, r, m.Pos)
			}
		}
		s.ssRoomFacts(tx, c)
		out = append(out, c)
	}
	// Invites to rooms on other servers live beside the memberships.
	prefix := sess.UserID + " "
	tx.ScanKV(remoteInviteNS, prefix, func(key string, raw []byte) bool {
		roomID := strings.TrimPrefix(key, prefix)
		var ri remoteInvite
		if seen[roomID] || json.Unmarshal(raw, &ri) != nil || s.overtaken(tx, sess.UserID, roomID, &ri) || ignored[ri.Sender] {
			return true
		}
		c := &ssCandidate{roomID: roomID, membership: "invite", remote: &ri, bump: ri.Pos, dm: dms[roomID]}
		if ri.Left {
			// A rejected or withdrawn invite: shown once, as a leave, to a
			// client that was sent the invite.
			if base == nil || base.rooms[roomID].membership != "invite" {
				return true
			}
			c.membership = "leave"
		}
		if content, _ := ri.Invite["content"].(map[string]any); content != nil {
			c.dm, _ = content["is_direct"].(bool)
		}
		for _, raw := range ri.State {
			var ev struct {
				Type    string         `json:"type"`
				Content map[string]any `json:"content"`
			}
			if json.Unmarshal(raw, &ev) != nil {
				continue
			}
			switch ev.Type {
			case "m.room.encryption":
				c.encrypted = true
			case "m.room.create":
				if t, ok := ev.Content["type"].(string); ok {
					c.roomType = &t
				}
			}
		}
		out = append(out, c)
		return true
	})
	return out, nil
}

// ssRoomFacts fills what the filters read from a local room's state (for
// an invite, the state before the invite).
func (s *Server) ssRoomFacts(tx *store.Tx, c *ssCandidate) {
	st := c.state
	if st == nil && c.m != nil {
		if ev, err := s.Rooms.Event(tx, c.m.Event); err == nil {
			st, _ = s.Rooms.State(tx, ev.StateBefore)
			if c.membership == "invite" {
				var content struct {
					IsDirect bool `json:"is_direct"`
				}
				if json.Unmarshal(ev.Content, &content) == nil && content.IsDirect {
					c.dm = true
				}
			}
		}
	}
	if st == nil {
		return
	}
	if ev, _ := s.Rooms.StateEvent(tx, st, "m.room.encryption", ""); ev != nil {
		c.encrypted = true
	}
	if ev, _ := s.Rooms.StateEvent(tx, st, "m.room.create", ""); ev != nil {
		var content struct {
			Type *string `json:"type"`
		}
		if json.Unmarshal(ev.Content, &content) == nil {
			c.roomType = content.Type
		}
	}
}

// directRooms are the rooms the user's m.direct account data names.
func (s *Server) directRooms(tx *store.Tx, userID string) map[string]bool {
	out := map[string]bool{}
	ad, err := tx.AccountData(userID, "", "m.direct")
	if err != nil {
		return out
	}
	var direct map[string][]string
	if json.Unmarshal(ad.Content, &direct) != nil {
		return out
	}
	for _, rooms := range direct {
		for _, r := range rooms {
			out[r] = true
		}
	}
	return out
}

// bumpStamp is the stream position of the room's last message-like event
// (fallback: the user's membership's position).
func (s *Server) bumpStamp(tx *store.Tx, st *ssState, r *store.Room, fallback uint64) uint64 {
	if c, ok := st.bumps.Get(r.RoomID); ok && c[0] == r.LastPos {
		if c[1] == 0 {
			return fallback
		}
		return c[1]
	}
	stamp, n := uint64(0), 0
	tx.Timeline(r.NID, r.LastPos, true, func(pos, nid uint64) bool {
		n++
		if n > bumpScanLimit {
			return false
		}
		ev, err := s.Rooms.Event(tx, nid)
		if err == nil && bumpTypes[ev.Type] {
			stamp = pos
			return false
		}
		return true
	})
	st.bumps.Add(r.RoomID, [2]uint64{r.LastPos, stamp})
	if stamp == 0 {
		return fallback
	}
	return stamp
}

// matches tells whether a candidate passes a list's filters.
func (f *ssFilters) matches(c *ssCandidate) bool {
	if f == nil {
		return true
	}
	if f.IsDM != nil && *f.IsDM != c.dm {
		return false
	}
	if f.IsEncrypted != nil && *f.IsEncrypted != c.encrypted {
		return false
	}
	if f.IsInvite != nil && *f.IsInvite != (c.membership == "invite") {
		return false
	}
	typeIn := func(types []*string) bool {
		for _, t := range types {
			if (t == nil && c.roomType == nil) || (t != nil && c.roomType != nil && *t == *c.roomType) {
				return true
			}
		}
		return false
	}
	if f.RoomTypes != nil && !typeIn(f.RoomTypes) {
		return false
	}
	if len(f.NotRoomTypes) > 0 && typeIn(f.NotRoomTypes) {
		return false
	}
	if f.Spaces != nil && !f.children[c.roomID] {
		return false
	}
	if slices.ContainsFunc(f.NotTags, func(t string) bool { return c.tags[t] }) {
		return false
	}
	if f.Tags != nil && !slices.ContainsFunc(f.Tags, func(t string) bool { return c.tags[t] }) {
		return false
	}
	return true
}

// spaceChildren are the rooms named by m.space.child events (with a
// via) of those of spaces the user is joined to; subspaces are not
// walked (MSC4186).
func (s *Server) spaceChildren(tx *store.Tx, userID string, spaces []string) map[string]bool {
	out := map[string]bool{}
	for _, sp := range spaces {
		if m, err := tx.Membership(userID, sp); err != nil || m.Membership != "join" {
			continue
		}
		r, err := tx.Room(sp)
		if err != nil {
			continue
		}
		st, err := s.Rooms.State(tx, r.State)
		if err != nil {
			continue
		}
		evs, err := s.Rooms.StateEvents(tx, st)
		if err != nil {
			continue
		}
		for _, ev := range evs {
			if ev.Type != "m.space.child" || ev.StateKey == nil {
				continue
			}
			var content struct {
				Via []string `json:"via"`
			}
			if json.Unmarshal(ev.Content, &content) == nil && len(content.Via) > 0 {
				out[*ev.StateKey] = true
			}
		}
	}
	return out
}

// slidingOnce builds one response from base (nil: a new connection) and
// the snapshot it leaves the client with; news tells whether it carries
// anything an incremental client would not already have.
func (s *Server) slidingOnce(tx *store.Tx, st *ssState, sess *Session, req *ssRequest, base *ssSnapshot) (map[string]any, *ssSnapshot, bool, error) {
	next := syncToken{pos: tx.Pos(), typing: s.Typing.Serial()}
	snap := &ssSnapshot{stream: next, rooms: map[string]ssSent{}, lists: map[string]int{}}
	if base != nil {
		for k, v := range base.rooms {
			snap.rooms[k] = v
		}
	}
	cands, err := s.ssCandidates(tx, st, sess, base)
	if err != nil {
		return nil, nil, false, err
	}
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].bump != cands[j].bump {
			return cands[i].bump > cands[j].bump
		}
		return cands[i].roomID < cands[j].roomID
	})
	news := false
	want := map[string]*ssRoomConfig{}
	inLists := map[string][]string{}
	byID := map[string]*ssCandidate{}
	for _, c := range cands {
		byID[c.roomID] = c
	}
	listsOut := map[string]any{}
	names := make([]string, 0, len(req.Lists))
	for name := range req.Lists {
		names = append(names, name)
	}
	sort.Strings(names)
	if slices.ContainsFunc(names, func(n string) bool {
		f := req.Lists[n].Filters
		return f != nil && (f.Tags != nil || f.NotTags != nil)
	}) {
		for _, c := range cands {
			_, tags, _ := roomTags(tx, sess.UserID, c.roomID)
			c.tags = map[string]bool{}
			for t := range tags {
				c.tags[t] = true
			}
		}
	}
	for _, name := range names {
		l := req.Lists[name]
		if l.Filters != nil && l.Filters.Spaces != nil {
			l.Filters.children = s.spaceChildren(tx, sess.UserID, l.Filters.Spaces)
		}
		var in []*ssCandidate
		for _, c := range cands {
			if l.Filters.matches(c) {
				in = append(in, c)
			}
		}
		listsOut[name] = map[string]any{"count": len(in)}
		snap.lists[name] = len(in)
		if base == nil || base.lists[name] != len(in) {
			news = true
		}
		ranges := l.Ranges
		if ranges == nil && len(in) > 0 {
			ranges = [][]int{{0, len(in) - 1}} // no range: the whole list (MSC4186)
		}
		for _, rg := range ranges {
			for i := rg[0]; i <= rg[1] && i < len(in); i++ {
				cfg := want[in[i].roomID]
				if cfg == nil {
					cfg = &ssRoomConfig{}
					want[in[i].roomID] = cfg
				}
				cfg.merge(l.TimelineLimit, l.RequiredState)
				if ls := inLists[in[i].roomID]; len(ls) == 0 || ls[len(ls)-1] != name {
					inLists[in[i].roomID] = append(ls, name)
				}
			}
		}
	}
	for id, sub := range req.RoomSubscriptions {
		if byID[id] == nil {
			continue // not a room of the user's
		}
		cfg := want[id]
		if cfg == nil {
			cfg = &ssRoomConfig{}
			want[id] = cfg
		}
		cfg.merge(sub.TimelineLimit, sub.RequiredState)
	}
	// A room the client was sent while the user was in it (or invited,
	// or knocking) and has since left, rejected or been removed from is
	// sent once as such even when no list or subscription covers it any
	// more (a list filtered to is_invite drops a rejected invite), so the
	// client removes it rather than keeping a stale invite (MSC4186).
	if base != nil {
		for _, c := range cands {
			if c.membership != "leave" && c.membership != "ban" || want[c.roomID] != nil {
				continue
			}
			if prev, ok := base.rooms[c.roomID]; ok && prev.membership != "leave" && prev.membership != "ban" {
				want[c.roomID] = &ssRoomConfig{TimelineLimit: prev.timelineLimit}
			}
		}
	}
	for id, cfg := range want {
		// As Synapse: a room with partial state (a faster join) is held
		// back from a client that asks for all its members, until the
		// state is complete; lazy members need no full member list.
		if cfg.allMembers() {
			if _, err := tx.PartialState(id); err == nil {
				delete(want, id)
			}
		}
	}
	roomsOut := map[string]any{}
	sentEvents := map[string]map[string]bool{} // room → timeline event IDs in this response
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		var prev *ssSent
		if base != nil {
			if p, ok := base.rooms[id]; ok {
				prev = &p
			}
		}
		out, sent, include, err := s.ssRoom(tx, sess, byID[id], want[id], prev, next)
		if err != nil {
			return nil, nil, false, err
		}
		snap.rooms[id] = sent
		if include {
			if ls := inLists[id]; len(ls) > 0 {
				out["lists"] = ls
			}
			roomsOut[id] = out
			news = true
			evs, _ := out["timeline_events"].([]any)
			for _, ev := range evs {
				if ce, ok := ev.(*room.ClientEvent); ok {
					if sentEvents[id] == nil {
						sentEvents[id] = map[string]bool{}
					}
					sentEvents[id][ce.EventID] = true
				}
			}
		}
	}
	resp := map[string]any{"lists": listsOut, "rooms": roomsOut}
	if req.TxnID != "" {
		resp["txn_id"] = req.TxnID
	}
	ext, extNews := s.ssExtensions(tx, sess, req, base, next, ids, inLists, sentEvents)
	resp["extensions"] = ext
	return resp, snap, news || extNews, nil
}

// ssRoom builds one room's entry; include is false when the client
// already has all of it.
func (s *Server) ssRoom(tx *store.Tx, sess *Session, c *ssCandidate, cfg *ssRoomConfig, prev *ssSent, next syncToken) (map[string]any, ssSent, bool, error) {
	sent := ssSent{membership: c.membership, config: cfg.key(), bump: c.bump, pos: next.pos, timelineLimit: cfg.TimelineLimit, dm: c.dm}
	initial := prev == nil || prev.membership != c.membership
	out := map[string]any{"bump_stamp": c.bump, "membership": c.membership}
	dmChanged := initial || prev.dm != c.dm
	if initial {
		out["initial"] = true
	}
	if dmChanged {
		out["is_dm"] = c.dm
	}
	switch c.membership {
	case "invite", "knock":
		sent.inviteStatePos = c.bump
		if !initial && prev.inviteStatePos == c.bump {
			return nil, sent, false, nil
		}
		var state []any
		if c.remote != nil {
			for _, st := range c.remote.State {
				state = append(state, st)
			}
		} else {
			state = s.strippedState(tx, c.m)
		}
		if c.membership == "invite" {
			out["invite_state"] = orEmpty(state)
		} else {
			out["knock_state"] = orEmpty(state)
		}
		out["stripped_state"] = orEmpty(state) // the MSC's latest name for both
		return out, sent, true, nil
	}
	if c.r == nil {
		// Left a room this server holds nothing of (a remote invite
		// rejected or withdrawn): the leave event is all there is.
		var tl []any
		if c.remote != nil && c.remote.LeaveEv != nil {
			tl = append(tl, c.remote.LeaveEv)
		} else if c.m != nil {
			if ev, err := s.Rooms.Event(tx, c.m.Event); err == nil {
				tl = append(tl, s.render(tx, ev, sess))
			}
		}
		out["timeline_events"], out["required_state"] = orEmpty(tl), []any{}
		return out, sent, true, nil
	}
	upper, limit := next.pos, min(cfg.TimelineLimit, maxTimelineLimit)
	if c.membership != "join" {
		// A left room is shown up to the leave, which it always includes.
		upper, limit = c.m.Pos, max(limit, 1)
	}
	sent.pos = upper
	lower := uint64(0)
	if !initial {
		lower = prev.pos
	}
	configChanged := !initial && prev.config != sent.config
	// A larger timeline_limit than the room was last sent with (a client
	// opening a room it listed with one event) gets the longer timeline
	// afresh, flagged as Synapse does.
	expanded := !initial && cfg.TimelineLimit > prev.timelineLimit
	tlLower := lower
	if expanded {
		tlLower = 0
		out["unstable_expanded_timeline"], out["expanded_timeline"] = true, true
	}
	var tl []*room.Event
	limited := false
	var firstPos uint64
	if initial || expanded || c.r.LastPos > lower {
		var err error
		tl, limited, firstPos, err = s.collectTimeline(tx, sess, c.r, tlLower, upper, limit, nil)
		if err != nil {
			return nil, sent, false, err
		}
	}
	// State the client asked for: all of it on a first sight or a new
	// configuration, else what changed since it was last sent.
	st := c.state
	if st == nil || c.membership != "join" {
		var err error
		if st, err = s.stateAtPos(tx, c.r, upper); err != nil {
			return nil, sent, false, err
		}
	}
	// changed is the state that changed since the room was last sent.
	// removed is the state gone since then (a state reset).
	var changed, stateEvs, removed []*room.Event
	var err error
	if !initial && c.r.LastPos > lower {
		var old *room.State
		if old, err = s.stateAtPos(tx, c.r, lower); err == nil {
			changed, err = s.stateDiff(tx, old, st)
		}
		if err == nil {
			removed, err = s.stateRemoved(tx, old, st)
		}
	}
	stateEvs = changed
	if err == nil && (initial || configChanged) {
		stateEvs, err = s.ssWantedState(tx, st, cfg, sess.UserID)
	}
	if err != nil {
		return nil, sent, false, err
	}
	var memberUpdates []*room.Event
	if !initial && !limited {
		memberUpdates = changed
	}
	required := s.requiredState(tx, sess, cfg, st, stateEvs, tl, memberUpdates)
	// Removed state the client asked for is a stub: type and state_key,
	// no content (MSC4186's StateStub), so the client drops its copy.
	for _, ev := range removed {
		if slices.ContainsFunc(cfg.required, func(rs ssRequiredState) bool { return rs.wants(ev, sess.UserID) }) {
			required = append(required, map[string]any{"type": ev.Type, "state_key": *ev.StateKey})
		}
	}
	// Name, avatar, heroes and counts: sent when first seen or changed
	// (null: removed). They change only with state (members: with member
	// events), so a room without such changes keeps what it was sent. A
	// room the user is no longer in shows them as of the leave, without
	// members or counts it may no longer see.
	if initial || len(changed) > 0 || len(removed) > 0 {
		sent.name = stateString(tx, s, st, "m.room.name", "name")
		sent.avatar = stateString(tx, s, st, "m.room.avatar", "url")
	} else {
		sent.name, sent.avatar = prev.name, prev.avatar
	}
	var heroIDs []string
	if c.membership == "join" {
		if initial || hasMemberEvent(changed) {
			summary := s.roomSummary(tx, c.r, sess.UserID)
			sent.joined, _ = summary["m.joined_member_count"].(int)
			sent.invited, _ = summary["m.invited_member_count"].(int)
			heroIDs, _ = summary["m.heroes"].([]string)
			sent.heroes = strings.Join(heroIDs, " ")
		} else {
			sent.joined, sent.invited, sent.heroes = prev.joined, prev.invited, prev.heroes
			heroIDs = strings.Fields(prev.heroes)
		}
		out["joined_count"], out["invited_count"] = sent.joined, sent.invited
	}
	changedMeta := dmChanged || prev.name != sent.name || prev.avatar != sent.avatar || prev.joined != sent.joined || prev.invited != sent.invited || prev.heroes != sent.heroes
	for field, v := range map[string]string{"name": sent.name, "avatar": sent.avatar} {
		if v != "" {
			out[field] = v
		} else if !initial && ((field == "name" && prev.name != "") || (field == "avatar" && prev.avatar != "")) {
			out[field] = nil
		}
	}
	if sent.name == "" && len(heroIDs) > 0 {
		out["heroes"] = s.heroes(tx, st, heroIDs)
	}
	if s.UnreadCounts != nil && c.membership == "join" {
		counts := s.UnreadCounts(tx, sess.UserID, c.r.RoomID)
		sent.notif, sent.highlight = counts["notification_count"], counts["highlight_count"]
	}
	out["notification_count"], out["highlight_count"] = sent.notif, sent.highlight
	countsChanged := initial || prev.notif != sent.notif || prev.highlight != sent.highlight
	if !initial && !configChanged && !expanded && len(tl) == 0 && len(required) == 0 && !changedMeta && !countsChanged && prev.bump == sent.bump {
		return nil, sent, false, nil
	}
	out["timeline_events"] = orEmpty(toAny(s.renderAll(tx, tl, sess)))
	out["required_state"] = orEmpty(required)
	out["limited"] = limited
	if len(tl) > 0 {
		out["prev_batch"] = pageToken(firstPos - 1)
	} else {
		out["prev_batch"] = pageToken(upper)
	}
	numLive := 0
	if !initial {
		for _, ev := range tl {
			if ev.Pos > lower {
				numLive++
			}
		}
	}
	out["num_live"] = numLive
	return out, sent, true, nil
}

// stateRemoved is the state in from whose keys are not in to at all.
func (s *Server) stateRemoved(tx *store.Tx, from, to *room.State) ([]*room.Event, error) {
	var out []*room.Event
	var err error
	from.Each(func(k, nid uint64) bool {
		if _, ok := to.Get(k); ok {
			return true
		}
		var ev *room.Event
		if ev, err = s.Rooms.Event(tx, nid); err != nil {
			return false
		}
		if ev.StateKey != nil {
			out = append(out, ev)
		}
		return true
	})
	return out, err
}

func toAny[T any](v []T) []any {
	out := make([]any, len(v))
	for i, x := range v {
		out[i] = x
	}
	return out
}

// stateString reads one string field of a state event's content ("" if none).
func stateString(tx *store.Tx, s *Server, st *room.State, evType, field string) string {
	ev, _ := s.Rooms.StateEvent(tx, st, evType, "")
	if ev == nil {
		return ""
	}
	var content map[string]any
	if json.Unmarshal(ev.Content, &content) != nil {
		return ""
	}
	v, _ := content[field].(string)
	return v
}

// heroes renders hero user IDs with their names and avatars in the room.
func (s *Server) heroes(tx *store.Tx, st *room.State, ids []string) []any {
	out := []any{}
	for _, id := range ids {
		h := map[string]any{"user_id": id}
		if ev, _ := s.Rooms.StateEvent(tx, st, "m.room.member", id); ev != nil {
			var content struct {
				DisplayName string `json:"displayname"`
				AvatarURL   string `json:"avatar_url"`
			}
			if json.Unmarshal(ev.Content, &content) == nil {
				if content.DisplayName != "" {
					h["displayname"] = content.DisplayName
				}
				if content.AvatarURL != "" {
					h["avatar_url"] = content.AvatarURL
				}
			}
		}
		out = append(out, h)
	}
	return out
}

// ssWantedState is the state a room's rules may ask for: looked up one by
// one when they name exact types and state keys, the entries of a type
// when they name a type with any state key (Element X asks for
// ["m.call.member", "*"] and the space parents and children of every
// room: only those events are read, not the room's whole state), and all
// of it when they ask for any type.
func (s *Server) ssWantedState(tx *store.Tx, st *room.State, cfg *ssRoomConfig, self string) ([]*room.Event, error) {
	var keys [][2]string
	anyKey := map[string]bool{} // types asked for with any state key
	for _, rs := range cfg.required {
		for _, p := range rs.include {
			switch {
			case p[0] == "*":
				return s.stateDiff(tx, nil, st)
			case p[1] == "*":
				anyKey[p[0]] = true
				continue
			case p[1] == "$ME":
				p[1] = self
			}
			keys = append(keys, p)
		}
	}
	var out []*room.Event
	var err error
	if len(anyKey) > 0 {
		st.Each(func(k, nid uint64) bool {
			typ, _, kerr := tx.StateKey(k)
			if kerr != nil || !anyKey[typ] {
				return true
			}
			var ev *room.Event
			if ev, err = s.Rooms.Event(tx, nid); err != nil {
				return false
			}
			out = append(out, ev)
			return true
		})
		if err != nil {
			return nil, err
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Pos < out[j].Pos })
	}
	seen := map[[2]string]bool{}
	for _, k := range keys {
		if seen[k] || anyKey[k[0]] {
			continue
		}
		seen[k] = true
		ev, err := s.Rooms.StateEvent(tx, st, k[0], k[1])
		if err != nil {
			return nil, err
		}
		if ev != nil {
			out = append(out, ev)
		}
	}
	return out, nil
}

// requiredState picks, from the candidate state events evs, those the
// room's rules ask for, and adds lazy members: those who sent the
// timeline's events or are the targets of its member events, when the
// candidates lack them (the client may never have been sent them), and
// memberUpdates (every membership change since the last response, given
// when the timeline is not limited, so a client can keep its member list).
func (s *Server) requiredState(tx *store.Tx, sess *Session, cfg *ssRoomConfig, st *room.State, evs, tl, memberUpdates []*room.Event) []any {
	var out []any
	included := map[string]bool{}
	for _, ev := range evs {
		if ev.StateKey == nil || !slices.ContainsFunc(cfg.required, func(rs ssRequiredState) bool { return rs.wants(ev, sess.UserID) }) {
			continue
		}
		if ev.Type == "m.room.member" {
			included[*ev.StateKey] = true
		}
		out = append(out, s.render(tx, ev, sess))
	}
	if !cfg.lazy() {
		return out
	}
	for _, ev := range memberUpdates {
		if ev.Type == "m.room.member" && ev.StateKey != nil && !included[*ev.StateKey] {
			included[*ev.StateKey] = true
			out = append(out, s.render(tx, ev, sess))
		}
	}
	var users []string
	for _, ev := range tl {
		users = append(users, ev.Sender)
		if ev.Type == "m.room.member" && ev.StateKey != nil {
			users = append(users, *ev.StateKey)
		}
	}
	for _, u := range users {
		if included[u] {
			continue
		}
		included[u] = true
		if ev, _ := s.Rooms.StateEvent(tx, st, "m.room.member", u); ev != nil {
			out = append(out, s.render(tx, ev, sess))
		}
	}
	return out
}
