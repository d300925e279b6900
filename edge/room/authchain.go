package room

// Auth chains for state resolution: the events one resolution touches are
// interned into a small graph (int32 nodes, auth edges resolved once), so
// the set operations of the algorithm are bitsets rather than string maps.
// Every walk is iterative: a room's auth chain can be as deep as its history.

import (
	"errors"
	"fmt"
	"math/bits"
)

// DefaultMaxResolutionEvents bounds the events one resolution or auth-chain
// walk may touch when Resolver.MaxEvents is 0.
const DefaultMaxResolutionEvents = 1 << 21

// maxAuthRefs bounds one event's auth_events: the auth rules allow at most
// maxAuthEvents, so an event citing far more is hostile input.
const maxAuthRefs = 64

var (
	// ErrStateResTooLarge: the input exceeds the resolver's bounds.
	ErrStateResTooLarge = errors.New("state resolution input too large")
	// ErrStateResInput: the input is inconsistent (a state set maps a key
	// to an event of another key, auth_events form a cycle, …).
	ErrStateResInput = errors.New("unusable state resolution input")
)

// AuthChainCache remembers the auth chain of single events, so resolutions
// over the same forks do not walk them again. A cache shared between
// resolutions must be safe for concurrent use.
type AuthChainCache interface {
	Get(eventID string) (chain []string, ok bool)
	Add(eventID string, chain []string)
}

// AuthChainLRU is an AuthChainCache bounded by the event IDs it holds
// (a chain's length plus one for its key), with hit and miss counts for
// metrics. In a room with a long power-levels history one chain can be
// thousands of IDs, so counting chains would not bound memory.
type AuthChainLRU struct {
	w *weighted[string, []string]
}

// NewAuthChainLRU returns a cache holding at most ids event IDs.
func NewAuthChainLRU(ids int) (*AuthChainLRU, error) {
	return newAuthChainLRU(ids, new(CacheCounts)), nil
}

func newAuthChainLRU(ids int, counts *CacheCounts) *AuthChainLRU {
	return &AuthChainLRU{w: newWeighted[string](ids, ids, func(c []string) int { return len(c) + 1 }, counts)}
}

// Get returns the cached chain of eventID.
func (l *AuthChainLRU) Get(eventID string) ([]string, bool) { return l.w.Get(eventID) }

// Add caches the chain of eventID; the slice must not be modified afterwards.
func (l *AuthChainLRU) Add(eventID string, chain []string) { l.w.Add(eventID, chain) }

// Stats returns the hit and miss counts since creation.
func (l *AuthChainLRU) Stats() (hits, misses uint64) {
	return l.w.counts.Hits.Load(), l.w.counts.Misses.Load()
}

// AuthChain returns the IDs of the full auth chain of the given events: their
// auth events, recursively. The events themselves are included only when
// one of them is in the auth chain of another.
func AuthChain(ids []string, fetch func(string) (*Event, error)) (map[string]struct{}, error) {
	return (&Resolver{Fetch: fetch}).AuthChain(ids)
}

// AuthChain is the package function AuthChain with the resolver's cache and bounds.
func (r *Resolver) AuthChain(ids []string) (map[string]struct{}, error) {
	if r.Fetch == nil {
		return nil, errors.New("room: Resolver without Fetch")
	}
	g := r.newGraph()
	roots := make([]int32, 0, len(ids))
	for _, eid := range ids {
		n, err := g.node(eid)
		if err != nil {
			return nil, err
		}
		roots = append(roots, n)
	}
	var seen bitset
	if err := g.chainsInto(roots, &seen); err != nil {
		return nil, err
	}
	out := make(map[string]struct{}, seen.count())
	seen.each(func(n int32) { out[g.nodes[n].id] = struct{}{} })
	return out, nil
}

// gnode is one interned event; ev and auth are filled on first use.
type gnode struct {
	id     string
	ev     *Event
	auth   []int32
	authOK bool
}

// graph is the part of a room's auth DAG one resolution has looked at.
type graph struct {
	fetch func(string) (*Event, error)
	cache AuthChainCache
	limit int
	index map[string]int32
	nodes []gnode
	arena []int32 // backing store of the nodes' auth slices
}

func (r *Resolver) newGraph() *graph {
	limit := r.MaxEvents
	if limit <= 0 {
		limit = DefaultMaxResolutionEvents
	}
	return &graph{fetch: r.Fetch, cache: r.Chains, limit: limit, index: make(map[string]int32, 64)}
}

// node interns an event ID without fetching the event.
func (g *graph) node(eventID string) (int32, error) {
	if n, ok := g.index[eventID]; ok {
		return n, nil
	}
	if len(g.nodes) >= g.limit {
		return -1, fmt.Errorf("%w: more than %d events", ErrStateResTooLarge, g.limit)
	}
	n := int32(len(g.nodes))
	g.nodes = append(g.nodes, gnode{id: eventID})
	g.index[eventID] = n
	return n, nil
}

// event fetches the event of a node once.
func (g *graph) event(n int32) (*Event, error) {
	if ev := g.nodes[n].ev; ev != nil {
		return ev, nil
	}
	ev, err := g.fetch(g.nodes[n].id)
	if err == nil && ev == nil {
		err = ErrEventNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", g.nodes[n].id, err)
	}
	g.nodes[n].ev = ev
	return ev, nil
}

// authOf returns the node's auth events, each once.
func (g *graph) authOf(n int32) ([]int32, error) {
	if g.nodes[n].authOK {
		return g.nodes[n].auth, nil
	}
	ev, err := g.event(n)
	if err != nil {
		return nil, err
	}
	if len(ev.AuthEvents) > maxAuthRefs {
		return nil, fmt.Errorf("%w: %s cites %d auth events", ErrStateResInput, ev.ID, len(ev.AuthEvents))
	}
	start := len(g.arena)
outer:
	for _, aid := range ev.AuthEvents {
		a, err := g.node(aid)
		if err != nil {
			return nil, err
		}
		for _, b := range g.arena[start:] {
			if a == b {
				continue outer
			}
		}
		g.arena = append(g.arena, a)
	}
	// Later appends may move the arena; this slice keeps its own view.
	auth := g.arena[start:len(g.arena):len(g.arena)]
	g.nodes[n].auth, g.nodes[n].authOK = auth, true
	return auth, nil
}

// walk marks in seen the auth chain of roots (their auth events,
// recursively), the roots only when reached from another root. Nodes in
// prune are marked but not descended into. Each newly marked node is
// appended to collect (if set) and passed to stop (if set), which ends the
// walk by returning true.
func (g *graph) walk(roots []int32, seen *bitset, prune bitset, collect *[]int32, stop func(int32) bool) error {
	queue := make([]int32, 0, 2*len(roots)+16)
	queue = append(queue, roots...)
	expanded := len(roots) // roots are expanded without being marked
	for i := 0; i < len(queue); i++ {
		n := queue[i]
		if i >= expanded && prune.has(n) {
			continue
		}
		auth, err := g.authOf(n)
		if err != nil {
			return err
		}
		for _, a := range auth {
			if seen.has(a) {
				continue
			}
			seen.set(a)
			if collect != nil {
				*collect = append(*collect, a)
			}
			if stop != nil && stop(a) {
				return nil
			}
			queue = append(queue, a)
		}
	}
	return nil
}

// chainOf returns the auth chain of one event, through the cache if any.
func (g *graph) chainOf(n int32) ([]int32, error) {
	if chain, ok := g.cache.Get(g.nodes[n].id); ok {
		out := make([]int32, 0, len(chain))
		for _, eid := range chain {
			c, err := g.node(eid)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	}
	var seen bitset
	var out []int32
	if err := g.walk([]int32{n}, &seen, nil, &out, nil); err != nil {
		return nil, err
	}
	ids := make([]string, len(out))
	for i, c := range out {
		ids[i] = g.nodes[c].id
	}
	g.cache.Add(g.nodes[n].id, ids)
	return out, nil
}

// chainsInto marks the union of the roots' auth chains in seen.
func (g *graph) chainsInto(roots []int32, seen *bitset) error {
	if g.cache == nil {
		return g.walk(roots, seen, nil, nil, nil)
	}
	for _, n := range roots {
		chain, err := g.chainOf(n)
		if err != nil {
			return err
		}
		for _, c := range chain {
			seen.set(c)
		}
	}
	return nil
}

// bitset is a set of graph nodes.
type bitset []uint64

func (b *bitset) set(n int32) {
	w := int(n >> 6)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w+1-len(*b))...)
	}
	(*b)[w] |= 1 << (uint(n) & 63)
}

func (b bitset) has(n int32) bool {
	w := int(n >> 6)
	return w < len(b) && b[w]&(1<<(uint(n)&63)) != 0
}

func (b *bitset) or(c bitset) {
	if len(c) > len(*b) {
		*b = append(*b, make([]uint64, len(c)-len(*b))...)
	}
	for i, w := range c {
		(*b)[i] |= w
	}
}

func (b bitset) and(c bitset) {
	for i := range b {
		if i < len(c) {
			b[i] &= c[i]
		} else {
			b[i] = 0
		}
	}
}

func (b bitset) andNot(c bitset) {
	for i := range b {
		if i < len(c) {
			b[i] &^= c[i]
		}
	}
}

func (b bitset) clone() bitset { return append(bitset(nil), b...) }

func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

func (b bitset) each(fn func(int32)) {
	for i, w := range b {
		for w != 0 {
			bit := w & -w
			fn(int32(i<<6 + bits.TrailingZeros64(bit)))
			w ^= bit
		}
	}
}
