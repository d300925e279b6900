package room

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"edge/edge/store"
)

func TestWeightedLRU(t *testing.T) {
	var counts CacheCounts
	w := newWeighted[string](10, 100, func(v []int) int { return len(v) }, &counts)
	w.Add("a", make([]int, 40))
	w.Add("b", make([]int, 40))
	if got := w.Weight(); got != 80 {
		t.Fatalf("weight %d, want 80", got)
	}
	w.Get("a") // a is now the most recent: b goes first
	w.Add("c", make([]int, 40))
	if _, ok := w.c.Peek("b"); ok {
		t.Error("b kept past the budget; the least recently used entry must go")
	}
	if got := w.Weight(); got != 80 {
		t.Errorf("weight %d after eviction, want 80", got)
	}
	w.Add("huge", make([]int, 101))
	if _, ok := w.c.Peek("huge"); ok || w.Weight() != 80 {
		t.Error("an entry heavier than the whole budget was cached")
	}
	w.Add("a", make([]int, 10)) // replacing a value re-weighs it
	if got := w.Weight(); got != 50 {
		t.Errorf("weight %d after replacing a, want 50", got)
	}
	w.Remove("c")
	if got := w.Weight(); got != 10 {
		t.Errorf("weight %d after removing c, want 10", got)
	}
	// The entry bound applies too.
	for i := range 20 {
		w.Add(string(rune('A'+i)), nil)
	}
	if w.Len() != 10 {
		t.Errorf("%d entries, want the bound 10", w.Len())
	}
	if counts.Hits.Load() != 1 || counts.Misses.Load() != 0 {
		t.Errorf("hits %d misses %d, want 1 and 0", counts.Hits.Load(), counts.Misses.Load())
	}
}

// TestResolutionCache resolves the same two forks of a room twice: the
// second time comes from the cache (same resulting snapshot, no auth-chain
// walk), and a resolution in a rolled-back transaction is not remembered.
func TestResolutionCache(t *testing.T) {
	st := tempStore(t)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s := New(Signer{ServerName: "example.org", KeyID: "ed25519:a", Key: priv},
		CacheSizes{StateSnapshots: 8, StateEntries: 1 << 16, Events: 256, AuthChainIDs: 1 << 16, Resolutions: 8})
	const alice = "@alice:example.org"
	sk := ""
	topic := func(s string) json.RawMessage { b, _ := json.Marshal(map[string]string{"topic": s}); return b }

	var forkA, forkB *State
	var roomID string
	if err := st.Write(func(tx *store.Tx) error {
		var err error
		if roomID, err = s.CreateRoom(tx, CreateOptions{Creator: alice, Version: "10", Preset: "public_chat"}); err != nil {
			return err
		}
		base, err := tx.Room(roomID)
		if err != nil {
			return err
		}
		saved := *base
		// Two topics sent on the same head: a fork.
		if _, err := s.Send(tx, roomID, Proto{Type: "m.room.topic", StateKey: &sk, Sender: alice, Content: topic("A")}); err != nil {
			return err
		}
		a, _ := tx.Room(roomID)
		forkA, err = s.State(tx, a.State)
		if err != nil {
			return err
		}
		tx.PutRoom(&saved)
		if _, err := s.Send(tx, roomID, Proto{Type: "m.room.topic", StateKey: &sk, Sender: alice, Content: topic("B")}); err != nil {
			return err
		}
		b, _ := tx.Room(roomID)
		forkB, err = s.State(tx, b.State)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if forkA.ID == forkB.ID {
		t.Fatal("the two forks share a snapshot")
	}

	errRollBack := errors.New("roll back")
	resolve := func(rollBack bool) (id uint64) {
		err := st.Write(func(tx *store.Tx) error {
			res, err := s.resolve(tx, "10", []*State{forkA, forkB})
			if err != nil {
				return err
			}
			id = res.ID
			if rollBack {
				return errRollBack
			}
			return nil
		})
		if err != nil && !errors.Is(err, errRollBack) {
			t.Fatal(err)
		}
		return id
	}
	hits, chainMisses := Stats.ResolutionCache.Hits.Load(), Stats.AuthChainCache.Misses.Load()
	resolve(true)
	if Stats.AuthChainCache.Misses.Load() == chainMisses {
		t.Error("the first resolution walked no auth chain through the cache")
	}
	first := resolve(false)
	if Stats.ResolutionCache.Hits.Load() != hits {
		t.Fatal("a resolution from a rolled-back transaction was remembered")
	}
	chainMisses = Stats.AuthChainCache.Misses.Load()
	second := resolve(false)
	if Stats.ResolutionCache.Hits.Load() != hits+1 {
		t.Error("the second resolution of the same forks missed the cache")
	}
	if second != first {
		t.Errorf("cached result %d, computed %d", second, first)
	}
	if Stats.AuthChainCache.Misses.Load() != chainMisses {
		t.Error("a cached resolution walked auth chains")
	}
	// In reverse order the key is the same.
	if err := st.View(func(tx *store.Tx) error {
		_, err := s.resolve(tx, "10", []*State{forkB, forkA})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if Stats.ResolutionCache.Hits.Load() != hits+2 {
		t.Error("the same forks in another order missed the cache")
	}
}

// BenchmarkPowerLevelsParse is why parsed power levels are memoised per
// event (Event.pl): the scan costs ~15× an LRU lookup (BenchmarkWeightedGet).
func BenchmarkPowerLevelsParse(b *testing.B) {
	content := []byte(`{"ban":50,"events":{"m.room.avatar":50,"m.room.canonical_alias":50,"m.room.encryption":100,"m.room.history_visibility":100,"m.room.name":50,"m.room.power_levels":100,"m.room.server_acl":100,"m.room.tombstone":100},"events_default":0,"invite":0,"kick":50,"notifications":{"room":50},"redact":50,"state_default":50,"users":{"@alice:example.org":100,"@bob:example.org":50},"users_default":0}`)
	b.ReportAllocs()
	for b.Loop() {
		pl := newPowerLevels(content, "10")
		if !pl.named[0].set {
			b.Fatal("not parsed")
		}
	}
}

func BenchmarkWeightedGet(b *testing.B) {
	w := newWeighted[string](4096, 4096, func(powerLevels) int { return 1 }, new(CacheCounts))
	w.Add("$event", powerLevels{})
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := w.Get("$event"); !ok {
			b.Fatal("miss")
		}
	}
}

func TestPowerLevelsMemo(t *testing.T) {
	ev := &Event{Type: "m.room.power_levels", Content: json.RawMessage(`{"ban":70,"users":{"@a:x":100}}`)}
	hits, misses := Stats.PowerLevelsCache.Hits.Load(), Stats.PowerLevelsCache.Misses.Load()
	first := ev.powerLevels("10")
	second := ev.powerLevels("10")
	if Stats.PowerLevelsCache.Misses.Load() != misses+1 || Stats.PowerLevelsCache.Hits.Load() != hits+1 {
		t.Error("the second read of an event's power levels parsed it again")
	}
	if first.named != second.named || string(first.users) != string(second.users) {
		t.Errorf("memoised %+v, parsed %+v", second, first)
	}
	if v, ok := second.named[plBan].value(); !ok || v != 70 {
		t.Errorf("ban level %d (%v), want 70", v, ok)
	}
}

// TestEvictStaleReader: a read that began before a write rewrote an event
// (its flags here; a partial-state room's join its state) and loads the
// event after that write committed must not leave the old record in the
// cache for every later reader.
func TestEvictStaleReader(t *testing.T) {
	st := tempStore(t)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s := New(Signer{ServerName: "example.org", KeyID: "ed25519:a", Key: priv},
		CacheSizes{StateSnapshots: 8, StateEntries: 1 << 16, Events: 256, AuthChainIDs: 1 << 16, Resolutions: 8})
	const alice = "@alice:example.org"
	var nid uint64
	if err := st.Write(func(tx *store.Tx) error {
		roomID, err := s.CreateRoom(tx, CreateOptions{Creator: alice, Version: "10", Preset: "public_chat"})
		if err != nil {
			return err
		}
		ev, err := s.Send(tx, roomID, Proto{Type: "m.room.message", Sender: alice, Content: json.RawMessage(`{"msgtype":"m.text","body":"hi"}`)})
		if err != nil {
			return err
		}
		nid = ev.NID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.events.Purge()
	// Room to write in without growing the file: bbolt remaps a growing
	// file only once no read is open, which would hold the write up.
	if err := st.Write(func(tx *store.Tx) error {
		for i := range 64 {
			tx.PutKV("test-padding", fmt.Sprint(i), make([]byte, 64<<10))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := st.Write(func(tx *store.Tx) error {
		for i := range 64 {
			tx.DeleteKV("test-padding", fmt.Sprint(i))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	began, written, read := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		read <- st.View(func(tx *store.Tx) error {
			close(began)
			select {
			case <-written:
			case <-time.After(10 * time.Second):
				return errors.New("the write did not commit while a read was open")
			}
			_, err := s.Event(tx, nid) // the old record: this read's snapshot
			return err
		})
	}()
	<-began
	if err := st.Write(func(tx *store.Tx) error {
		se, err := tx.Event(nid)
		if err != nil {
			return err
		}
		se.Flags |= store.FlagSoftFailed
		tx.UpdateEvent(se)
		s.Evict(tx, nid)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	close(written)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	_ = st.View(func(tx *store.Tx) error {
		ev, err := s.Event(tx, nid)
		if err != nil {
			t.Error(err)
		} else if ev.Flags&store.FlagSoftFailed == 0 {
			t.Error("a later reader got the record as it was before the write: a stale reader cached it")
		}
		return nil
	})
}
