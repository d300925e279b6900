package integration

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"edge/edge/config"
	"edge/edge/roomfed"
	"edge/edge/store"
)

// TestRoomFedJoinCrashSwept: a join whose process dies after chunks of the
// answer were committed (unindexed records, no room yet) leaves no garbage:
// the next start deletes those records, keeps every other event, and the
// room can be joined again.
func TestRoomFedJoinCrashSwept(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca)
	fullJoin := func(c *config.Config) { c.Federation.FasterJoins = false }
	b := startRFNode(t, ca, fullJoin)
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, body := range []string{"one", "two", "three"} {
		if _, err := alice.SendText(ctxT(t), roomID, body); err != nil {
			t.Fatal(err)
		}
	}
	// What B holds before the join, which the sweep must keep: a room of
	// its own and its events.
	bob := b.register(t, "bob")
	own := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	sent, err := bob.SendText(ctxT(t), own, "mine")
	if err != nil {
		t.Fatal(err)
	}
	ownCreate, _ := rfStateEvent(t, b, own, "m.room.create", "")
	keep := []string{sent.EventID.String(), ownCreate.ID}

	// Two events a chunk: the answer (a handful of events) takes three.
	// After the second chunk's commit the process "dies": B's database is
	// closed under the join, so nothing after that moment reaches the disk
	// (the join's failure cleanup included), as with kill -9.
	roomfed.JoinChunk = 2
	var mu sync.Mutex
	var stored []uint64
	chunks := 0
	crashed, release := make(chan struct{}), make(chan struct{})
	roomfed.JoinChunkStored = func(_ uint64, nids []uint64) {
		mu.Lock()
		stored = append(stored, nids...)
		chunks++
		n := chunks
		mu.Unlock()
		if n == 2 {
			close(crashed)
			<-release
		}
	}
	t.Cleanup(func() { roomfed.JoinChunk, roomfed.JoinChunkStored = 2000, nil })
	joined := make(chan error, 1)
	go func() {
		_, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
		joined <- err
	}()
	select {
	case <-crashed:
	case err := <-joined:
		t.Fatalf("the join ended before its second chunk was stored: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("timed out waiting for the join's second chunk")
	}
	if err := b.Store.Close(); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-joined; err == nil {
		t.Fatal("the join succeeded on a closed database")
	}
	b.stop()
	roomfed.JoinChunkStored = nil
	mu.Lock()
	garbage := append([]uint64(nil), stored...)
	mu.Unlock()
	if len(garbage) != 4 {
		t.Fatalf("%d records stored before the crash, want two chunks of 2", len(garbage))
	}

	// The crash left the records on disk (read without edge, which would
	// sweep them).
	dbPath := filepath.Join(b.Dir, "edge.db")
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	_ = db.View(func(tx *bolt.Tx) error {
		events := tx.Bucket([]byte("eventnid_event"))
		for _, nid := range garbage {
			if events != nil && events.Get(u64Key(nid)) != nil {
				left++
			}
		}
		return nil
	})
	db.Close()
	if left != len(garbage) {
		t.Fatalf("the crash left %d of the %d records stored on disk", left, len(garbage))
	}

	// Restart on the same database (under a new listener, hence a new
	// server name: what B stored stays as it was).
	c := startRFNode(t, ca, fullJoin, func(cfg *config.Config) { cfg.DatabasePath = dbPath })
	if c.Store.Swept < len(garbage) {
		t.Errorf("the restart swept %d records, want at least %d", c.Store.Swept, len(garbage))
	}
	_ = c.Store.View(func(tx *store.Tx) error {
		for _, nid := range garbage {
			if _, err := tx.Event(nid); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("record %d of the crashed join survived the restart (%v)", nid, err)
			}
		}
		for _, id := range keep {
			if _, err := tx.EventByID(id); err != nil {
				t.Errorf("%s lost by the sweep: %v", id, err)
			}
		}
		if n := tx.PendingRecords(); n != 0 {
			t.Errorf("%d records still noted pending", n)
		}
		return nil
	})

	// A later join of the same room works (its records chunked too).
	carol := c.register(t, "carol")
	if _, err := carol.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("joining again after the crash: %v", err)
	}
	msgs, err := carol.Messages(ctxT(t), roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range msgs.Chunk {
		if ev.Type == event.StateMember && ev.GetStateKey() == carol.UserID.String() {
			found = true
		}
	}
	if !found {
		t.Error("carol's join is not in the room's history after joining again")
	}
	if err := c.Store.View(func(tx *store.Tx) error {
		_, err := tx.Room(roomID.String())
		return err
	}); err != nil {
		t.Fatalf("the room after joining again: %v", err)
	}
	_ = c.Store.View(func(tx *store.Tx) error {
		if n := tx.PendingRecords(); n != 0 {
			t.Errorf("%d records still noted pending after a join that succeeded", n)
		}
		return nil
	})
}

func u64Key(v uint64) []byte {
	b := make([]byte, 8)
	for i := range 8 {
		b[7-i] = byte(v >> (8 * i))
	}
	return b
}
