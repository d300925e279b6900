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

func (e *Engine) routes() {
	e.fed.HandleRoom("GET /_matrix/federation/v1/make_join/{roomId}/{userId}", e.serveMakeJoin)
	e.fed.HandleRoom("PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}", e.serveSendJoin)
	e.fed.Handle("GET /_matrix/federation/v1/event/{eventId}", e.serveEvent)
	e.fed.HandleRoom("GET /_matrix/federation/v1/state_ids/{roomId}", e.serveStateIDs)
	e.fed.HandleRoom("GET /_matrix/federation/v1/state/{roomId}", e.serveState)
	e.fed.HandleRoom("POST /_matrix/federation/v1/get_missing_events/{roomId}", e.serveMissing)
}

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

// visibleTo loads the room and checks that server may read its events:
// it has a joined member, or the room is world-readable.
// TODO(issue 6): history visibility at each event, not the current state.
func (e *Engine) visibleTo(tx *store.Tx, roomID, server string) (*store.Room, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNotFound("unknown room")
	} else if err != nil {
		return nil, err
	}
	ok, err := e.serverJoined(tx, r, server)
	if err != nil {
		return nil, err
	}
	if ok {
		return r, nil
	}
	st, err := e.rooms.State(tx, r.State)
	if err != nil {
		return nil, err
	}
	hv, err := e.rooms.StateEvent(tx, st, "m.room.history_visibility", "")
	if err != nil {
		return nil, err
	}
	if hv != nil {
		var c struct {
			V string `json:"history_visibility"`
		}
		if json.Unmarshal(hv.Content, &c) == nil && c.V == "world_readable" {
			return r, nil
		}
	}
	return nil, errForbidden("the server has no joined member in the room")
}

// serveEvent answers GET /_matrix/federation/v1/event/{eventId}.
func (e *Engine) serveEvent(r *federation.Request) (any, error) {
	var out map[string]any
	err := e.store.View(func(tx *store.Tx) error {
		ev, err := e.rooms.EventByID(tx, r.PathValue("eventId"))
		if errors.Is(err, room.ErrEventNotFound) {
			return errNotFound("unknown event")
		} else if err != nil {
			return err
		}
		if err := e.fed.ACLCheck(r.Origin, ev.RoomID); err != nil {
			return err
		}
		if _, err := e.visibleTo(tx, ev.RoomID, r.Origin); err != nil {
			return err
		}
		out = map[string]any{"origin": e.name, "origin_server_ts": nowMS(), "pdus": []json.RawMessage{ev.Raw}}
		return nil
	})
	return out, mapErr(err)
}

// stateAt loads the state before event_id in the room and its auth chain.
func (e *Engine) stateAt(r *federation.Request) (state, chain []*room.Event, err error) {
	roomID, eventID := r.PathValue("roomId"), r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, fedErr(http.StatusBadRequest, "M_MISSING_PARAM", "event_id is required")
	}
	err = e.store.View(func(tx *store.Tx) error {
		if _, err := e.visibleTo(tx, roomID, r.Origin); err != nil {
			return err
		}
		ev, err := e.rooms.EventByID(tx, eventID)
		if errors.Is(err, room.ErrEventNotFound) || (err == nil && ev.RoomID != roomID) {
			return errNotFound("unknown event")
		} else if err != nil {
			return err
		}
		if ev.Flags&store.FlagOutlier != 0 {
			return errNotFound("the state at this event is not known")
		}
		st, err := e.rooms.State(tx, ev.StateBefore)
		if err != nil {
			return err
		}
		if state, err = e.rooms.StateEvents(tx, st); err != nil {
			return err
		}
		chain, err = e.rooms.AuthChain(tx, state)
		return err
	})
	return state, chain, mapErr(err)
}

// serveStateIDs answers GET /_matrix/federation/v1/state_ids/{roomId}?event_id=.
func (e *Engine) serveStateIDs(r *federation.Request) (any, error) {
	state, chain, err := e.stateAt(r)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdu_ids": ids(state), "auth_chain_ids": ids(chain)}, nil
}

// serveState answers GET /_matrix/federation/v1/state/{roomId}?event_id=.
func (e *Engine) serveState(r *federation.Request) (any, error) {
	state, chain, err := e.stateAt(r)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdus": raws(state), "auth_chain": raws(chain)}, nil
}

// serveMissing answers POST /_matrix/federation/v1/get_missing_events/{roomId}:
// walking back from latest_events through prev_events, not past
// earliest_events or below min_depth, at most limit events, oldest first.
func (e *Engine) serveMissing(r *federation.Request) (any, error) {
	var req struct {
		Earliest []string `json:"earliest_events"`
		Latest   []string `json:"latest_events"`
		Limit    int      `json:"limit"`
		MinDepth int64    `json:"min_depth"`
	}
	if err := json.Unmarshal(r.Body, &req); err != nil {
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", err.Error())
	}
	if req.Limit <= 0 {
		req.Limit = 10
	}
	req.Limit = min(req.Limit, 100)
	roomID := r.PathValue("roomId")
	var found []*room.Event
	err := e.store.View(func(tx *store.Tx) error {
		if _, err := e.visibleTo(tx, roomID, r.Origin); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, x := range req.Earliest {
			seen[x] = true
		}
		var queue []string
		for _, l := range req.Latest {
			ev, err := e.rooms.EventByID(tx, l)
			if err != nil || ev.RoomID != roomID {
				continue
			}
			seen[l] = true
			queue = append(queue, ev.PrevEvents...)
		}
		for len(queue) > 0 && len(found) < req.Limit {
			eid := queue[0]
			queue = queue[1:]
			if seen[eid] {
				continue
			}
			seen[eid] = true
			ev, err := e.rooms.EventByID(tx, eid)
			if err != nil || ev.RoomID != roomID || ev.Depth < req.MinDepth {
				continue
			}
			found = append(found, ev)
			queue = append(queue, ev.PrevEvents...)
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	slices.SortStableFunc(found, func(a, b *room.Event) int { return int(min(max(a.Depth-b.Depth, -1), 1)) })
	return map[string]any{"events": raws(found)}, nil
}

// mapErr turns room errors into federation answers.
func mapErr(err error) error {
	var fe *federation.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &fe):
		return fe
	case errors.Is(err, room.ErrRoomNotFound), errors.Is(err, ErrUnknownRoom):
		return errNotFound("unknown room")
	case errors.Is(err, room.ErrEventNotFound):
		return errNotFound("unknown event")
	case errors.Is(err, room.ErrForbidden):
		return errForbidden(err.Error())
	case errors.Is(err, room.ErrBadEvent):
		return fedErr(http.StatusBadRequest, "M_BAD_JSON", err.Error())
	case errors.Is(err, room.ErrUnsupported):
		return fedErr(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", err.Error())
	case errors.Is(err, federation.ErrACLDenied):
		return err
	}
	return err
}

func raws(evs []*room.Event) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, ev := range evs {
		out[i] = ev.Raw
	}
	return out
}

func ids(evs []*room.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// sentMembership parses and checks the member event a send_join or
// send_leave carries: the path's event ID, a membership change of its own
// sender in this room, a sender on the asking server, the content hash and
// the asking server's signature.
func (e *Engine) sentMembership(r *federation.Request, version, roomID, eventID, membership string) (*room.Event, error) {
	if len(r.Body) > room.MaxEventBytes {
		return nil, fedErr(http.StatusBadRequest, "M_TOO_LARGE", "event too large")
	}
	ev, err := room.ParseEvent(version, stripUnsigned(r.Body), "")
	if err != nil {
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", err.Error())
	}
	switch {
	case ev.ID != eventID:
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", "the event ID does not match the path")
	case ev.RoomID != roomID || ev.Type != "m.room.member" || ev.StateKey == nil || *ev.StateKey != ev.Sender || ev.Membership() != membership:
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", "not a "+membership+" event of its sender in this room")
	case domainOf(ev.Sender) != r.Origin:
		return nil, errForbidden("the user is not on the requesting server")
	case !ev.VerifyContentHash():
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", "content hash mismatch")
	}
	if err := ev.VerifySignature(r.Origin, e.fed.Keyring.GetKey); err != nil {
		return nil, errForbidden("signature check failed: " + err.Error())
	}
	return ev, nil
}
