package client

import (
	"errors"

	"edge/edge/room"
	"edge/edge/store"
)

// roomState loads a room and its current state.
func (s *Server) roomState(tx *store.Tx, roomID string) (*store.Room, *room.State, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, room.ErrRoomNotFound
	} else if err != nil {
		return nil, nil, err
	}
	st, err := s.Rooms.State(tx, r.State)
	return r, st, err
}

// membershipIn returns userID's membership in st ("" for none).
func (s *Server) membershipIn(tx *store.Tx, st *room.State, userID string) string {
	ev, err := s.Rooms.StateEvent(tx, st, "m.room.member", userID)
	if err != nil || ev == nil {
		return ""
	}
	return ev.Membership()
}

// stateContentField reads one string field of a state event's content.
func (s *Server) stateContentField(tx *store.Tx, st *room.State, evType, field string) string {
	return s.Rooms.StateContentField(tx, st, evType, field)
}

// requireJoined returns the room's current state if userID is joined;
// M_FORBIDDEN otherwise (also for unknown rooms, which must not leak).
func (s *Server) requireJoined(tx *store.Tx, roomID, userID string) (*store.Room, *room.State, error) {
	r, st, err := s.roomState(tx, roomID)
	if errors.Is(err, room.ErrRoomNotFound) {
		return nil, nil, errForbidden("You are not in room %s", roomID)
	} else if err != nil {
		return nil, nil, err
	}
	if s.membershipIn(tx, st, userID) != "join" {
		return nil, nil, errForbidden("You are not in room %s", roomID)
	}
	return r, st, nil
}

// visibility answers "may this user see this event?" per the spec's history
// visibility rules, memoising per state snapshot within one request.
type visibility struct {
	s       *Server
	tx      *store.Tx
	userID  string
	current string // the user's current membership
	left    uint64 // stream position of the user's leave/ban, if not joined
	// wasJoined: the user was joined just before that leave/ban, so
	// "shared" history up to it is theirs (they joined after it was sent).
	wasJoined bool
	// ignored: senders whose non-state events the user does not want to see.
	ignored map[string]bool
	memo    map[uint64][2]string
}

func (s *Server) newVisibility(tx *store.Tx, roomID, userID string) *visibility {
	v := &visibility{s: s, tx: tx, userID: userID, ignored: s.ignoredUsers(tx, userID), memo: map[uint64][2]string{}}
	if _, st, err := s.roomState(tx, roomID); err == nil {
		v.current = s.membershipIn(tx, st, userID)
	}
	if m, err := tx.Membership(userID, roomID); err == nil && m.Membership != "join" {
		v.left = m.Pos
		if ev, err := s.Rooms.Event(tx, m.Event); err == nil {
			_, before := v.at(ev.StateBefore)
			v.wasJoined = before == "join"
		}
	}
	return v
}

// at returns (history_visibility, user's membership) in a snapshot.
func (v *visibility) at(snap uint64) (string, string) {
	if r, ok := v.memo[snap]; ok {
		return r[0], r[1]
	}
	hv, mem := "shared", ""
	if st, err := v.s.Rooms.State(v.tx, snap); err == nil {
		if h := v.s.stateContentField(v.tx, st, "m.room.history_visibility", "history_visibility"); h != "" {
			hv = h
		}
		mem = v.s.membershipIn(v.tx, st, v.userID)
	}
	v.memo[snap] = [2]string{hv, mem}
	return hv, mem
}

func (v *visibility) canSee(ev *room.Event) bool {
	if ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
		return false
	}
	if !ev.IsState() && v.ignored[ev.Sender] {
		return false // state from ignored users still shows, so rooms look the same
	}
	hv, mem := v.at(ev.StateBefore)
	if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == v.userID {
		mem = ev.Membership() // one's own membership change is always visible to oneself
		if mem != "" {
			return true
		}
	}
	switch hv {
	case "world_readable":
		return true
	case "shared":
		// Allowed to members at the time and to anyone who joined later
		// (spec: "the user joined the room at any point after the event
		// was sent"), which for a user who has left ends at the leave.
		if mem == "join" || v.current == "join" {
			return true
		}
		return v.left != 0 && ev.Pos <= v.left && v.wasJoined
	case "invited":
		return mem == "join" || mem == "invite"
	default: // joined
		return mem == "join"
	}
}
