package room

import (
	"maps"
	"strings"

	"edge/edge/store"
)

// Joined servers per state snapshot: who receives a room's events. Walking
// the whole state for every sent event costs O(room) — seconds per message
// in a 100k-member room — so counts are cached per snapshot and derived
// from a neighbour: a snapshot's base counts adjusted by its delta, and a
// new snapshot made by one state change from its parent's counts.

// JoinedServers returns, for the state snapshot, the number of joined
// members of each server. The map is shared: callers must not modify it.
func (s *Service) JoinedServers(tx *store.Tx, snapshot uint64) (map[string]int, error) {
	if snapshot == 0 {
		return map[string]int{}, nil
	}
	if m, ok := s.joined.Get(snapshot); ok {
		return m, nil
	}
	st, err := s.states.load(tx, snapshot)
	if err != nil {
		return nil, err
	}
	var counts map[string]int
	if st.baseID == st.ID {
		counts = map[string]int{}
		for _, nid := range st.base {
			if err := s.countJoin(tx, counts, nid, 1); err != nil {
				return nil, err
			}
		}
	} else {
		base, err := s.JoinedServers(tx, st.baseID)
		if err != nil {
			return nil, err
		}
		counts = maps.Clone(base)
		for k, nid := range st.delta {
			if old, ok := st.base[k]; ok {
				if err := s.countJoin(tx, counts, old, -1); err != nil {
					return nil, err
				}
			}
			if nid != 0 {
				if err := s.countJoin(tx, counts, nid, 1); err != nil {
					return nil, err
				}
			}
		}
	}
	s.rememberJoined(tx, snapshot, counts)
	return counts, nil
}

// deriveJoined caches the counts of child, made from parent by setting one
// state key from old (0: absent) to ev — when the parent's counts are known.
func (s *Service) deriveJoined(tx *store.Tx, parent, child, old uint64, ev *Event) {
	if parent == child {
		return
	}
	pc, ok := s.joined.Peek(parent)
	if !ok {
		return
	}
	counts := pc
	if ev.Type == "m.room.member" {
		counts = maps.Clone(pc)
		if old != 0 && s.countJoin(tx, counts, old, -1) != nil {
			return
		}
		if ev.Membership() == "join" {
			counts[serverOf(*ev.StateKey)]++
		}
	}
	s.rememberJoined(tx, child, counts)
}

// countJoin adds delta to the count of the event's server if it is a
// join; counts that reach zero are dropped.
func (s *Service) countJoin(tx *store.Tx, counts map[string]int, nid uint64, delta int) error {
	ev, err := s.Event(tx, nid)
	if err != nil {
		return err
	}
	if ev.Type != "m.room.member" || ev.StateKey == nil || ev.Membership() != "join" {
		return nil
	}
	srv := serverOf(*ev.StateKey)
	if counts[srv] += delta; counts[srv] <= 0 {
		delete(counts, srv)
	}
	return nil
}

// rememberJoined caches counts for a snapshot. A write transaction's
// snapshot ids are reused if it rolls back, so the entry goes with it.
func (s *Service) rememberJoined(tx *store.Tx, snapshot uint64, counts map[string]int) {
	s.joined.Add(snapshot, counts)
	tx.OnAbort(func() { s.joined.Remove(snapshot) })
}

func serverOf(userID string) string {
	if i := strings.IndexByte(userID, ':'); i >= 0 {
		return userID[i+1:]
	}
	return ""
}
