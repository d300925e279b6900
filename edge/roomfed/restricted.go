package roomfed

import (
	"encoding/json"
	"net/http"

	"edge/edge/store"
)

// restrictedJoinContent is the content of a make_join template for
// userID in roomID: {"membership":"join"}, and in a restricted room
// (join rule restricted or knock_restricted) that the user is neither
// joined to nor invited to, join_authorised_via_users_server naming a
// local member able to invite, which auth rule 4.3.5.2 (room versions 8+)
// asks for; send_join then countersigns the event as that user's server.
// The user must be joined to one of the allowed rooms as this server sees
// it (server-server API, make_join: M_UNABLE_TO_AUTHORISE_JOIN when this
// server is in none of them, M_UNABLE_TO_GRANT_JOIN when no local member
// may invite). Dendrite and Synapse ask this of the resident server.
func (e *Engine) restrictedJoinContent(tx *store.Tx, roomID, userID string) (json.RawMessage, error) {
	plain, _ := json.Marshal(map[string]string{"membership": "join"})
	r, err := tx.Room(roomID)
	if err != nil {
		return plain, nil // the template's own lookup reports it
	}
	st, err := e.rooms.State(tx, r.State)
	if err != nil {
		return nil, err
	}
	jr, err := e.rooms.StateEvent(tx, st, "m.room.join_rules", "")
	if err != nil || jr == nil {
		return plain, err
	}
	var rules struct {
		JoinRule string `json:"join_rule"`
		Allow    []struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		} `json:"allow"`
	}
	if json.Unmarshal(jr.Content, &rules) != nil || (rules.JoinRule != "restricted" && rules.JoinRule != "knock_restricted") {
		return plain, nil
	}
	if m, err := e.rooms.StateEvent(tx, st, "m.room.member", userID); err != nil {
		return nil, err
	} else if m != nil && (m.Membership() == "join" || m.Membership() == "invite") {
		return plain, nil
	}

	known, allowed := false, false
	for _, a := range rules.Allow {
		if a.Type != "m.room_membership" {
			continue
		}
		ar, err := tx.Room(a.RoomID)
		if err != nil {
			continue
		}
		if ok, err := e.serverJoined(tx, ar, e.name); err != nil {
			return nil, err
		} else if !ok {
			continue // a room we left: its state may be stale
		}
		ast, err := e.rooms.State(tx, ar.State)
		if err != nil {
			return nil, err
		}
		known = true
		if m, err := e.rooms.StateEvent(tx, ast, "m.room.member", userID); err != nil {
			return nil, err
		} else if m != nil && m.Membership() == "join" {
			allowed = true
			break
		}
	}
	switch {
	case allowed:
	case !known:
		return nil, fedErr(http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN", "this server is in none of the rooms the join rules allow")
	default:
		return nil, errForbidden("the user is in none of the rooms the join rules allow")
	}

	pl, err := e.rooms.PowerLevels(tx, st)
	if err != nil {
		return nil, err
	}
	var via string
	var ferr error
	st.Each(func(key, nid uint64) bool {
		t, sk, err := tx.StateKey(key)
		if err != nil || t != "m.room.member" || domainOf(sk) != e.name || pl.UserLevel(sk) < pl.Invite() {
			return true
		}
		ev, err := e.rooms.Event(tx, nid)
		if err != nil {
			ferr = err
			return false
		}
		if ev.Membership() == "join" {
			via = sk
			return false
		}
		return true
	})
	if ferr != nil {
		return nil, ferr
	}
	if via == "" {
		return nil, fedErr(http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN", "no member of this server may invite to the room")
	}
	return json.Marshal(map[string]string{"membership": "join", "join_authorised_via_users_server": via})
}
