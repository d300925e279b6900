package store

import (
	"errors"
	"fmt"
	"testing"
)

// TestPendingRecordsSwept: the records of a join a killed process left
// unfinished (noted, never indexed nor cleared) are deleted when the store
// opens again; records of other rooms between its chunks, the records of a
// finished join, and a noted record that got indexed stay.
func TestPendingRecordsSwept(t *testing.T) {
	s, path := openTemp(t)
	var garbage, kept []uint64
	keptIDs := map[uint64]string{}
	add := func(tx *Tx, id string) uint64 {
		e := &Event{EventID: id, RoomNID: 7, Flags: FlagOutlier, JSON: []byte(`{}`)}
		tx.AddEventRecord(e)
		return e.NID
	}
	chunk := func(owner *uint64, prefix string, n int) []uint64 {
		var nids []uint64
		err := s.Write(func(tx *Tx) error {
			nids = nids[:0]
			for i := range n {
				nids = append(nids, add(tx, fmt.Sprintf("$%s-%d", prefix, i)))
			}
			if *owner == 0 {
				*owner = nids[0]
			}
			tx.NotePendingRecords(*owner, nids)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return nids
	}
	other := func(id string) {
		e := &Event{EventID: id, RoomNID: 3, JSON: []byte(`{}`)}
		if err := s.Write(func(tx *Tx) error { return tx.PutEvent(e) }); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, e.NID)
		keptIDs[e.NID] = id
	}

	// The killed join: three chunks (one over a sweep batch), another
	// room's events committed between them, one of its events indexed
	// (by a concurrent fetch of the same event, say) before the kill.
	var killed uint64
	garbage = append(garbage, chunk(&killed, "a", 3)...)
	other("$other1")
	big := chunk(&killed, "b", sweepBatch*2+17)
	other("$other2")
	last := chunk(&killed, "c", 4)
	garbage = append(garbage, big...)
	garbage = append(garbage, last[1:]...)
	if err := s.Write(func(tx *Tx) error {
		tx.IndexEvent("$c-0", last[0])
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	kept = append(kept, last[0])
	keptIDs[last[0]] = "$c-0"

	// A finished join: indexed and cleared in one transaction.
	var done uint64
	finished := chunk(&done, "d", 5)
	if err := s.Write(func(tx *Tx) error {
		for i, nid := range finished {
			tx.IndexEvent(fmt.Sprintf("$d-%d", i), nid)
		}
		tx.ClearPendingRecords(done)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, nid := range finished {
		kept = append(kept, nid)
		keptIDs[nid] = fmt.Sprintf("$d-%d", i)
	}
	// A failed join: deleted and cleared (nothing for the sweep).
	var failed uint64
	dropped := chunk(&failed, "e", 2)
	if err := s.Write(func(tx *Tx) error {
		for _, nid := range dropped {
			tx.DeleteEventRecord(nid)
		}
		tx.ClearPendingRecords(failed)
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	var pending uint64
	_ = s.View(func(tx *Tx) error { pending = tx.PendingRecords(); return nil })
	if want := uint64(len(garbage) + 1); pending != want {
		t.Fatalf("pending records before the kill: %d, want %d", pending, want)
	}
	// The kill: the store is closed with the join's records noted.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Swept != len(garbage) {
		t.Errorf("swept %d records, want %d", s2.Swept, len(garbage))
	}
	_ = s2.View(func(tx *Tx) error {
		for _, nid := range garbage {
			if _, err := tx.Event(nid); !errors.Is(err, ErrNotFound) {
				t.Fatalf("record %d of the killed join survived the sweep (%v)", nid, err)
			}
		}
		for _, nid := range kept {
			e, err := tx.EventByID(keptIDs[nid])
			if err != nil || e.NID != nid {
				t.Errorf("%s (record %d) lost by the sweep: %v", keptIDs[nid], nid, err)
			}
		}
		if n := tx.PendingRecords(); n != 0 {
			t.Errorf("%d records still noted pending after the sweep", n)
		}
		return nil
	})
	// Opening again finds nothing to sweep.
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	s3, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if s3.Swept != 0 {
		t.Errorf("second open swept %d records", s3.Swept)
	}
}
