package client

import (
	"context"
	"net/http"
	"strconv"

	"edge/edge/store"
)

func (s *Server) routesTimestamp() {
	s.authed("GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event", s.timestampToEvent)
}

// parseTimestampQuery reads timestamp_to_event's ts and dir parameters:
// forward is dir=f.
func parseTimestampQuery(r *http.Request) (ts int64, forward bool, err error) {
	q := r.URL.Query()
	if q.Get("ts") == "" {
		return 0, false, errMissingParam("Missing ts")
	}
	if ts, err = strconv.ParseInt(q.Get("ts"), 10, 64); err != nil {
		return 0, false, errInvalidParam("ts must be an integer")
	}
	switch q.Get("dir") {
	case "f":
		forward = true
	case "b":
	case "":
		return 0, false, errMissingParam("Missing dir")
	default:
		return 0, false, errInvalidParam("dir must be f or b")
	}
	return ts, forward, nil
}

// timestampToEvent: GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event
// — the event closest to ts in dir. When this server's copy of the room
// lacks history, other servers in it are asked too (RemoteTimestamp), and
// the closer answer wins, as in Synapse.
func (s *Server) timestampToEvent(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	ts, forward, err := parseTimestampQuery(r)
	if err != nil {
		return nil, err
	}
	var eventID string
	var originTS int64
	err = s.Store.View(func(tx *store.Tx) error {
		_, st, err := s.roomState(tx, roomID)
		if err != nil {
			return errForbidden("You are not in room %s", roomID)
		}
		if s.membershipIn(tx, st, sess.UserID) != "join" && s.stateContentField(tx, st, "m.room.history_visibility", "history_visibility") != "world_readable" {
			return errForbidden("You are not in room %s", roomID)
		}
		ev, err := s.Rooms.EventAtTimestamp(tx, roomID, ts, forward)
		if ev != nil {
			eventID, originTS = ev.ID, ev.OriginServerTS
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if s.RemoteTimestamp != nil {
		if id, rts, ok := s.RemoteTimestamp(r.Context(), roomID, ts, forward); ok && (eventID == "" || absDiff(rts, ts) < absDiff(originTS, ts)) {
			eventID, originTS = id, rts
		}
	}
	if eventID == "" {
		return nil, errNotFound("No event found in that direction")
	}
	return map[string]any{"event_id": eventID, "origin_server_ts": originTS}, nil
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

// RemoteTimestampFunc asks other servers of a room for timestamp_to_event
// when this server's history of it is incomplete; ok false: no better answer.
type RemoteTimestampFunc func(ctx context.Context, roomID string, ts int64, forward bool) (eventID string, originTS int64, ok bool)
