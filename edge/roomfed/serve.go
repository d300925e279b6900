package roomfed

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

func (e *Engine) routes() {
	e.fed.HandleRoom("GET /_matrix/federation/v1/make_join/{roomId}/{userId}", e.serveMakeJoin)
	e.fed.HandleRoom("PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}", e.serveSendJoin)
	e.fed.HandleRoom("PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}", v1Answer(e.serveSendJoin))
	e.fed.Handle("GET /_matrix/federation/v1/event/{eventId}", e.serveEvent)
	e.fed.HandleRoom("GET /_matrix/federation/v1/state_ids/{roomId}", e.serveStateIDs)
	e.fed.HandleRoom("GET /_matrix/federation/v1/state/{roomId}", e.serveState)
	e.fed.HandleRoom("POST /_matrix/federation/v1/get_missing_events/{roomId}", e.serveMissing)
	e.fed.HandleRoom("GET /_matrix/federation/v1/backfill/{roomId}", e.serveBackfill)
	e.fed.HandleRoom("GET /_matrix/federation/v1/timestamp_to_event/{roomId}", e.serveTimestamp)
	e.fed.HandleRoom("GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}", e.serveEventAuth)
	e.fed.HandleRoom("GET /_matrix/federation/v1/make_knock/{roomId}/{userId}", e.serveMakeKnock)
	e.fed.HandleRoom("PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}", e.serveSendKnock)
	e.fed.HandleRoom("GET /_matrix/federation/v1/hierarchy/{roomId}", e.serveHierarchy)
	e.fed.Handle("POST "+threadPath, e.serveEventRelationships) // room ID in the body: ACL checked there
}

// v1Answer serves a deprecated v1 send_join or send_leave with its v2
// handler: same checks, the answer wrapped as [200, body] as v1 had it
// (older servers still call them; the spec keeps them).
func v1Answer(h func(*federation.Request) (any, error)) func(*federation.Request) (any, error) {
	return func(r *federation.Request) (any, error) {
		body, err := h(r)
		if err != nil {
			return nil, err
		}
		if sj, ok := body.(federation.StreamedJSON); ok {
			return v1Stream{sj}, nil
		}
		return []any{http.StatusOK, body}, nil
	}
}

// v1Stream wraps a streamed v2 answer as [200, body].
type v1Stream struct{ inner federation.StreamedJSON }

func (v v1Stream) WriteJSON(w io.Writer) error {
	if _, err := io.WriteString(w, "[200,"); err != nil {
		return err
	}
	if err := v.inner.WriteJSON(w); err != nil {
		return err
	}
	_, err := io.WriteString(w, "]")
	return err
}

// visibleTo loads the room and checks that server may ask about it at
// all: it has a joined member, or the room is world-readable now. Which
// events it then gets is decided at each event (serverView).
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
		rm, err := e.visibleTo(tx, ev.RoomID, r.Origin)
		if err != nil {
			return err
		}
		view, err := e.newServerView(tx, rm, r.Origin)
		if err != nil {
			return err
		}
		out = map[string]any{"origin": e.name, "origin_server_ts": nowMS(), "pdus": view.filter([]*room.Event{ev})}
		return nil
	})
	return out, mapErr(err)
}

// stateAt loads the state before event_id in the room and its auth chain,
// if the asking server may see that event.
func (e *Engine) stateAt(r *federation.Request) (state, chain []*room.Event, err error) {
	roomID, eventID := r.PathValue("roomId"), r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, fedErr(http.StatusBadRequest, "M_MISSING_PARAM", "event_id is required")
	}
	err = e.store.View(func(tx *store.Tx) error {
		if err := refusePartialState(tx, roomID); err != nil {
			return err
		}
		rm, err := e.visibleTo(tx, roomID, r.Origin)
		if err != nil {
			return err
		}
		view, err := e.newServerView(tx, rm, r.Origin)
		if err != nil {
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
		if !view.canSee(ev) {
			return errForbidden("the server may not see this event")
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
// earliest_events or below min_depth, at most limit events, oldest first;
// those the server may not see are redacted (serverView.filter).
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
	var view *serverView
	var out []json.RawMessage
	err := e.store.View(func(tx *store.Tx) error {
		rm, err := e.visibleTo(tx, roomID, r.Origin)
		if err != nil {
			return err
		}
		if view, err = e.newServerView(tx, rm, r.Origin); err != nil {
			return err
		}
		defer func() {
			slices.SortStableFunc(found, func(a, b *room.Event) int { return int(min(max(a.Depth-b.Depth, -1), 1)) })
			out = view.filter(found)
		}()
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
	return map[string]any{"events": out}, nil
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
