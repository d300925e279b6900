package store

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrClosed   = errors.New("store closed")
)

// Store is the node's database. It is safe for concurrent use.
type Store struct {
	db  *bolt.DB
	pos atomic.Uint64 // last committed stream position

	// mu guards the write queue, the leader flag and closed. The first
	// writer to find no leader commits the queue itself (see Write).
	mu      sync.Mutex
	queue   []*writeReq
	leading bool
	idle    sync.Cond // broadcast when the leader steps down; Close waits on it
	closed  bool
	err     error

	// Swept is how many records of joins a killed process left
	// unfinished Open deleted.
	Swept int
}

type writeReq struct {
	fn  func(*Tx) error
	err chan error
}

// schemaVersion is the version this code writes; migrations bring older
// files up to it, one step at a time, each in its own transaction.
const schemaVersion = 2

var migrations = []func(*bolt.Tx) error{
	// 0 → 1: the initial catalog.
	func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	},
	// 1 → 2: the topological and timestamp orderings of room events.
	migrateOrderings,
}

// Open opens or creates the database at path and migrates it.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        2 * time.Second, // another process holds the file: fail, don't hang
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: the database is in use by another edge process", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &Store{db: db}
	s.idle.L = &s.mu
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.fillOrderings(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: filling the event orderings: %w", path, err)
	}
	if s.Swept, err = s.sweepPendingRecords(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		s.pos.Store(getU64(tx.Bucket(bMeta).Get(keyPos)))
		return nil
	}); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) migrate() error {
	for {
		var done bool
		err := s.db.Update(func(tx *bolt.Tx) error {
			var v uint64
			if m := tx.Bucket(bMeta); m != nil {
				v = getU64(m.Get(keySchema))
			}
			if v > schemaVersion {
				return fmt.Errorf("database schema %d is newer than this edge (%d): upgrade edge", v, schemaVersion)
			}
			if v == schemaVersion {
				done = true
				return nil
			}
			if err := migrations[v](tx); err != nil {
				return fmt.Errorf("migrate schema %d → %d: %w", v, v+1, err)
			}
			return tx.Bucket(bMeta).Put(keySchema, u64(v+1))
		})
		if err != nil || done {
			return err
		}
	}
}

// Close waits for pending writes and closes the file. Closing twice is
// harmless.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.err
	}
	s.closed = true
	for s.leading {
		s.idle.Wait()
	}
	s.mu.Unlock()
	s.err = s.db.Close()
	return s.err
}

// Pos is the last committed stream position.
func (s *Store) Pos() uint64 { return s.pos.Load() }

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) })
}

// Write runs fn in a read-write transaction and returns once it is durable.
// fn may run more than once (when a request batched with it fails), so it
// must have no effects outside the transaction; use Tx.OnCommit for those.
//
// Writes are group-committed: every request already waiting shares one
// transaction and one fsync. A writer that finds no commit under way leads:
// it commits the queue on its own goroutine, so a lone request pays no
// hand-off to another goroutine and back (each one a thread wake-up, which
// on an idle machine costs more than the work). If requests queued up
// meanwhile, a new goroutine carries on so the leader's caller can return.
func (s *Store) Write(fn func(*Tx) error) error {
	req := &writeReq{fn: fn, err: make(chan error, 1)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.queue = append(s.queue, req)
	lead := !s.leading
	s.leading = true
	s.mu.Unlock()
	if lead && s.commitNext() {
		go s.drain()
	}
	return <-req.err
}

// maxBatch bounds how many requests share one transaction.
const maxBatch = 256

// commitNext commits one batch from the head of the queue; the caller is
// the leader. It reports whether requests are still waiting (the caller
// stays leader) or steps down.
func (s *Store) commitNext() (more bool) {
	s.mu.Lock()
	n := min(len(s.queue), maxBatch)
	batch := slices.Clone(s.queue[:n])
	s.queue = append(s.queue[:0], s.queue[n:]...)
	s.mu.Unlock()

	s.commit(batch)

	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 {
		return true
	}
	s.leading = false
	s.idle.Broadcast()
	return false
}

// drain leads until the queue is empty.
func (s *Store) drain() {
	for s.commitNext() {
	}
}

// commit runs a batch in one transaction. If one request fails, the
// transaction is rolled back, that request gets its error, and the rest are
// run again without it.
func (s *Store) commit(batch []*writeReq) {
	for len(batch) > 0 {
		var failed = -1
		var failErr error
		var hooks, aborts []func()
		var pos uint64
		start := time.Now()
		err := s.db.Update(func(btx *bolt.Tx) error {
			hooks = hooks[:0]
			for i, r := range batch {
				tx := &Tx{tx: btx, writable: true}
				err := runSafely(r.fn, tx)
				aborts = append(aborts, tx.aborts...)
				if err != nil {
					failed, failErr = i, err
					return err
				}
				hooks = append(hooks, tx.hooks...)
			}
			pos = getU64(btx.Bucket(bMeta).Get(keyPos))
			return nil
		})
		if err != nil {
			for _, h := range aborts {
				h()
			}
		}
		if failed >= 0 {
			batch[failed].err <- failErr
			batch = append(batch[:failed], batch[failed+1:]...)
			continue
		}
		recordCommit(len(batch), time.Since(start), err)
		if err == nil {
			s.pos.Store(pos)
			for _, h := range hooks {
				h()
			}
		}
		for _, r := range batch {
			r.err <- err
		}
		return
	}
}

// runSafely turns a panic in a request's function into an error so one bad
// request cannot take down the writer (and with it every other request).
func runSafely(fn func(*Tx) error, tx *Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in write transaction: %v", p)
		}
	}()
	return fn(tx)
}

// Tx is one transaction. Its methods are the whole storage interface.
type Tx struct {
	tx       *bolt.Tx
	writable bool
	hooks    []func()
	aborts   []func()
}

// Writable tells whether this is a write transaction.
func (t *Tx) Writable() bool { return t.writable }

// Version is the version of the database this transaction reads: bbolt's
// transaction ID, which a write raises by one. A reader whose Version is
// below a write's started before that write committed and does not see it.
func (t *Tx) Version() uint64 { return uint64(t.tx.ID()) }

// OnCommit registers f to run after the transaction is durable.
func (t *Tx) OnCommit(f func()) { t.hooks = append(t.hooks, f) }

// OnAbort registers f to run if the transaction is rolled back, before any
// other write starts: a cache filled inside a transaction (ids it
// allocated are reused after a rollback) can forget what it learnt.
func (t *Tx) OnAbort(f func()) {
	if t.writable {
		t.aborts = append(t.aborts, f)
	}
}

// NextPos allocates the next stream position.
func (t *Tx) NextPos() uint64 {
	m := t.tx.Bucket(bMeta)
	p := getU64(m.Get(keyPos)) + 1
	must(m.Put(keyPos, u64(p)))
	return p
}

// Pos is the latest stream position as seen by this transaction.
func (t *Tx) Pos() uint64 { return getU64(t.tx.Bucket(bMeta).Get(keyPos)) }

// nextNID allocates a numeric id shared by events, state keys, snapshots,
// rooms and filters; one sequence keeps them all unique and ordered.
func (t *Tx) nextNID() uint64 {
	m := t.tx.Bucket(bMeta)
	n := getU64(m.Get(keyNextNID)) + 1
	must(m.Put(keyNextNID, u64(n)))
	return n
}

// must panics on bbolt write errors, which only happen on a read-only
// transaction or an over-long key: programming errors. runSafely turns the
// panic back into an error for the request.
func must(err error) {
	if err != nil {
		panic(err)
	}
}
