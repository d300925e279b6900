package roomfed

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"edge/edge/store"
	"edge/federation"
)

// serveTimestamp answers GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=
// from this server's own copy of the room, to servers that may see it.
func (e *Engine) serveTimestamp(r *federation.Request) (any, error) {
	roomID := r.PathValue("roomId")
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return nil, fedErr(http.StatusBadRequest, "M_INVALID_PARAM", "ts must be an integer")
	}
	dir := q.Get("dir")
	if dir != "f" && dir != "b" {
		return nil, fedErr(http.StatusBadRequest, "M_INVALID_PARAM", "dir must be f or b")
	}
	var resp map[string]any
	err = e.store.View(func(tx *store.Tx) error {
		if _, err := e.visibleTo(tx, roomID, r.Origin); err != nil {
			return err
		}
		ev, err := e.rooms.EventAtTimestamp(tx, roomID, ts, dir == "f")
		if err != nil {
			return err
		}
		if ev == nil {
			return errNotFound("no event found")
		}
		resp = map[string]any{"event_id": ev.ID, "origin_server_ts": ev.OriginServerTS}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return resp, nil
}

// RemoteTimestamp is the client API's timestamp_to_event hook: when this
// server's copy of the room lacks older history (a join over federation),
// it asks the room's other servers, then backfills so the answer can be
// read (/context) and paginated from, as the spec asks. ok is false when
// the history is complete or no server answered.
func (e *Engine) RemoteTimestamp(ctx context.Context, roomID string, ts int64, forward bool) (string, int64, bool) {
	var servers []string
	complete := false
	err := e.store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID)
		if err != nil {
			return err
		}
		gap, err := e.currentGap(tx, r, history{roomID: roomID})
		if err != nil {
			return err
		}
		if complete = gap.Done; complete {
			return nil
		}
		servers, err = e.otherServers(tx, r.State)
		return err
	})
	if err != nil || complete {
		return "", 0, false
	}
	dir := "b"
	if forward {
		dir = "f"
	}
	path := "/_matrix/federation/v1/timestamp_to_event/" + url.PathEscape(roomID) + "?" + url.Values{"ts": {strconv.FormatInt(ts, 10)}, "dir": {dir}}.Encode()
	for i, srv := range servers {
		if i == backfillTries {
			break
		}
		var resp struct {
			EventID        string `json:"event_id"`
			OriginServerTS int64  `json:"origin_server_ts"`
		}
		if err := e.fed.Client.Get(ctx, srv, path, &resp); err != nil || resp.EventID == "" {
			e.log.Debug("timestamp_to_event: no answer", "server", srv, "room_id", roomID, "err", err)
			continue
		}
		e.backfillTo(ctx, roomID, resp.EventID)
		return resp.EventID, resp.OriginServerTS, true
	}
	return "", 0, false
}

// backfillTo backfills a few rounds until the room's history (timeline or
// backfilled, what /context and /messages read) holds eventID. Holding it
// is not enough: a faster join's resync keeps the event its state was
// fetched at as an outlier.
func (e *Engine) backfillTo(ctx context.Context, roomID, eventID string) {
	for range 3 {
		shown := false
		_ = e.store.View(func(tx *store.Tx) error {
			shown = len(e.notShown(tx, []string{eventID}, nil)) == 0
			return nil
		})
		if shown {
			return
		}
		if n, err := e.Backfill(ctx, roomID, maxBackfill); err != nil || n == 0 {
			return
		}
	}
}
