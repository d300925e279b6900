package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edge.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestUsersDevicesSessions(t *testing.T) {
	s, _ := openTemp(t)
	err := s.Write(func(tx *Tx) error {
		if err := tx.CreateUser(&User{Localpart: "alice", PasswordHash: "h"}); err != nil {
			return err
		}
		if err := tx.CreateUser(&User{Localpart: "alice"}); !errors.Is(err, ErrExists) {
			return fmt.Errorf("duplicate user: %v", err)
		}
		tx.PutDevice(&Device{UserID: "@alice:x", DeviceID: "D1", TokenHash: "t1"})
		tx.PutDevice(&Device{UserID: "@alice:x", DeviceID: "D2", TokenHash: "t2"})
		tx.PutDevice(&Device{UserID: "@alice:xy", DeviceID: "D3", TokenHash: "t3"}) // prefix sibling
		tx.PutSession("t1", &Session{UserID: "@alice:x", DeviceID: "D1"})
		tx.PutSession("t2", &Session{UserID: "@alice:x", DeviceID: "D2"})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.View(func(tx *Tx) error {
		ds, _ := tx.Devices("@alice:x")
		if len(ds) != 2 {
			t.Errorf("devices = %d, want 2 (prefix scan must not leak into @alice:xy)", len(ds))
		}
		return nil
	})
	if err := s.Write(func(tx *Tx) error { return tx.DeleteDevice("@alice:x", "D1") }); err != nil {
		t.Fatal(err)
	}
	_ = s.View(func(tx *Tx) error {
		if _, err := tx.Session("t1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("session of deleted device: %v", err)
		}
		if _, err := tx.Session("t2"); err != nil {
			t.Errorf("other session gone: %v", err)
		}
		return nil
	})
}

// TestGroupCommit: concurrent writers all commit, each position is handed
// out once, and a failing or panicking request does not take its batch
// companions down with it.
func TestGroupCommit(t *testing.T) {
	s, path := openTemp(t)
	const n = 200
	var wg sync.WaitGroup
	positions := make(chan uint64, n)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pos uint64
			err := s.Write(func(tx *Tx) error {
				switch i % 10 {
				case 3:
					tx.NextPos() // a write that is then abandoned
					return errors.New("refused")
				case 7:
					panic("boom")
				}
				pos = tx.NextPos()
				tx.PutKV("test", fmt.Sprintf("k%03d", i), []byte("v"))
				return nil
			})
			if i%10 == 3 || i%10 == 7 {
				if err == nil {
					errs <- fmt.Errorf("request %d: error lost", i)
				}
				return
			}
			if err != nil {
				errs <- err
				return
			}
			positions <- pos
		}()
	}
	wg.Wait()
	close(positions)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[uint64]bool{}
	for p := range positions {
		if seen[p] {
			t.Fatalf("position %d handed out twice", p)
		}
		seen[p] = true
	}
	if len(seen) != n-40 {
		t.Fatalf("%d successful writes, want %d", len(seen), n-40)
	}
	if s.Pos() != uint64(n-40) {
		t.Errorf("Pos() = %d, want %d (failed requests' positions must roll back)", s.Pos(), n-40)
	}
	// Everything acknowledged is in the file after a reopen.
	s.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	count := 0
	_ = s2.View(func(tx *Tx) error {
		tx.ScanKV("test", "k", func(string, []byte) bool { count++; return true })
		return nil
	})
	if count != n-40 {
		t.Errorf("after reopen %d keys, want %d", count, n-40)
	}
}

// TestGroupCommitBatches checks that requests arriving while a commit is
// under way share the next transaction, and that the leader's caller is
// answered without waiting for them.
func TestGroupCommitBatches(t *testing.T) {
	s, _ := openTemp(t)
	const waiting = 50
	release := make(chan struct{})
	leaderDone := make(chan error, 1)
	go func() {
		leaderDone <- s.Write(func(tx *Tx) error {
			<-release
			tx.PutKV("test", "leader", []byte("v"))
			return nil
		})
	}()
	// Wait until the leader is inside its transaction.
	for {
		s.mu.Lock()
		started := s.leading && len(s.queue) == 0
		s.mu.Unlock()
		if started {
			break
		}
		time.Sleep(time.Millisecond)
	}
	commits, requests := Stats.Commits.Load(), Stats.Requests.Load()
	var wg sync.WaitGroup
	for i := range waiting {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Write(func(tx *Tx) error {
				tx.PutKV("test", fmt.Sprint("k", i), []byte("v"))
				return nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	for {
		s.mu.Lock()
		n := len(s.queue)
		s.mu.Unlock()
		if n == waiting {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-leaderDone; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if c, r := Stats.Commits.Load()-commits, Stats.Requests.Load()-requests; c != 2 || r != waiting+1 {
		t.Errorf("%d requests in %d commits, want %d in 2 (the leader's, then the rest together)", r, c, waiting+1)
	}
}

// TestOnAbort: abort hooks run for every attempt that was rolled back —
// the failing request's and those of requests re-run after it — and never
// for a committed one.
func TestOnAbort(t *testing.T) {
	s, _ := openTemp(t)
	var aborted, committed atomic.Int64
	if err := s.Write(func(tx *Tx) error {
		tx.OnAbort(func() { aborted.Add(1) })
		tx.OnCommit(func() { committed.Add(1) })
		return errors.New("refused")
	}); err == nil {
		t.Fatal("error lost")
	}
	if aborted.Load() != 1 || committed.Load() != 0 {
		t.Fatalf("after a refused write: %d aborts, %d commits; want 1, 0", aborted.Load(), committed.Load())
	}
	aborted.Store(0)
	if err := s.Write(func(tx *Tx) error {
		tx.OnAbort(func() { aborted.Add(1) })
		tx.PutKV("test", "k", []byte("v"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if aborted.Load() != 0 {
		t.Fatal("an abort hook ran for a committed write")
	}
}

func TestSchemaVersion(t *testing.T) {
	s, path := openTemp(t)
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bMeta).Put(keySchema, u64(schemaVersion+1)) })
	db.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("opened a database from a newer edge")
	}
}

func TestSnapshotsAndTimeline(t *testing.T) {
	s, _ := openTemp(t)
	var base, delta uint64
	_ = s.Write(func(tx *Tx) error {
		base = tx.PutSnapshot(0, []StateEntry{{3, 30}, {1, 10}, {2, 20}})
		delta = tx.PutSnapshot(base, []StateEntry{{2, 0}, {4, 40}})
		for pos := uint64(1); pos <= 5; pos++ {
			tx.AppendTimeline(7, pos*10, 100+pos)
			tx.AppendTimeline(8, pos*10+1, 200+pos) // another room, interleaved
		}
		return nil
	})
	_ = s.View(func(tx *Tx) error {
		b, err := tx.Snapshot(base)
		if err != nil || b.Base != 0 || len(b.Entries) != 3 || b.Entries[0].Key != 1 {
			t.Errorf("base snapshot = %+v, %v", b, err)
		}
		d, err := tx.Snapshot(delta)
		if err != nil || d.Base != base || len(d.Entries) != 2 {
			t.Errorf("delta snapshot = %+v, %v", d, err)
		}
		var fwd, back []uint64
		tx.Timeline(7, 20, false, func(pos, nid uint64) bool { fwd = append(fwd, nid); return true })
		tx.Timeline(7, 35, true, func(pos, nid uint64) bool { back = append(back, nid); return len(back) < 2 })
		if fmt.Sprint(fwd) != "[102 103 104 105]" {
			t.Errorf("forward from 20 = %v", fwd)
		}
		if fmt.Sprint(back) != "[103 102]" {
			t.Errorf("backward from 35 = %v", back)
		}
		var all []uint64
		tx.Timeline(8, 1<<62, true, func(pos, nid uint64) bool { all = append(all, nid); return true })
		if len(all) != 5 || all[0] != 205 {
			t.Errorf("backward over room 8 = %v", all)
		}
		return nil
	})
}

func TestAccountDataAndReceiptStreams(t *testing.T) {
	s, _ := openTemp(t)
	var mid uint64
	_ = s.Write(func(tx *Tx) error {
		tx.PutAccountData("@a:x", "", "m.direct", json.RawMessage(`{"v":1}`))
		mid = tx.PutAccountData("@a:x", "!r:x", "m.tag", json.RawMessage(`{"tags":{}}`))
		tx.PutAccountData("@a:x", "", "m.direct", json.RawMessage(`{"v":2}`))
		tx.PutAccountData("@b:x", "", "m.direct", json.RawMessage(`{"v":9}`))
		tx.PutReceipt(&Receipt{RoomID: "!r:x", Type: "m.read", UserID: "@a:x", EventID: "$1"})
		tx.PutReceipt(&Receipt{RoomID: "!r:x", Type: "m.read", UserID: "@a:x", EventID: "$2"})
		return nil
	})
	_ = s.View(func(tx *Tx) error {
		all, _ := tx.AccountDataSince("@a:x", 0)
		if len(all) != 2 {
			t.Errorf("all account data = %d entries, want 2", len(all))
		}
		since, _ := tx.AccountDataSince("@a:x", mid)
		if len(since) != 1 || string(since[0].Content) != `{"v":2}` {
			t.Errorf("since %d: %+v", mid, since)
		}
		rs, _ := tx.ReceiptsSince("!r:x", 0)
		if len(rs) != 1 || rs[0].EventID != "$2" {
			t.Errorf("receipts = %+v, want only the newest", rs)
		}
		return nil
	})
}

// TestJoinRecords: a join's events are stored as records under a room
// NID reserved before the room exists, indexed at the end (an event
// already known keeps its NID, the duplicate record goes), or deleted if
// the join fails; the room, once created, takes the reserved NID.
func TestJoinRecords(t *testing.T) {
	s, _ := openTemp(t)
	var roomNID, known, dup, fresh, dropped uint64
	_ = s.Write(func(tx *Tx) error {
		old := &Event{EventID: "$known", JSON: []byte(`{}`)}
		if err := tx.PutEvent(old); err != nil {
			return err
		}
		known = old.NID
		roomNID = tx.ReserveRoomNID("!r:x")
		if again := tx.ReserveRoomNID("!r:x"); again != roomNID {
			t.Errorf("reserved twice: %d then %d", roomNID, again)
		}
		for _, e := range []*Event{{EventID: "$known"}, {EventID: "$fresh"}, {EventID: "$dropped"}} {
			e.RoomNID, e.Flags, e.JSON = roomNID, FlagOutlier, []byte(`{"a":1}`)
			tx.AddEventRecord(e)
			switch e.EventID {
			case "$known":
				dup = e.NID
			case "$fresh":
				fresh = e.NID
			default:
				dropped = e.NID
			}
		}
		return nil
	})
	_ = s.Write(func(tx *Tx) error {
		if _, err := tx.EventNID("$fresh"); !errors.Is(err, ErrNotFound) {
			t.Errorf("an unindexed record is found by ID: %v", err)
		}
		if got := tx.IndexEvent("$known", dup); got != known {
			t.Errorf("indexing a known event gave NID %d, want its own %d", got, known)
		}
		if got := tx.IndexEvent("$fresh", fresh); got != fresh {
			t.Errorf("indexing a new event gave NID %d, want %d", got, fresh)
		}
		tx.DeleteEventRecord(dropped)
		r := &Room{RoomID: "!r:x", Version: "10"}
		if err := tx.CreateRoom(r); err != nil || r.NID != roomNID {
			t.Errorf("room created with NID %d (%v), want the reserved %d", r.NID, err, roomNID)
		}
		return nil
	})
	_ = s.View(func(tx *Tx) error {
		for nid, want := range map[uint64]bool{known: true, dup: false, fresh: true, dropped: false} {
			if _, err := tx.Event(nid); (err == nil) != want {
				t.Errorf("record %d present = %v, want %v", nid, err == nil, want)
			}
		}
		if e, err := tx.EventByID("$fresh"); err != nil || e.RoomNID != roomNID || e.Flags != FlagOutlier {
			t.Errorf("$fresh = %+v, %v", e, err)
		}
		if id, err := tx.RoomID(roomNID); err != nil || id != "!r:x" {
			t.Errorf("room NID %d names %q, %v", roomNID, id, err)
		}
		return nil
	})
}
