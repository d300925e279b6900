package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

var errStop = errors.New("stop")

// Event is a stored PDU with its bookkeeping. JSON is the PDU exactly as it
// was built or received (for a redacted event: its redacted form).
type Event struct {
	NID         uint64
	EventID     string
	RoomNID     uint64
	Pos         uint64 // stream position in the room timeline; 0 for outliers
	StateBefore uint64 // snapshot id of the room state before this event
	Flags       EventFlags
	JSON        []byte
}

// EventFlags mark how an event was accepted.
type EventFlags uint8

const (
	FlagRejected   EventFlags = 1 << iota // failed auth: kept to answer federation, never shown
	FlagSoftFailed                        // passed auth but not current state: not in timelines
	FlagOutlier                           // known without its state (auth chains, backfill)
	FlagRedacted                          // JSON has been redacted
	FlagBackfilled                        // fetched with /backfill: an outlier shown before the room's timeline
)

// Event record layout: roomNID(8) pos(8) stateBefore(8) flags(1)
// idLen(2) eventID JSON. Fixed binary header, so the hot paths (sync,
// pagination) decode without reflection.
const eventHeader = 8 + 8 + 8 + 1 + 2

func encodeEvent(e *Event) []byte {
	b := make([]byte, eventHeader, eventHeader+len(e.EventID)+len(e.JSON))
	binary.BigEndian.PutUint64(b[0:], e.RoomNID)
	binary.BigEndian.PutUint64(b[8:], e.Pos)
	binary.BigEndian.PutUint64(b[16:], e.StateBefore)
	b[24] = byte(e.Flags)
	binary.BigEndian.PutUint16(b[25:], uint16(len(e.EventID)))
	b = append(b, e.EventID...)
	return append(b, e.JSON...)
}

func decodeEvent(nid uint64, b []byte) (*Event, error) {
	if len(b) < eventHeader {
		return nil, fmt.Errorf("event %d: corrupt record", nid)
	}
	idLen := int(binary.BigEndian.Uint16(b[25:]))
	if len(b) < eventHeader+idLen {
		return nil, fmt.Errorf("event %d: corrupt record", nid)
	}
	return &Event{
		NID:         nid,
		RoomNID:     binary.BigEndian.Uint64(b[0:]),
		Pos:         binary.BigEndian.Uint64(b[8:]),
		StateBefore: binary.BigEndian.Uint64(b[16:]),
		Flags:       EventFlags(b[24]),
		EventID:     string(b[eventHeader : eventHeader+idLen]),
		JSON:        bytes.Clone(b[eventHeader+idLen:]),
	}, nil
}

// PutEvent stores a new event, assigning its NID. ErrExists if the event ID is known.
func (t *Tx) PutEvent(e *Event) error {
	ids := t.tx.Bucket(bEventIDs)
	if ids.Get([]byte(e.EventID)) != nil {
		return ErrExists
	}
	e.NID = t.nextNID()
	must(ids.Put([]byte(e.EventID), u64(e.NID)))
	must(t.tx.Bucket(bEvents).Put(u64(e.NID), encodeEvent(e)))
	return nil
}

// AddEventRecord stores an event's record under a new NID without
// indexing its ID. A big join's answer is stored this way as it arrives:
// NIDs are sequential, so chunks append to the records, where indexing
// 100k hash-ordered IDs chunk by chunk would rewrite most of the index
// on every commit. IndexEvent then indexes them in one sorted pass.
func (t *Tx) AddEventRecord(e *Event) {
	e.NID = t.nextNID()
	must(t.tx.Bucket(bEvents).Put(u64(e.NID), encodeEvent(e)))
}

// IndexEvent indexes the ID of a record stored by AddEventRecord and
// returns the event's NID: nid, or the NID of a record already indexed
// under that ID, in which case the record at nid is deleted.
func (t *Tx) IndexEvent(eventID string, nid uint64) uint64 {
	ids := t.tx.Bucket(bEventIDs)
	if v := ids.Get([]byte(eventID)); v != nil {
		if old := getU64(v); old != nid {
			t.DeleteEventRecord(nid)
			return old
		}
		return nid
	}
	must(ids.Put([]byte(eventID), u64(nid)))
	return nid
}

// UnindexEvent removes eventID from the index if it names nid.
func (t *Tx) UnindexEvent(eventID string, nid uint64) {
	ids := t.tx.Bucket(bEventIDs)
	if v := ids.Get([]byte(eventID)); v != nil && getU64(v) == nid {
		must(ids.Delete([]byte(eventID)))
	}
}

// DeleteEventRecord deletes a record that AddEventRecord stored and no
// index names (a join that failed).
func (t *Tx) DeleteEventRecord(nid uint64) {
	must(t.tx.Bucket(bEvents).Delete(u64(nid)))
}

// UpdateEvent rewrites an existing event's record (redaction, flags).
func (t *Tx) UpdateEvent(e *Event) {
	must(t.tx.Bucket(bEvents).Put(u64(e.NID), encodeEvent(e)))
}

// EventNID resolves an event ID.
func (t *Tx) EventNID(eventID string) (uint64, error) {
	v := t.tx.Bucket(bEventIDs).Get([]byte(eventID))
	if v == nil {
		return 0, ErrNotFound
	}
	return getU64(v), nil
}

// Event loads an event by NID.
func (t *Tx) Event(nid uint64) (*Event, error) {
	v := t.tx.Bucket(bEvents).Get(u64(nid))
	if v == nil {
		return nil, ErrNotFound
	}
	return decodeEvent(nid, v)
}

// EventByID loads an event by event ID.
func (t *Tx) EventByID(eventID string) (*Event, error) {
	nid, err := t.EventNID(eventID)
	if err != nil {
		return nil, err
	}
	return t.Event(nid)
}

// StateKeyNID returns the numeric id of a (type, state_key) pair, creating
// it when create is set; ErrNotFound otherwise.
func (t *Tx) StateKeyNID(evType, stateKey string, create bool) (uint64, error) {
	k := stateKeyKey(evType, stateKey)
	if v := t.tx.Bucket(bStateKeys).Get(k); v != nil {
		return getU64(v), nil
	}
	if !create {
		return 0, ErrNotFound
	}
	nid := t.nextNID()
	must(t.tx.Bucket(bStateKeys).Put(k, u64(nid)))
	must(t.tx.Bucket(bStateKeyNIDs).Put(u64(nid), k))
	return nid, nil
}

// StateKey resolves a state-key NID to (type, state_key).
func (t *Tx) StateKey(nid uint64) (evType, stateKey string, err error) {
	v := t.tx.Bucket(bStateKeyNIDs).Get(u64(nid))
	if v == nil {
		return "", "", ErrNotFound
	}
	i := bytes.IndexByte(v, 0)
	return string(v[:i]), string(v[i+1:]), nil
}

// StateEntry is one (state key, event) pair of a room state.
type StateEntry struct {
	Key   uint64 // state-key NID
	Event uint64 // event NID; 0 in a delta means "removed"
}

// Snapshot is a stored room state. A base snapshot (Base == 0) lists the
// whole state; a delta lists its differences from Base. Deltas are always
// against a base, never chained, so reading any state costs one base (which
// callers cache) plus one delta.
type Snapshot struct {
	ID      uint64
	Base    uint64
	Entries []StateEntry // sorted by Key
}

// PutSnapshot stores a snapshot and returns its id.
func (t *Tx) PutSnapshot(base uint64, entries []StateEntry) uint64 {
	slices.SortFunc(entries, func(a, b StateEntry) int {
		switch {
		case a.Key < b.Key:
			return -1
		case a.Key > b.Key:
			return 1
		}
		return 0
	})
	id := t.nextNID()
	v := make([]byte, 8+16*len(entries))
	binary.BigEndian.PutUint64(v, base)
	for i, e := range entries {
		binary.BigEndian.PutUint64(v[8+16*i:], e.Key)
		binary.BigEndian.PutUint64(v[16+16*i:], e.Event)
	}
	must(t.tx.Bucket(bSnapshots).Put(u64(id), v))
	return id
}

// Snapshot loads a snapshot as stored (a base or a delta).
func (t *Tx) Snapshot(id uint64) (*Snapshot, error) {
	v := t.tx.Bucket(bSnapshots).Get(u64(id))
	if v == nil || (len(v)-8)%16 != 0 {
		return nil, fmt.Errorf("snapshot %d: %w", id, ErrNotFound)
	}
	s := &Snapshot{ID: id, Base: getU64(v), Entries: make([]StateEntry, (len(v)-8)/16)}
	for i := range s.Entries {
		s.Entries[i] = StateEntry{Key: getU64(v[8+16*i:]), Event: getU64(v[16+16*i:])}
	}
	return s, nil
}

// Room is a room's current position in the graph.
type Room struct {
	NID         uint64   `json:"nid"`
	RoomID      string   `json:"room_id"`
	Version     string   `json:"version"`
	State       uint64   `json:"state"`       // snapshot id of the current state
	Extremities []uint64 `json:"extremities"` // forward extremities (event NIDs)
	Depth       int64    `json:"depth"`       // greatest depth seen
	LastPos     uint64   `json:"last_pos"`    // stream position of the newest timeline event
}

// CreateRoom stores a new room, assigning its NID (the one reserved for
// it, if any).
func (t *Tx) CreateRoom(r *Room) error {
	b := t.tx.Bucket(bRooms)
	if b.Get([]byte(r.RoomID)) != nil {
		return ErrExists
	}
	if v, err := t.GetKV(nsReservedRoomNID, r.RoomID); err == nil {
		r.NID = getU64(v)
		t.DeleteKV(nsReservedRoomNID, r.RoomID)
	} else {
		r.NID = t.nextNID()
		must(t.tx.Bucket(bRoomNIDs).Put(u64(r.NID), []byte(r.RoomID)))
	}
	putJSON(b, []byte(r.RoomID), r)
	return nil
}

// nsReservedRoomNID maps a room not created yet to the NID reserved for it.
const nsReservedRoomNID = "room_nid_reserved"

// ReserveRoomNID returns the NID the room has or will have: a join's
// answer is stored in chunks as it arrives, before the room is created,
// and its events carry their room's NID. A join that fails leaves the
// reservation (and the events) for the next attempt to reuse.
func (t *Tx) ReserveRoomNID(roomID string) uint64 {
	if r, err := t.Room(roomID); err == nil {
		return r.NID
	}
	if v, err := t.GetKV(nsReservedRoomNID, roomID); err == nil {
		return getU64(v)
	}
	nid := t.nextNID()
	must(t.tx.Bucket(bRoomNIDs).Put(u64(nid), []byte(roomID)))
	t.PutKV(nsReservedRoomNID, roomID, u64(nid))
	return nid
}

// PutRoom updates a room.
func (t *Tx) PutRoom(r *Room) { putJSON(t.tx.Bucket(bRooms), []byte(r.RoomID), r) }

// Room loads a room by ID.
func (t *Tx) Room(roomID string) (*Room, error) {
	var r Room
	if err := getJSON(t.tx.Bucket(bRooms).Get([]byte(roomID)), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// RoomID resolves a room NID.
func (t *Tx) RoomID(nid uint64) (string, error) {
	v := t.tx.Bucket(bRoomNIDs).Get(u64(nid))
	if v == nil {
		return "", ErrNotFound
	}
	return string(v), nil
}

// Rooms calls fn for every room until it returns false.
func (t *Tx) Rooms(fn func(*Room) bool) error {
	err := t.tx.Bucket(bRooms).ForEach(func(_, v []byte) error {
		var r Room
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		if !fn(&r) {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		return nil
	}
	return err
}

// AppendTimeline places an event at stream position pos in its room's timeline.
func (t *Tx) AppendTimeline(roomNID, pos, eventNID uint64) {
	must(t.tx.Bucket(bTimeline).Put(nidPos(roomNID, pos), u64(eventNID)))
	t.indexTimeline(roomNID, pos, eventNID)
}

// Timeline walks a room's timeline from position from (inclusive), forwards
// or backwards, calling fn with each (pos, event NID) until fn returns false.
func (t *Tx) Timeline(roomNID, from uint64, backwards bool, fn func(pos, eventNID uint64) bool) {
	c := t.tx.Bucket(bTimeline).Cursor()
	p := u64(roomNID)
	var k, v []byte
	if backwards {
		k, v = c.Seek(nidPos(roomNID, from))
		if k == nil || !bytes.HasPrefix(k, p) || getU64(k[8:]) > from {
			k, v = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, p); k, v = c.Prev() {
			if !fn(getU64(k[8:]), getU64(v)) {
				return
			}
		}
		return
	}
	for k, v = c.Seek(nidPos(roomNID, from)); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if !fn(getU64(k[8:]), getU64(v)) {
			return
		}
	}
}

// Membership is a local user's current relation to a room.
type Membership struct {
	RoomID     string `json:"room_id"`
	Membership string `json:"membership"`
	Pos        uint64 `json:"pos"`   // stream position of the member event
	Event      uint64 `json:"event"` // member event NID
	Forgotten  bool   `json:"forgotten,omitempty"`
}

// SetMembership records a local user's membership in a room.
func (t *Tx) SetMembership(userID string, m *Membership) {
	putJSON(t.tx.Bucket(bMemberships), join(userID, m.RoomID), m)
}

// Membership loads a local user's membership in one room.
func (t *Tx) Membership(userID, roomID string) (*Membership, error) {
	var m Membership
	if err := getJSON(t.tx.Bucket(bMemberships).Get(join(userID, roomID)), &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Memberships lists every room a local user has a membership in.
func (t *Tx) Memberships(userID string) ([]*Membership, error) {
	var out []*Membership
	p := prefix(userID)
	c := t.tx.Bucket(bMemberships).Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		var m Membership
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, err
		}
		out = append(out, &m)
	}
	return out, nil
}

// AddRelation indexes child as relating to parent with relType (m.thread,
// m.annotation, m.replace, m.reference …).
func (t *Tx) AddRelation(parent, relType string, child uint64) {
	k := append(prefix(parent, relType), u64(child)...)
	must(t.tx.Bucket(bRelations).Put(k, nil))
}

// Relations lists the NIDs of events relating to parent, optionally of one
// rel_type, in storage order.
func (t *Tx) Relations(parent, relType string) []uint64 {
	p := prefix(parent)
	if relType != "" {
		p = prefix(parent, relType)
	}
	var out []uint64
	c := t.tx.Bucket(bRelations).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		out = append(out, getU64(k[len(k)-8:]))
	}
	return out
}

// Backfilled history lives before a room's timeline, which has no stream
// positions to spare below its first event: each room numbers its
// backfilled events 1, 2, … from newest to oldest (a later batch is
// older), in the KV namespaces below. An event is in it at most once.
const (
	backfillOrderNS = "backfill_order" // roomNID seq → event NID
	backfillIndexNS = "backfill_index" // event NID → seq
	backfillNextNS  = "backfill_next"  // roomNID → last seq given
)

func hex16(v uint64) string { return fmt.Sprintf("%016x", v) }

// AddBackfilled places an event at the old end of its room's backfilled
// history, unless it is there already; it returns the event's seq.
func (t *Tx) AddBackfilled(roomNID, eventNID uint64) uint64 {
	if seq, ok := t.BackfillSeq(eventNID); ok {
		return seq
	}
	var seq uint64
	if v, err := t.GetKV(backfillNextNS, hex16(roomNID)); err == nil {
		seq, _ = strconv.ParseUint(string(v), 16, 64)
	}
	seq++
	t.PutKV(backfillNextNS, hex16(roomNID), []byte(hex16(seq)))
	t.PutKV(backfillOrderNS, hex16(roomNID)+hex16(seq), u64(eventNID))
	t.PutKV(backfillIndexNS, hex16(eventNID), []byte(hex16(seq)))
	t.indexBackfilled(roomNID, seq, eventNID)
	return seq
}

// BackfillSeq tells whether an event is in its room's backfilled history.
func (t *Tx) BackfillSeq(eventNID uint64) (uint64, bool) {
	v, err := t.GetKV(backfillIndexNS, hex16(eventNID))
	if err != nil {
		return 0, false
	}
	seq, err := strconv.ParseUint(string(v), 16, 64)
	return seq, err == nil
}

// Backfilled walks a room's backfilled history from seq from (inclusive)
// towards older events, calling fn with each (seq, event NID) until fn
// returns false.
func (t *Tx) Backfilled(roomNID, from uint64, fn func(seq, eventNID uint64) bool) {
	p := hex16(roomNID)
	t.ScanKVFrom(backfillOrderNS, p+hex16(from), func(k string, v []byte) bool {
		if len(k) != 32 || k[:16] != p || len(v) != 8 {
			return false
		}
		seq, err := strconv.ParseUint(k[16:], 16, 64)
		return err == nil && fn(seq, getU64(v))
	})
}

// Gap history: events fetched (with /backfill) for a gap inside a room's
// timeline, just before the timeline event at whose prev events history
// is missing. Each gap numbers its events 1, 2, … from newest to oldest,
// keyed by that event's NID, as the backfilled history before the
// timeline is keyed by the room's. An event is in one gap at most.
const (
	gapOrderNS = "gap_order" // at-event NID seq → event NID
	gapIndexNS = "gap_index" // event NID → at-event NID
	gapNextNS  = "gap_next"  // at-event NID → last seq given
)

// AddGapHistory places an event at the old end of the history of the gap
// before timeline event atNID, unless it is in a gap already.
func (t *Tx) AddGapHistory(atNID, eventNID uint64) {
	if _, ok := t.InGapHistory(eventNID); ok {
		return
	}
	var seq uint64
	if v, err := t.GetKV(gapNextNS, hex16(atNID)); err == nil {
		seq, _ = strconv.ParseUint(string(v), 16, 64)
	}
	seq++
	t.PutKV(gapNextNS, hex16(atNID), []byte(hex16(seq)))
	t.PutKV(gapOrderNS, hex16(atNID)+hex16(seq), u64(eventNID))
	t.PutKV(gapIndexNS, hex16(eventNID), []byte(hex16(atNID)))
}

// InGapHistory tells whether an event is in a gap's history, and whose.
func (t *Tx) InGapHistory(eventNID uint64) (uint64, bool) {
	v, err := t.GetKV(gapIndexNS, hex16(eventNID))
	if err != nil {
		return 0, false
	}
	at, err := strconv.ParseUint(string(v), 16, 64)
	return at, err == nil
}

// GapHistory walks the history of the gap before timeline event atNID
// from seq from (inclusive) towards older events, as Backfilled does.
func (t *Tx) GapHistory(atNID, from uint64, fn func(seq, eventNID uint64) bool) {
	p := hex16(atNID)
	t.ScanKVFrom(gapOrderNS, p+hex16(from), func(k string, v []byte) bool {
		if len(k) != 32 || k[:16] != p || len(v) != 8 {
			return false
		}
		seq, err := strconv.ParseUint(k[16:], 16, 64)
		return err == nil && fn(seq, getU64(v))
	})
}

// GapHistoryLen is how many events the gap before timeline event atNID
// holds.
func (t *Tx) GapHistoryLen(atNID uint64) uint64 {
	v, err := t.GetKV(gapNextNS, hex16(atNID))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(v), 16, 64)
	return n
}
