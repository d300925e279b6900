package roomfed

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// Join joins userID (one of ours) to a room this server does not know,
// or to one it cannot authorise the join to itself (restricted), asking
// servers in turn (make_join, then send_join) until one succeeds.
// It is client.Server.RemoteJoin. A refusal wraps room.ErrForbidden, an
// unknown room room.ErrRoomNotFound.
func (e *Engine) Join(ctx context.Context, userID, roomID string, servers []string) error {
	unlock := e.lock(roomID)
	defer unlock()
	var errs []error
	for _, srv := range servers {
		if srv == e.name || srv == "" {
			continue
		}
		err := e.joinVia(ctx, srv, userID, roomID)
		if err == nil {
			return nil
		}
		e.log.Info("remote join failed", "server", srv, "room_id", roomID, "user_id", userID, "err", err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: no server to join %s through", room.ErrRoomNotFound, roomID)
	}
	return errors.Join(errs...)
}

func (e *Engine) joinVia(ctx context.Context, srv, userID, roomID string) error {
	q := url.Values{}
	for _, v := range room.SupportedVersions {
		q.Add("ver", v)
	}
	var mj struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + "?" + q.Encode()
	if err := e.fed.Client.Get(ctx, srv, path, &mj); err != nil {
		return remoteErr(err)
	}
	if mj.RoomVersion == "" {
		mj.RoomVersion = "1"
	}
	if !slices.Contains(room.SupportedVersions, mj.RoomVersion) {
		return fmt.Errorf("%w: %q", room.ErrUnsupported, mj.RoomVersion)
	}
	version := mj.RoomVersion
	var tmpl map[string]json.RawMessage
	if err := json.Unmarshal(mj.Event, &tmpl); err != nil || tmpl == nil {
		return fmt.Errorf("%w: make_join template from %s", room.ErrBadEvent, srv)
	}
	// The template's sender, state key, type, room and content must be
	// the join we asked for; the rest (prev/auth events, depth, time)
	// comes from the resident server.
	want := map[string]any{"sender": userID, "state_key": userID, "type": "m.room.member"}
	for k, v := range want {
		var got string
		if json.Unmarshal(tmpl[k], &got) != nil || got != v {
			return fmt.Errorf("%w: make_join template has a wrong %s", room.ErrBadEvent, k)
		}
	}
	// A restricted room's resident server names the member authorising
	// the join (auth rule 4.3.5.2 of room versions 8+); keep that.
	content := map[string]string{"membership": "join"}
	var tc struct {
		Via string `json:"join_authorised_via_users_server"`
	}
	if json.Unmarshal(tmpl["content"], &tc) == nil && tc.Via != "" {
		content["join_authorised_via_users_server"] = tc.Via
	}
	tmpl["content"], _ = json.Marshal(content)
	tmpl["origin"], _ = json.Marshal(e.name)
	if _, ok := tmpl["origin_server_ts"]; !ok {
		tmpl["origin_server_ts"], _ = json.Marshal(time.Now().UnixMilli())
	}
	delete(tmpl, "signatures")
	delete(tmpl, "hashes")
	raw, _ := json.Marshal(tmpl)
	signed, eventID, err := e.rooms.SignPDU(version, raw)
	if err != nil {
		return err
	}
	// Ask for a faster join: the members come later, in the background.
	path = "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	if e.fasterJoins {
		path += "?omit_members=true"
	}
	// A room this server is in already: a local user's join that only
	// another server could authorise (a restricted room). Of the answer
	// only the countersigned join matters; it is one more event of the
	// room, applied as received. (A room this server has left is joined
	// afresh: its copy here is stale.)
	known := false
	_ = e.store.View(func(tx *store.Tx) error {
		if r, err := tx.Room(roomID); err == nil {
			known, _ = e.serverJoined(tx, r, e.name)
		}
		return nil
	})
	var roomNID uint64
	if !known {
		if err := e.store.Write(func(tx *store.Tx) error { roomNID = tx.ReserveRoomNID(roomID); return nil }); err != nil {
			return err
		}
	}
	ans := &joinAnswer{}
	start := time.Now()
	err = e.fed.Client.DoStream(ctx, http.MethodPut, srv, path, json.RawMessage(signed), maxJoinAnswerBytes, func(r io.Reader) error {
		if known {
			return decodeJoinAnswer(r, ans, "state", func([]byte, bool) bool { return true })
		}
		var err error
		ans, err = e.readJoin(ctx, version, roomID, roomNID, r)
		return err
	})
	if err != nil {
		e.dropJoin(ans) // read whole, then the transport failed
		return remoteErr(err)
	}
	join, err := room.ParseEvent(version, signed, eventID)
	if err != nil {
		e.dropJoin(ans)
		return err
	}
	if len(ans.Event) > 0 {
		// The resident server's countersigned copy, when it is our event.
		if c, err := room.CheckPDU(version, ans.Event); err == nil && c.ID == eventID &&
			c.ContentHashOK && c.VerifySignature(e.name, e.fed.Keyring.GetKey) == nil {
			join = c.Event
		}
	}
	if known {
		_, err := e.receive(ctx, srv, roomID, join.Raw, true, nil)
		return err
	}
	received := time.Now()
	// Event IDs and state keys are indexed in a transaction of their own
	// while the events are authorised (one core each; the index's inserts
	// are most of the final writes).
	var listed []*room.Event
	for _, ev := range ans.stored {
		if ans.events[ev.ID].state && ev.IsState() {
			listed = append(listed, ev)
		}
	}
	indexed := make(chan error, 1)
	var ix *room.JoinIndex
	go func() {
		indexed <- e.store.Write(func(tx *store.Tx) error {
			var err error
			ix, err = e.rooms.IndexJoinEvents(tx, ans.stored, listed)
			if err == nil {
				tx.ClearPendingRecords(ans.owner)
			}
			return err
		})
	}()
	state, depth, rejected, err := e.verifyJoinAnswer(version, join, ans)
	if err = cmp.Or(<-indexed, err); err != nil {
		e.dropJoin(ans)
		return err
	}
	authorised := time.Now()
	var partial *store.PartialState
	if ans.MembersOmitted {
		// The answering server first: it holds our join for certain.
		servers := []string{srv}
		for _, s := range ans.ServersInRoom {
			if s != e.name && !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		partial = &store.PartialState{RoomID: roomID, JoinEvent: eventID, Servers: servers, Since: nowMS()}
	}
	err = e.store.Write(func(tx *store.Tx) error {
		snapshot := make(map[uint64]uint64, len(state))
		for _, ev := range state {
			snapshot[ix.Key[ev]] = ix.NID[ev]
		}
		for _, ev := range rejected {
			if se, err := tx.Event(ix.NID[ev]); err == nil {
				se.Flags |= store.FlagRejected
				tx.UpdateEvent(se)
			}
		}
		before, err := e.rooms.CreateJoinedRoom(tx, version, roomID, snapshot, depth)
		if err != nil {
			return err
		}
		m, err := e.rooms.AuthStateFor(tx, join, before)
		if err != nil {
			return err
		}
		if partial != nil {
			// A restricted join's authorising member may be omitted.
			tx.SetPartialState(partial)
			fillFromAuthEvents(tx, e.rooms, join, m)
		}
		if err := room.AuthorizeAgainst(join, m, e.fed.Keyring.GetKey); err != nil {
			return err
		}
		return e.rooms.PersistRemote(tx, join, before, 0)
	})
	if err != nil {
		e.dropJoin(ans)
		return err
	}
	e.log.Info("joined a room", "room_id", roomID, "server", srv, "events", len(ans.events), "state", len(state),
		"receive_check_store", received.Sub(start).Round(time.Millisecond), "authorise_index", authorised.Sub(received).Round(time.Millisecond),
		"create", time.Since(authorised).Round(time.Millisecond))
	if partial != nil {
		PartialStats.Joins.Add(1)
		e.log.Info("joined with partial state; fetching the members", "room_id", roomID, "server", srv,
			"state", len(state), "servers_in_room", len(ans.ServersInRoom))
		e.startResync(roomID)
	}
	return nil
}

// authLevels groups events (oldest first) by their level in the auth
// graph: one more than the highest level among their auth events that
// came earlier in the list, keeping list order within a level.
func authLevels(ordered []*joinEvent) [][]*joinEvent {
	level := make(map[string]int, len(ordered))
	var out [][]*joinEvent
	for _, je := range ordered {
		l := 0
		for _, aid := range je.AuthEvents {
			if al, ok := level[aid]; ok {
				l = max(l, al+1)
			}
		}
		level[je.ID] = l
		for len(out) <= l {
			out = append(out, nil)
		}
		out[l] = append(out[l], je)
	}
	return out
}

// byDepth lists the answer's stored events oldest first (stable), so
// each one's auth events come before it.
func (ans *joinAnswer) byDepth() []*joinEvent {
	ordered := make([]*joinEvent, 0, len(ans.stored))
	for _, ev := range ans.stored {
		ordered = append(ordered, ans.events[ev.ID])
	}
	slices.SortStableFunc(ordered, func(a, b *joinEvent) int { return cmp.Compare(a.Depth, b.Depth) })
	return ordered
}

// find looks an event up among the answer's, else in outside (events
// judged before); nil when it is in neither.
func (ans *joinAnswer) find(outside map[string]*room.Event) func(string) *room.Event {
	return func(eid string) *room.Event {
		if je := ans.events[eid]; je != nil {
			return je.Event
		}
		return outside[eid]
	}
}

// authoriseByLevels judges ordered (oldest first) against their auth
// events, which find looks up; an event whose auth event failed fails
// too. It returns the rejected.
// By levels of the auth graph within ordered, each level on every core:
// an event's level is one more than its auth events' highest, so one
// level's events are judged on the verdicts of lower levels only (in a
// big room nearly every member event is on one level). rejected is
// written between levels, never while they are judged.
func (e *Engine) authoriseByLevels(ordered []*joinEvent, find func(string) *room.Event) (rejected map[string]bool, rejectedEvs []*room.Event) {
	rejected = map[string]bool{}
	lookup := func(eid string) (*room.Event, error) {
		if ev := find(eid); ev != nil && !rejected[eid] {
			return ev, nil
		}
		return nil, room.ErrEventNotFound
	}
	for _, lvl := range authLevels(ordered) {
		errs := make([]error, len(lvl))
		var next atomic.Int64
		var wg sync.WaitGroup
		for range min(runtime.GOMAXPROCS(0), max(1, len(lvl)/256)) {
			wg.Go(func() {
				for i := int(next.Add(1) - 1); i < len(lvl); i = int(next.Add(1) - 1) {
					errs[i] = room.Authorize(lvl[i].Event, lookup, e.fed.Keyring.GetKey)
				}
			})
		}
		wg.Wait()
		for i, je := range lvl {
			if errs[i] != nil {
				e.log.Info("fetched state event fails auth", "event_id", je.ID, "err", errs[i])
				rejected[je.ID] = true
				rejectedEvs = append(rejectedEvs, je.Event)
			}
		}
	}
	return rejected, rejectedEvs
}

// holds tells whether this server has accepted eventID before: a rejoin's
// auth events name the user's own last membership, which a members-omitted
// answer need not carry.
func (e *Engine) holds(eventID string) bool {
	ok := false
	_ = e.store.View(func(tx *store.Tx) error {
		ev, err := e.rooms.EventByID(tx, eventID)
		ok = err == nil && ev.Flags&store.FlagRejected == 0
		return nil
	})
	return ok
}

// verifyJoinAnswer authorises the checked events of a send_join answer
// against their auth_events within the answer. Events failing are
// rejected, and with them the events they authorise (as Synapse does: a
// resident server's bad side events must not make the room unjoinable).
// What cannot be rejected: the room's create event, of the expected
// version, and the join's own auth events. It returns the state (state
// // events without the join) with its greatest depth, and the rejected
// events.
func (e *Engine) verifyJoinAnswer(version string, join *room.Event, ans *joinAnswer) (state []*room.Event, depth int64, rejectedEvs []*room.Event, err error) {
	ordered := ans.byDepth()
	rejected, rejectedEvs := e.authoriseByLevels(ordered, ans.find(nil))
	lookup := func(eid string) (*room.Event, error) {
		if je := ans.events[eid]; je != nil && !rejected[eid] {
			return je.Event, nil
		}
		return nil, room.ErrEventNotFound
	}
	for _, aid := range join.AuthEvents {
		if _, err := lookup(aid); err != nil && !e.holds(aid) {
			return nil, 0, nil, fmt.Errorf("%w: send_join answer lacks a valid %s, an auth event of the join", room.ErrBadEvent, aid)
		}
	}
	var create *room.Event
	state = make([]*room.Event, 0, len(ans.events))
	for _, je := range ordered {
		// The answer may list the join itself: it goes on top of the state.
		if !je.state || !je.IsState() || rejected[je.ID] || je.ID == join.ID {
			continue
		}
		if je.Type == "m.room.create" && *je.StateKey == "" {
			create = je.Event
		}
		state = append(state, je.Event)
		depth = max(depth, je.Depth)
	}
	if create == nil {
		return nil, 0, nil, fmt.Errorf("%w: send_join state has no valid create event", room.ErrBadEvent)
	}
	var cc struct {
		Version string `json:"room_version"`
	}
	_ = json.Unmarshal(create.Content, &cc)
	if cc.Version == "" {
		cc.Version = "1"
	}
	if cc.Version != version {
		return nil, 0, nil, fmt.Errorf("%w: create event says room version %q, make_join said %q", room.ErrBadEvent, cc.Version, version)
	}
	return state, depth, rejectedEvs, nil
}

// remoteErr maps a resident server's refusal to the room layer's errors,
// which the client API turns into errcodes.
func remoteErr(err error) error {
	var re *federation.RemoteError
	if errors.As(err, &re) {
		switch {
		case re.Code == "M_INCOMPATIBLE_ROOM_VERSION":
			return fmt.Errorf("%w: %v", room.ErrUnsupported, err)
		case re.Status == http.StatusNotFound:
			return fmt.Errorf("%w: %v", room.ErrRoomNotFound, err)
		case re.Status >= 400 && re.Status < 500:
			// 403, and the 400s of restricted rooms
			// (M_UNABLE_TO_AUTHORISE_JOIN, M_UNABLE_TO_GRANT_JOIN): the
			// resident server refuses; the client is told so (403), not
			// that the server was unreachable (502).
			return fmt.Errorf("%w: %v", room.ErrForbidden, err)
		}
	}
	return err
}

func nowMS() int64 { return time.Now().UnixMilli() }
