package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// Two orderings of a room's events besides the stream order of its
// timeline, each a bucket maintained where events enter the timeline
// (AppendTimeline) or the backfilled history (AddBackfilled):
//
//   - topological: roomNID depth pos → event NID, timeline events only.
//     An initial sync takes the newest events in this order, as Synapse
//     does, so an old event that arrived late (a fork's, a gap's) does not
//     come out as the newest.
//   - by timestamp: roomNID origin_server_ts depth order → event NID, for
//     timeline and backfilled events; order is 1<<63+pos in the timeline
//     and 1<<63-seq in the backfilled history, which is older. It answers
//     timestamp_to_event with one seek.
//
// Signed depths and timestamps are stored with their sign bit flipped, so
// that byte order is numeric order.
var (
	bTopo       = []byte("roomniddepthpos_eventnid")
	bTimestamps = []byte("roomnidtsdepthorder_eventnid")
)

const orderMid = uint64(1) << 63

func signedKey(v int64) uint64 { return uint64(v) ^ orderMid }

func keyOf(parts ...uint64) []byte {
	b := make([]byte, 8*len(parts))
	for i, p := range parts {
		binary.BigEndian.PutUint64(b[8*i:], p)
	}
	return b
}

// eventOrder is what the orderings read of an event's JSON.
type eventOrder struct {
	Depth int64 `json:"depth"`
	TS    int64 `json:"origin_server_ts"`
}

func (t *Tx) eventOrder(nid uint64) (eventOrder, bool) {
	var o eventOrder
	v := t.tx.Bucket(bEvents).Get(u64(nid))
	if v == nil {
		return o, false
	}
	e, err := decodeEvent(nid, v)
	if err != nil || json.Unmarshal(e.JSON, &o) != nil {
		return o, false
	}
	return o, true
}

// indexTimeline adds a timeline event to both orderings.
func (t *Tx) indexTimeline(roomNID, pos, eventNID uint64) {
	o, ok := t.eventOrder(eventNID)
	if !ok {
		return
	}
	must(t.tx.Bucket(bTopo).Put(keyOf(roomNID, signedKey(o.Depth), pos), u64(eventNID)))
	must(t.tx.Bucket(bTimestamps).Put(keyOf(roomNID, signedKey(o.TS), signedKey(o.Depth), orderMid+pos), u64(eventNID)))
}

// indexBackfilled adds a backfilled event to the timestamp ordering.
func (t *Tx) indexBackfilled(roomNID, seq, eventNID uint64) {
	o, ok := t.eventOrder(eventNID)
	if !ok {
		return
	}
	must(t.tx.Bucket(bTimestamps).Put(keyOf(roomNID, signedKey(o.TS), signedKey(o.Depth), orderMid-seq), u64(eventNID)))
}

// TimelineTopological walks a room's timeline events newest first in
// topological order (depth, then stream position), leaving out those after
// stream position upper, calling fn with each (pos, event NID) until fn
// returns false.
func (t *Tx) TimelineTopological(roomNID, upper uint64, fn func(pos, eventNID uint64) bool) {
	c := t.tx.Bucket(bTopo).Cursor()
	p := u64(roomNID)
	k, v := c.Seek(u64(roomNID + 1))
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, p); k, v = c.Prev() {
		pos := getU64(k[16:])
		if pos > upper {
			continue
		}
		if !fn(pos, getU64(v)) {
			return
		}
	}
}

// EventsByTimestamp walks a room's timeline and backfilled events from the
// one closest to ts in the given direction (origin_server_ts >= ts
// forwards, <= ts backwards; ties broken by depth, then by order in the
// room), away from ts, calling fn with each event NID until it returns
// false.
func (t *Tx) EventsByTimestamp(roomNID uint64, ts int64, forward bool, fn func(eventNID uint64) bool) {
	c := t.tx.Bucket(bTimestamps).Cursor()
	p := u64(roomNID)
	if forward {
		for k, v := c.Seek(keyOf(roomNID, signedKey(ts))); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if !fn(getU64(v)) {
				return
			}
		}
		return
	}
	var k, v []byte
	if ts == int64(^uint64(0)>>1) {
		k, v = c.Seek(u64(roomNID + 1))
	} else {
		k, v = c.Seek(keyOf(roomNID, signedKey(ts+1)))
	}
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, p); k, v = c.Prev() {
		if !fn(getU64(v)) {
			return
		}
	}
}

// keyOrderingsFill, in the meta bucket, marks orderings still being
// filled for a store from before them: its value is "f" and the timeline
// key to go on from (none: the start).
var keyOrderingsFill = []byte("orderings_fill")

// orderingsFillChunk bounds the timeline events one fill transaction
// indexes: a transaction's writes are held in memory until it commits,
// and an old store may hold millions of events.
var orderingsFillChunk = 20_000

// migrateOrderings (schema 1 → 2) creates both orderings and marks them
// to be filled (fillOrderings) from the timelines and backfilled
// histories already stored.
func migrateOrderings(btx *bolt.Tx) error {
	for _, b := range [][]byte{bTopo, bTimestamps} {
		if _, err := btx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return btx.Bucket(bMeta).Put(keyOrderingsFill, []byte("f"))
}

// fillOrderings indexes the events a store held before the orderings
// existed, a chunk per transaction; it resumes where it stopped if the
// process did. Indexing an event twice writes the same keys.
func (s *Store) fillOrderings() error {
	for {
		done := false
		err := s.db.Update(func(btx *bolt.Tx) error {
			meta := btx.Bucket(bMeta)
			mark := meta.Get(keyOrderingsFill)
			if len(mark) == 0 {
				done = true
				return nil
			}
			from := mark[1:]
			t := &Tx{tx: btx, writable: true}
			c := btx.Bucket(bTimeline).Cursor()
			n := 0
			k, v := c.Seek(bytes.Clone(from))
			for ; k != nil && n < orderingsFillChunk; k, v = c.Next() {
				t.indexTimeline(getU64(k), getU64(k[8:]), getU64(v))
				n++
			}
			if k != nil {
				return meta.Put(keyOrderingsFill, append([]byte("f"), k...))
			}
			t.ScanKV(backfillOrderNS, "", func(k string, v []byte) bool {
				if len(k) == 32 && len(v) == 8 {
					room, err1 := parseHex16(k[:16])
					seq, err2 := parseHex16(k[16:])
					if err1 == nil && err2 == nil {
						t.indexBackfilled(room, seq, getU64(v))
					}
				}
				return true
			})
			return meta.Delete(keyOrderingsFill)
		})
		if err != nil || done {
			return err
		}
	}
}

func parseHex16(s string) (uint64, error) { return strconv.ParseUint(s, 16, 64) }
