package roomfed

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// serveMakeJoin answers GET /_matrix/federation/v1/make_join/{roomId}/{userId}:
// a join template built on the current state, if the room's version is
// one the asking server supports (its ver= parameters, "1" when absent)
// and the auth rules let the user join.
func (e *Engine) serveMakeJoin(r *federation.Request) (any, error) {
	vers := r.URL.Query()["ver"]
	if len(vers) == 0 {
		vers = []string{"1"}
	}
	return e.makeMembership(r, "join", vers)
}

// makeMembership answers make_join and make_leave: a member-event template
// for a user of the asking server, built on the current state. With
// versions set, the room's version must be one of them.
func (e *Engine) makeMembership(r *federation.Request, membership string, versions []string) (any, error) {
	roomID, userID := r.PathValue("roomId"), r.PathValue("userId")
	if domainOf(userID) != r.Origin {
		return nil, errForbidden("the user is not on the requesting server")
	}
	content, _ := json.Marshal(map[string]string{"membership": membership})
	sk := userID
	var version string
	var tmpl json.RawMessage
	err := e.store.View(func(tx *store.Tx) error {
		if versions != nil {
			rm, err := tx.Room(roomID)
			if errors.Is(err, store.ErrNotFound) {
				return room.ErrRoomNotFound
			} else if err != nil {
				return err
			}
			if !slices.Contains(versions, rm.Version) {
				return fedErr(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "the room's version is "+rm.Version)
			}
		}
		var err error
		version, tmpl, err = e.rooms.Template(tx, roomID, room.Proto{Type: "m.room.member", StateKey: &sk, Sender: userID, Content: content})
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return map[string]any{"room_version": version, "event": tmpl}, nil
}

// serveSendJoin answers PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}:
// the join event, checked like any inbound PDU plus the join's own rules,
// is countersigned, stored and sent to the other servers in the room; the
// answer is the state before it and the auth chain.
// TODO(issue 6): omit_members (MSC3706) is ignored: the full state is sent.
func (e *Engine) serveSendJoin(r *federation.Request) (any, error) {
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	unlock := e.lock(roomID)
	defer unlock()
	version, err := e.roomVersion(roomID)
	if err != nil {
		return nil, errNotFound("unknown room")
	}
	ev, err := e.sentMembership(r, version, roomID, eventID, "join")
	if err != nil {
		return nil, err
	}
	signed, _, err := e.rooms.SignPDU(version, ev.Raw)
	if err != nil {
		return nil, err
	}
	if ev, err = room.ParseEvent(version, signed, eventID); err != nil {
		return nil, err
	}
	var known bool
	_ = e.store.View(func(tx *store.Tx) error {
		_, err := tx.EventNID(eventID)
		known = err == nil
		return nil
	})
	if !known {
		if err := e.apply(ev); err != nil {
			if errors.Is(err, ErrRejected) {
				return nil, errForbidden(err.Error())
			}
			return nil, mapErr(err)
		}
	}
	var resp map[string]any
	err = e.store.Write(func(tx *store.Tx) error {
		stored, err := e.rooms.EventByID(tx, eventID)
		if err != nil {
			return err
		}
		if stored.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
			return errForbidden("the join was not accepted")
		}
		st, err := e.rooms.State(tx, stored.StateBefore)
		if err != nil {
			return err
		}
		state, err := e.rooms.StateEvents(tx, st)
		if err != nil {
			return err
		}
		chain, err := e.rooms.AuthChain(tx, append(slices.Clone(state), stored))
		if err != nil {
			return err
		}
		servers := map[string]bool{}
		if err := e.joinedServers(tx, stored.StateBefore, servers); err != nil {
			return err
		}
		var others []string
		for s := range servers {
			if s != r.Origin && s != e.name {
				others = append(others, s)
			}
		}
		if !known && len(others) > 0 {
			e.fed.Queue.SendPDUTx(tx, others, json.RawMessage(stored.Raw))
		}
		servers[e.name] = true
		list := make([]string, 0, len(servers))
		for s := range servers {
			list = append(list, s)
		}
		resp = map[string]any{
			"origin": e.name, "event": json.RawMessage(stored.Raw), "state": raws(state),
			"auth_chain": raws(chain), "members_omitted": false, "servers_in_room": list,
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return resp, nil
}
