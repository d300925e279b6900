package roomfed

// Faster joins (MSC3706, MSC3902): a room joined with a send_join answer
// whose member events were omitted has a partial state. The user sees the
// room at once; the full state before the join is fetched in the
// background (/state_ids, then /state or /event for the events we lack),
// each event checked like an inbound PDU, and the room's state completed.
// Until then the room is flagged in the store (store.PartialState), which
// makes the resync resume after a restart.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// errPartialStateCode is the errcode of MSC3895 as Synapse sends it, for
// requests a partial-state room cannot answer.
const errPartialStateCode = "ORG.MATRIX.MSC3895_UNABLE_DUE_TO_PARTIAL_STATE"

// Resync tuning.
const (
	// stateFetchAbove: above this many unknown events one /state answer
	// is cheaper than one /event request each.
	stateFetchAbove = 50
	// resyncChunk events are checked and stored per transaction, so a
	// large room's state is never held parsed all at once.
	resyncChunk      = 256
	resyncMinBackoff = 500 * time.Millisecond
	resyncMaxBackoff = 5 * time.Minute
	// resyncAttemptTimeout bounds one attempt against one server.
	resyncAttemptTimeout = 5 * time.Minute
)

// PartialResyncDelay postpones each resync's first attempt. It is zero in
// production; tests set it to stop a node while a room is still partial.
var PartialResyncDelay time.Duration

// PartialMetricsState counts partial-state joins since the process started
// (tests running several nodes in one process see their sum).
type PartialMetricsState struct {
	// Rooms is how many partial-state rooms are being resynced now.
	Rooms atomic.Int64
	// Joins counts joins answered with members omitted.
	Joins atomic.Uint64
	// EventsFetched counts state and auth events fetched by resyncs.
	EventsFetched atomic.Uint64
	// Failures counts resync attempts that failed (and were retried).
	Failures atomic.Uint64
	mu       sync.Mutex
	buckets  []uint64 // per resyncBuckets, non-cumulative; last is +Inf
	count    uint64
	sum      float64
}

// PartialStats is the process-wide partial-state accounting.
var PartialStats = PartialMetricsState{buckets: make([]uint64, len(resyncBuckets)+1)}

// resyncBuckets are the upper bounds, in seconds, of the join-to-full-state
// histogram.
var resyncBuckets = []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800}

func (m *PartialMetricsState) observe(d time.Duration) {
	secs := d.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	i, _ := slices.BinarySearch(resyncBuckets, secs)
	m.buckets[i]++
	m.count++
	m.sum += secs
}

// PartialMetrics renders PartialStats in the Prometheus text format.
func PartialMetrics() string {
	m := &PartialStats
	var b strings.Builder
	one := func(name, typ, help string, v any) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, typ, name, v)
	}
	one("edge_partial_state_rooms", "gauge", "Rooms joined with partial state whose full state is being fetched.", m.Rooms.Load())
	one("edge_partial_state_joins_total", "counter", "Joins whose send_join answer omitted the members.", m.Joins.Load())
	one("edge_partial_state_events_fetched_total", "counter", "State and auth events fetched to complete partial-state rooms.", m.EventsFetched.Load())
	one("edge_partial_state_resync_failures_total", "counter", "Resync attempts that failed and were retried.", m.Failures.Load())
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(&b, "# HELP edge_partial_state_resync_seconds Time from a partial-state join to the room's full state.\n# TYPE edge_partial_state_resync_seconds histogram\n")
	var cum uint64
	for i, le := range resyncBuckets {
		cum += m.buckets[i]
		fmt.Fprintf(&b, "edge_partial_state_resync_seconds_bucket{le=\"%s\"} %d\n", strconv.FormatFloat(le, 'f', -1, 64), cum)
	}
	fmt.Fprintf(&b, "edge_partial_state_resync_seconds_bucket{le=\"+Inf\"} %d\nedge_partial_state_resync_seconds_sum %g\nedge_partial_state_resync_seconds_count %d\n",
		m.count, m.sum, m.count)
	return b.String()
}

// partialRunner tracks the engine's running resyncs.
type partialRunner struct {
	mu sync.Mutex
	// running maps a room to a channel closed when its resync ends.
	running map[string]chan struct{}
	// onFull is told of each room that got its full state (after commit).
	onFull func(roomID, joinEventID string, joinPos uint64, servers []string)
}

// OnFullState sets what is told, after the commit, that a partial-state
// room got its full state, with our join event, its stream position and
// the servers it named: the client API wakes the room's syncs (which show the
// room to clients that do not lazy-load members only now) and sends the
// servers the partial state hid the device list changes they missed.
func (e *Engine) OnFullState(f func(roomID, joinEventID string, joinPos uint64, servers []string)) {
	e.partial.onFull = f
}

// isPartial tells whether a room's state is still partial.
func (e *Engine) isPartial(roomID string) bool {
	var partial bool
	_ = e.store.View(func(tx *store.Tx) error {
		_, err := tx.PartialState(roomID)
		partial = err == nil
		return nil
	})
	return partial
}

// refusePartialState is the answer to state requests about a room whose
// state we do not fully know: we cannot vouch for it (MSC3895).
func refusePartialState(tx *store.Tx, roomID string) error {
	if _, err := tx.PartialState(roomID); err == nil {
		return fedErr(http.StatusForbidden, errPartialStateCode, "this server is still fetching the room's state")
	}
	return nil
}

// addPartialServers adds to dests the servers a partial-state room's join
// named (servers_in_room): its state lacks their members, so they would
// otherwise not hear of our events.
func (e *Engine) addPartialServers(tx *store.Tx, roomID string, dests map[string]bool) {
	if ps, err := tx.PartialState(roomID); err == nil {
		for _, s := range ps.Servers {
			dests[s] = true
		}
	}
}

// authorizeState checks ev against the auth rules with st as the room
// state. In a partial-state room a member event the state lacks is taken
// from ev's own auth events (already checked): missing members are no
// reason to reject or soft-fail an event there.
func (e *Engine) authorizeState(tx *store.Tx, ev *room.Event, st *room.State) error {
	if _, err := tx.PartialState(ev.RoomID); err != nil {
		return e.authorizeAt(tx, ev, st)
	}
	m, err := e.rooms.AuthStateFor(tx, ev, st)
	if err != nil {
		return err
	}
	// The partial state may hold a membership the full state would not
	// (an event accepted only because members were missing): resolve it
	// against the event's auth events, as Synapse does. With nothing in
	// conflict, or should that fail (an auth chain we lack), the missing
	// members are filled in from the auth events.
	if r, err := e.rooms.ResolveWithAuthEvents(tx, ev, m); err == nil && r != nil {
		m = r
	} else {
		fillFromAuthEvents(tx, e.rooms, ev, m)
	}
	return room.AuthorizeAgainst(ev, m, e.fed.Keyring.GetKey)
}

// fillFromAuthEvents adds to m the member events among ev's auth events
// whose keys m lacks.
func fillFromAuthEvents(tx *store.Tx, rooms *room.Service, ev *room.Event, m map[room.StateKeyPair]*room.Event) {
	for _, aid := range ev.AuthEvents {
		ae, err := rooms.EventByID(tx, aid)
		if err != nil || ae.Type != "m.room.member" || ae.StateKey == nil || ae.Flags&store.FlagRejected != 0 {
			continue
		}
		k := room.StateKeyPair{Type: ae.Type, StateKey: *ae.StateKey}
		if _, ok := m[k]; !ok {
			m[k] = ae
		}
	}
}

// AwaitFullState waits until roomID's state is complete (at once for a
// room that is not partial) or ctx ends: for client requests that need
// every member, as Synapse blocks /members.
func (e *Engine) AwaitFullState(ctx context.Context, roomID string) error {
	for {
		e.partial.mu.Lock()
		done := e.partial.running[roomID]
		e.partial.mu.Unlock()
		if !e.isPartial(roomID) {
			return nil
		}
		if done == nil {
			// Flagged but not running (the node is closing): poll.
			done = make(chan struct{})
			time.AfterFunc(time.Second, func() { close(done) })
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
		}
	}
}

// ResumePartialJoins restarts the resync of every room still flagged
// partial (a restart during a resync). The node calls it once at start.
func (e *Engine) ResumePartialJoins() {
	var list []*store.PartialState
	_ = e.store.View(func(tx *store.Tx) error {
		list = tx.PartialStateRooms()
		return nil
	})
	for _, ps := range list {
		e.log.Info("resuming partial-state resync", "room_id", ps.RoomID, "servers", len(ps.Servers))
		e.startResync(ps.RoomID)
	}
}

// startResync runs roomID's resync in the background unless it runs.
func (e *Engine) startResync(roomID string) {
	e.partial.mu.Lock()
	defer e.partial.mu.Unlock()
	if e.partial.running == nil {
		e.partial.running = map[string]chan struct{}{}
	}
	if e.partial.running[roomID] != nil {
		return
	}
	done := make(chan struct{})
	e.partial.running[roomID] = done
	PartialStats.Rooms.Add(1)
	go func() {
		defer func() {
			PartialStats.Rooms.Add(-1)
			e.partial.mu.Lock()
			delete(e.partial.running, roomID)
			e.partial.mu.Unlock()
			close(done)
		}()
		e.resyncLoop(roomID)
	}()
}

// resyncLoop retries the resync with backoff until it succeeds, the flag
// is gone or the store is closed (the node stopped).
func (e *Engine) resyncLoop(roomID string) {
	log := e.log.With("room_id", roomID)
	if !e.sleepOpen(roomID, PartialResyncDelay) {
		return
	}
	backoff := resyncMinBackoff
	for attempt := 1; ; attempt++ {
		var ps *store.PartialState
		err := e.store.View(func(tx *store.Tx) error {
			var err error
			ps, err = tx.PartialState(roomID)
			return err
		})
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				log.Info("partial-state resync stopped", "err", err)
			}
			return
		}
		start := time.Now()
		err = e.resync(log, ps)
		if err == nil {
			return
		}
		if errors.Is(err, store.ErrClosed) {
			return
		}
		PartialStats.Failures.Add(1)
		if !e.weAreJoined(roomID) {
			// Our users left (or were banned) while the state was partial:
			// the residents may refuse us the state now, and nobody here
			// needs it. A rejoin flags the room again and starts a resync
			// of its own, which a loop asleep here would hold up.
			log.Info("partial-state resync stopped: no user of this server is joined", "err", err)
			return
		}
		log.Warn("partial-state resync failed; retrying", "attempt", attempt, "after", backoff, "took", time.Since(start), "err", err)
		if !e.sleepOpen(roomID, backoff) {
			return
		}
		backoff = min(backoff*2, resyncMaxBackoff)
	}
}

// weAreJoined reports whether a user of this server is joined to the room
// in our copy's current state.
func (e *Engine) weAreJoined(roomID string) bool {
	joined := true // unknown: keep trying
	_ = e.store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID)
		if err != nil {
			return nil
		}
		counts, err := e.rooms.JoinedServers(tx, r.State)
		if err == nil {
			joined = counts[e.name] > 0
		}
		return nil
	})
	return joined
}

// sleepOpen waits d, checking every second that the store is open and
// the room still partial; it reports whether to go on.
func (e *Engine) sleepOpen(roomID string, d time.Duration) bool {
	for d > 0 {
		step := min(d, time.Second)
		time.Sleep(step)
		d -= step
		err := e.store.View(func(tx *store.Tx) error {
			_, err := tx.PartialState(roomID)
			return err
		})
		if err != nil {
			return false
		}
	}
	return true
}

// stateIDs is a /state_ids answer.
type stateIDs struct {
	PDUs      []string `json:"pdu_ids"`
	AuthChain []string `json:"auth_chain_ids"`
	// known: the state events /state's answer stored (streamState).
	known map[string]knownState
}

// resync asks the servers of ps in turn for the full state before our
// join, and completes the room's state with the first answer.
func (e *Engine) resync(log *slog.Logger, ps *store.PartialState) error {
	version, err := e.roomVersion(ps.RoomID)
	if err != nil {
		return err
	}
	var errs []error
	for _, srv := range ps.Servers {
		if srv == e.name {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), resyncAttemptTimeout)
		err := e.resyncFrom(ctx, log, srv, version, ps)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, store.ErrClosed) {
			return err
		}
		log.Info("partial-state resync: server failed", "server", srv, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", srv, err))
	}
	if len(errs) == 0 {
		return errors.New("no server to fetch the state from")
	}
	return errors.Join(errs...)
}

// resyncFrom fetches the state before ps's join from srv, stores the
// events we lack and completes the room's state.
func (e *Engine) resyncFrom(ctx context.Context, log *slog.Logger, srv, version string, ps *store.PartialState) error {
	// The state before the join is the state after its prev event: ask
	// for the state at that event (the resident server knows it; it may
	// not have kept our join yet — Synapse asks the same way) and add the
	// prev event itself. A join citing several prev events is asked
	// about directly.
	at, prev := ps.JoinEvent, ""
	var join *room.Event
	_ = e.store.View(func(tx *store.Tx) error {
		join, _ = e.rooms.EventByID(tx, ps.JoinEvent)
		return nil
	})
	if join != nil && len(join.PrevEvents) == 1 {
		at, prev = join.PrevEvents[0], join.PrevEvents[0]
	}
	ids, err := e.fetchStateAt(ctx, srv, version, ps.RoomID, at)
	var re *federation.RemoteError
	if prev != "" && errors.As(err, &re) && re.Status == http.StatusForbidden {
		// The prev event predates our server in the room and its history
		// is hidden from us (edge serves per-event visibility): ask for
		// the state at our join, which is the state before it.
		at, prev = ps.JoinEvent, ""
		ids, err = e.fetchStateAt(ctx, srv, version, ps.RoomID, at)
	}
	if err != nil {
		return err
	}
	state := ids.PDUs
	if prev != "" {
		if err := e.fetchEvents(ctx, srv, version, ps.RoomID, []string{prev}); err != nil {
			return err
		}
		var isState bool
		_ = e.store.View(func(tx *store.Tx) error {
			ev, err := e.rooms.EventByID(tx, prev)
			isState = err == nil && ev.IsState()
			return nil
		})
		if isState {
			state = append(slices.Clip(state), prev) // last: it wins its key
		}
	}
	log.Info("partial-state resync: state fetched", "server", srv, "at", at, "state", len(state), "auth_chain", len(ids.AuthChain))
	return e.completeState(log, ps, state, ids.known)
}

// storeFetched checks and stores, oldest first and a chunk per
// transaction, the fetched events that are wanted and not stored yet.
func (e *Engine) storeFetched(version, roomID string, raws []json.RawMessage, wanted map[string]bool) error {
	// Order by depth, reading only the depth: auth events come before
	// the events they authorise, and only a chunk is parsed at a time.
	type item struct {
		depth int64
		raw   json.RawMessage
	}
	items := make([]item, 0, len(raws))
	for _, raw := range raws {
		var h struct {
			Depth int64 `json:"depth"`
		}
		_ = json.Unmarshal(raw, &h)
		items = append(items, item{h.Depth, raw})
	}
	slices.SortStableFunc(items, func(a, b item) int { return cmp.Compare(a.depth, b.depth) })
	for len(items) > 0 {
		chunk := items[:min(len(items), resyncChunk)]
		items = items[len(chunk):]
		evs := make([]*room.Event, 0, len(chunk))
		seen := map[string]bool{}
		for _, it := range chunk {
			ev, err := e.check(version, roomID, it.raw)
			if err != nil {
				if ev != nil {
					e.log.Info("partial-state resync: event refused", "event_id", ev.ID, "err", err)
				}
				continue
			}
			if wanted[ev.ID] && !seen[ev.ID] {
				seen[ev.ID] = true
				evs = append(evs, ev)
			}
		}
		stored, err := e.storeRoomOutliers(roomID, evs)
		if err != nil {
			return err
		}
		PartialStats.EventsFetched.Add(uint64(stored))
	}
	return nil
}

// completeState makes the room's state the full state before the join
// (stateIDs) overlaid with what we had: the current state and the state
// before each event since the join (the partial state plus the changes
// since, which are newer). Then it clears the partial flag.
func (e *Engine) completeState(log *slog.Logger, ps *store.PartialState, stateIDs []string, known map[string]knownState) error {
	unlock := e.lock(ps.RoomID)
	defer unlock()
	var members, rewritten, rejected, accepted int
	err := e.store.Write(func(tx *store.Tx) error {
		members, rewritten, rejected, accepted = 0, 0, 0, 0
		r, err := tx.Room(ps.RoomID)
		if err != nil {
			return err
		}
		full, n, err := e.fullState(tx, ps.RoomID, stateIDs, known)
		if err != nil {
			return err
		}
		members = n
		entries := make([]store.StateEntry, 0, len(full))
		for k, v := range full {
			entries = append(entries, store.StateEntry{Key: k, Event: v})
		}
		base := tx.PutSnapshot(0, entries)
		// Each partial snapshot becomes a delta on the full state.
		remap := map[uint64]uint64{}
		overlay := func(old uint64) (uint64, error) {
			if id, ok := remap[old]; ok {
				return id, nil
			}
			st, err := e.rooms.State(tx, old)
			if err != nil {
				return 0, err
			}
			var delta []store.StateEntry
			st.Each(func(k, v uint64) bool {
				if full[k] != v {
					delta = append(delta, store.StateEntry{Key: k, Event: v})
				}
				return true
			})
			id := tx.PutSnapshot(base, delta)
			remap[old] = id
			return id, nil
		}
		// save stores st as a snapshot on the full state (state keys are
		// never removed, so a delta expresses it).
		save := func(st *room.State) uint64 {
			if st.ID != 0 {
				return st.ID
			}
			var delta []store.StateEntry
			st.Each(func(k, v uint64) bool {
				if full[k] != v {
					delta = append(delta, store.StateEntry{Key: k, Event: v})
				}
				return true
			})
			return tx.PutSnapshot(base, delta)
		}
		// The events since the join: the join's state before is the full
		// state (overlaid with what the partial state had); each later
		// event's is computed again from its prev events, and the event
		// checked again against it, as Synapse does: one accepted only
		// because the partial state lacked members is rejected now.
		join, err := e.rooms.EventByID(tx, ps.JoinEvent)
		if err != nil {
			return err
		}
		var since []uint64
		inTimeline := map[uint64]bool{}
		tx.Timeline(r.NID, join.Pos, false, func(_, nid uint64) bool {
			since = append(since, nid)
			inTimeline[nid] = true
			return true
		})
		// Events stored since the join outside the timeline (rejected,
		// soft-failed) have partial states too; later events may cite
		// them: their states become deltas on the full state, and one
		// rejected only by the partial state (its auth events pass) is
		// checked again and accepted if the full state allows it.
		overlaid := map[uint64]bool{}
		var overlayPrevs func(ev *room.Event) error
		overlayPrevs = func(ev *room.Event) error {
			for _, pid := range ev.PrevEvents {
				pnid, err := tx.EventNID(pid)
				if err != nil || pnid <= join.NID || inTimeline[pnid] || overlaid[pnid] {
					continue
				}
				overlaid[pnid] = true
				pev, err := e.rooms.Event(tx, pnid)
				if err != nil {
					continue
				}
				if err := overlayPrevs(pev); err != nil {
					return err
				}
				pe, err := tx.Event(pnid)
				if err != nil || pe.StateBefore == 0 {
					continue
				}
				if pe.Flags&store.FlagRejected != 0 && pe.Flags&store.FlagOutlier == 0 && e.passesAgain(tx, pev) {
					before, err := e.rooms.StateBeforeEvent(tx, pev)
					if err == nil && e.authorizeAt(tx, pev, before) == nil {
						log.Info("partial-state resync: event accepted against the full state", "event_id", pev.ID)
						pe.Flags &^= store.FlagRejected
						pe.StateBefore = save(before)
						tx.UpdateEvent(pe)
						e.rooms.Evict(tx, pnid)
						accepted++
						continue
					}
				}
				if pe.StateBefore, err = overlay(pe.StateBefore); err != nil {
					return err
				}
				tx.UpdateEvent(pe)
				e.rooms.Evict(tx, pnid)
			}
			return nil
		}
		for _, nid := range since {
			se, err := tx.Event(nid)
			if err != nil {
				return err
			}
			if se.StateBefore == 0 {
				continue
			}
			if nid == join.NID {
				if se.StateBefore, err = overlay(se.StateBefore); err != nil {
					return err
				}
			} else {
				ev, err := e.rooms.Event(tx, nid)
				if err != nil {
					return err
				}
				if err := overlayPrevs(ev); err != nil {
					return err
				}
				before, err := e.rooms.StateBeforeEvent(tx, ev)
				if err != nil {
					return err
				}
				se.StateBefore = save(before)
				if err := e.authorizeAt(tx, ev, before); err != nil {
					log.Info("partial-state resync: event rejected against the full state", "event_id", ev.ID, "err", err)
					se.Flags |= store.FlagRejected
					rejected++
				}
			}
			tx.UpdateEvent(se)
			e.rooms.Evict(tx, nid) // its cached copy has the old state
			rewritten++
		}
		// The current state: after the forward extremities, resolved
		// when they differ (as for an event citing them all).
		var extIDs []string
		for _, nid := range r.Extremities {
			if x, err := e.rooms.Event(tx, nid); err == nil {
				extIDs = append(extIDs, x.ID)
			}
		}
		if len(extIDs) > 0 {
			cur, err := e.rooms.StateBeforeEvent(tx, &room.Event{ID: "current state", RoomID: ps.RoomID, Version: join.Version, PrevEvents: extIDs})
			if err != nil {
				return err
			}
			r.State = save(cur)
		} else if r.State, err = overlay(r.State); err != nil {
			return err
		}
		for _, nid := range since {
			e.rooms.Evict(tx, nid) // after the copies this transaction cached
		}
		for nid := range overlaid {
			e.rooms.Evict(tx, nid)
		}
		tx.PutRoom(r)
		tx.CompletePartialState(ps.RoomID)
		if f := e.partial.onFull; f != nil {
			tx.OnCommit(func() { f(ps.RoomID, join.ID, join.Pos, ps.Servers) })
		}
		return nil
	})
	if err != nil {
		return err
	}
	took := time.Since(time.UnixMilli(ps.Since))
	PartialStats.observe(took)
	log.Info("partial-state room now has its full state", "state_events", len(stateIDs), "members", members,
		"events_updated", rewritten, "rejected", rejected, "accepted", accepted, "since_join", took)
	return nil
}

// passesAgain tells whether ev passes the auth rules against its own
// auth events, none of them rejected: an event rejected there stays
// rejected whatever the room's state.
func (e *Engine) passesAgain(tx *store.Tx, ev *room.Event) bool {
	authRejected := false
	lookup := func(eid string) (*room.Event, error) {
		ae, err := e.rooms.EventByID(tx, eid)
		if err == nil && ae.Flags&store.FlagRejected != 0 {
			authRejected = true
		}
		return ae, err
	}
	return room.Authorize(ev, lookup, e.fed.Keyring.GetKey) == nil && !authRejected
}

// fullState maps state-key NIDs to event NIDs for the state events
// stateIDs (all stored: the resync fetched them), rejected ones left out;
// it counts the member events. Those in known (stored by streamState)
// are taken from it; the others are read from their stored records, only
// their type and state key: not as parsed events, which in a write
// transaction stay referenced until the commit (to be cached then), nor
// all 100k records of a large room's state again (each page read counts
// in the process's RSS). New state keys are indexed in sorted order, as
// for a join (IndexJoinEvents).
func (e *Engine) fullState(tx *store.Tx, roomID string, stateIDs []string, known map[string]knownState) (map[uint64]uint64, int, error) {
	r, err := tx.Room(roomID)
	if err != nil {
		return nil, 0, err
	}
	type entry struct {
		typ, key    string
		nid, keyNID uint64
	}
	list := make([]entry, 0, len(stateIDs))
	var unresolved []int
	members, missing := 0, 0
	for _, eid := range stateIDs {
		if k, ok := known[eid]; ok {
			if !k.rejected {
				list = append(list, entry{nid: k.nid, keyNID: k.key})
				if k.member {
					members++
				}
			}
			continue
		}
		nid, err := tx.EventNID(eid)
		if errors.Is(err, store.ErrNotFound) {
			missing++
			continue
		} else if err != nil {
			return nil, 0, err
		}
		se, err := tx.Event(nid)
		if errors.Is(err, store.ErrNotFound) {
			missing++
			continue
		} else if err != nil {
			return nil, 0, err
		}
		if se.Flags&store.FlagRejected != 0 || se.RoomNID != r.NID {
			continue
		}
		var h struct {
			Type     string  `json:"type"`
			StateKey *string `json:"state_key"`
		}
		if err := json.Unmarshal(se.JSON, &h); err != nil || h.StateKey == nil {
			continue
		}
		unresolved = append(unresolved, len(list))
		list = append(list, entry{typ: h.Type, key: *h.StateKey, nid: nid})
		if h.Type == "m.room.member" {
			members++
		}
	}
	if missing > 0 {
		return nil, 0, fmt.Errorf("%d state events could not be fetched", missing)
	}
	slices.SortFunc(unresolved, func(a, b int) int {
		return cmp.Or(strings.Compare(list[a].typ, list[b].typ), strings.Compare(list[a].key, list[b].key))
	})
	for _, i := range unresolved {
		if list[i].keyNID, err = tx.StateKeyNID(list[i].typ, list[i].key, true); err != nil {
			return nil, 0, err
		}
	}
	// In stateIDs' order: of two events at one key, the later wins.
	full := make(map[uint64]uint64, len(list))
	for _, en := range list {
		full[en.keyNID] = en.nid
	}
	return full, members, nil
}

// knownState is what streamState learnt of a state event it stored, so
// that fullState need not read it again.
type knownState struct {
	key, nid         uint64
	member, rejected bool
}
