package room

// State resolution, written from the spec's room version pages: v1 for
// room v1 (rooms/v1.md), v2 for rooms v2-v11 (fragments/v2-state-res.md)
// and v2.1 for room v12 (rooms/v12.md, MSC4297). Pure: events come from a
// fetch function and nothing is stored, so the store-backed pipeline, the
// federation code and the vectors' tests share it.
//
// Where the spec is silent or ambiguous, Synapse decides: the "full auth
// chain" of a state set includes the set's own events (the spec's wording
// can be read as excluding them; Synapse's convention keeps an event every
// set holds out of the auth difference, and servers must agree);
// m.room.create is a power event and power events have an empty state key
// (ruma agrees); events sort by the power of their sender as their own
// auth_events give it; resolved-state entries that were rejected are not
// used to authorise.

import (
	"bytes"
	"crypto/sha1"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// StateMap maps (type, state_key) to an event ID.
type StateMap map[StateKeyPair]string

// MaxStateSets bounds the state sets of one resolution (Synapse lets an
// event cite at most 20 prev_events; forward extremities are pruned too).
const MaxStateSets = 1024

// Resolver resolves room state. Fetch is required; the rest is optional.
type Resolver struct {
	// Fetch returns an event by ID, ErrEventNotFound if it is unknown.
	Fetch func(eventID string) (*Event, error)
	// GetKey verifies signatures where the auth rules need one.
	GetKey pdu.GetKeyFunc
	// Chains caches the auth chains of conflicted events between resolutions.
	Chains AuthChainCache
	// MaxEvents bounds the events one resolution touches (0: DefaultMaxResolutionEvents).
	MaxEvents int

	// trace, for tests, sees the intermediate sets and orders of v2.
	trace func(step string, eventIDs []string)
}

// ResolveState resolves the given state sets for a room version. fetch
// returns events by ID (ErrEventNotFound if unknown); getKey verifies
// signatures where auth needs it. Every event of a conflicted entry and of
// the auth chains the algorithm walks must be fetchable; a missing one is
// an error wrapping ErrEventNotFound, so the caller can fetch it and retry.
func ResolveState(version string, sets []StateMap, fetch func(eventID string) (*Event, error), getKey pdu.GetKeyFunc) (StateMap, error) {
	return (&Resolver{Fetch: fetch, GetKey: getKey}).Resolve(version, sets)
}

// Resolve is ResolveState with the resolver's cache and bounds.
func (r *Resolver) Resolve(version string, sets []StateMap) (StateMap, error) {
	rv := Features(version)
	switch {
	case !rv.IsKnown():
		return nil, fmt.Errorf("%w: %q", ErrUnsupported, version)
	case r.Fetch == nil:
		return nil, errors.New("room: Resolver without Fetch")
	case len(sets) > MaxStateSets:
		return nil, fmt.Errorf("%w: %d state sets", ErrStateResTooLarge, len(sets))
	case len(sets) == 0:
		return StateMap{}, nil
	case len(sets) == 1:
		return maps.Clone(sets[0]), nil
	}
	s := &resolution{
		g: r.newGraph(), rv: rv, version: version, getKey: r.GetKey,
		authBuf: make(map[StateKeyPair]*Event, maxAuthEvents+1), trace: r.trace,
	}
	if rv.StateResVersion() == id.StateResV1 {
		return s.resolveV1(sets)
	}
	return s.resolveV2(sets, rv.StateResVersion() == id.StateResV2_1)
}

// resolution is one run of the algorithm.
type resolution struct {
	g       *graph
	rv      id.RoomVersion
	version string
	getKey  pdu.GetKeyFunc
	powers  map[int32]power
	pls     map[int32]int32 // an event's m.room.power_levels auth event, or -1
	authBuf map[StateKeyPair]*Event
	trace   func(step string, eventIDs []string)
}

func (s *resolution) traceNodes(step string, nodes []int32) {
	if s.trace == nil {
		return
	}
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = s.g.nodes[n].id
	}
	s.trace(step, ids)
}

func (s *resolution) traceSet(step string, b bitset) {
	if s.trace != nil {
		var nodes []int32
		b.each(func(n int32) { nodes = append(nodes, n) })
		s.traceNodes(step, nodes)
	}
}

var (
	createKey = StateKeyPair{"m.room.create", ""}
	plKey     = StateKeyPair{"m.room.power_levels", ""}
)

// stateEvent fetches an event a state set names for key k.
func (s *resolution) stateEvent(eventID string, k StateKeyPair) (int32, *Event, error) {
	n, err := s.g.node(eventID)
	if err != nil {
		return -1, nil, err
	}
	ev, err := s.g.event(n)
	if err != nil {
		return -1, nil, err
	}
	if ev.StateKey == nil || ev.Type != k.Type || *ev.StateKey != k.StateKey {
		return -1, nil, fmt.Errorf("%w: state set maps (%s, %q) to %s, an event of type %s", ErrStateResInput, k.Type, k.StateKey, eventID, ev.Type)
	}
	if ev.Version != s.version {
		return -1, nil, fmt.Errorf("%w: %s is of room version %q, not %q", ErrStateResInput, eventID, ev.Version, s.version)
	}
	return n, ev, nil
}

// resolveV2 is the algorithm of room versions 2-11, and with v21 that of
// room version 12.
func (s *resolution) resolveV2(sets []StateMap, v21 bool) (StateMap, error) {
	g := s.g
	// Unconflicted state map and conflicted state set. A key is unconflicted
	// when every set maps it to the same event, so the unconflicted map is
	// the first set without the conflicted keys: no copy is needed.
	first := sets[0]
	conflicted := map[StateKeyPair]struct{}{}
	shared := make([]int, len(sets)) // keys of first that set i holds
	for k, v := range first {
		same := true
		for i, st := range sets[1:] {
			w, ok := st[k]
			if ok {
				shared[i+1]++
			}
			same = same && ok && w == v
		}
		if !same {
			conflicted[k] = struct{}{}
		}
	}
	for i, st := range sets[1:] {
		if shared[i+1] == len(st) {
			continue // no key first lacks
		}
		for k := range st {
			if _, ok := first[k]; !ok {
				conflicted[k] = struct{}{}
			}
		}
	}
	if len(conflicted) == 0 {
		return maps.Clone(first), nil
	}
	ckeys := slices.SortedFunc(maps.Keys(conflicted), compareKeys)
	unconflicted := func(k StateKeyPair) (string, bool) {
		if _, c := conflicted[k]; c {
			return "", false
		}
		v, ok := first[k]
		return v, ok
	}

	// The conflicted events, and the full auth chain of each set's part of
	// them (the events with their auth chains).
	var cset bitset
	var clist []int32
	perSet := make([][]int32, len(sets))
	for i, st := range sets {
		for _, k := range ckeys {
			eid, ok := st[k]
			if !ok {
				continue
			}
			n, _, err := s.stateEvent(eid, k)
			if err != nil {
				return nil, err
			}
			perSet[i] = append(perSet[i], n)
			if !cset.has(n) {
				cset.set(n)
				clist = append(clist, n)
			}
		}
	}
	var union, inter bitset
	for i := range sets {
		var ci bitset
		if err := g.chainsInto(perSet[i], &ci); err != nil {
			return nil, err
		}
		for _, n := range perSet[i] {
			ci.set(n)
		}
		union.or(ci)
		if i == 0 {
			inter = ci
		} else {
			inter.and(ci)
		}
	}

	// Auth difference. The full auth chain C_i of set i is U* ∪ K*_i, the
	// unconflicted events U and the set's conflicted part K_i each with
	// their auth chains, so ∪C_i − ∩C_i = (∪K*_i − ∩K*_i) − U*. U* is
	// walked only as far as it can still remove a candidate: below an event
	// of ∩K*_i everything is in every C_i already. Only candidates outside
	// C matter, C being in the full conflicted set anyway.
	diff := union.clone()
	diff.andNot(inter)
	diff.andNot(cset)
	if left := diff.count(); left > 0 {
		// Unconflicted events that are candidates themselves, found by ID
		// so that the (many) others need no interning unless walked.
		cand := make(map[string]int32, left)
		diff.each(func(n int32) { cand[g.nodes[n].id] = n })
		var inU bitset
		for k, v := range first {
			if n, ok := cand[v]; ok && !inU.has(n) {
				if _, c := conflicted[k]; !c {
					inU.set(n)
					left--
				}
			}
		}
		if left > 0 {
			roots := make([]int32, 0, len(first))
			for k, v := range first {
				if _, c := conflicted[k]; c {
					continue
				}
				n, err := g.node(v)
				if err != nil {
					return nil, err
				}
				roots = append(roots, n)
			}
			err := g.walk(roots, &inU, inter, nil, func(n int32) bool {
				if diff.has(n) {
					left--
				}
				return left == 0
			})
			if err != nil {
				return nil, err
			}
		}
		diff.andNot(inU)
	}
	s.traceSet("auth_difference", diff)

	// Full conflicted set: conflicted state set ∪ auth difference, and in
	// v2.1 the conflicted state subgraph.
	full := cset.clone()
	full.or(diff)
	if v21 {
		sub, err := s.conflictedSubgraph(cset, clist)
		if err != nil {
			return nil, err
		}
		s.traceSet("conflicted_state_subgraph", sub)
		full.or(sub)
	}
	s.traceSet("full_conflicted_set", full)

	// Step 1: power events of the full conflicted set and the events of
	// their auth chains in that set, in reverse topological power order.
	var powerEvs []int32
	var fullList []int32
	var evErr error
	full.each(func(n int32) {
		if evErr != nil {
			return
		}
		ev, err := g.event(n)
		if err != nil {
			evErr = err
			return
		}
		fullList = append(fullList, n)
		if isPowerEvent(ev) {
			powerEvs = append(powerEvs, n)
		}
	})
	if evErr != nil {
		return nil, evErr
	}
	var inX, anc bitset
	for _, n := range powerEvs {
		inX.set(n)
		anc.set(n) // so that the walk does not list them twice
	}
	closure := slices.Clone(powerEvs)
	if err := g.walk(powerEvs, &anc, nil, &closure, nil); err != nil {
		return nil, err
	}
	for _, n := range closure {
		if full.has(n) {
			inX.set(n)
		}
	}
	sorted, err := topoSort(closure, g.authOf, inX.has, s.powerLess)
	if err != nil {
		return nil, err
	}
	s.traceNodes("sorted_power_events", sorted)

	// Step 2: iterative auth checks from the unconflicted state map (v2)
	// or from an empty map (v2.1).
	st := &partialState{g: g, changes: map[StateKeyPair]int32{}}
	if !v21 {
		st.base = unconflicted
	}
	if err := s.iterate(sorted, st); err != nil {
		return nil, err
	}

	// Step 3: the other events in mainline order of the resolved power levels.
	var rest []int32
	for _, n := range fullList {
		if !inX.has(n) {
			rest = append(rest, n)
		}
	}
	rest, err = s.mainlineSort(rest, st)
	if err != nil {
		return nil, err
	}
	s.traceNodes("sorted_other_events", rest)

	// Step 4: iterative auth checks on the partially resolved state.
	if err := s.iterate(rest, st); err != nil {
		return nil, err
	}

	// Step 5: the unconflicted state map wins over the resolved state.
	out := maps.Clone(first)
	for _, k := range ckeys {
		delete(out, k)
	}
	for k, n := range st.changes {
		if _, ok := unconflicted(k); !ok {
			out[k] = g.nodes[n].id
		}
	}
	return out, nil
}

func compareKeys(a, b StateKeyPair) int {
	if c := strings.Compare(a.Type, b.Type); c != 0 {
		return c
	}
	return strings.Compare(a.StateKey, b.StateKey)
}

// conflictedSubgraph returns the events on auth_events paths from one
// conflicted event to another, endpoints included. With A the events
// reachable from C (chain(C)) and R those from which C can be reached,
// that is A∩R (inner events), A∩C (ends) and C∩R (starts). One iterative
// DFS from C visits C ∪ A and computes both.
func (s *resolution) conflictedSubgraph(cset bitset, clist []int32) (bitset, error) {
	g := s.g
	var done, open, reach, below bitset
	type frame struct {
		n int32
		i int
	}
	var stack []frame
	for _, root := range clist {
		if done.has(root) {
			continue
		}
		stack = append(stack[:0], frame{root, 0})
		open.set(root)
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			auth, err := g.authOf(top.n)
			if err != nil {
				return nil, err
			}
			if top.i < len(auth) {
				a := auth[top.i]
				top.i++
				below.set(a)
				if cset.has(a) {
					reach.set(top.n)
				}
				switch {
				case done.has(a):
					if reach.has(a) {
						reach.set(top.n)
					}
				case open.has(a):
					return nil, fmt.Errorf("%w: auth_events cycle through %s", ErrStateResInput, g.nodes[a].id)
				default:
					open.set(a)
					stack = append(stack, frame{a, 0})
				}
				continue
			}
			n := top.n
			done.set(n)
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && reach.has(n) {
				reach.set(stack[len(stack)-1].n)
			}
		}
	}
	// R lies in C ∪ A, so the subgraph is R ∪ (A∩C).
	ends := below.clone()
	ends.and(cset)
	reach.or(ends)
	return reach, nil
}

// isPowerEvent: the spec's power events (m.room.power_levels,
// m.room.join_rules, a leave or ban of another user) and, as in Synapse
// and ruma, m.room.create.
func isPowerEvent(ev *Event) bool {
	if ev.StateKey == nil {
		return false
	}
	switch ev.Type {
	case "m.room.power_levels", "m.room.join_rules", "m.room.create":
		return *ev.StateKey == ""
	case "m.room.member":
		m, _ := jsonString(field(ev.Content, "membership"))
		return (m == "leave" || m == "ban") && ev.Sender != *ev.StateKey
	}
	return false
}

// topoSort orders a subgraph closed under dependencies (deps of a node are
// in nodes) with Kahn's algorithm, dependencies first. Only nodes for which
// out is true are emitted, the smallest ready one by less at each step;
// the others pass as soon as they are ready, so the result is the smallest
// topological order of the emitted nodes under the reachability the whole
// subgraph gives them.
func topoSort(nodes []int32, deps func(int32) ([]int32, error), out func(int32) bool, less func(a, b int32) bool) ([]int32, error) {
	pos := make(map[int32]int32, len(nodes))
	for i, n := range nodes {
		pos[n] = int32(i)
	}
	indeg := make([]int32, len(nodes))
	start := make([]int32, len(nodes)+1) // children of node i: kids[start[i]:start[i+1]]
	for i, n := range nodes {
		d, err := deps(n)
		if err != nil {
			return nil, err
		}
		for _, a := range d {
			j, ok := pos[a]
			if !ok {
				return nil, fmt.Errorf("%w: %d depends on %d outside the subgraph", ErrStateResInput, n, a)
			}
			indeg[i]++
			start[j+1]++
		}
	}
	for i := range nodes {
		start[i+1] += start[i]
	}
	kids := make([]int32, start[len(nodes)])
	fill := slices.Clone(start[:len(nodes)])
	for i, n := range nodes {
		d, _ := deps(n)
		for _, a := range d {
			j := pos[a]
			kids[fill[j]] = int32(i)
			fill[j]++
		}
	}
	var pass []int32 // ready nodes that are not emitted
	h := nodeHeap{less: func(a, b int32) bool { return less(nodes[a], nodes[b]) }}
	ready := func(i int32) {
		if out(nodes[i]) {
			h.push(i)
		} else {
			pass = append(pass, i)
		}
	}
	for i := range nodes {
		if indeg[i] == 0 {
			ready(int32(i))
		}
	}
	release := func(i int32) {
		for _, c := range kids[start[i]:start[i+1]] {
			if indeg[c]--; indeg[c] == 0 {
				ready(c)
			}
		}
	}
	var order []int32
	seen := 0
	for {
		for len(pass) > 0 {
			i := pass[len(pass)-1]
			pass = pass[:len(pass)-1]
			seen++
			release(i)
		}
		if len(h.items) == 0 {
			break
		}
		i := h.pop()
		seen++
		order = append(order, nodes[i])
		release(i)
	}
	if seen != len(nodes) {
		return nil, fmt.Errorf("%w: auth_events cycle among %d events", ErrStateResInput, len(nodes)-seen)
	}
	return order, nil
}

// nodeHeap is a binary min-heap under less.
type nodeHeap struct {
	items []int32
	less  func(a, b int32) bool
}

func (h *nodeHeap) push(x int32) {
	h.items = append(h.items, x)
	for i := len(h.items) - 1; i > 0; {
		p := (i - 1) / 2
		if !h.less(h.items[i], h.items[p]) {
			break
		}
		h.items[i], h.items[p] = h.items[p], h.items[i]
		i = p
	}
}

func (h *nodeHeap) pop() int32 {
	top := h.items[0]
	last := len(h.items) - 1
	h.items[0] = h.items[last]
	h.items = h.items[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < last && h.less(h.items[l], h.items[m]) {
			m = l
		}
		if r < last && h.less(h.items[r], h.items[m]) {
			m = r
		}
		if m == i {
			break
		}
		h.items[i], h.items[m] = h.items[m], h.items[i]
		i = m
	}
	return top
}

// powerLess is the reverse topological power ordering's comparison: higher
// sender power first, then older origin_server_ts, then smaller event ID.
// Errors were ruled out when the events were walked; a failed lookup here
// counts as power 0.
func (s *resolution) powerLess(a, b int32) bool {
	pa, pb := s.senderPower(a), s.senderPower(b)
	if pb.less(pa) {
		return true
	}
	if pa.less(pb) {
		return false
	}
	return s.tsIDLess(a, b)
}

func (s *resolution) tsIDLess(a, b int32) bool {
	ea, eb := s.g.nodes[a].ev, s.g.nodes[b].ev
	if ea.OriginServerTS != eb.OriginServerTS {
		return ea.OriginServerTS < eb.OriginServerTS
	}
	return ea.ID < eb.ID
}

// senderPower is the power level of an event's sender as its own
// auth_events (and, from v12, its room's create event) give it.
func (s *resolution) senderPower(n int32) power {
	if p, ok := s.powers[n]; ok {
		return p
	}
	var p power
	if ev, err := s.g.event(n); err == nil {
		a := &auth{ev: ev, rv: s.rv}
		auth, _ := s.g.authOf(n)
		for _, an := range auth {
			if ae, err := s.g.event(an); err == nil {
				a.list = append(a.list, ae)
			}
		}
		var create *Event
		if s.rv.RoomIDIsCreateEventID() {
			create, _ = s.createOf(ev)
		} else if create = a.state("m.room.create", ""); create == nil && ev.Type == "m.room.create" {
			create = ev
		}
		a.setCreate(create)
		p = a.power(ev.Sender)
	}
	if s.powers == nil {
		s.powers = map[int32]power{}
	}
	s.powers[n] = p
	return p
}

// createOf is a room v12 event's create event, named by its room ID.
func (s *resolution) createOf(ev *Event) (*Event, error) {
	if ev.Type == "m.room.create" && ev.StateKey != nil && *ev.StateKey == "" {
		return ev, nil
	}
	if !strings.HasPrefix(ev.RoomID, "!") {
		return nil, nil
	}
	n, err := s.g.node("$" + ev.RoomID[1:])
	if err != nil {
		return nil, err
	}
	return s.g.event(n)
}

// partialState is the state being resolved: changes over a base map.
type partialState struct {
	g       *graph
	base    func(StateKeyPair) (string, bool)
	changes map[StateKeyPair]int32
}

func (p *partialState) get(k StateKeyPair) (int32, bool, error) {
	if n, ok := p.changes[k]; ok {
		return n, true, nil
	}
	if p.base == nil {
		return -1, false, nil
	}
	eid, ok := p.base(k)
	if !ok {
		return -1, false, nil
	}
	n, err := p.g.node(eid)
	return n, err == nil, err
}

func rejected(ev *Event) bool { return ev.Flags&store.FlagRejected != 0 }

// iterate is the iterative auth checks algorithm: each event that passes
// the auth rules against the state so far replaces its key.
func (s *resolution) iterate(order []int32, st *partialState) error {
	for _, n := range order {
		ev, err := s.g.event(n)
		if err != nil {
			return err
		}
		if ev.StateKey == nil {
			continue
		}
		authState, err := s.authStateFor(n, ev, st.get)
		if err != nil {
			return err
		}
		if AuthorizeAgainst(ev, authState, s.getKey) == nil {
			st.changes[StateKeyPair{ev.Type, *ev.StateKey}] = n
		}
	}
	return nil
}

// authStateFor builds the state an event is checked against: the state so
// far for every key the auth rules read, and the event's own non-rejected
// auth events for keys the state lacks. From v12 the create event is the
// one the room ID names.
func (s *resolution) authStateFor(n int32, ev *Event, get func(StateKeyPair) (int32, bool, error)) (map[StateKeyPair]*Event, error) {
	m := s.authBuf
	clear(m)
	if n >= 0 {
		auth, err := s.g.authOf(n)
		if err != nil {
			return nil, err
		}
		for _, an := range auth {
			ae, err := s.g.event(an)
			if err != nil {
				return nil, err
			}
			if ae.StateKey != nil && !rejected(ae) {
				m[StateKeyPair{ae.Type, *ae.StateKey}] = ae
			}
		}
	}
	if a, err := newAuth(ev, nil); err == nil && a != nil {
		sel := a.selection()
		for _, k := range sel.keys[:sel.n] {
			sn, ok, err := get(k)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			se, err := s.g.event(sn)
			if err != nil {
				return nil, err
			}
			if !rejected(se) {
				m[k] = se
			}
		}
	}
	if s.rv.RoomIDIsCreateEventID() {
		delete(m, createKey)
		create, err := s.createOf(ev)
		if err != nil {
			return nil, err
		}
		if create != nil {
			m[createKey] = create
		}
	}
	return m, nil
}

// plOf is the m.room.power_levels event among an event's auth events.
func (s *resolution) plOf(n int32) (int32, error) {
	if p, ok := s.pls[n]; ok {
		return p, nil
	}
	auth, err := s.g.authOf(n)
	if err != nil {
		return -1, err
	}
	p := int32(-1)
	for _, a := range auth {
		ae, err := s.g.event(a)
		if err != nil {
			return -1, err
		}
		if ae.Type == "m.room.power_levels" && ae.StateKey != nil && *ae.StateKey == "" {
			p = a
			break
		}
	}
	if s.pls == nil {
		s.pls = map[int32]int32{}
	}
	s.pls[n] = p
	return p, nil
}

// mainlineSort orders events by the mainline ordering based on the power
// levels of st: events based on an older mainline event first (no power
// levels ancestor on the mainline at all counts as infinitely old), then
// older origin_server_ts, then smaller event ID.
func (s *resolution) mainlineSort(events []int32, st *partialState) ([]int32, error) {
	const inf = math.MaxInt
	pos := map[int32]int{} // mainline index, then memoised positions of other PL events
	p0, ok, err := st.get(plKey)
	if err != nil {
		return nil, err
	}
	for i, cur := 0, p0; ok && cur >= 0; i++ {
		if _, dup := pos[cur]; dup {
			break
		}
		pos[cur] = i
		if cur, err = s.plOf(cur); err != nil {
			return nil, err
		}
	}
	positions := make(map[int32]int, len(events))
	var path []int32
	for _, e := range events {
		p := inf
		path = path[:0]
		cur, err := s.plOf(e)
		if err != nil {
			return nil, err
		}
		for cur >= 0 {
			if q, ok := pos[cur]; ok {
				p = q
				break
			}
			if slices.Contains(path, cur) {
				break
			}
			path = append(path, cur)
			if cur, err = s.plOf(cur); err != nil {
				return nil, err
			}
		}
		for _, x := range path {
			pos[x] = p
		}
		positions[e] = p
	}
	out := slices.Clone(events)
	slices.SortFunc(out, func(a, b int32) int {
		pa, pb := positions[a], positions[b]
		switch {
		case pa > pb:
			return -1
		case pa < pb:
			return 1
		case s.tsIDLess(a, b):
			return -1
		case s.tsIDLess(b, a):
			return 1
		}
		return 0
	})
	return out, nil
}

// resolveV1 is room version 1's algorithm: R starts as the entries every
// set holding the key agrees on; conflicts are then resolved key by key,
// power levels first, then join rules, then memberships, then the rest.
func (s *resolution) resolveV1(sets []StateMap) (StateMap, error) {
	r := maps.Clone(sets[0])
	conflicts := map[StateKeyPair][]string{}
	for _, st := range sets[1:] {
		for k, v := range st {
			if c, ok := conflicts[k]; ok {
				if !slices.Contains(c, v) {
					conflicts[k] = append(c, v)
				}
				continue
			}
			if w, ok := r[k]; ok {
				if w != v {
					conflicts[k] = []string{w, v}
					delete(r, k)
				}
				continue
			}
			r[k] = v
		}
	}
	if len(conflicts) == 0 {
		return r, nil
	}
	keys := slices.SortedFunc(maps.Keys(conflicts), compareKeys)
	group := func(k StateKeyPair) int {
		switch {
		case k == plKey:
			return 0
		case k.Type == "m.room.join_rules":
			return 1
		case k.Type == "m.room.member":
			return 2
		}
		return 3
	}
	slices.SortStableFunc(keys, func(a, b StateKeyPair) int { return group(a) - group(b) })
	get := func(k StateKeyPair) (int32, bool, error) {
		eid, ok := r[k]
		if !ok {
			return -1, false, nil
		}
		n, err := s.g.node(eid)
		return n, err == nil, err
	}
	allowed := func(ev *Event) (bool, error) {
		authState, err := s.authStateFor(-1, ev, get)
		if err != nil {
			return false, err
		}
		return AuthorizeAgainst(ev, authState, s.getKey) == nil, nil
	}
	for _, k := range keys {
		evs := make([]*Event, 0, len(conflicts[k]))
		for _, eid := range conflicts[k] {
			_, ev, err := s.stateEvent(eid, k)
			if err != nil {
				return nil, err
			}
			evs = append(evs, ev)
		}
		if group(k) < 3 {
			// Ascending depth, then descending sha1(event_id): the first
			// goes in, each next one while the auth rules allow it.
			slices.SortFunc(evs, func(a, b *Event) int { return -v1Order(a, b) })
			r[k] = evs[0].ID
			for _, ev := range evs[1:] {
				ok, err := allowed(ev)
				if err != nil {
					return nil, err
				}
				if !ok {
					break
				}
				r[k] = ev.ID
			}
			continue
		}
		// The highest depth, then lowest sha1(event_id), that passes; when
		// none does, the last one tried, as Synapse does.
		slices.SortFunc(evs, v1Order)
		r[k] = evs[len(evs)-1].ID
		for _, ev := range evs {
			ok, err := allowed(ev)
			if err != nil {
				return nil, err
			}
			if ok {
				r[k] = ev.ID
				break
			}
		}
	}
	return r, nil
}

// v1Order sorts by descending depth, then ascending sha1(event_id).
func v1Order(a, b *Event) int {
	if a.Depth != b.Depth {
		if a.Depth > b.Depth {
			return -1
		}
		return 1
	}
	ha, hb := sha1.Sum([]byte(a.ID)), sha1.Sum([]byte(b.ID))
	return bytes.Compare(ha[:], hb[:])
}
