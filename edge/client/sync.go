package client

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"edge/edge/filter"
	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

func (s *Server) routesSync() {
	s.authed("GET /sync", s.sync)
	s.routesFilters()
	s.routesSlidingSync()
}

// syncToken is a point in every stream: the store's position and the
// in-memory typing serial.
type syncToken struct {
	pos, typing uint64
}

func (t syncToken) String() string { return fmt.Sprintf("s%d_%d", t.pos, t.typing) }

func parseSyncToken(s string) (syncToken, bool) {
	if !strings.HasPrefix(s, "s") {
		return syncToken{}, false
	}
	a, b, _ := strings.Cut(s[1:], "_")
	pos, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return syncToken{}, false
	}
	typing, _ := strconv.ParseUint(b, 10, 64)
	return syncToken{pos, typing}, true
}

const (
	maxSyncTimeout       = 5 * time.Minute
	defaultTimelineLimit = 10
	maxTimelineLimit     = 500
)

// SyncExtension adds a stream to /sync (to-device, device lists, presence
// …): it writes its part into resp and reports whether there was news.
type SyncExtension func(tx *store.Tx, sess *Session, since, next uint64, initial bool, resp map[string]any) bool

// timelineJSON and friends are /sync's room sections.
type timelineJSON struct {
	Events    []*room.ClientEvent `json:"events"`
	Limited   bool                `json:"limited"`
	PrevBatch string              `json:"prev_batch,omitempty"`
}

type eventsJSON struct {
	Events []any `json:"events"`
}

type joinedRoomJSON struct {
	Timeline            timelineJSON   `json:"timeline"`
	State               eventsJSON     `json:"state,omitzero"`
	StateAfter          *eventsJSON    `json:"state_after,omitempty"` // use_state_after (MSC4222) only
	Ephemeral           eventsJSON     `json:"ephemeral"`
	AccountData         eventsJSON     `json:"account_data"`
	UnreadNotifications map[string]int `json:"unread_notifications"`
	// UnreadThreadNotifications is only filled when the filter asks, and
	// left out when no thread has unread notifications.
	UnreadThreadNotifications map[string]map[string]int `json:"unread_thread_notifications,omitempty"`
	Summary                   map[string]any            `json:"summary"`
}

type leftRoomJSON struct {
	Timeline    timelineJSON `json:"timeline"`
	State       eventsJSON   `json:"state,omitzero"`
	StateAfter  *eventsJSON  `json:"state_after,omitempty"` // use_state_after (MSC4222) only
	AccountData eventsJSON   `json:"account_data"`
}

type invitedRoomJSON struct {
	InviteState eventsJSON `json:"invite_state"`
}

type knockedRoomJSON struct {
	KnockState eventsJSON `json:"knock_state"`
}

// sync: GET /sync
func (s *Server) sync(r *http.Request, sess *Session) (any, error) {
	q := r.URL.Query()
	var since syncToken
	hasSince := false
	if v := q.Get("since"); v != "" {
		var ok bool
		if since, ok = parseSyncToken(v); !ok {
			return nil, errInvalidParam("Invalid since token")
		}
		hasSince = true
	}
	timeout, err := syncTimeout(q.Get("timeout"))
	if err != nil {
		return nil, err
	}
	fullState := q.Get("full_state") == "true"
	// MSC4222, stable in v1.16; Complement still sends the unstable name too.
	stateAfter := q.Get("use_state_after") == "true" || q.Get("org.matrix.msc4222.use_state_after") == "true"
	var f *filter.Filter
	if err := s.Store.View(func(tx *store.Tx) error {
		var err error
		f, err = s.loadFilter(tx, sess.UserID, q.Get("filter"))
		return err
	}); err != nil {
		return nil, err
	}
	switch p := q.Get("set_presence"); p {
	case "":
		// Omitted means the polling client is online (spec: set_presence).
		if s.SetPresence != nil {
			s.SetPresence(sess.UserID, "online")
		}
	case "online", "offline", "unavailable":
		if s.SetPresence != nil {
			s.SetPresence(sess.UserID, p)
		}
	default:
		return nil, errInvalidParam("set_presence must be online, offline or unavailable")
	}
	var resp map[string]any
	err = s.longPoll(r.Context(), sess.UserID, timeout, hasSince, func() (news bool, err error) {
		resp, news, err = s.syncOnce(sess, since, hasSince, fullState, stateAfter, f)
		return news, err
	})
	return resp, err
}

// syncTimeout parses a sync's timeout query parameter (milliseconds).
func syncTimeout(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, errInvalidParam("Invalid timeout")
	}
	return min(time.Duration(ms)*time.Millisecond, maxSyncTimeout), nil
}

// longPoll calls once until it reports news, an error, or timeout passes
// (or the client goes away), waking when one of the user's streams moves;
// without wait (an initial sync) once runs just once. /sync and sliding
// sync share it.
func (s *Server) longPoll(ctx context.Context, userID string, timeout time.Duration, wait bool, once func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		// Listen before looking, so a commit between the look and the wait still wakes us.
		w := s.Notifier.Listen(s.syncKeys(userID)...)
		news, err := once()
		if err != nil || news || !wait || timeout == 0 {
			w.Close()
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			w.Close()
			return nil
		}
		timer := time.NewTimer(left)
		select {
		case <-w.C:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			w.Close()
			return nil
		}
		timer.Stop()
		w.Close()
	}
}

// syncKeys is what a user's sync listens to: the user and their rooms.
func (s *Server) syncKeys(userID string) []string {
	keys := []string{notify.UserKey(userID)}
	_ = s.Store.View(func(tx *store.Tx) error {
		ms, _ := tx.Memberships(userID)
		for _, m := range ms {
			if m.Membership == "join" {
				keys = append(keys, notify.RoomKey(m.RoomID))
			}
		}
		return nil
	})
	return keys
}

func (s *Server) syncOnce(sess *Session, since syncToken, hasSince, fullState, stateAfter bool, f *filter.Filter) (map[string]any, bool, error) {
	var resp map[string]any
	news := false
	err := s.Store.View(func(tx *store.Tx) error {
		next := syncToken{pos: tx.Pos(), typing: s.Typing.Serial()}
		join, invite, leave, knock := map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}
		ms, err := tx.Memberships(sess.UserID)
		if err != nil {
			return err
		}
		roomAD := &roomAccountData{tx: tx, userID: sess.UserID}
		lazy, _ := f.LazyLoadMembers()
		ignored := s.ignoredUsers(tx, sess.UserID)
		for _, m := range ms {
			if !f.AllowsRoom(m.RoomID) {
				continue
			}
			changed := !hasSince || m.Pos > since.pos
			switch m.Membership {
			case "join":
				if !lazy {
					// As Synapse: a sync that does not lazy-load members
					// omits a room with partial state (faster join), and
					// shows it as newly joined once the state is complete.
					if _, err := tx.PartialState(m.RoomID); err == nil {
						continue
					}
					if hasSince && tx.FullStateAt(m.RoomID) > since.pos {
						changed = true
					}
				}
				jr, has, err := s.syncJoined(tx, sess, m, since, hasSince, fullState || changed, stateAfter, next, f, roomAD)
				if err != nil {
					return err
				}
				if has || fullState || changed {
					join[m.RoomID] = jr
					news = news || has || changed
				}
			case "invite":
				if len(ignored) > 0 && s.invitedByIgnored(tx, m, ignored) {
					continue // the spec: invites from ignored users are not sent
				}
				if changed || fullState {
					invite[m.RoomID] = &invitedRoomJSON{InviteState: eventsJSON{s.strippedState(tx, m)}}
					news = true
				}
			case "knock":
				if changed || fullState {
					knock[m.RoomID] = &knockedRoomJSON{KnockState: eventsJSON{s.strippedState(tx, m)}}
					news = true
				}
			case "leave", "ban":
				// An initial sync without include_leave still shows a room
				// the user was banned or kicked from (as Synapse does;
				// Complement's TestUnbanViaInvite), not one they left. A
				// forgotten room shows its leave only to a sync from before
				// it, so other devices learn of it (Synapse; TestRoomForget).
				if (m.Forgotten && !(hasSince && changed)) || (!hasSince && !f.IncludeLeave() && !s.removedByOther(tx, sess.UserID, m)) || (!changed && !(fullState && f.IncludeLeave())) {
					continue
				}
				lr, err := s.syncLeft(tx, sess, m, since, hasSince, stateAfter, f)
				if err != nil {
					return err
				}
				leave[m.RoomID] = lr
				news = true
			}
		}
		var accountData []any
		ads, err := tx.AccountDataSince(sess.UserID, sinceOrZero(since, hasSince))
		if err != nil {
			return err
		}
		adFilter := f.AccountDataFilter()
		for _, ad := range ads {
			if ad.RoomID != "" || !adFilter.Match(filter.EventView{Type: ad.Type}) {
				continue
			}
			accountData = append(accountData, map[string]any{"type": ad.Type, "content": ad.Content})
		}
		news = news || len(accountData) > 0
		resp = map[string]any{
			"next_batch":                 next.String(),
			"rooms":                      map[string]any{"join": join, "invite": invite, "leave": leave, "knock": knock},
			"account_data":               eventsJSON{orEmpty(accountData)},
			"presence":                   eventsJSON{[]any{}},
			"to_device":                  eventsJSON{[]any{}},
			"device_lists":               map[string]any{"changed": []string{}, "left": []string{}},
			"device_one_time_keys_count": map[string]int{},
		}
		for _, ext := range s.SyncExtensions {
			if ext(tx, sess, sinceOrZero(since, hasSince), next.pos, !hasSince, resp) {
				news = true
			}
		}
		// Empty sections are left out, as Synapse does: clients (and
		// Complement's MSC4155 tests) read a missing rooms.invite as "no
		// invites".
		for section, v := range resp["rooms"].(map[string]any) {
			if m, ok := v.(map[string]any); ok && len(m) == 0 {
				delete(resp["rooms"].(map[string]any), section)
			}
		}
		return nil
	})
	return resp, news, err
}

// roomAccountData reads a user's account data once per distinct since
// position in a sync and groups it by room, instead of once per room.
type roomAccountData struct {
	tx      *store.Tx
	userID  string
	bySince map[uint64]map[string][]*store.AccountData
}

func (a *roomAccountData) room(roomID string, since uint64) ([]*store.AccountData, error) {
	if a.bySince == nil {
		a.bySince = map[uint64]map[string][]*store.AccountData{}
	}
	byRoom, ok := a.bySince[since]
	if !ok {
		ads, err := a.tx.AccountDataSince(a.userID, since)
		if err != nil {
			return nil, err
		}
		byRoom = map[string][]*store.AccountData{}
		for _, ad := range ads {
			if ad.RoomID != "" {
				byRoom[ad.RoomID] = append(byRoom[ad.RoomID], ad)
			}
		}
		a.bySince[since] = byRoom
	}
	return byRoom[roomID], nil
}

func sinceOrZero(t syncToken, has bool) uint64 {
	if !has {
		return 0
	}
	return t.pos
}

func orEmpty(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

// syncJoined builds one joined room's section. full means the client has
// no state for this room yet (initial sync, new join, or full_state).
// stateAfter answers with state_after (up to the timeline's end) in
// place of state (up to its start), as use_state_after asks.
func (s *Server) syncJoined(tx *store.Tx, sess *Session, m *store.Membership, since syncToken, hasSince, full, stateAfter bool, next syncToken, f *filter.Filter, roomAD *roomAccountData) (*joinedRoomJSON, bool, error) {
	r, err := tx.Room(m.RoomID)
	if err != nil {
		return nil, false, err
	}
	lower := uint64(0)
	if hasSince && !full {
		lower = since.pos
	}
	limit, tf := f.TimelineLimit(defaultTimelineLimit, maxTimelineLimit), f.RoomTimeline()
	var tl []*room.Event
	var limited bool
	var firstPos uint64
	if lower == 0 {
		tl, limited, firstPos, err = s.collectTimelineTopological(tx, sess, r, next.pos, limit, tf)
	} else {
		tl, limited, firstPos, err = s.collectTimeline(tx, sess, r, lower, next.pos, limit, tf)
	}
	if err != nil {
		return nil, false, err
	}
	jr := &joinedRoomJSON{
		Timeline:            timelineJSON{Events: s.renderAll(tx, tl, sess), Limited: limited || (full && hasSince)},
		UnreadNotifications: map[string]int{"notification_count": 0, "highlight_count": 0},
		Summary:             map[string]any{},
	}
	if len(tl) > 0 {
		jr.Timeline.PrevBatch = pageToken(firstPos - 1)
	} else {
		jr.Timeline.PrevBatch = pageToken(next.pos)
	}
	// State: everything at the timeline's start for a full sync; for a
	// limited incremental one, what changed between since and that start.
	var stateEvs []*room.Event
	if stateAfter {
		if stateEvs, err = s.stateAfterTimeline(tx, r, since, full, next.pos); err != nil {
			return nil, false, err
		}
	} else if full || limited {
		startState, err := s.stateBeforeTimeline(tx, r, tl, next.pos)
		if err != nil {
			return nil, false, err
		}
		if full {
			current, err := s.Rooms.State(tx, r.State)
			if err != nil {
				return nil, false, err
			}
			if len(tl) == 0 {
				startState = current // nothing shown: the state is the current one
			}
			stateEvs, err = s.fullSyncState(tx, startState, current, tl)
			if err != nil {
				return nil, false, err
			}
		} else {
			base, err := s.stateAtPos(tx, r, since.pos)
			if err != nil {
				return nil, false, err
			}
			if stateEvs, err = s.stateDiff(tx, base, startState); err != nil {
				return nil, false, err
			}
		}
	}
	sf := f.RoomState()
	lazy, _ := f.LazyLoadMembers()
	senders := map[string]bool{sess.UserID: true}
	for _, ev := range tl {
		senders[ev.Sender] = true
	}
	var state []any
	included := map[string]bool{}
	for _, ev := range stateEvs {
		if !sf.Match(eventView(ev)) {
			continue
		}
		if lazy && ev.Type == "m.room.member" && !senders[*ev.StateKey] {
			continue
		}
		if ev.Type == "m.room.member" {
			included[*ev.StateKey] = true
		}
		state = append(state, s.render(tx, ev, sess))
	}
	if lazy && !full && len(tl) > 0 {
		// Members of new senders, so the client can render their names.
		for _, ev := range s.lazyMembers(tx, r.RoomID, tl, false, nil) {
			if !included[*ev.StateKey] {
				included[*ev.StateKey] = true
				state = append(state, s.render(tx, ev, sess))
			}
		}
	}
	if lazy && len(tl) > 0 {
		for _, ev := range s.partialStateSenders(tx, r.RoomID, tl, included) {
			state = append(state, s.render(tx, ev, sess))
		}
	}
	if stateAfter {
		jr.StateAfter = &eventsJSON{orEmpty(state)}
	} else {
		jr.State.Events = orEmpty(state)
	}
	jr.Ephemeral.Events = orEmpty(s.ephemeral(tx, sess, r.RoomID, since, hasSince && !full, f))
	var rad []any
	ads, err := roomAD.room(r.RoomID, sinceOrZero(since, hasSince && !full))
	if err != nil {
		return nil, false, err
	}
	raf := f.RoomAccountData()
	for _, ad := range ads {
		if raf.Match(filter.EventView{Type: ad.Type, RoomID: ad.RoomID}) {
			rad = append(rad, map[string]any{"type": ad.Type, "content": ad.Content})
		}
	}
	jr.AccountData.Events = orEmpty(rad)
	if f.UnreadThreadNotifications() && s.UnreadThreadCounts != nil {
		jr.UnreadNotifications, jr.UnreadThreadNotifications = s.UnreadThreadCounts(tx, sess.UserID, r.RoomID)
	} else if s.UnreadCounts != nil {
		jr.UnreadNotifications = s.UnreadCounts(tx, sess.UserID, r.RoomID)
	}
	if full || hasMemberEvent(tl) || hasMemberEvent(stateEvs) {
		// Counts change with member events; send them again then.
		jr.Summary = s.roomSummary(tx, r, sess.UserID)
	}
	has := len(tl) > 0 || len(state) > 0 || len(jr.Ephemeral.Events) > 0 || len(rad) > 0
	return jr, has, nil
}

// partialStateSenders finds, in a room with partial state (a faster
// join), the member events of timeline senders the state lacks (those not
// covered) among each event's auth events, as Synapse does: a lazy-loading
// client must still be able to name them.
func (s *Server) partialStateSenders(tx *store.Tx, roomID string, tl []*room.Event, covered map[string]bool) []*room.Event {
	if _, err := tx.PartialState(roomID); err != nil {
		return nil
	}
	var out []*room.Event
	for _, ev := range tl {
		if covered[ev.Sender] {
			continue
		}
		for _, aid := range ev.AuthEvents {
			ae, err := s.Rooms.EventByID(tx, aid)
			if err == nil && ae.Type == "m.room.member" && ae.StateKey != nil && *ae.StateKey == ev.Sender {
				covered[ev.Sender] = true
				out = append(out, ae)
				break
			}
		}
	}
	return out
}

// collectTimeline walks a room's timeline backwards from upper to just
// above lower, keeping up to limit events the user may see.
func (s *Server) collectTimeline(tx *store.Tx, sess *Session, r *store.Room, lower, upper uint64, limit int, tf *filter.RoomEventFilter) (evs []*room.Event, limited bool, firstPos uint64, err error) {
	return s.walkTimeline(tx, sess, r, upper, limit, tf, func(fn func(pos, nid uint64) bool) {
		tx.Timeline(r.NID, upper, true, func(pos, nid uint64) bool {
			return pos > lower && fn(pos, nid)
		})
	})
}

// walkTimeline collects, from walk (newest first; it stops when fn says
// false), up to limit events the user may see that tf matches, returned
// oldest first. firstPos is the smallest stream position walked (upper+1
// for none), which prev_batch goes back from.
func (s *Server) walkTimeline(tx *store.Tx, sess *Session, r *store.Room, upper uint64, limit int, tf *filter.RoomEventFilter, walk func(fn func(pos, nid uint64) bool)) (evs []*room.Event, limited bool, firstPos uint64, err error) {
	vis := s.newVisibility(tx, r.RoomID, sess.UserID)
	firstPos = upper + 1
	walk(func(pos, nid uint64) bool {
		if len(evs) >= limit {
			limited = true
			return false
		}
		ev, e := s.Rooms.Event(tx, nid)
		if e != nil {
			err = e
			return false
		}
		firstPos = min(firstPos, pos)
		if vis.canSee(ev) && tf.Match(eventView(ev)) {
			evs = append(evs, ev)
		}
		// History missing before this event (a gap get_missing_events
		// could not close): what came before it is not continuous with it,
		// so the timeline stops here, limited (as Synapse does).
		if gapBefore(tx, ev) {
			limited = true
			return false
		}
		return true
	})
	slices.Reverse(evs)
	return evs, limited, firstPos, err
}

// stateBeforeTimeline is the state just before the first timeline event,
// or the state at upper when the timeline is empty.
func (s *Server) stateBeforeTimeline(tx *store.Tx, r *store.Room, tl []*room.Event, upper uint64) (*room.State, error) {
	if len(tl) > 0 {
		return s.Rooms.State(tx, tl[0].StateBefore)
	}
	return s.stateAtPos(tx, r, upper)
}

// stateAfterTimeline is use_state_after's state_after: the state at the
// timeline's end (upper), whole for a full sync, else what changed since.
func (s *Server) stateAfterTimeline(tx *store.Tx, r *store.Room, since syncToken, full bool, upper uint64) ([]*room.Event, error) {
	end, err := s.stateAtPos(tx, r, upper)
	if err != nil {
		return nil, err
	}
	var base *room.State
	if !full {
		if base, err = s.stateAtPos(tx, r, since.pos); err != nil {
			return nil, err
		}
	}
	return s.stateDiff(tx, base, end)
}

// stateAtPos is the room state after the last event at or before pos.
func (s *Server) stateAtPos(tx *store.Tx, r *store.Room, pos uint64) (*room.State, error) {
	var nid uint64
	tx.Timeline(r.NID, pos, true, func(_, n uint64) bool { nid = n; return false })
	if nid == 0 {
		return s.Rooms.State(tx, 0)
	}
	ev, err := s.Rooms.Event(tx, nid)
	if err != nil {
		return nil, err
	}
	return s.Rooms.StateAfter(tx, ev)
}

// stateDiff lists the events of to that are not in from (nil from: all of to).
func (s *Server) stateDiff(tx *store.Tx, from, to *room.State) ([]*room.Event, error) {
	var out []*room.Event
	var err error
	to.Each(func(k, nid uint64) bool {
		if from != nil {
			if old, ok := from.Get(k); ok && old == nid {
				return true
			}
		}
		var ev *room.Event
		if ev, err = s.Rooms.Event(tx, nid); err != nil {
			return false
		}
		out = append(out, ev)
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Pos < out[j].Pos })
	return out, err
}

// removedByOther: the user's leave or ban in m was sent by someone else.
func (s *Server) removedByOther(tx *store.Tx, userID string, m *store.Membership) bool {
	if m.Membership == "ban" {
		return true
	}
	ev, err := s.Rooms.Event(tx, m.Event)
	return err == nil && ev.Sender != userID
}

// syncLeft builds a left room's section: its timeline up to the leave.
func (s *Server) syncLeft(tx *store.Tx, sess *Session, m *store.Membership, since syncToken, hasSince, stateAfter bool, f *filter.Filter) (*leftRoomJSON, error) {
	r, err := tx.Room(m.RoomID)
	if err != nil {
		return nil, err
	}
	lower := sinceOrZero(since, hasSince)
	tl, limited, firstPos, err := s.collectTimeline(tx, sess, r, lower, m.Pos, f.TimelineLimit(defaultTimelineLimit, maxTimelineLimit), f.RoomTimeline())
	if err != nil {
		return nil, err
	}
	lr := &leftRoomJSON{Timeline: timelineJSON{Events: s.renderAll(tx, tl, sess), Limited: limited}}
	if len(tl) > 0 {
		lr.Timeline.PrevBatch = pageToken(firstPos - 1)
	}
	lr.AccountData.Events = []any{}
	if stateAfter {
		// Up to the timeline's end: the leave.
		evs, err := s.stateAfterTimeline(tx, r, since, !hasSince, m.Pos)
		if err != nil {
			return nil, err
		}
		var state []any
		for _, ev := range evs {
			state = append(state, s.render(tx, ev, sess))
		}
		lr.StateAfter = &eventsJSON{orEmpty(state)}
		return lr, nil
	}
	startState, err := s.stateBeforeTimeline(tx, r, tl, m.Pos)
	if err != nil {
		return nil, err
	}
	var base *room.State
	if hasSince {
		if base, err = s.stateAtPos(tx, r, since.pos); err != nil {
			return nil, err
		}
	}
	evs, err := s.stateDiff(tx, base, startState)
	if err != nil {
		return nil, err
	}
	sf := f.RoomState()
	var state []any
	for _, ev := range evs {
		if sf.Match(eventView(ev)) {
			state = append(state, s.render(tx, ev, sess))
		}
	}
	lr.State.Events = orEmpty(state)
	return lr, nil
}

// invitedByIgnored tells whether an invite membership was sent by an ignored user.
func (s *Server) invitedByIgnored(tx *store.Tx, m *store.Membership, ignored map[string]bool) bool {
	ev, err := s.Rooms.Event(tx, m.Event)
	return err == nil && ignored[ev.Sender]
}

// strippedTypes are the state events an invitee or knocker sees.
var strippedTypes = []string{"m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
	"m.room.canonical_alias", "m.room.encryption", "m.room.topic"}

// strippedState is the invite_state/knock_state of a room: stripped
// events of the state at the membership event, plus that event.
func (s *Server) strippedState(tx *store.Tx, m *store.Membership) []any {
	out := []any{}
	ev, err := s.Rooms.Event(tx, m.Event)
	if err != nil {
		return out
	}
	st, err := s.Rooms.State(tx, ev.StateBefore)
	if err != nil {
		return out
	}
	for _, t := range strippedTypes {
		if se, _ := s.Rooms.StateEvent(tx, st, t, ""); se != nil {
			out = append(out, stripped(se))
		}
	}
	if inviter, _ := s.Rooms.StateEvent(tx, st, "m.room.member", ev.Sender); inviter != nil && ev.Sender != *ev.StateKey {
		out = append(out, stripped(inviter))
	}
	return append(out, stripped(ev))
}

func stripped(ev *room.Event) map[string]any {
	m := map[string]any{"type": ev.Type, "state_key": *ev.StateKey, "sender": ev.Sender, "content": ev.Content}
	if ev.Type == "m.room.create" {
		// MSC4311: the create event is given whole, so the room ID (a hash
		// of it from v12) can be checked.
		m["event_id"], m["origin_server_ts"], m["room_id"] = ev.ID, ev.OriginServerTS, ev.RoomID
	}
	return m
}

// hasMemberEvent tells whether evs hold a membership change.
func hasMemberEvent(evs []*room.Event) bool {
	for _, ev := range evs {
		if ev.Type == "m.room.member" {
			return true
		}
	}
	return false
}

// roomSummary is the m.heroes / member counts block. Heroes are the first
// five joined or invited members by stream order, never the requester
// (spec); with none, those who left or were banned, as Synapse does, so a
// room everyone left still gets a name.
func (s *Server) roomSummary(tx *store.Tx, r *store.Room, self string) map[string]any {
	st, err := s.Rooms.State(tx, r.State)
	if err != nil {
		return map[string]any{}
	}
	joined, invited := 0, 0
	type hero struct {
		user string
		pos  uint64
	}
	var present, gone []hero
	st.Each(func(k, nid uint64) bool {
		evType, sk, err := tx.StateKey(k)
		if err != nil || evType != "m.room.member" {
			return true
		}
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil {
			return true
		}
		switch ev.Membership() {
		case "join":
			joined++
		case "invite":
			invited++
		case "leave", "ban":
			if sk != self {
				gone = append(gone, hero{sk, ev.Pos})
			}
			return true
		default:
			return true
		}
		if sk != self {
			present = append(present, hero{sk, ev.Pos})
		}
		return true
	})
	if len(present) == 0 {
		present = gone
	}
	sort.Slice(present, func(i, j int) bool {
		if present[i].pos != present[j].pos {
			return present[i].pos < present[j].pos
		}
		return present[i].user < present[j].user
	})
	heroes := []string{}
	for _, h := range present[:min(len(present), 5)] {
		heroes = append(heroes, h.user)
	}
	return map[string]any{"m.joined_member_count": joined, "m.invited_member_count": invited, "m.heroes": heroes}
}

// ephemeral gathers typing and receipts for a room.
func (s *Server) ephemeral(tx *store.Tx, sess *Session, roomID string, since syncToken, incremental bool, f *filter.Filter) []any {
	var out []any
	ef := f.RoomEphemeral()
	typingSince := uint64(0)
	if incremental {
		typingSince = since.typing
	}
	if users, changed := s.Typing.Since(roomID, typingSince); changed && ef.Match(filter.EventView{Type: "m.typing", RoomID: roomID}) {
		out = append(out, map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
	}
	if !ef.Match(filter.EventView{Type: "m.receipt", RoomID: roomID}) {
		return out
	}
	posSince := uint64(0)
	if incremental {
		posSince = since.pos
	}
	receipts, err := tx.ReceiptsSince(roomID, posSince)
	if err != nil || len(receipts) == 0 {
		return out
	}
	// One m.receipt event per thread: a user's unthreaded and threaded
	// receipts on the same event must not overwrite each other.
	byThread := map[string]map[string]map[string]map[string]any{}
	var threads []string
	for _, rc := range receipts {
		if rc.Type == "m.read.private" && rc.UserID != sess.UserID {
			continue
		}
		content := byThread[rc.ThreadID]
		if content == nil {
			content = map[string]map[string]map[string]any{}
			byThread[rc.ThreadID] = content
			threads = append(threads, rc.ThreadID)
		}
		byType := content[rc.EventID]
		if byType == nil {
			byType = map[string]map[string]any{}
			content[rc.EventID] = byType
		}
		users := byType[rc.Type]
		if users == nil {
			users = map[string]any{}
			byType[rc.Type] = users
		}
		data := map[string]any{"ts": rc.TS}
		if rc.ThreadID != "" {
			data["thread_id"] = rc.ThreadID
		}
		users[rc.UserID] = data
	}
	sort.Strings(threads)
	for _, th := range threads {
		out = append(out, map[string]any{"type": "m.receipt", "content": byThread[th]})
	}
	return out
}
