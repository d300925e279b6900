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
//
// Before the room's timeline lies its backfilled history (events fetched
// from other servers, store.Tx.Backfilled), numbered 1, 2, … from newest
// to oldest: token b<N> lies just before (newer than) backfilled event N,
// so backwards from it returns N, N+1, … and forwards N-1, …, 1, then the
// timeline. When a backwards page runs out of events held and the oldest
// one has prev_events, the room federation engine is asked for more
// (RemoteBackfill) and the page is read again. A to token of the other
// kind is not honoured across the boundary.
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
	var short bool
	page := func(fetched bool) error {
		return s.Store.View(func(tx *store.Tx) error {
			var err error
			resp, short, err = s.messagesPage(tx, r, sess, roomID, dir == "b", limit, f, fetched)
			return err
		})
	}
	err = page(false)
	if err == nil && short && s.RemoteBackfill != nil {
		n, ferr := s.RemoteBackfill(r.Context(), roomID, max(limit, 20))
		if ferr != nil {
			s.Log.Info("backfill failed", "room_id", roomID, "err", ferr)
		}
		if n > 0 {
			err = page(true)
		}
	}
	return resp, err
}

// gapBefore reports whether history is missing just before ev: one of its
// prev events is unknown, or known only as an outlier (fetched with its
// state to close a gap, or part of a join's state), so not in the
// timeline. Rejected and soft-failed prev events are no gap: they were
// received in order and only kept out of the timeline.
func gapBefore(tx *store.Tx, ev *room.Event) bool {
	for _, p := range ev.PrevEvents {
		se, err := tx.EventByID(p)
		if err != nil || (se.Pos == 0 && se.Flags&store.FlagOutlier != 0) {
			return true
		}
	}
	return false
}

// parseBackfillToken reads a b<N> token.
func parseBackfillToken(t string) (uint64, bool) {
	if len(t) < 2 || t[0] != 'b' {
		return 0, false
	}
	v, err := strconv.ParseUint(t[1:], 10, 64)
	return v, err == nil && v > 0
}

func backfillToken(seq uint64) string { return "b" + strconv.FormatUint(seq, 10) }

// messagesPage reads one /messages page. short: a backwards page ran out
// of events held before limit, and the oldest event it reached has
// prev_events we may fetch (never once fetched is set).
func (s *Server) messagesPage(tx *store.Tx, r *http.Request, sess *Session, roomID string, backwards bool, limit int, f *roomEventFilter, fetched bool) (map[string]any, bool, error) {
	q := r.URL.Query()
	rm, err := tx.Room(roomID)
	if err != nil {
		return nil, false, errForbidden("You are not in room %s", roomID)
	}
	vis := s.newVisibility(tx, roomID, sess.UserID)
	// A forgotten room reads as one never joined (TestRoomForget).
	forgotten := false
	if m, err := tx.Membership(sess.UserID, roomID); err == nil {
		forgotten = m.Forgotten
	}
	if vis.current != "join" && (vis.left == 0 || forgotten) {
		if _, err := s.viewState(tx, roomID, sess.UserID); err != nil {
			return nil, false, err
		}
	}
	var from, bfFrom uint64
	startToken := ""
	if ft := q.Get("from"); ft != "" {
		if seq, ok := parseBackfillToken(ft); ok {
			bfFrom, startToken = seq, ft
		} else if p, ok := parsePos(ft); ok {
			from = p
		} else {
			return nil, false, errInvalidParam("Invalid from token")
		}
	} else if backwards {
		from = tx.Pos()
	}
	var to uint64
	hasTo := false
	if tt := q.Get("to"); tt != "" {
		if _, ok := parseBackfillToken(tt); !ok {
			p, ok := parsePos(tt)
			if !ok {
				return nil, false, errInvalidParam("Invalid to token")
			}
			to, hasTo = p, true
		}
	}
	if backwards && bfFrom == 0 && vis.current != "join" && vis.left != 0 {
		from = min(from, vis.left) // a user who left sees nothing after leaving
	}
	if startToken == "" {
		startToken = pageToken(from)
	}
	var chunk []*room.Event
	var oldest *room.Event // the oldest event looked at, for the gap check
	take := func(nid uint64) {
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil {
			return
		}
		oldest = ev
		if vis.canSee(ev) && f.matchRoomEvent(ev) {
			chunk = append(chunk, ev)
		}
	}
	resp := map[string]any{"start": startToken}
	short := false
	// next is the token just past the last event looked at. A page with
	// events always carries an end token (as Synapse, and Complement's
	// TestRoomImageRoundtrip expects); the page after the last one is then
	// empty and has none, which still ends a client's loop.
	next := ""
	if backwards {
		regularDone := bfFrom != 0
		var last uint64
		examined := false
		if !regularDone {
			more, stopped := false, false
			tx.Timeline(rm.NID, from, true, func(pos, nid uint64) bool {
				if hasTo && pos <= to {
					stopped = true
					return false
				}
				if len(chunk) >= limit {
					more = true
					return false
				}
				last, examined = pos, true
				take(nid)
				return true
			})
			if examined {
				next = pageToken(last - 1)
			}
			switch {
			case more && !examined: // limit 0: nothing read, so carry on from where we began
				resp["end"] = pageToken(from)
			case more || stopped:
				if examined && (more || len(chunk) == 0) {
					resp["end"] = pageToken(last - 1)
				}
			default:
				regularDone, bfFrom = true, 1
			}
		}
		if regularDone {
			bfLast, bfMore := bfFrom-1, false
			tx.Backfilled(rm.NID, bfFrom, func(seq, nid uint64) bool {
				if len(chunk) >= limit {
					bfMore = true
					return false
				}
				bfLast = seq
				take(nid)
				return true
			})
			if bfLast >= bfFrom {
				next = backfillToken(bfLast + 1)
			}
			gap := oldest != nil && len(oldest.PrevEvents) > 0 && !fetched && s.RemoteBackfill != nil
			switch {
			case bfMore:
				resp["end"] = backfillToken(bfLast + 1)
			case gap && len(chunk) < limit:
				short = true
			case gap:
				resp["end"] = backfillToken(bfLast + 1) // the next page fetches
			case examined && len(chunk) == 0 && bfLast == 0:
				resp["end"] = pageToken(last - 1) // as before backfill: all filtered out
			}
		}
	} else {
		if bfFrom != 0 {
			// Forwards out of the backfilled history: N-1 … 1, then the timeline.
			var seqs, nids []uint64
			tx.Backfilled(rm.NID, 1, func(seq, nid uint64) bool {
				if seq >= bfFrom {
					return false
				}
				seqs, nids = append(seqs, seq), append(nids, nid)
				return true
			})
			for i := len(nids) - 1; i >= 0 && len(chunk) < limit; i-- {
				take(nids[i])
				if len(chunk) >= limit && i > 0 {
					resp["end"] = backfillToken(seqs[i])
				}
			}
			from = 0
		}
		if _, set := resp["end"]; !set {
			var last uint64
			examined, more := false, false
			tx.Timeline(rm.NID, from+1, false, func(pos, nid uint64) bool {
				if hasTo && pos > to {
					return false
				}
				if len(chunk) >= limit {
					more = true
					return false
				}
				last, examined = pos, true
				take(nid)
				return true
			})
			if examined {
				next = pageToken(last)
			}
			switch {
			case more && !examined:
				resp["end"] = pageToken(from)
			case (more || len(chunk) == 0) && examined:
				resp["end"] = pageToken(last)
			}
		}
	}
	if _, set := resp["end"]; !set && !short && len(chunk) > 0 && next != "" {
		resp["end"] = next
	}
	resp["chunk"] = s.renderAll(tx, chunk, sess)
	if f.LazyLoadMembers {
		resp["state"] = s.renderAll(tx, s.lazyMembers(tx, roomID, chunk, f.IncludeRedundantMembers, nil), sess)
	}
	return resp, short, nil
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
