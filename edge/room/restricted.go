package room

import (
	"encoding/json"
	"errors"
	"strings"

	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// Why a restricted join (join rule restricted or knock_restricted, rooms
// v8+/v10+) cannot be authorised by a server; client and federation map
// them to their errcodes.
var (
	// ErrJoinNotAllowed: the user is in none of the allowed rooms.
	ErrJoinNotAllowed = errors.New("the user is in none of the rooms the join rules allow")
	// ErrCannotAuthoriseJoin: the server is in none of the allowed rooms,
	// so cannot tell (M_UNABLE_TO_AUTHORISE_JOIN).
	ErrCannotAuthoriseJoin = errors.New("this server is in none of the rooms the join rules allow")
	// ErrCannotGrantJoin: no member of the server may invite
	// (M_UNABLE_TO_GRANT_JOIN).
	ErrCannotGrantJoin = errors.New("no member of this server may invite to the room")
)

// JoinAuthorisedVia is the key of a member event's content naming the
// user whose server vouches for a restricted join.
const JoinAuthorisedVia = "join_authorised_via_users_server"

// RestrictedJoinVia names the member of server who authorises userID's
// join to roomID, or "" when the join needs no authorisation: the room is
// not restricted in its version, or the user is already joined or
// invited (a join from those is allowed by auth rule 4.3.5.1). The user
// must be joined to one of the allowed rooms in which server has a
// member (other rooms' state may be stale), and the authoriser is a
// joined member of server with the power to invite (rule 4.3.5.2).
func (s *Service) RestrictedJoinVia(tx *store.Tx, roomID, userID, server string) (string, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return "", ErrRoomNotFound
	} else if err != nil {
		return "", err
	}
	rv := id.RoomVersion(r.Version)
	if !rv.RestrictedJoins() {
		return "", nil
	}
	st, err := s.states.load(tx, r.State)
	if err != nil {
		return "", err
	}
	jr, err := s.StateEvent(tx, st, "m.room.join_rules", "")
	if err != nil || jr == nil {
		return "", err
	}
	var rules struct {
		JoinRule string          `json:"join_rule"`
		Allow    json.RawMessage `json:"allow"`
	}
	if json.Unmarshal(jr.Content, &rules) != nil {
		return "", nil
	}
	if rules.JoinRule != "restricted" && !(rv.KnockRestricted() && rules.JoinRule == "knock_restricted") {
		return "", nil
	}
	if m, err := s.StateEvent(tx, st, "m.room.member", userID); err != nil {
		return "", err
	} else if m != nil && (m.Membership() == "join" || m.Membership() == "invite") {
		return "", nil
	}
	// Entries that are not m.room_membership objects are ignored; an
	// allow that is no list allows nobody (only invites then).
	var allow []json.RawMessage
	_ = json.Unmarshal(rules.Allow, &allow)
	entries, known, allowed := 0, false, false
	for _, raw := range allow {
		var a struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		}
		if json.Unmarshal(raw, &a) != nil || a.Type != "m.room_membership" || a.RoomID == "" {
			continue
		}
		entries++
		ar, err := tx.Room(a.RoomID)
		if err != nil {
			continue
		}
		if counts, err := s.JoinedServers(tx, ar.State); err != nil {
			return "", err
		} else if counts[server] == 0 {
			continue // a room we left: its state may be stale
		}
		ast, err := s.states.load(tx, ar.State)
		if err != nil {
			return "", err
		}
		known = true
		if m, err := s.StateEvent(tx, ast, "m.room.member", userID); err != nil {
			return "", err
		} else if m != nil && m.Membership() == "join" {
			allowed = true
			break
		}
	}
	switch {
	case allowed:
	case entries == 0:
		return "", ErrJoinNotAllowed // no server could authorise it
	case !known:
		return "", ErrCannotAuthoriseJoin
	default:
		return "", ErrJoinNotAllowed
	}
	pl, err := s.PowerLevels(tx, st)
	if err != nil {
		return "", err
	}
	// The most powerful local member, ties broken by user ID, so the
	// choice does not depend on map order.
	var via string
	best := 0
	var ferr error
	st.Each(func(key, nid uint64) bool {
		t, sk, err := tx.StateKey(key)
		if err != nil || t != "m.room.member" || serverOf(sk) != server {
			return true
		}
		lvl := pl.UserLevel(sk)
		if lvl < pl.Invite() || (via != "" && (lvl < best || (lvl == best && strings.Compare(sk, via) > 0))) {
			return true
		}
		ev, err := s.Event(tx, nid)
		if err != nil {
			ferr = err
			return false
		}
		if ev.Membership() == "join" {
			via, best = sk, lvl
		}
		return true
	})
	if ferr != nil {
		return "", ferr
	}
	if via == "" {
		return "", ErrCannotGrantJoin
	}
	return via, nil
}
