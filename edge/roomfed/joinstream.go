package roomfed

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"encoding/json/jsontext"
	"fmt"
	"io"
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

const (
	// joinChunk events are stored per transaction.
	joinChunk = 2000
	// maxJoinAnswerBytes bounds a send_join answer read as a stream.
	maxJoinAnswerBytes = 1 << 30
)

// joinEvent is a checked event of the answer and where it was listed.
type joinEvent struct {
	*room.Event
	state, chain bool
}

// joinAnswer is what reading a send_join answer leaves.
type joinAnswer struct {
	Event          json.RawMessage
	MembersOmitted bool
	ServersInRoom  []string
	// events are the answer's valid events by ID; order lists their IDs
	// as they arrived.
	events map[string]*joinEvent
	order  []string
	// stored are the events stored so far, unindexed until the join's
	// final transaction (see room.Service.StoreJoinEvents).
	stored []*room.Event
}

// dropJoin deletes what a failed join stored of its answer.
func (e *Engine) dropJoin(ans *joinAnswer) {
	if ans == nil || len(ans.stored) == 0 {
		return
	}
	err := e.store.Write(func(tx *store.Tx) error {
		e.rooms.DropJoinEvents(tx, ans.stored)
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
	collected := make(chan error, 1)
	go func() {
		for res := range results {
			if res.err != nil || res.ev == nil {
				eventID := ""
				if res.ev != nil {
					eventID = res.ev.ID
				}
				e.log.Info("send_join answer holds an invalid event; dropped", "event_id", eventID, "err", res.err)
				continue
			}
			s.add(res.ev, res.state)
		}
		collected <- s.finish()
	}()

	readErr := decodeJoinAnswer(r, ans, func(raw []byte, state bool) bool {
		select {
		case work <- item{raw, state}:
			return true
		case <-ctx.Done():
			return false
		}
	})
	close(work)
	err := cmp.Or(<-collected, readErr, ctx.Err())
	if err != nil {
		e.dropJoin(ans)
		return nil, err
	}
	return ans, nil
}

// decodeJoinAnswer walks a send_join answer's members, handing each event
// of state and auth_chain to send (which returns false to stop).
func decodeJoinAnswer(r io.Reader, ans *joinAnswer, send func(raw []byte, state bool) bool) error {
	d := jsontext.NewDecoder(r)
	bad := func(err error) error { return fmt.Errorf("%w: send_join answer: %v", room.ErrBadEvent, err) }
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '{' {
		return bad(fmt.Errorf("not an object (%v)", err))
	}
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		if err != nil {
			return bad(err)
		}
		switch name := tok.String(); name {
		case "state", "auth_chain":
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
				if !send(bytes.Clone(v), name == "state") {
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
}

func newJoinStorer(e *Engine, roomNID uint64, ans *joinAnswer, fail func()) *joinStorer {
	s := &joinStorer{e: e, roomNID: roomNID, ans: ans, chunks: make(chan []*room.Event, 4), done: make(chan error, 1), strs: map[string]string{}}
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
		je.state, je.chain = je.state || state, je.chain || !state
		return
	}
	ev.RoomID, ev.Version = s.intern(ev.RoomID), s.intern(ev.Version)
	ev.Type = s.intern(ev.Type)
	for i, id := range ev.AuthEvents {
		ev.AuthEvents[i] = s.intern(id)
	}
	s.ans.events[ev.ID] = &joinEvent{Event: ev, state: state, chain: !state}
	s.ans.order = append(s.ans.order, ev.ID)
	s.chunk = append(s.chunk, ev)
	if len(s.chunk) >= joinChunk {
		s.chunks <- s.chunk
		s.chunk = nil
	}
}

// finish stores the last chunk and returns the first storing error.
func (s *joinStorer) finish() error {
	if len(s.chunk) > 0 {
		s.chunks <- s.chunk
	}
	close(s.chunks)
	return <-s.done
}

// store writes one chunk, then drops its events' JSON.
func (s *joinStorer) store(evs []*room.Event) error {
	err := s.e.store.Write(func(tx *store.Tx) error {
		s.e.rooms.StoreJoinEvents(tx, s.roomNID, evs)
		return nil
	})
	if err != nil {
		return err
	}
	s.ans.stored = append(s.ans.stored, evs...)
	for _, ev := range evs {
		// Stored: the JSON goes, except where the auth rules read it (a
		// restricted join's authorising server's signature).
		if !strings.Contains(string(ev.Content), "join_authorised_via_users_server") {
			ev.Raw = nil
		}
	}
	return nil
}
