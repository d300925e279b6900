package room

// Room-layer APIs for events that come from other servers: state before a
// remote event, persisting it with a given state, creating a room from a
// send_join answer, join templates and signing someone else's PDU.

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	jsonv2 "encoding/json/v2"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// StateBeforeEvent computes the state before a remote event from its
// prev_events. Every prev event must be stored (ErrEventNotFound names
// the first missing one). One prev event: the state after it. Several:
// the states after them, merged by state resolution when they differ.
func (s *Service) StateBeforeEvent(tx *store.Tx, ev *Event) (*State, error) {
	if len(ev.PrevEvents) == 0 {
		return nil, fmt.Errorf("%w: %s has no prev_events", ErrBadEvent, ev.ID)
	}
	var first *State
	states := make([]*State, 0, len(ev.PrevEvents))
	forked := false
	for _, pid := range ev.PrevEvents {
		prev, err := s.EventByID(tx, pid)
		if err != nil {
			return nil, fmt.Errorf("prev event %s: %w", pid, err)
		}
		if prev.RoomID != ev.RoomID {
			return nil, fmt.Errorf("%w: prev event %s is in another room", ErrBadEvent, pid)
		}
		st, err := s.StateAfter(tx, prev)
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = st
		} else if !sameState(first, st) {
			forked = true
		}
		states = append(states, st)
	}
	if forked {
		return s.resolve(tx, ev.Version, states)
	}
	return first, nil
}

// sameState compares two states entry by entry.
func sameState(a, b *State) bool {
	if a.ID != 0 && a.ID == b.ID {
		return true
	}
	if a.Len() != b.Len() {
		return false
	}
	same := true
	a.Each(func(k, v uint64) bool {
		w, ok := b.Get(k)
		same = ok && w == v
		return same
	})
	return same
}

// AuthStateFor returns the entries of st that the auth rules look at for
// ev (the auth event selection, plus the create event).
func (s *Service) AuthStateFor(tx *store.Tx, ev *Event, st *State) (map[StateKeyPair]*Event, error) {
	p, err := ev.PDU()
	if err != nil {
		return nil, err
	}
	out := map[StateKeyPair]*Event{}
	add := func(t, k string) error {
		e, err := s.StateEvent(tx, st, t, k)
		if err != nil {
			return err
		}
		if e != nil {
			out[StateKeyPair{t, k}] = e
		}
		return nil
	}
	if err := add("m.room.create", ""); err != nil {
		return nil, err
	}
	for _, k := range p.AuthEventSelection(Features(ev.Version)) {
		if err := add(k.Type, k.StateKey); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ResolveWithAuthEvents resolves local, the entries of a state we know
// only partly that the auth rules look at for ev (AuthStateFor), against
// ev's own auth events, with the room version's state resolution: what a
// partial-state room checks an event against, as Synapse does. Missing
// members come from the auth events; a membership the partial state got
// wrong (accepted from an event the full state rejects) does not by
// itself reject a later event that its auth events allow. It returns nil
// when no entry of local differs from one of the auth events.
func (s *Service) ResolveWithAuthEvents(tx *store.Tx, ev *Event, local map[StateKeyPair]*Event) (map[StateKeyPair]*Event, error) {
	events := map[string]*Event{}
	localIDs := make(StateMap, len(local))
	for k, e := range local {
		localIDs[k] = e.ID
		events[e.ID] = e
	}
	claimed := StateMap{}
	for _, aid := range ev.AuthEvents {
		ae, err := s.EventByID(tx, aid)
		if err != nil {
			return nil, err
		}
		if ae.StateKey == nil || ae.Flags&store.FlagRejected != 0 {
			continue
		}
		claimed[StateKeyPair{Type: ae.Type, StateKey: *ae.StateKey}] = ae.ID
		events[ae.ID] = ae
	}
	conflict := false
	for k, id := range claimed {
		if l, ok := localIDs[k]; ok && l != id {
			conflict = true
			break
		}
	}
	if !conflict {
		return nil, nil // the common case: nothing to resolve
	}
	r := &Resolver{
		Fetch:  func(eventID string) (*Event, error) { return s.EventByID(tx, eventID) },
		GetKey: s.getKey,
		Chains: s.chains,
	}
	resolved, err := r.Resolve(ev.Version, []StateMap{localIDs, claimed})
	if err != nil {
		return nil, err
	}
	out := make(map[StateKeyPair]*Event, len(resolved))
	for k, id := range resolved {
		e := events[id]
		if e == nil {
			if e, err = s.EventByID(tx, id); err != nil {
				return nil, err
			}
		}
		out[k] = e
	}
	return out, nil
}

// PersistRemote stores a remote event whose state before is before. With
// flags holding FlagRejected, FlagSoftFailed or FlagOutlier the event is
// only stored (it answers federation, it is not shown); otherwise it joins
// the timeline, becomes a forward extremity in place of its prev events,
// and a state event updates the room's current state. The room's
// federation hook (InTx) does not run: the event came from elsewhere.
func (s *Service) PersistRemote(tx *store.Tx, ev *Event, before *State, flags store.EventFlags) error {
	r, err := tx.Room(ev.RoomID)
	if errors.Is(err, store.ErrNotFound) {
		return ErrRoomNotFound
	} else if err != nil {
		return err
	}
	if before.ID == 0 {
		before.ID = s.states.with(tx, before, nil)
	}
	se := &store.Event{EventID: ev.ID, RoomNID: r.NID, StateBefore: before.ID, Flags: flags, JSON: ev.Raw}
	if flags&(store.FlagRejected|store.FlagSoftFailed|store.FlagOutlier) != 0 {
		if err := tx.PutEvent(se); err != nil {
			return err
		}
		ev.NID, ev.StateBefore, ev.Flags = se.NID, before.ID, flags
		if flags&(store.FlagRejected|store.FlagSoftFailed) == 0 {
			IndexRelations(tx, ev, ev.NID) // an outlier is still a thread's event
		}
		tx.OnCommit(func() {
			s.events.Add(ev.NID, ev)
			Stats.RemoteEvents.Add(1)
		})
		return nil
	}
	cur, err := s.states.load(tx, r.State)
	if err != nil {
		return err
	}
	// The event continues the current state when its state before equals
	// it (a straight line, or concurrent events that changed no state);
	// otherwise the room's new state is the resolution of the current
	// state and the state after this event.
	continues := sameState(before, cur)
	se.Pos = tx.NextPos()
	if err := tx.PutEvent(se); err != nil {
		return err
	}
	ev.NID, ev.Pos, ev.StateBefore, ev.Flags = se.NID, se.Pos, before.ID, flags
	tx.AppendTimeline(r.NID, se.Pos, ev.NID)
	if !continues {
		after, err := s.stateAfterNew(tx, before, ev)
		if err != nil {
			return err
		}
		resolved, err := s.resolve(tx, ev.Version, []*State{cur, after})
		if err != nil {
			return err
		}
		if err := s.updateLocalMemberships(tx, r.RoomID, cur, resolved, se.Pos); err != nil {
			return err
		}
		r.State = resolved.ID
	} else if ev.IsState() {
		key, err := tx.StateKeyNID(ev.Type, *ev.StateKey, true)
		if err != nil {
			return err
		}
		r.State = s.states.with(tx, cur, map[uint64]uint64{key: ev.NID})
		old, _ := cur.Get(key)
		s.deriveJoined(tx, cur.ID, r.State, old, ev)
		if ev.Type == "m.room.member" && isLocal(*ev.StateKey, s.signer.ServerName) {
			tx.SetMembership(*ev.StateKey, &store.Membership{RoomID: r.RoomID, Membership: ev.Membership(), Pos: se.Pos, Event: ev.NID})
		}
	}
	prevs := make(map[string]bool, len(ev.PrevEvents))
	for _, p := range ev.PrevEvents {
		prevs[p] = true
	}
	ext := []uint64{ev.NID}
	for _, nid := range r.Extremities {
		e, err := s.Event(tx, nid)
		if err != nil {
			return err
		}
		if !prevs[e.ID] {
			ext = append(ext, nid)
		}
	}
	r.Extremities = ext
	r.Depth = max(r.Depth, ev.Depth)
	r.LastPos = se.Pos
	tx.PutRoom(r)
	IndexRelations(tx, ev, ev.NID)
	if err := s.redactions(tx, r, ev); err != nil {
		return err
	}
	tx.OnCommit(func() {
		s.events.Add(ev.NID, ev)
		Stats.RemoteEvents.Add(1)
		if s.OnEvent != nil {
			s.OnEvent(ev)
		}
	})
	return nil
}

// nsPendingRedactions holds redactions whose target has not arrived yet:
// target event ID → redaction event ID.
const nsPendingRedactions = "room_pending_redactions"

// redactions applies what a newly stored event ev brings: as a redaction,
// it strips its target, or waits for it when the target is unknown; as
// the target of a redaction that came first, it is stripped now.
func (s *Service) redactions(tx *store.Tx, r *store.Room, ev *Event) error {
	if ev.Type == "m.room.redaction" && ev.Redacts != "" {
		target, err := s.EventByID(tx, ev.Redacts)
		if errors.Is(err, ErrEventNotFound) {
			tx.PutKV(nsPendingRedactions, ev.Redacts, []byte(ev.ID))
		} else if err != nil {
			return err
		} else if ok, err := s.mayRedact(tx, ev, target); err != nil {
			return err
		} else if ok {
			if err := s.applyRedaction(tx, r, ev); err != nil {
				return err
			}
		}
	}
	redID, err := tx.GetKV(nsPendingRedactions, ev.ID)
	if err != nil {
		return nil // none waiting
	}
	tx.DeleteKV(nsPendingRedactions, ev.ID)
	red, err := s.EventByID(tx, string(redID))
	if err != nil || red.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
		return nil
	}
	if ok, err := s.mayRedact(tx, red, ev); err != nil || !ok {
		return err
	}
	if err := s.applyRedaction(tx, r, red); err != nil {
		return err
	}
	// ev is not shared yet (the caller caches it when tx commits): make
	// it the stored, redacted form.
	se, err := tx.Event(ev.NID)
	if err != nil {
		return err
	}
	p, err := ParseEvent(r.Version, se.JSON, ev.ID)
	if err != nil {
		return err
	}
	ev.Raw, ev.Content, ev.Flags = p.Raw, p.Content, se.Flags
	return nil
}

// mayRedact is the spec's rule for applying a redaction to its target
// (rooms v3+: the auth rules let any member send one): the client API
// checked our own users' redactions; another server's apply when target
// and redaction come from the same server, or when the sender has the
// redact power level in the state before the redaction.
func (s *Service) mayRedact(tx *store.Tx, red, target *Event) (bool, error) {
	if target.RoomID != red.RoomID {
		return false, nil
	}
	if isLocal(red.Sender, s.signer.ServerName) || domainOf(target.Sender) == domainOf(red.Sender) {
		return true, nil
	}
	before, err := s.states.load(tx, red.StateBefore)
	if err != nil {
		return false, err
	}
	pl, err := s.PowerLevels(tx, before)
	if err != nil {
		return false, err
	}
	return pl.UserLevel(red.Sender) >= pl.Redact(), nil
}

// StoreJoinEvents stores events of a join's answer, as they arrive and
// before the room exists, as outlier records of the room whose NID
// tx.ReserveRoomNID gave; IndexJoinEvents indexes them once the answer
// is checked, and DropJoinEvents deletes them if the join fails. It sets
// each event's NID.
func (s *Service) StoreJoinEvents(tx *store.Tx, roomNID uint64, evs []*Event) {
	for _, ev := range evs {
		se := &store.Event{EventID: ev.ID, RoomNID: roomNID, Flags: store.FlagOutlier, JSON: ev.Raw}
		tx.AddEventRecord(se)
		ev.NID = se.NID
	}
}

// JoinIndex is what IndexJoinEvents made of a join's events: each one's
// NID (its record's, or that of the event already known under its ID)
// and each state event's state key NID.
type JoinIndex struct {
	NID, Key map[*Event]uint64
}

// IndexJoinEvents indexes the IDs of events StoreJoinEvents stored (an
// event this server already had keeps its NID, and the new record goes)
// and the state keys of the state events among them. Everything goes in
// sorted: bbolt splits its nodes only at commit, so a transaction
// inserting 100k keys in hash order moves each node's contents on every
// insert. The events' own NIDs stay their records', for DropJoinEvents.
func (s *Service) IndexJoinEvents(tx *store.Tx, evs, state []*Event) (*JoinIndex, error) {
	ix := &JoinIndex{NID: make(map[*Event]uint64, len(evs)), Key: make(map[*Event]uint64, len(state))}
	evs = slices.Clone(evs)
	slices.SortFunc(evs, func(a, b *Event) int { return strings.Compare(a.ID, b.ID) })
	for _, ev := range evs {
		ix.NID[ev] = tx.IndexEvent(ev.ID, ev.NID)
	}
	state = slices.Clone(state)
	slices.SortFunc(state, func(a, b *Event) int {
		return cmp.Or(strings.Compare(a.Type, b.Type), strings.Compare(*a.StateKey, *b.StateKey))
	})
	for _, ev := range state {
		key, err := tx.StateKeyNID(ev.Type, *ev.StateKey, true)
		if err != nil {
			return nil, err
		}
		ix.Key[ev] = key
	}
	return ix, nil
}

// DropJoinEvents deletes what StoreJoinEvents and IndexJoinEvents wrote
// for a join that failed: the records, and the IDs indexed to them.
// Events known before keep their records and IDs.
func (s *Service) DropJoinEvents(tx *store.Tx, evs []*Event) {
	for _, ev := range evs {
		tx.UnindexEvent(ev.ID, ev.NID)
		tx.DeleteEventRecord(ev.NID)
	}
}

// CreateJoinedRoom creates a room this server learns of by joining it,
// from its state (state key NID → event NID, events stored by
// StoreJoinEvents), and returns that state: the state before the join,
// for PersistRemote. A room known from before (this server left it, and
// rejoins) keeps its timeline; its state becomes the join's and its old
// forward extremities, from before the time away, are dropped: the join
// follows the resident server's.
func (s *Service) CreateJoinedRoom(tx *store.Tx, version, roomID string, state map[uint64]uint64, depth int64) (*State, error) {
	if !supported(version) {
		return nil, fmt.Errorf("%w: %q", ErrUnsupported, version)
	}
	r, err := tx.Room(roomID)
	switch {
	case err == nil && r.Version != version:
		return nil, fmt.Errorf("%w: room %s is version %s here, %s there", ErrBadEvent, roomID, r.Version, version)
	case err == nil:
		r.Extremities = nil
	case errors.Is(err, store.ErrNotFound):
		r = &store.Room{RoomID: roomID, Version: version}
		if err := tx.CreateRoom(r); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	r.Depth = max(r.Depth, depth)
	r.State = s.states.with(tx, &State{}, state)
	tx.PutRoom(r)
	return s.states.load(tx, r.State)
}

// Template builds the event p on the room's current state, checks it
// against the auth rules and returns it without hashes and signatures:
// the make_join / make_leave template the remote server fills and signs.
func (s *Service) Template(tx *store.Tx, roomID string, p Proto) (version string, tmpl json.RawMessage, err error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil, ErrRoomNotFound
	} else if err != nil {
		return "", nil, err
	}
	st, err := s.states.load(tx, r.State)
	if err != nil {
		return "", nil, err
	}
	ev, err := s.build(tx, r, st, p)
	if err != nil {
		return "", nil, err
	}
	if err := s.authorize(tx, ev); err != nil {
		return "", nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(ev.Raw, &m); err != nil {
		return "", nil, err
	}
	delete(m, "signatures")
	delete(m, "hashes")
	delete(m, "event_id")
	out, err := json.Marshal(m)
	return r.Version, out, err
}

// SignPDU fills the content hash of a PDU of the given room version and
// adds this server's signature, keeping the others; a v1/v2 event without
// an event ID gets one of ours. It returns the signed PDU and its ID.
func (s *Service) SignPDU(version string, raw []byte) ([]byte, string, error) {
	rv := Features(version)
	var p pdu.AnyPDU
	if rv.EventIDFormat() == id.EventIDFormatCustom {
		var v1 pdu.RoomV1PDU
		if err := jsonv2.Unmarshal(raw, &v1); err != nil {
			return nil, "", fmt.Errorf("%w: %v", ErrBadEvent, err)
		}
		if v1.EventID == "" {
			v1.EventID = id.EventID("$" + randomString(18) + ":" + s.signer.ServerName)
		}
		p = &v1
	} else {
		var v pdu.PDU
		if err := jsonv2.Unmarshal(raw, &v); err != nil {
			return nil, "", fmt.Errorf("%w: %v", ErrBadEvent, err)
		}
		p = &v
	}
	if err := p.Sign(rv, s.signer.ServerName, id.KeyID(s.signer.KeyID), s.signer.Key); err != nil {
		return nil, "", err
	}
	evID, err := p.GetEventID(rv)
	if err != nil {
		return nil, "", err
	}
	out, err := jsonv2.Marshal(p)
	if err != nil {
		return nil, "", err
	}
	if len(out) > MaxEventBytes {
		return nil, "", ErrTooLarge
	}
	return out, string(evID), nil
}

// AuthChain returns the auth chain of the seeds (their auth events,
// recursively), each event once, seeds excluded unless reached.
func (s *Service) AuthChain(tx *store.Tx, seeds []*Event) ([]*Event, error) {
	seen := map[string]bool{}
	var out []*Event
	queue := make([]string, 0, 16)
	for _, ev := range seeds {
		queue = append(queue, ev.AuthEvents...)
	}
	for len(queue) > 0 {
		eid := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if seen[eid] {
			continue
		}
		seen[eid] = true
		ev, err := s.EventByID(tx, eid)
		if errors.Is(err, ErrEventNotFound) {
			continue // not ours to give: the chain is what we hold
		} else if err != nil {
			return nil, err
		}
		out = append(out, ev)
		queue = append(queue, ev.AuthEvents...)
	}
	return out, nil
}

// StateEvents lists the events of a state.
func (s *Service) StateEvents(tx *store.Tx, st *State) ([]*Event, error) {
	var out []*Event
	var err error
	st.Each(func(_, nid uint64) bool {
		var ev *Event
		if ev, err = s.Event(tx, nid); err != nil {
			return false
		}
		out = append(out, ev)
		return true
	})
	return out, err
}
