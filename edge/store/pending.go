package store

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// A join (or a state fetch) stores its answer as unindexed records
// (AddEventRecord) in chunked transactions before one transaction indexes
// them. A process killed in between leaves records nobody references: a
// big room's 100k events. So each chunk notes, in its own transaction,
// the NID ranges it stored under the join's key; the transaction that
// indexes them (or the failed join's cleanup) clears the note, and Open
// sweeps what a killed process left noted.
const nsPendingRecords = "pending_records" // owner(16 hex) first(16 hex) → last NID

// sweepBatch bounds the records one sweeping transaction looks at.
const sweepBatch = 5000

// NotePendingRecords notes records AddEventRecord stored (nids) as
// unindexed records of the join owner (any number unique among joins in
// flight, such as the NID of its first record).
func (t *Tx) NotePendingRecords(owner uint64, nids []uint64) {
	nids = slices.Clone(nids)
	slices.Sort(nids)
	for i := 0; i < len(nids); {
		j := i
		for j+1 < len(nids) && nids[j+1] <= nids[j]+1 {
			j++
		}
		t.PutKV(nsPendingRecords, hex16(owner)+hex16(nids[i]), u64(nids[j]))
		i = j + 1
	}
}

// ClearPendingRecords forgets the notes of the join owner: its records
// are indexed, or deleted.
func (t *Tx) ClearPendingRecords(owner uint64) {
	var keys []string
	t.ScanKV(nsPendingRecords, hex16(owner), func(k string, _ []byte) bool {
		keys = append(keys, k)
		return true
	})
	for _, k := range keys {
		t.DeleteKV(nsPendingRecords, k)
	}
}

// PendingRecords counts the records noted as pending, for tests and
// metrics.
func (t *Tx) PendingRecords() (n uint64) {
	t.ScanKV(nsPendingRecords, "", func(k string, v []byte) bool {
		if first, err := strconv.ParseUint(k[min(16, len(k)):], 16, 64); err == nil && getU64(v) >= first {
			n += getU64(v) - first + 1
		}
		return true
	})
	return n
}

// sweepPendingRecords deletes the records of every noted range that the
// event-ID index does not name (left by a join a killed process did not
// finish; records of other rooms share the NID sequence, are indexed and
// stay), a batch per transaction, and returns how many it deleted. Only
// the noted ranges are read, never the whole events bucket.
func (s *Store) sweepPendingRecords() (deleted int, err error) {
	for {
		done := false
		err := s.db.Update(func(btx *bolt.Tx) error {
			t := &Tx{tx: btx, writable: true}
			var key string
			var last uint64
			t.ScanKV(nsPendingRecords, "", func(k string, v []byte) bool {
				key, last = k, getU64(v)
				return false
			})
			if key == "" {
				done = true
				return nil
			}
			first, perr := strconv.ParseUint(key[min(16, len(key)):], 16, 64)
			t.DeleteKV(nsPendingRecords, key)
			if perr != nil || len(key) != 32 {
				return nil // not a note this code wrote: dropped
			}
			end := min(last, first+sweepBatch-1)
			events, ids := btx.Bucket(bEvents), btx.Bucket(bEventIDs)
			for nid := first; nid <= end && nid >= first; nid++ {
				v := events.Get(u64(nid))
				if v == nil {
					continue
				}
				// The ID alone (the header gives its length): a big
				// join's JSON need not be copied to be deleted.
				if len(v) >= eventHeader {
					idLen := int(binary.BigEndian.Uint16(v[25:]))
					if len(v) >= eventHeader+idLen && getU64(ids.Get(v[eventHeader:eventHeader+idLen])) == nid {
						continue
					}
				}
				must(events.Delete(u64(nid)))
				deleted++
			}
			if end < last {
				t.PutKV(nsPendingRecords, key[:16]+hex16(end+1), u64(last))
			}
			return nil
		})
		if err != nil {
			return deleted, fmt.Errorf("sweeping a killed join's records: %w", err)
		}
		if done {
			return deleted, nil
		}
	}
}
