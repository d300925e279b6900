package room

import (
	"maps"
	"math"

	"edge/edge/store"
)

// State is a read-only view of a room state: a shared base map plus the
// snapshot's own delta. Both maps go from state-key NID to event NID; a
// zero event in the delta means the key was removed.
type State struct {
	ID     uint64
	baseID uint64
	base   map[uint64]uint64
	delta  map[uint64]uint64
}

// Get returns the event NID for a state-key NID.
func (s *State) Get(key uint64) (uint64, bool) {
	if ev, ok := s.delta[key]; ok {
		return ev, ev != 0
	}
	ev, ok := s.base[key]
	return ev, ok
}

// Each calls fn for every entry until it returns false.
func (s *State) Each(fn func(key, event uint64) bool) {
	for k, v := range s.delta {
		if v != 0 && !fn(k, v) {
			return
		}
	}
	for k, v := range s.base {
		if _, shadowed := s.delta[k]; !shadowed && !fn(k, v) {
			return
		}
	}
}

// Len counts the entries.
func (s *State) Len() int {
	n := len(s.base)
	for k, v := range s.delta {
		_, inBase := s.base[k]
		switch {
		case v == 0 && inBase:
			n--
		case v != 0 && !inBase:
			n++
		}
	}
	return n
}

// stateCache holds materialised base snapshots. Deltas are small and read
// from the store each time; bases can be 100k entries and are shared.
type stateCache struct {
	bases *weighted[uint64, map[uint64]uint64]
}

// newStateCache keeps at most snapshots bases of at most entries entries
// in total.
func newStateCache(snapshots, entries int) *stateCache {
	return &stateCache{bases: newWeighted[uint64](snapshots, entries,
		func(m map[uint64]uint64) int { return len(m) }, &Stats.StateCache)}
}

// load materialises snapshot id. id 0 is the empty state.
func (c *stateCache) load(tx *store.Tx, id uint64) (*State, error) {
	if id == 0 {
		return &State{}, nil
	}
	snap, err := tx.Snapshot(id)
	if err != nil {
		return nil, err
	}
	if snap.Base == 0 {
		base, err := c.base(tx, snap)
		if err != nil {
			return nil, err
		}
		return &State{ID: id, baseID: id, base: base}, nil
	}
	baseSnap, err := tx.Snapshot(snap.Base)
	if err != nil {
		return nil, err
	}
	base, err := c.base(tx, baseSnap)
	if err != nil {
		return nil, err
	}
	delta := make(map[uint64]uint64, len(snap.Entries))
	for _, e := range snap.Entries {
		delta[e.Key] = e.Event
	}
	return &State{ID: id, baseID: snap.Base, base: base, delta: delta}, nil
}

func (c *stateCache) base(tx *store.Tx, snap *store.Snapshot) (map[uint64]uint64, error) {
	if m, ok := c.bases.Get(snap.ID); ok {
		return m, nil
	}
	m := make(map[uint64]uint64, len(snap.Entries))
	for _, e := range snap.Entries {
		m[e.Key] = e.Event
	}
	// Cached at once, so the next event of the same transaction finds it;
	// a rolled-back transaction's snapshot ids are reused, so its entries
	// go with it.
	c.bases.Add(snap.ID, m)
	tx.OnAbort(func() { c.bases.Remove(snap.ID) })
	return m, nil
}

// rebaseAt is how large a delta may grow before the next snapshot becomes
// a new base. Every snapshot stores its whole delta, so a cycle of T
// changes writes ~T²/2 delta entries plus one base of |base|: per change
// T/2 + |base|/T, smallest at T = √(2·|base|) — 447 entries for a
// 100k-state room (~7 KiB written per state event; |base|/16 wrote ~43).
func rebaseAt(baseLen int) int { return max(64, int(math.Sqrt(float64(2*baseLen)))) }

// with stores the state s plus changes and returns the new snapshot id.
func (c *stateCache) with(tx *store.Tx, s *State, changes map[uint64]uint64) uint64 {
	delta := maps.Clone(s.delta)
	if delta == nil {
		delta = make(map[uint64]uint64, len(changes))
	}
	for k, v := range changes {
		if bv, ok := s.base[k]; ok && bv == v {
			delete(delta, k) // back to the base's value
		} else {
			delta[k] = v
		}
	}
	if s.base != nil && len(delta) <= rebaseAt(len(s.base)) {
		return tx.PutSnapshot(s.baseID, entries(delta))
	}
	full := make(map[uint64]uint64, len(s.base)+len(delta))
	s.Each(func(k, v uint64) bool { full[k] = v; return true })
	for k, v := range changes {
		if v == 0 {
			delete(full, k)
		} else {
			full[k] = v
		}
	}
	return tx.PutSnapshot(0, entries(full))
}

func entries(m map[uint64]uint64) []store.StateEntry {
	out := make([]store.StateEntry, 0, len(m))
	for k, v := range m {
		out = append(out, store.StateEntry{Key: k, Event: v})
	}
	return out
}
