package store

import (
	"fmt"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// putOrdered stores an event with the given depth and timestamp and
// appends it to room 7's timeline at pos (or, pos 0, to its backfilled
// history); it returns the event's NID.
func putOrdered(t *testing.T, tx *Tx, id string, depth, ts int64, pos uint64) uint64 {
	t.Helper()
	e := &Event{EventID: id, RoomNID: 7, Pos: pos, JSON: fmt.Appendf(nil, `{"depth":%d,"origin_server_ts":%d}`, depth, ts)}
	if err := tx.PutEvent(e); err != nil {
		panic(err) // inside Write: no t.Fatal
	}
	if pos == 0 {
		tx.AddBackfilled(7, e.NID)
	} else {
		tx.AppendTimeline(7, pos, e.NID)
	}
	return e.NID
}

// names maps NIDs back to event IDs for readable failures.
func names(tx *Tx, nids []uint64) []string {
	var out []string
	for _, n := range nids {
		e, err := tx.Event(n)
		if err != nil {
			out = append(out, "?")
			continue
		}
		out = append(out, e.EventID)
	}
	return out
}

// An event that arrives late with a small depth (a fork's, a gap's) is
// last in stream order but not newest topologically; upper leaves out
// what arrived after it.
func TestTimelineTopological(t *testing.T) {
	s, _ := openTemp(t)
	_ = s.Write(func(tx *Tx) error {
		putOrdered(t, tx, "E1", 1, 100, 10)
		putOrdered(t, tx, "E3", 2, 110, 20)
		putOrdered(t, tx, "E4", 3, 120, 30)
		putOrdered(t, tx, "S2", 2, 105, 40) // forked at E1, arrived late
		putOrdered(t, tx, "E5", 4, 130, 50)
		// Another room's events must not show through.
		e := &Event{EventID: "other", RoomNID: 8, Pos: 60, JSON: []byte(`{"depth":99,"origin_server_ts":1}`)}
		_ = tx.PutEvent(e)
		tx.AppendTimeline(8, 60, e.NID)
		return nil
	})
	walk := func(upper uint64) []string {
		var nids []uint64
		_ = s.View(func(tx *Tx) error {
			tx.TimelineTopological(7, upper, func(_, nid uint64) bool { nids = append(nids, nid); return true })
			return nil
		})
		var out []string
		_ = s.View(func(tx *Tx) error { out = names(tx, nids); return nil })
		return out
	}
	if got, want := walk(1000), []string{"E5", "E4", "S2", "E3", "E1"}; !slices.Equal(got, want) {
		t.Errorf("topological walk = %v, want %v", got, want)
	}
	if got, want := walk(30), []string{"E4", "E3", "E1"}; !slices.Equal(got, want) {
		t.Errorf("walk up to pos 30 = %v, want %v", got, want)
	}
}

func TestEventsByTimestamp(t *testing.T) {
	s, _ := openTemp(t)
	_ = s.Write(func(tx *Tx) error {
		putOrdered(t, tx, "old2", 1, -50, 0) // backfilled: older than the timeline
		putOrdered(t, tx, "old1", 2, 90, 0)
		putOrdered(t, tx, "A", 3, 100, 10)
		putOrdered(t, tx, "same1", 4, 200, 20)
		putOrdered(t, tx, "same2", 5, 200, 30)
		putOrdered(t, tx, "B", 6, 300, 40)
		return nil
	})
	first := func(ts int64, forward bool) string {
		var got string
		_ = s.View(func(tx *Tx) error {
			tx.EventsByTimestamp(7, ts, forward, func(nid uint64) bool {
				got = names(tx, []uint64{nid})[0]
				return false
			})
			return nil
		})
		return got
	}
	for _, c := range []struct {
		ts      int64
		forward bool
		want    string
	}{
		{100, false, "A"}, {100, true, "A"}, // inclusive both ways, as Synapse
		{99, false, "old1"}, {99, true, "A"},
		{200, false, "same2"}, {200, true, "same1"}, // ties: topological order
		{199, true, "same1"}, {201, false, "same2"},
		{-51, false, ""}, {-51, true, "old2"}, {-50, false, "old2"},
		{301, true, ""}, {301, false, "B"},
		{1<<63 - 1, false, "B"}, {-1 << 63, true, "old2"},
	} {
		if got := first(c.ts, c.forward); got != c.want {
			t.Errorf("ts=%d forward=%v: %q, want %q", c.ts, c.forward, got, c.want)
		}
	}
}

// A store written before the orderings existed (schema 1) gets them
// filled on open, a chunk per transaction.
func TestOrderingsMigration(t *testing.T) {
	chunk := orderingsFillChunk
	orderingsFillChunk = 1
	defer func() { orderingsFillChunk = chunk }()
	s, path := openTemp(t)
	_ = s.Write(func(tx *Tx) error {
		putOrdered(t, tx, "bf", 1, 50, 0)
		putOrdered(t, tx, "E1", 2, 100, 10)
		putOrdered(t, tx, "late", 1, 60, 20)
		return nil
	})
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bTopo, bTimestamps} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Put(keySchema, u64(1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	_ = s2.View(func(tx *Tx) error {
		var topo, byTS []uint64
		tx.TimelineTopological(7, 1<<62, func(_, nid uint64) bool { topo = append(topo, nid); return true })
		tx.EventsByTimestamp(7, 0, true, func(nid uint64) bool { byTS = append(byTS, nid); return true })
		if got, want := names(tx, topo), []string{"E1", "late"}; !slices.Equal(got, want) {
			t.Errorf("migrated topological order = %v, want %v", got, want)
		}
		if got, want := names(tx, byTS), []string{"bf", "late", "E1"}; !slices.Equal(got, want) {
			t.Errorf("migrated timestamp order = %v, want %v", got, want)
		}
		if tx.tx.Bucket(bMeta).Get(keyOrderingsFill) != nil {
			t.Error("the fill mark is left after the fill")
		}
		return nil
	})
}

// BenchmarkEventsByTimestamp looks up timestamps in a room of 200k
// events: one seek, however big the room (the scan it replaced read every
// event of the room per request).
func BenchmarkEventsByTimestamp(b *testing.B) {
	s, err := Open(b.TempDir() + "/edge.db")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const n = 200_000
	for chunk := 0; chunk < n; chunk += 10_000 {
		if err := s.Write(func(tx *Tx) error {
			for i := chunk; i < chunk+10_000; i++ {
				e := &Event{EventID: fmt.Sprintf("$e%d", i), RoomNID: 7, Pos: uint64(i + 1), JSON: fmt.Appendf(nil, `{"depth":%d,"origin_server_ts":%d}`, i+1, 1_000_000+int64(i)*3)}
				if err := tx.PutEvent(e); err != nil {
					return err
				}
				tx.AppendTimeline(7, e.Pos, e.NID)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ts := 1_000_000 + int64(i*7919%(n-1))*3 + 1
		var found uint64
		_ = s.View(func(tx *Tx) error {
			tx.EventsByTimestamp(7, ts, i%2 == 0, func(nid uint64) bool { found = nid; return false })
			return nil
		})
		if found == 0 {
			b.Fatalf("nothing found for ts %d", ts)
		}
	}
}
