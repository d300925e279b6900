package client

import (
	"net/http"
	"net/url"
	"strconv"

	"edge/edge/room"
	"edge/edge/store"
)

const maxPageLimit = 1000

// pageLimit reads a pagination limit: def when absent, an error below
// least or when not a number, capped at maxPageLimit.
func pageLimit(q url.Values, def, least int) (int, error) {
	l := q.Get("limit")
	if l == "" {
		return def, nil
	}
	v, err := strconv.Atoi(l)
	if err != nil || v < least {
		return 0, errInvalidParam("Invalid limit")
	}
	return min(v, maxPageLimit), nil
}

// messages: GET /rooms/{roomId}/messages
//
// Pagination tokens name a point between events: token t<P> lies just after
// the event at stream position P. Backwards from P returns positions ≤ P,
// forwards returns positions > P.
func (s *Server) messages(r *http.Request, sess *Session) (any, error) {
	q := r.URL.Query()
	roomID := r.PathValue("roomId")
	dir := q.Get("dir")
	if dir == "" {
		dir = "b"
	}
	if dir != "b" && dir != "f" {
		return nil, errInvalidParam("dir must be b or f")
	}
	limit, err := pageLimit(q, 10, 0)
	if err != nil {
		return nil, err
	}
	f, err := parseFilterParam(q.Get("filter"))
	if err != nil {
		return nil, err
	}
	if f.Limit > 0 {
		limit = min(limit, f.Limit)
	}
	var resp map[string]any
	err = s.Store.View(func(tx *store.Tx) error {
		rm, err := tx.Room(roomID)
		if err != nil {
			return errForbidden("You are not in room %s", roomID)
		}
		vis := s.newVisibility(tx, roomID, sess.UserID)
		if vis.current != "join" && vis.left == 0 {
			if _, err := s.viewState(tx, roomID, sess.UserID); err != nil {
				return err
			}
		}
		backwards := dir == "b"
		var from uint64
		if ft := q.Get("from"); ft != "" {
			p, ok := parsePos(ft)
			if !ok {
				return errInvalidParam("Invalid from token")
			}
			from = p
		} else if backwards {
			from = tx.Pos()
		}
		var to uint64
		hasTo := false
		if tt := q.Get("to"); tt != "" {
			p, ok := parsePos(tt)
			if !ok {
				return errInvalidParam("Invalid to token")
			}
			to, hasTo = p, true
		}
		if backwards && vis.current != "join" && vis.left != 0 {
			from = min(from, vis.left) // a user who left sees nothing after leaving
		}
		start := from
		if !backwards {
			start = from + 1
		}
		var chunk []*room.Event
		var last uint64
		examined, more := false, false
		tx.Timeline(rm.NID, start, backwards, func(pos, nid uint64) bool {
			if hasTo && ((backwards && pos <= to) || (!backwards && pos > to)) {
				return false
			}
			if len(chunk) >= limit {
				more = true
				return false
			}
			last, examined = pos, true
			ev, err := s.Rooms.Event(tx, nid)
			if err != nil || !vis.canSee(ev) || !f.matchRoomEvent(ev) {
				return true
			}
			chunk = append(chunk, ev)
			return true
		})
		resp = map[string]any{"start": pageToken(from), "chunk": s.renderAll(tx, chunk, sess)}
		switch {
		case more && !examined: // limit 0: nothing read, so carry on from where we began
			resp["end"] = pageToken(from)
		case (more || len(chunk) == 0) && examined && backwards:
			resp["end"] = pageToken(last - 1)
		case (more || len(chunk) == 0) && examined:
			resp["end"] = pageToken(last)
		}
		if f.LazyLoadMembers {
			resp["state"] = s.renderAll(tx, s.lazyMembers(tx, roomID, chunk, f.IncludeRedundantMembers, nil), sess)
		}
		return nil
	})
	return resp, err
}

// lazyMembers returns the member events of the senders of evs, in the
// current state, skipping those already sent (sent may be nil).
func (s *Server) lazyMembers(tx *store.Tx, roomID string, evs []*room.Event, redundant bool, sent map[string]bool) []*room.Event {
	_, st, err := s.roomState(tx, roomID)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []*room.Event
	for _, ev := range evs {
		if seen[ev.Sender] || (!redundant && sent[ev.Sender]) {
			continue
		}
		seen[ev.Sender] = true
		if m, err := s.Rooms.StateEvent(tx, st, "m.room.member", ev.Sender); err == nil && m != nil {
			out = append(out, m)
		}
	}
	return out
}

// eventContext: GET /rooms/{roomId}/context/{eventId}
func (s *Server) eventContext(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	limit, err := pageLimit(r.URL.Query(), 10, 0)
	if err != nil {
		return nil, err
	}
	f, err := parseFilterParam(r.URL.Query().Get("filter"))
	if err != nil {
		return nil, err
	}
	var resp map[string]any
	err = s.Store.View(func(tx *store.Tx) error {
		ev, err := s.Rooms.EventByID(tx, r.PathValue("eventId"))
		if err != nil || ev.RoomID != roomID || ev.Pos == 0 {
			return errNotFound("Event not found")
		}
		vis := s.newVisibility(tx, roomID, sess.UserID)
		if !vis.canSee(ev) {
			return errNotFound("Event not found")
		}
		rm, err := tx.Room(roomID)
		if err != nil {
			return err
		}
		// collect walks up to n visible events from from; the tokens go just
		// past the last event it looked at, or stay at ev when it looked at none.
		collect := func(from uint64, backwards bool, n int) (out []*room.Event, token string) {
			token = pageToken(ev.Pos)
			if backwards {
				token = pageToken(ev.Pos - 1)
			}
			tx.Timeline(rm.NID, from, backwards, func(pos, nid uint64) bool {
				if len(out) >= n {
					return false
				}
				if backwards {
					token = pageToken(pos - 1)
				} else {
					token = pageToken(pos)
				}
				e, err := s.Rooms.Event(tx, nid)
				if err == nil && vis.canSee(e) && f.matchRoomEvent(e) {
					out = append(out, e)
				}
				return true
			})
			return out, token
		}
		before, startToken := collect(ev.Pos-1, true, limit/2)
		after, endToken := collect(ev.Pos+1, false, limit-limit/2)
		st, err := s.Rooms.StateAfter(tx, ev)
		if err != nil {
			return err
		}
		state, err := s.stateEvents(tx, st)
		if err != nil {
			return err
		}
		if f.LazyLoadMembers {
			all := append(append(append([]*room.Event{}, before...), ev), after...)
			state = s.lazyMembers(tx, roomID, all, true, nil)
		}
		resp = map[string]any{
			"event":         s.render(tx, ev, sess),
			"events_before": s.renderAll(tx, before, sess),
			"events_after":  s.renderAll(tx, after, sess),
			"start":         startToken,
			"end":           endToken,
			"state":         s.renderAll(tx, state, sess),
		}
		return nil
	})
	return resp, err
}
