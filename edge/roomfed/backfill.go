package roomfed

// Backfill (server-server API, "Backfilling and retrieving missing
// events"): history from before this server joined a room is asked of a
// resident server, and this server answers the same question for others.

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

const (
	// maxBackfill caps the events of one /backfill, asked or answered.
	maxBackfill = 100
	// backfillTries bounds the servers asked for one gap.
	backfillTries = 3
	// backfillGapNS holds, per room (and per gap inside its timeline),
	// the gap before its oldest known history: the event IDs still to
	// fetch, or that there is none.
	backfillGapNS = "backfill_gap"
)

// serveBackfill answers GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=:
// the v events and their ancestors through prev_events, newest (deepest)
// first, at most limit (capped at 100), as a transaction. Events the
// server may not see are redacted (serverView.filter).
func (e *Engine) serveBackfill(r *federation.Request) (any, error) {
	roomID := r.PathValue("roomId")
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return nil, fedErr(http.StatusBadRequest, "M_MISSING_PARAM", "v is required")
	}
	limit, err := strconv.Atoi(q.Get("limit"))
	if q.Get("limit") == "" {
		return nil, fedErr(http.StatusBadRequest, "M_MISSING_PARAM", "limit is required")
	} else if err != nil || limit < 0 {
		return nil, fedErr(http.StatusBadRequest, "M_INVALID_PARAM", "limit must be a non-negative integer")
	}
	limit = min(limit, maxBackfill)
	var pdus []json.RawMessage
	err = e.store.View(func(tx *store.Tx) error {
		rm, err := e.visibleTo(tx, roomID, r.Origin)
		if err != nil {
			return err
		}
		view, err := e.newServerView(tx, rm, r.Origin)
		if err != nil {
			return err
		}
		found, err := e.walkBack(tx, roomID, from, limit)
		if err != nil {
			return err
		}
		pdus = view.filter(found)
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return map[string]any{"origin": e.name, "origin_server_ts": nowMS(), "pdus": pdus}, nil
}

// walkBack collects up to limit events of the room: the seeds and their
// ancestors, deepest first. Unknown seeds and events of other rooms are
// skipped.
func (e *Engine) walkBack(tx *store.Tx, roomID string, seeds []string, limit int) ([]*room.Event, error) {
	seen := map[string]bool{}
	h := &depthHeap{}
	push := func(eid string) error {
		if seen[eid] {
			return nil
		}
		seen[eid] = true
		ev, err := e.rooms.EventByID(tx, eid)
		if errors.Is(err, room.ErrEventNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if ev.RoomID == roomID {
			heap.Push(h, ev)
		}
		return nil
	}
	for _, s := range seeds {
		if err := push(s); err != nil {
			return nil, err
		}
	}
	var out []*room.Event
	for h.Len() > 0 && len(out) < limit {
		ev := heap.Pop(h).(*room.Event)
		out = append(out, ev)
		for _, p := range ev.PrevEvents {
			if err := push(p); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// depthHeap pops the deepest event first.
type depthHeap []*room.Event

func (h depthHeap) Len() int           { return len(h) }
func (h depthHeap) Less(i, j int) bool { return h[i].Depth > h[j].Depth }
func (h depthHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *depthHeap) Push(x any)        { *h = append(*h, x.(*room.Event)) }
func (h *depthHeap) Pop() any {
	old := *h
	ev := old[len(old)-1]
	*h = old[:len(old)-1]
	return ev
}

// backfillGap is a room's gap before its oldest known history. Done: the
// room's history is complete, or the servers had nothing more to give.
type backfillGap struct {
	Ext  []string `json:"ext"`
	Done bool     `json:"done"`
}

// history names a stretch of a room's history to fetch: the one before
// its timeline (at nil), or a gap inside the timeline just before the
// event at (one whose prev events were missing, as a state fetch in
// gap.go or a rejoin after time away leaves).
type history struct {
	roomID string
	at     *room.Event
}

// key names the history's stored gap.
func (h history) key() string {
	if h.at == nil {
		return h.roomID
	}
	return h.roomID + "|" + h.at.ID
}

// Backfill fetches up to limit events of history older than what this
// server holds of roomID, from a server in the room, and adds them to the
// room's backfilled history (store.Tx.AddBackfilled), where /messages
// finds them. It returns how many events were added. A gap the servers
// answered empty is not asked about again. It is the client API's
// RemoteBackfill hook.
func (e *Engine) Backfill(ctx context.Context, roomID string, limit int) (int, error) {
	return e.backfill(ctx, history{roomID: roomID}, limit)
}

// BackfillAt is Backfill for the gap just before timeline event eventID:
// what it fetches joins that gap's history (store.Tx.AddGapHistory). It
// is the client API's RemoteBackfillAt hook.
func (e *Engine) BackfillAt(ctx context.Context, roomID, eventID string, limit int) (int, error) {
	var at *room.Event
	err := e.store.View(func(tx *store.Tx) error {
		var err error
		at, err = e.rooms.EventByID(tx, eventID)
		return err
	})
	if err != nil || at.RoomID != roomID || at.Pos == 0 {
		return 0, fmt.Errorf("%w: %s is not in the timeline of %s", room.ErrEventNotFound, eventID, roomID)
	}
	return e.backfill(ctx, history{roomID: roomID, at: at}, limit)
}

func (e *Engine) backfill(ctx context.Context, h history, limit int) (int, error) {
	roomID := h.roomID
	limit = min(max(limit, 1), maxBackfill)
	unlock := e.lock(roomID)
	defer unlock()
	var gap backfillGap
	var version string
	var servers []string
	err := e.store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrUnknownRoom, roomID)
		}
		version = r.Version
		if gap, err = e.currentGap(tx, r, h); err != nil || gap.Done {
			return err
		}
		if servers, err = e.otherServers(tx, r.State); err != nil {
			return err
		}
		// Fallbacks when the state names no other server (a partial-state
		// join): the creator's server and the room ID's.
		st, err := e.rooms.State(tx, r.State)
		if err != nil {
			return err
		}
		extra := []string{domainOf(roomID)}
		if create, _ := e.rooms.StateEvent(tx, st, "m.room.create", ""); create != nil {
			extra = append([]string{domainOf(create.Sender)}, extra...)
		}
		for _, s := range extra {
			if s != "" && s != e.name && !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		return nil
	})
	if err != nil || gap.Done {
		return 0, err
	}
	var errs []error
	for i, srv := range servers {
		if i == backfillTries {
			break
		}
		n, err := e.backfillFrom(ctx, srv, version, h, gap.Ext, limit)
		if err == nil {
			return n, nil
		}
		e.log.Info("backfill failed", "server", srv, "room_id", roomID, "err", err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return 0, nil // no other server in the room: nobody to ask
	}
	return 0, errors.Join(errs...)
}

// currentGap is the history's stored gap, or when none is stored yet the
// one before its first event: the timeline's first, or the one at.
func (e *Engine) currentGap(tx *store.Tx, r *store.Room, h history) (backfillGap, error) {
	var gap backfillGap
	if raw, err := tx.GetKV(backfillGapNS, h.key()); err == nil {
		return gap, json.Unmarshal(raw, &gap)
	}
	first := h.at
	if first == nil {
		var err error
		if first, err = e.firstTimelineEvent(tx, r); err != nil || first == nil {
			gap.Done = true
			return gap, err
		}
	}
	gap.Ext = e.notShown(tx, first.PrevEvents, nil)
	gap.Done = len(gap.Ext) == 0
	return gap, nil
}

// firstTimelineEvent is the oldest event of the room's timeline.
func (e *Engine) firstTimelineEvent(tx *store.Tx, r *store.Room) (*room.Event, error) {
	var nid uint64
	tx.Timeline(r.NID, 0, false, func(_, n uint64) bool { nid = n; return false })
	if nid == 0 {
		return nil, nil
	}
	return e.rooms.Event(tx, nid)
}

// notShown filters ids to those neither in the room's timeline, nor in its
// backfilled history or a gap's, nor in also.
func (e *Engine) notShown(tx *store.Tx, ids []string, also map[string]bool) []string {
	var out []string
	for _, eid := range ids {
		if also[eid] {
			continue
		}
		if se, err := tx.EventByID(eid); err == nil {
			if se.Pos != 0 {
				continue
			}
			if _, ok := tx.BackfillSeq(se.NID); ok {
				continue
			}
			if _, ok := tx.InGapHistory(se.NID); ok {
				continue
			}
		}
		out = append(out, eid)
	}
	return out
}

// backfillFrom asks srv for the events before ext and stores what it
// answers: each event checked like an inbound PDU (format, signature,
// hash) and against its auth events (fetched with event_auth when
// missing); rejected ones are kept out of the history. Events already
// held as outliers (the join's state and auth chain) join the history.
func (e *Engine) backfillFrom(ctx context.Context, srv, version string, h history, ext []string, limit int) (int, error) {
	roomID := h.roomID
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	for _, v := range ext {
		q.Add("v", v)
	}
	var resp struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	path := "/_matrix/federation/v1/backfill/" + url.PathEscape(roomID) + "?" + q.Encode()
	if err := e.fed.Client.Get(ctx, srv, path, &resp); err != nil {
		return 0, remoteErr(err)
	}
	batch := map[string]*room.Event{}
	var evs []*room.Event
	for _, raw := range resp.PDUs[:min(len(resp.PDUs), limit)] {
		ev, err := e.check(version, roomID, raw)
		if err != nil {
			if ev != nil {
				e.log.Info("backfilled event refused", "event_id", ev.ID, "err", err)
			}
			continue
		}
		if batch[ev.ID] == nil {
			batch[ev.ID] = ev
			evs = append(evs, ev)
		}
	}
	// Auth events neither held nor in the batch: their chain, once per event.
	var needAuth []string
	_ = e.store.View(func(tx *store.Tx) error {
		for _, ev := range evs {
			for _, a := range ev.AuthEvents {
				if _, err := tx.EventNID(a); err != nil && batch[a] == nil {
					needAuth = append(needAuth, ev.ID)
					break
				}
			}
		}
		return nil
	})
	for _, eid := range needAuth[:min(len(needAuth), 5)] {
		if _, err := e.fetchAuth(ctx, srv, version, roomID, eid); err != nil {
			e.log.Info("event_auth for backfill failed", "server", srv, "event_id", eid, "err", err)
		}
	}
	// Authorise oldest first, place newest first: later seqs are older.
	slices.SortStableFunc(evs, func(a, b *room.Event) int { return int(min(max(a.Depth-b.Depth, -1), 1)) })
	added := 0
	err := e.store.Write(func(tx *store.Tx) error {
		added = 0
		r, err := tx.Room(roomID)
		if err != nil {
			return err
		}
		gap, err := e.currentGap(tx, r, h)
		if err != nil {
			return err
		}
		// The state before the event after the history (the room's first
		// timeline event, or at) stands in for the unknown state at each
		// backfilled event (client visibility).
		var before *room.State
		first := h.at
		if first == nil {
			first, _ = e.firstTimelineEvent(tx, r)
		}
		if first != nil {
			before, err = e.rooms.State(tx, first.StateBefore)
			if err != nil {
				return err
			}
		} else {
			before = &room.State{}
		}
		accepted := map[string]*room.Event{}
		show := map[string]*room.Event{}
		for _, ev := range evs {
			se, err := tx.EventByID(ev.ID)
			if err == nil {
				if se.Pos == 0 && se.Flags&store.FlagRejected == 0 {
					show[ev.ID] = ev // an outlier we hold: it joins the history
				}
				continue
			}
			if err := e.authorizeOutlier(tx, ev, accepted); err != nil {
				e.log.Info("backfilled event fails auth", "event_id", ev.ID, "err", err)
				if err := e.rooms.PersistRemote(tx, ev, before, store.FlagOutlier|store.FlagRejected); err != nil {
					return err
				}
				continue
			}
			accepted[ev.ID] = ev
			if err := e.rooms.PersistRemote(tx, ev, before, store.FlagOutlier|store.FlagBackfilled); err != nil {
				return err
			}
			show[ev.ID] = ev
		}
		// Only events reachable from the gap through prev_events belong to
		// the history: walk from the gap, newest first.
		inBatch := map[string]bool{}
		for id := range show {
			inBatch[id] = true
		}
		var order []*room.Event
		frontier := slices.Clone(gap.Ext)
		reached := map[string]bool{}
		for len(frontier) > 0 {
			eid := frontier[0]
			frontier = frontier[1:]
			if reached[eid] || show[eid] == nil {
				continue
			}
			reached[eid] = true
			order = append(order, show[eid])
			frontier = append(frontier, show[eid].PrevEvents...)
		}
		slices.SortStableFunc(order, func(a, b *room.Event) int { return int(min(max(b.Depth-a.Depth, -1), 1)) })
		next := map[string]bool{}
		for _, ev := range order {
			nid, err := tx.EventNID(ev.ID)
			if err != nil {
				return err
			}
			_, inGap := tx.InGapHistory(nid)
			if _, ok := tx.BackfillSeq(nid); !ok && !inGap {
				if h.at == nil {
					tx.AddBackfilled(r.NID, nid)
				} else {
					tx.AddGapHistory(h.at.NID, nid)
				}
				added++
			}
			for _, p := range e.notShown(tx, ev.PrevEvents, reached) {
				next[p] = true
			}
		}
		// Gap events the server did not give stay in the gap.
		for _, x := range gap.Ext {
			if !reached[x] {
				next[x] = true
			}
		}
		newGap := backfillGap{Ext: make([]string, 0, len(next))}
		for x := range next {
			newGap.Ext = append(newGap.Ext, x)
		}
		slices.Sort(newGap.Ext)
		// Nothing new: the server has nothing before the gap for us.
		newGap.Done = len(newGap.Ext) == 0 || added == 0
		raw, err := json.Marshal(newGap)
		if err != nil {
			return err
		}
		tx.PutKV(backfillGapNS, h.key(), raw)
		return nil
	})
	return added, err
}
