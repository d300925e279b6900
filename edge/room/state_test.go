package room

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"edge/edge/store"
)

func tempStore(t testing.TB) *store.Store {
	s, err := store.Open(filepath.Join(t.TempDir(), "edge.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func stateMap(st *State) map[uint64]uint64 {
	m := map[uint64]uint64{}
	st.Each(func(k, v uint64) bool { m[k] = v; return true })
	return m
}

// TestLayeredSnapshots applies random changes through the layered snapshot
// writer and checks every snapshot against a plain map, across rebases.
func TestLayeredSnapshots(t *testing.T) {
	s := tempStore(t)
	c := newStateCache(4, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[uint64]uint64{}
	var ids []uint64
	var wants []map[uint64]uint64
	cur := &State{}
	for step := range 3000 {
		changes := map[uint64]uint64{}
		k := uint64(rng.IntN(400) + 1)
		if rng.IntN(10) == 0 {
			changes[k] = 0 // removal
			delete(want, k)
		} else {
			v := uint64(step + 1000)
			changes[k] = v
			want[k] = v
		}
		err := s.Write(func(tx *store.Tx) error {
			id := c.with(tx, cur, changes)
			var err error
			cur, err = c.load(tx, id)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if step%97 == 0 {
			snap := map[uint64]uint64{}
			for k, v := range want {
				snap[k] = v
			}
			ids = append(ids, cur.ID)
			wants = append(wants, snap)
		}
	}
	_ = s.View(func(tx *store.Tx) error {
		for i, id := range ids {
			st, err := c.load(tx, id)
			if err != nil {
				t.Fatal(err)
			}
			got := stateMap(st)
			if len(got) != len(wants[i]) || st.Len() != len(wants[i]) {
				t.Fatalf("snapshot %d: %d entries (Len %d), want %d", id, len(got), st.Len(), len(wants[i]))
			}
			for k, v := range wants[i] {
				if got[k] != v {
					t.Fatalf("snapshot %d key %d = %d, want %d", id, k, got[k], v)
				}
				if gv, ok := st.Get(k); !ok || gv != v {
					t.Fatalf("Get(%d) = %d,%v", k, gv, ok)
				}
			}
			sn, _ := tx.Snapshot(id)
			if sn.Base != 0 {
				if base, _ := tx.Snapshot(sn.Base); base.Base != 0 {
					t.Fatalf("snapshot %d: delta of a delta", id)
				}
			}
		}
		return nil
	})
}

// BenchmarkStateEventBigRoom measures adding one state event to a room
// with 100k state entries: the cost a join into a huge room pays per
// membership change. Run it long enough to span rebases (-benchtime
// 10000x): store-KiB/op is the database growth per state event.
func BenchmarkStateEventBigRoom(b *testing.B) {
	s := tempStore(b)
	c := newStateCache(4, 1<<20)
	var cur *State
	_ = s.Write(func(tx *store.Tx) error {
		full := map[uint64]uint64{}
		for k := uint64(1); k <= 100000; k++ {
			full[k] = k
		}
		id := tx.PutSnapshot(0, entries(full))
		var err error
		cur, err = c.load(tx, id)
		return err
	})
	size := s.Size()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = s.Write(func(tx *store.Tx) error {
			id := c.with(tx, cur, map[uint64]uint64{uint64(i%200000 + 1): uint64(i + 1_000_000)})
			var err error
			cur, err = c.load(tx, id)
			return err
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(s.Size()-size)/1024/float64(b.N), "store-KiB/op")
}
