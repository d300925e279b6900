package client

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"

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
//
// A gap inside the timeline (an event whose prev events are missing: a
// gap the state fetch closed, or a rejoin after time away) is paged into
// backwards: its history (store.Tx.GapHistory, fetched with
// RemoteBackfillAt) follows the event, numbered from 1 like the
// backfilled history; token g<P>_<N> lies just before (newer than) the
// gap history's event N of the gap before the event at position P. When
// the gap's servers have nothing more, paging goes on past it. Forwards
// paging from a timeline token does not enter gap histories.
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
	var need string
	pg := &pageFetch{gaps: map[string]int{}}
	page := func() error {
		return s.Store.View(func(tx *store.Tx) error {
			var err error
			resp, need, err = s.messagesPage(tx, r, sess, roomID, dir == "b", limit, f, pg)
			return err
		})
	}
	err = page()
	// Each page asks at most a few times for more history: once before the
	// timeline, once per gap.
	for tries := 0; err == nil && need != "" && tries < 4; tries++ {
		if need == beforeTimeline {
			n, ferr := s.RemoteBackfill(r.Context(), roomID, max(limit, 20))
			if ferr != nil {
				s.Log.Info("backfill failed", "room_id", roomID, "err", ferr)
			}
			pg.before = true
			if n == 0 {
				break
			}
		} else {
			n, ferr := s.RemoteBackfillAt(r.Context(), roomID, need, max(limit, 20))
			if ferr != nil {
				s.Log.Info("backfill of a gap failed", "room_id", roomID, "event_id", need, "err", ferr)
			}
			pg.gaps[need] = n
		}
		err = page()
	}
	return resp, err
}

// beforeTimeline is messagesPage's need for history before the timeline.
const beforeTimeline = "-"

// pageFetch is what one /messages request has fetched: the history before
// the timeline, and how many events each gap (by the ID of the event
// after it) gave; a gap that gave none has nothing more to give.
type pageFetch struct {
	before bool
	gaps   map[string]int
}

// parseGapToken reads a g<P>_<N> token.
func parseGapToken(t string) (pos, seq uint64, ok bool) {
	if len(t) < 4 || t[0] != 'g' {
		return 0, 0, false
	}
	p, n, found := strings.Cut(t[1:], "_")
	if !found {
		return 0, 0, false
	}
	pos, err1 := strconv.ParseUint(p, 10, 64)
	seq, err2 := strconv.ParseUint(n, 10, 64)
	return pos, seq, err1 == nil && err2 == nil && pos > 0 && seq > 0
}

func gapToken(pos, seq uint64) string {
	return "g" + strconv.FormatUint(pos, 10) + "_" + strconv.FormatUint(seq, 10)
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

// messagesPage reads one /messages page. need: a backwards page ran out of
// events held before limit where more history may be fetched, and names
// which (beforeTimeline, or the event ID after a gap); never twice for
// what pg says was fetched.
func (s *Server) messagesPage(tx *store.Tx, r *http.Request, sess *Session, roomID string, backwards bool, limit int, f *roomEventFilter, pg *pageFetch) (map[string]any, string, error) {
	q := r.URL.Query()
	rm, err := tx.Room(roomID)
	if err != nil {
		return nil, "", errForbidden("You are not in room %s", roomID)
	}
	vis := s.newVisibility(tx, roomID, sess.UserID)
	// A forgotten room reads as one never joined (TestRoomForget).
	forgotten := false
	if m, err := tx.Membership(sess.UserID, roomID); err == nil {
		forgotten = m.Forgotten
	}
	if vis.current != "join" && (vis.left == 0 || forgotten) {
		if _, err := s.viewState(tx, roomID, sess.UserID); err != nil {
			return nil, "", err
		}
	}
	var from, bfFrom, gapPos, gapFrom uint64
	startToken := ""
	if ft := q.Get("from"); ft != "" {
		if seq, ok := parseBackfillToken(ft); ok {
			bfFrom, startToken = seq, ft
		} else if p, seq, ok := parseGapToken(ft); ok {
			gapPos, gapFrom, startToken = p, seq, ft
		} else if p, ok := parsePos(ft); ok {
			from = p
		} else {
			return nil, "", errInvalidParam("Invalid from token")
		}
	} else if backwards {
		from = tx.Pos()
	}
	var to uint64
	hasTo := false
	if tt := q.Get("to"); tt != "" {
		_, isBF := parseBackfillToken(tt)
		_, _, isGap := parseGapToken(tt)
		if !isBF && !isGap {
			p, ok := parsePos(tt)
			if !ok {
				return nil, "", errInvalidParam("Invalid to token")
			}
			to, hasTo = p, true
		}
	}
	if backwards && bfFrom == 0 && gapPos == 0 && vis.current != "join" && vis.left != 0 {
		from = min(from, vis.left) // a user who left sees nothing after leaving
	}
	if startToken == "" {
		startToken = pageToken(from)
	}
	// gapAt is the timeline event at pos gapPos, the one after the gap.
	var gapAt *room.Event
	if gapPos != 0 {
		var nid uint64
		tx.Timeline(rm.NID, gapPos, true, func(pos, n uint64) bool {
			if pos == gapPos {
				nid = n
			}
			return false
		})
		if gapAt, err = s.Rooms.Event(tx, nid); nid == 0 || err != nil {
			return nil, "", errInvalidParam("Invalid from token")
		}
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
	need := ""
	// next is the token just past the last event looked at. A page with
	// events always carries an end token (as Synapse, and Complement's
	// TestRoomImageRoundtrip expects); the page after the last one is then
	// empty and has none, which still ends a client's loop.
	next := ""
	if backwards {
		regularDone := bfFrom != 0
		var last uint64
		examined := false
		// A gap inside the timeline: ev has history missing before it,
		// and an older timeline event exists (before the first one lies
		// the backfilled history instead).
		innerGap := func(ev *room.Event, pos uint64) bool {
			if s.RemoteBackfillAt == nil || !gapBefore(tx, ev) {
				return false
			}
			older := false
			tx.Timeline(rm.NID, pos-1, true, func(uint64, uint64) bool { older = true; return false })
			return older
		}
		for !regularDone && need == "" {
			if gapAt != nil {
				// The gap's history, then on past the gap.
				gLast, gMore := gapFrom-1, false
				tx.GapHistory(gapAt.NID, gapFrom, func(seq, nid uint64) bool {
					if len(chunk) >= limit {
						gMore = true
						return false
					}
					gLast = seq
					take(nid)
					return true
				})
				if gLast >= gapFrom {
					next = gapToken(gapAt.Pos, gLast+1)
				}
				if gMore || len(chunk) >= limit {
					resp["end"] = gapToken(gapAt.Pos, gLast+1)
					break
				}
				n, fetched := pg.gaps[gapAt.ID]
				if !fetched {
					need = gapAt.ID
					break
				}
				if n > 0 {
					// Maybe more: the next page asks again.
					resp["end"] = gapToken(gapAt.Pos, gLast+1)
					break
				}
				from, gapAt = gapAt.Pos-1, nil
				if from == 0 {
					regularDone, bfFrom = true, 1
					break
				}
			}
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
				if oldest != nil && oldest.Pos == pos && innerGap(oldest, pos) {
					gapAt, gapFrom = oldest, 1
					return false
				}
				return true
			})
			if examined {
				next = pageToken(last - 1)
			}
			switch {
			case gapAt != nil:
				continue
			case more && !examined: // limit 0: nothing read, so carry on from where we began
				resp["end"] = pageToken(from)
			case more || stopped:
				if examined && (more || len(chunk) == 0) {
					resp["end"] = pageToken(last - 1)
				}
			default:
				regularDone, bfFrom = true, 1
			}
			break
		}
		if regularDone && need == "" {
			if oldest == nil && bfFrom > 1 {
				// Nothing looked at yet: the last page's oldest event
				// decides whether history goes on.
				tx.Backfilled(rm.NID, bfFrom-1, func(_, nid uint64) bool {
					oldest, _ = s.Rooms.Event(tx, nid)
					return false
				})
			}
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
			gap := oldest != nil && len(oldest.PrevEvents) > 0 && !pg.before && s.RemoteBackfill != nil
			switch {
			case bfMore:
				resp["end"] = backfillToken(bfLast + 1)
			case gap && len(chunk) < limit:
				need = beforeTimeline
			case gap:
				resp["end"] = backfillToken(bfLast + 1) // the next page fetches
			case examined && len(chunk) == 0 && bfLast == 0:
				resp["end"] = pageToken(last - 1) // as before backfill: all filtered out
			}
		}
	} else {
		if gapAt != nil {
			// Forwards out of a gap's history: N-1 … 1, then the timeline
			// from the event after the gap.
			var seqs, nids []uint64
			tx.GapHistory(gapAt.NID, 1, func(seq, nid uint64) bool {
				if seq >= gapFrom {
					return false
				}
				seqs, nids = append(seqs, seq), append(nids, nid)
				return true
			})
			for i := len(nids) - 1; i >= 0 && len(chunk) < limit; i-- {
				take(nids[i])
				if len(chunk) >= limit && i > 0 {
					resp["end"] = gapToken(gapAt.Pos, seqs[i])
				}
			}
			from = gapAt.Pos - 1
		}
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
	if _, set := resp["end"]; !set && need == "" && len(chunk) > 0 && next != "" {
		resp["end"] = next
	}
	resp["chunk"] = s.renderAll(tx, chunk, sess)
	if f.LazyLoadMembers {
		resp["state"] = s.renderAll(tx, s.lazyMembers(tx, roomID, chunk, f.IncludeRedundantMembers, nil), sess)
	}
	return resp, need, nil
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
