package roomfed

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"encoding/json/jsontext"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"

	"edge/edge/room"
	"edge/edge/store"
)

// A big room's send_join answer (100k member events: ~70 MB of JSON) is
// read as a stream, never held whole: events are checked on every core as
// they arrive, and stored in chunks, in transactions of their own, while
// the rest is still arriving; once stored, an event's JSON is dropped
// (what the auth checks need stays parsed). The join's final transaction
// then only writes the room and its state snapshot. Memory stays at the
// parsed events and one chunk, whatever the answer's size.

// JoinChunk events are stored per transaction (a variable for tests).
var JoinChunk = 2000

// JoinChunkStored, when set (tests only), is called after each chunk of a
// join's or state fetch's answer is committed, with the chunk's NIDs: a
// test stops the process there as a crash would.
var JoinChunkStored func(roomNID uint64, nids []uint64)

const (
	// maxJoinAnswerBytes bounds a send_join answer read as a stream.
	maxJoinAnswerBytes = 1 << 30
	// DefaultMaxJoinEvents bounds the events a join (or a resync's state
	// fetch) holds parsed until its final transaction, the answer's byte
	// bound being no bound on them: 1 GiB of tiny events is ~5 million.
	// Measured on a 100k-member room (BENCHMARKS.md): a full join peaks
	// at 236 MiB, ~2.4 KiB an event with the GC's headroom; a faster
	// join's resync at ~500 MiB, ~5 KiB an event (it completes the state
	// in one transaction). 200,000 keeps either under ~1 GiB and takes a
	// room twice that size; a hostile answer's tiny events cost less.
	DefaultMaxJoinEvents = 200_000
)

// joinEvent is a checked event of the answer, and whether the answer
// lists it in the room's state (else only in the auth chain).
type joinEvent struct {
	*room.Event
	state bool
}

// joinAnswer is what reading a send_join answer leaves.
type joinAnswer struct {
	Event          json.RawMessage
	MembersOmitted bool
	ServersInRoom  []string
	// events are the answer's valid events by ID.
	events map[string]*joinEvent
	// stored are the events stored so far, as they arrived, unindexed
	// until the join's final transaction (room.Service.StoreJoinEvents).
	stored []*room.Event
	// owner keys the note of the records stored (the NID of the first):
	// cleared once they are indexed or deleted, else swept when the
	// store next opens (store.Tx.NotePendingRecords).
	owner uint64
}

// dropJoin deletes what a failed join stored of its answer.
func (e *Engine) dropJoin(ans *joinAnswer) {
	if ans == nil || len(ans.stored) == 0 {
		return
	}
	err := e.store.Write(func(tx *store.Tx) error {
		e.rooms.DropJoinEvents(tx, ans.stored)
		tx.ClearPendingRecords(ans.owner)
		return nil
	})
	if err != nil {
		e.log.Warn("dropping a failed join's stored events", "events", len(ans.stored), "err", err)
	}
}

// readJoin reads a send_join answer from r, checking each event of its
// state and auth chain (format, signatures, content hash; see check) and
// storing those passing as outliers of the room whose NID is roomNID.
func (e *Engine) readJoin(ctx context.Context, version, roomID string, roomNID uint64, r io.Reader) (*joinAnswer, error) {
	return e.readEvents(ctx, version, roomID, roomNID, r, "state", nil)
}

// readEvents reads an answer holding events under stateName (a send_join
// answer's "state", a /state answer's "pdus") and "auth_chain" as
// readJoin does, keeping only the events in wanted unless it is nil.
func (e *Engine) readEvents(ctx context.Context, version, roomID string, roomNID uint64, r io.Reader, stateName string, wanted map[string]bool) (*joinAnswer, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type item struct {
		raw   []byte
		state bool
	}
	type checked struct {
		ev    *room.Event
		err   error
		state bool
	}
	work := make(chan item, 1024)
	results := make(chan checked, 1024)
	var workers sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		workers.Go(func() {
			for it := range work {
				ev, err := e.check(version, roomID, it.raw)
				results <- checked{ev, err, it.state}
			}
		})
	}
	go func() { workers.Wait(); close(results) }()

	ans := &joinAnswer{events: map[string]*joinEvent{}}
	s := newJoinStorer(e, roomNID, ans, cancel)
	s.limit = e.maxJoinEvents
	collected := make(chan error, 1)
	go func() {
		for res := range results {
			if res.err != nil || res.ev == nil {
				eventID := ""
				if res.ev != nil {
					eventID = res.ev.ID
				}
				e.log.Info("send_join or /state answer holds an invalid event; dropped", "event_id", eventID, "err", res.err)
				continue
			}
			if wanted != nil && !wanted[res.ev.ID] {
				continue
			}
			s.add(res.ev, res.state)
		}
		collected <- s.finish()
	}()

	readErr := decodeJoinAnswer(r, ans, stateName, func(raw []byte, state bool) bool {
		select {
		case work <- item{raw, state}:
			return true
		case <-ctx.Done():
			return false
		}
	})
	close(work)
	// The storer's error first: over the limit, it cancelled the rest.
	err := cmp.Or(<-collected, readErr, ctx.Err())
	if err != nil {
		e.dropJoin(ans)
		return nil, err
	}
	return ans, nil
}

// decodeJoinAnswer walks a send_join or /state answer's members, handing
// each event of stateName ("state" or "pdus") and auth_chain to send
// (which returns false to stop).
func decodeJoinAnswer(r io.Reader, ans *joinAnswer, stateName string, send func(raw []byte, state bool) bool) error {
	d := jsontext.NewDecoder(r)
	bad := func(err error) error { return fmt.Errorf("%w: send_join or /state answer: %v", room.ErrBadEvent, err) }
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '{' {
		return bad(fmt.Errorf("not an object (%v)", err))
	}
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		if err != nil {
			return bad(err)
		}
		switch name := tok.String(); name {
		case stateName, "auth_chain":
			if d.PeekKind() != '[' {
				if _, err := d.ReadValue(); err != nil {
					return bad(err)
				}
				continue
			}
			if _, err := d.ReadToken(); err != nil {
				return bad(err)
			}
			for d.PeekKind() != ']' {
				v, err := d.ReadValue()
				if err != nil {
					return bad(err)
				}
				// v is the decoder's buffer, reused by the next read.
				if !send(bytes.Clone(v), name == stateName) {
					return nil
				}
			}
			if _, err := d.ReadToken(); err != nil {
				return bad(err)
			}
		default:
			v, err := d.ReadValue()
			if err != nil {
				return bad(err)
			}
			switch name {
			case "event":
				ans.Event = bytes.Clone(v)
			case "members_omitted":
				_ = json.Unmarshal(v, &ans.MembersOmitted)
			case "servers_in_room":
				_ = json.Unmarshal(v, &ans.ServersInRoom)
			}
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return bad(err)
	}
	return nil
}

// joinStorer collects checked events and stores them a chunk at a time,
// in a goroutine of its own: a chunk's commit (an fsync) must not stall
// the checks behind it.
type joinStorer struct {
	e       *Engine
	roomNID uint64
	ans     *joinAnswer
	chunk   []*room.Event
	chunks  chan []*room.Event
	done    chan error
	// interned strings: every event names the same room and version, and
	// mostly the same few auth events.
	strs map[string]string
	// limit bounds the events held (0: none); over is the refusal once
	// an answer passed it, and fail stops the reading.
	limit int
	over  error
	fail  func()
}

func newJoinStorer(e *Engine, roomNID uint64, ans *joinAnswer, fail func()) *joinStorer {
	s := &joinStorer{e: e, roomNID: roomNID, ans: ans, chunks: make(chan []*room.Event, 4), done: make(chan error, 1), strs: map[string]string{}, fail: fail}
	go func() {
		var err error
		for evs := range s.chunks {
			if err == nil {
				if err = s.store(evs); err != nil {
					fail()
				}
			}
		}
		s.done <- err
	}()
	return s
}

func (s *joinStorer) intern(v string) string {
	if w, ok := s.strs[v]; ok {
		return w
	}
	s.strs[v] = v
	return v
}

// add takes a checked event; an event listed in both state and
// auth_chain is kept once.
func (s *joinStorer) add(ev *room.Event, state bool) {
	if je := s.ans.events[ev.ID]; je != nil {
		je.state = je.state || state
		return
	}
	if s.over != nil {
		return
	}
	if s.limit > 0 && len(s.ans.events) >= s.limit {
		s.over = fmt.Errorf("%w: its state and auth chain hold more than %d events (federation.max_join_events)", room.ErrTooComplex, s.limit)
		s.fail()
		return
	}
	ev.RoomID, ev.Version = s.intern(ev.RoomID), s.intern(ev.Version)
	ev.Type = s.intern(ev.Type)
	for i, id := range ev.AuthEvents {
		ev.AuthEvents[i] = s.intern(id)
	}
	s.ans.events[ev.ID] = &joinEvent{Event: ev, state: state}
	s.chunk = append(s.chunk, ev)
	if len(s.chunk) >= max(JoinChunk, 1) {
		s.chunks <- s.chunk
		s.chunk = nil
	}
}

// finish stores the last chunk and returns the refusal over the limit,
// else the first storing error.
func (s *joinStorer) finish() error {
	if len(s.chunk) > 0 {
		s.chunks <- s.chunk
	}
	close(s.chunks)
	return cmp.Or(s.over, <-s.done)
}

// store writes one chunk, noting its records as pending in the same
// transaction, then drops its events' JSON.
func (s *joinStorer) store(evs []*room.Event) error {
	var owner uint64
	nids := make([]uint64, len(evs))
	err := s.e.store.Write(func(tx *store.Tx) error {
		s.e.rooms.StoreJoinEvents(tx, s.roomNID, evs)
		for i, ev := range evs {
			nids[i] = ev.NID
		}
		owner = cmp.Or(s.ans.owner, nids[0])
		tx.NotePendingRecords(owner, nids)
		return nil
	})
	if err != nil {
		return err
	}
	s.ans.owner = owner
	s.ans.stored = append(s.ans.stored, evs...)
	s.e.log.Debug("stored a chunk of a join's or state fetch's answer", "room_nid", s.roomNID, "events", len(evs), "stored", len(s.ans.stored))
	if JoinChunkStored != nil {
		JoinChunkStored(s.roomNID, nids)
	}
	for _, ev := range evs {
		// Stored: the JSON goes, except where the auth rules read it (a
		// restricted join's authorising server's signature).
		if !strings.Contains(string(ev.Content), "join_authorised_via_users_server") {
			ev.Raw = nil
		}
	}
	return nil
}

// streamState reads a /state answer (path) from srv as a join's answer
// is read: checked on every core as it arrives, the events of wanted
// stored in chunks as unindexed records of the room; then authorised by
// levels (against each other and the events stored before) and indexed,
// those failing flagged rejected, in one transaction. A failure drops
// what it stored.
func (e *Engine) streamState(ctx context.Context, srv, version, roomID, path string, wanted map[string]bool) (map[string]knownState, error) {
	var roomNID uint64
	err := e.store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrUnknownRoom, roomID)
		}
		roomNID = r.NID
		return nil
	})
	if err != nil {
		return nil, err
	}
	var ans *joinAnswer
	err = e.fed.Client.DoStream(ctx, http.MethodGet, srv, path, nil, maxJoinAnswerBytes, func(r io.Reader) error {
		var err error
		ans, err = e.readEvents(ctx, version, roomID, roomNID, r, "pdus", wanted)
		return err
	})
	if err != nil {
		e.dropJoin(ans) // read whole, then the transport failed
		return nil, err
	}
	ordered := ans.byDepth()
	// The auth events stored before (the partial state's, mostly), those
	// not rejected; looked up once, not on every core in one transaction.
	outside := map[string]*room.Event{}
	_ = e.store.View(func(tx *store.Tx) error {
		// The create event too: from room version 12 the auth rules find
		// it by the room ID, not among the auth events.
		if r, err := tx.Room(roomID); err == nil {
			if st, err := e.rooms.State(tx, r.State); err == nil {
				if create, err := e.rooms.StateEvent(tx, st, "m.room.create", ""); err == nil {
					outside[create.ID] = create
				}
			}
		}
		looked := map[string]bool{}
		for _, je := range ordered {
			for _, aid := range je.AuthEvents {
				if looked[aid] || ans.events[aid] != nil {
					continue
				}
				looked[aid] = true
				if ev, err := e.rooms.EventByID(tx, aid); err == nil && ev.Flags&store.FlagRejected == 0 {
					outside[aid] = ev
				}
			}
		}
		return nil
	})
	rejected, _ := e.authoriseByLevels(ordered, ans.find(outside))
	// The state events' keys are indexed here too, sorted, and what the
	// caller needs of them returned (fullState): it need not read them.
	var state []*room.Event
	for _, ev := range ans.stored {
		if ev.StateKey != nil {
			state = append(state, ev)
		}
	}
	var known map[string]knownState
	err = e.store.Write(func(tx *store.Tx) error {
		known = make(map[string]knownState, len(state))
		ix, err := e.rooms.IndexJoinEvents(tx, ans.stored, state)
		if err != nil {
			return err
		}
		tx.ClearPendingRecords(ans.owner)
		for _, ev := range ans.stored {
			// One stored meanwhile under its ID keeps that record's verdict
			// (and is read again by fullState).
			if ix.NID[ev] != ev.NID {
				continue
			}
			if ev.StateKey != nil {
				known[ev.ID] = knownState{key: ix.Key[ev], nid: ev.NID, member: ev.Type == "m.room.member", rejected: rejected[ev.ID]}
			}
			if !rejected[ev.ID] {
				continue
			}
			if se, err := tx.Event(ev.NID); err == nil {
				se.Flags |= store.FlagRejected
				tx.UpdateEvent(se)
			}
		}
		return nil
	})
	if err != nil {
		e.dropJoin(ans)
		return nil, err
	}
	PartialStats.EventsFetched.Add(uint64(len(ans.stored)))
	return known, nil
}
