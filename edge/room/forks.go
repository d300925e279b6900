package room

import (
	"slices"
	"strconv"

	"edge/edge/store"
)

// Forks: when an event's prev_events carry different states, or a remote
// event's state after it differs from the room's current state, the
// states are merged with the room version's state resolution
// (stateres.go). These helpers convert between the store's numeric
// snapshots and the resolver's ID maps; only forks pay for it.

// stateMap lists st as (type, state_key) → event ID.
func (s *Service) stateMap(tx *store.Tx, st *State) (StateMap, error) {
	out := make(StateMap, st.Len())
	var err error
	st.Each(func(k, nid uint64) bool {
		var evType, sk string
		if evType, sk, err = tx.StateKey(k); err != nil {
			return false
		}
		var ev *Event
		if ev, err = s.Event(tx, nid); err != nil {
			return false
		}
		out[StateKeyPair{Type: evType, StateKey: sk}] = ev.ID
		return true
	})
	return out, err
}

// changesTo is what must change in base to turn it into the state m.
func (s *Service) changesTo(tx *store.Tx, base *State, m StateMap) (map[uint64]uint64, error) {
	changes := map[uint64]uint64{}
	seen := make(map[uint64]bool, len(m))
	for k, eventID := range m {
		key, err := tx.StateKeyNID(k.Type, k.StateKey, true)
		if err != nil {
			return nil, err
		}
		nid, err := tx.EventNID(eventID)
		if err != nil {
			return nil, err
		}
		seen[key] = true
		if cur, ok := base.Get(key); !ok || cur != nid {
			changes[key] = nid
		}
	}
	base.Each(func(k, _ uint64) bool {
		if !seen[k] {
			changes[k] = 0
		}
		return true
	})
	return changes, nil
}

// resolve merges states with the room version's state resolution and
// stores the result as a snapshot layered on the first state. Results are
// remembered by their input snapshots: the forks of a busy room meet the
// same pair of states again for every event until they merge.
func (s *Service) resolve(tx *store.Tx, version string, states []*State) (*State, error) {
	key := resolutionKey(version, states)
	if id, ok := s.resolutions.Get(key); ok {
		return s.states.load(tx, id)
	}
	sets := make([]StateMap, len(states))
	for i, st := range states {
		m, err := s.stateMap(tx, st)
		if err != nil {
			return nil, err
		}
		sets[i] = m
	}
	r := &Resolver{
		Fetch:  func(eventID string) (*Event, error) { return s.EventByID(tx, eventID) },
		GetKey: s.getKey,
		Chains: s.chains,
	}
	resolved, err := r.Resolve(version, sets)
	if err != nil {
		return nil, err
	}
	changes, err := s.changesTo(tx, states[0], resolved)
	if err != nil {
		return nil, err
	}
	id := s.states.with(tx, states[0], changes)
	// A rolled-back transaction's snapshot ids are reused: remember only
	// committed ones.
	tx.OnCommit(func() { s.resolutions.Add(key, id) })
	return s.states.load(tx, id)
}

// resolutionKey names a resolution by its room version and the set of its
// input snapshots (order does not matter to the algorithm).
func resolutionKey(version string, states []*State) string {
	ids := make([]uint64, len(states))
	for i, st := range states {
		ids[i] = st.ID
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	b := []byte(version)
	for _, id := range ids {
		b = append(b, ',')
		b = strconv.AppendUint(b, id, 10)
	}
	return string(b)
}

// stateAfterNew is the state after ev given the state before it, for an
// event being stored now (its state key may be new to the store).
func (s *Service) stateAfterNew(tx *store.Tx, before *State, ev *Event) (*State, error) {
	if !ev.IsState() {
		return before, nil
	}
	key, err := tx.StateKeyNID(ev.Type, *ev.StateKey, true)
	if err != nil {
		return nil, err
	}
	after := s.states.with(tx, before, map[uint64]uint64{key: ev.NID})
	old, _ := before.Get(key)
	s.deriveJoined(tx, before.ID, after, old, ev)
	return s.states.load(tx, after)
}

// updateLocalMemberships records, for local users, membership changes
// that a resolution brought (from old to resolved).
func (s *Service) updateLocalMemberships(tx *store.Tx, roomID string, old, resolved *State, pos uint64) error {
	var err error
	resolved.Each(func(k, nid uint64) bool {
		if prev, ok := old.Get(k); ok && prev == nid {
			return true
		}
		var evType, sk string
		if evType, sk, err = tx.StateKey(k); err != nil {
			return false
		}
		if evType != "m.room.member" || !isLocal(sk, s.signer.ServerName) {
			return true
		}
		var ev *Event
		if ev, err = s.Event(tx, nid); err != nil {
			return false
		}
		tx.SetMembership(sk, &store.Membership{RoomID: roomID, Membership: ev.Membership(), Pos: pos, Event: nid})
		return true
	})
	return err
}
