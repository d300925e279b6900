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

// pageCursor is a point in a room's history, as a pagination token names
// it: kind 't' just after timeline position pos; 'b' just before (newer
// than) backfilled event seq; 'g' just before event seq of the gap
// history of the timeline event at pos.
type pageCursor struct {
	kind     byte
	pos, seq uint64
}

func (c pageCursor) token() string {
	switch c.kind {
	case 'b':
		return backfillToken(c.seq)
	case 'g':
		return gapToken(c.pos, c.seq)
	}
	return pageToken(c.pos)
}

// stepStatus is what one step through the history found.
type stepStatus int

const (
	stepEvent stepStatus = iota // an event, and the cursor past it
	stepEnd                     // no more in this direction
	stepFetch                   // nothing held: more may be fetched (need)
	stepPause                   // nothing held now: a later page may find more
)

// pager walks one room's history a step at a time, in either direction:
// the backfilled history (oldest first: seq N … 1), then the timeline,
// each gap history (seq N … 1) just before its event.
type pager struct {
	s        *Server
	tx       *store.Tx
	rm       *store.Room
	pg       *pageFetch
	hasTo    bool
	to       uint64 // timeline events past to (backwards: at or below) end the walk
	need     string
	atByPos  map[uint64]*room.Event
	gapCache map[uint64]bool
}

// timelineAt is the newest timeline event at or below pos (backwards) or
// the oldest above pos (forwards).
func (p *pager) timelineAt(pos uint64, backwards bool) (uint64, *room.Event) {
	var at, nid uint64
	start := pos
	if !backwards {
		start = pos + 1
	}
	p.tx.Timeline(p.rm.NID, start, backwards, func(q, n uint64) bool { at, nid = q, n; return false })
	if nid == 0 {
		return 0, nil
	}
	ev, err := p.s.Rooms.Event(p.tx, nid)
	if err != nil {
		return 0, nil
	}
	return at, ev
}

// eventAt is the timeline event at exactly pos.
func (p *pager) eventAt(pos uint64) *room.Event {
	if ev, ok := p.atByPos[pos]; ok {
		return ev
	}
	q, ev := p.timelineAt(pos, true)
	if q != pos {
		ev = nil
	}
	p.atByPos[pos] = ev
	return ev
}

// innerGap tells whether history is missing before ev (at pos) while an
// older timeline event exists: before the first one lies the backfilled
// history instead.
func (p *pager) innerGap(ev *room.Event, pos uint64) bool {
	if p.s.RemoteBackfillAt == nil || !gapBefore(p.tx, ev) {
		return false
	}
	q, _ := p.timelineAt(pos-1, true)
	return q != 0 && pos > 1
}

// older takes one step from c towards older events.
func (p *pager) older(c pageCursor) (*room.Event, pageCursor, stepStatus) {
	for {
		switch c.kind {
		case 't':
			q, ev := p.timelineAt(c.pos, true)
			if ev == nil {
				if p.hasTo {
					return nil, c, stepEnd // a timeline to token ends at the timeline
				}
				c = pageCursor{kind: 'b', seq: 1}
				continue
			}
			if p.hasTo && q <= p.to {
				return nil, c, stepEnd
			}
			if p.innerGap(ev, q) {
				return ev, pageCursor{kind: 'g', pos: q, seq: 1}, stepEvent
			}
			return ev, pageCursor{kind: 't', pos: q - 1}, stepEvent
		case 'g':
			at := p.eventAt(c.pos)
			if at == nil {
				return nil, c, stepEnd
			}
			var seq, nid uint64
			p.tx.GapHistory(at.NID, c.seq, func(s, n uint64) bool { seq, nid = s, n; return false })
			if nid != 0 {
				ev, err := p.s.Rooms.Event(p.tx, nid)
				if err != nil {
					return nil, c, stepEnd
				}
				return ev, pageCursor{kind: 'g', pos: c.pos, seq: seq + 1}, stepEvent
			}
			switch n, fetched := p.pg.gaps[at.ID]; {
			case !fetched:
				p.need = at.ID
				return nil, c, stepFetch
			case n > 0:
				return nil, c, stepPause // maybe more: the next page asks again
			}
			c = pageCursor{kind: 't', pos: c.pos - 1} // the gap has nothing more
		case 'b':
			var seq, nid uint64
			p.tx.Backfilled(p.rm.NID, c.seq, func(s, n uint64) bool { seq, nid = s, n; return false })
			if nid != 0 {
				ev, err := p.s.Rooms.Event(p.tx, nid)
				if err != nil {
					return nil, c, stepEnd
				}
				return ev, pageCursor{kind: 'b', seq: seq + 1}, stepEvent
			}
			// The oldest event held decides whether history goes on.
			var oldest *room.Event
			if c.seq > 1 {
				p.tx.Backfilled(p.rm.NID, c.seq-1, func(_, n uint64) bool { oldest, _ = p.s.Rooms.Event(p.tx, n); return false })
			} else {
				_, oldest = p.timelineAt(0, false)
			}
			if oldest != nil && len(oldest.PrevEvents) > 0 && !p.pg.before && p.s.RemoteBackfill != nil {
				p.need = beforeTimeline
				return nil, c, stepFetch
			}
			return nil, c, stepEnd
		}
	}
}

// newer takes one step from c towards newer events. It does not fetch.
func (p *pager) newer(c pageCursor) (*room.Event, pageCursor, stepStatus) {
	for {
		switch c.kind {
		case 'b':
			if c.seq <= 1 {
				c = pageCursor{kind: 't', pos: 0}
				continue
			}
			var seq, nid uint64
			p.tx.Backfilled(p.rm.NID, c.seq-1, func(s, n uint64) bool { seq, nid = s, n; return false })
			ev, err := p.s.Rooms.Event(p.tx, nid)
			if nid == 0 || seq != c.seq-1 || err != nil {
				return nil, c, stepEnd
			}
			return ev, pageCursor{kind: 'b', seq: seq}, stepEvent
		case 'g':
			at := p.eventAt(c.pos)
			if at == nil {
				return nil, c, stepEnd
			}
			if c.seq <= 1 {
				if p.hasTo && c.pos > p.to {
					return nil, c, stepEnd
				}
				return at, pageCursor{kind: 't', pos: c.pos}, stepEvent
			}
			var seq, nid uint64
			p.tx.GapHistory(at.NID, c.seq-1, func(s, n uint64) bool { seq, nid = s, n; return false })
			ev, err := p.s.Rooms.Event(p.tx, nid)
			if nid == 0 || seq != c.seq-1 || err != nil {
				return nil, c, stepEnd
			}
			return ev, pageCursor{kind: 'g', pos: c.pos, seq: seq}, stepEvent
		case 't':
			q, ev := p.timelineAt(c.pos, false)
			if ev == nil || (p.hasTo && q > p.to) {
				return nil, c, stepEnd
			}
			// A gap history before the event comes first, oldest first.
			if n := p.tx.GapHistoryLen(ev.NID); n > 0 && p.s.RemoteBackfillAt != nil {
				p.atByPos[q] = ev
				c = pageCursor{kind: 'g', pos: q, seq: n + 1}
				continue
			}
			return ev, pageCursor{kind: 't', pos: q}, stepEvent
		}
	}
}

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
	cur := pageCursor{kind: 't'}
	startToken := ""
	if ft := q.Get("from"); ft != "" {
		startToken = ft
		if seq, ok := parseBackfillToken(ft); ok {
			cur = pageCursor{kind: 'b', seq: seq}
		} else if p, seq, ok := parseGapToken(ft); ok {
			cur = pageCursor{kind: 'g', pos: p, seq: seq}
		} else if p, ok := parsePos(ft); ok {
			cur.pos = p
		} else {
			return nil, "", errInvalidParam("Invalid from token")
		}
	} else if backwards {
		cur.pos = tx.Pos()
	}
	p := &pager{s: s, tx: tx, rm: rm, pg: pg, atByPos: map[uint64]*room.Event{}}
	if tt := q.Get("to"); tt != "" {
		// A to token of another kind than the timeline's is not honoured.
		_, isBF := parseBackfillToken(tt)
		_, _, isGap := parseGapToken(tt)
		if !isBF && !isGap {
			pos, ok := parsePos(tt)
			if !ok {
				return nil, "", errInvalidParam("Invalid to token")
			}
			p.to, p.hasTo = pos, true
		}
	}
	if backwards && cur.kind == 't' && vis.current != "join" && vis.left != 0 {
		cur.pos = min(cur.pos, vis.left) // a user who left sees nothing after leaving
	}
	if startToken == "" {
		startToken = cur.token()
	}
	step := p.newer
	if backwards {
		step = p.older
	}
	var chunk []*room.Event
	examined := 0
	status := stepEvent
	for len(chunk) < limit {
		var ev *room.Event
		var next pageCursor
		if ev, next, status = step(cur); status != stepEvent {
			break
		}
		cur = next
		examined++
		if vis.canSee(ev) && f.matchRoomEvent(ev) {
			chunk = append(chunk, ev)
		}
	}
	resp := map[string]any{"start": startToken}
	// A page that looked at events carries an end token (as Synapse, and
	// Complement's TestRoomImageRoundtrip expects: the page after the
	// last one is then empty and has none, which still ends a client's
	// loop), as does one stopped by the limit or paused.
	switch {
	case status == stepFetch:
	case status == stepPause, len(chunk) >= limit, examined > 0:
		resp["end"] = cur.token()
	}
	resp["chunk"] = s.renderAll(tx, chunk, sess)
	if f.LazyLoadMembers {
		resp["state"] = s.renderAll(tx, s.lazyMembers(tx, roomID, chunk, f.IncludeRedundantMembers, nil), sess)
	}
	return resp, p.need, nil
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
		if err != nil || ev.RoomID != roomID {
			return errNotFound("Event not found")
		}
		seq, backfilled := tx.BackfillSeq(ev.NID)
		if ev.Pos == 0 && !backfilled {
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
		if ev.Pos == 0 {
			resp, err = s.contextBackfilled(tx, rm, ev, seq, limit, f, vis, sess)
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
