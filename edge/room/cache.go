package room

import (
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
)

// CacheSizes bounds the room pipeline's in-memory caches. Entry budgets
// bound memory whatever the room size: a 100k-member room's state is one
// snapshot but 100k entries.
type CacheSizes struct {
	// StateSnapshots and StateEntries bound the materialised base
	// snapshots: at most this many snapshots, holding at most this many
	// (state key → event) entries in total.
	StateSnapshots, StateEntries int
	// Events is the number of parsed events kept.
	Events int
	// AuthChainIDs bounds the event IDs held by all cached auth chains.
	AuthChainIDs int
	// Resolutions is the number of state-resolution results kept, each
	// keyed by the set of snapshots it merged.
	Resolutions int
}

// CacheCounts is one cache's use since the process started.
type CacheCounts struct {
	Hits, Misses atomic.Uint64
}

// weighted is an LRU bounded both by its number of entries (lru.Cache)
// and by the sum of their weights. Adding past the weight budget evicts
// the least recently used entries; a single entry heavier than the whole
// budget is not kept at all.
type weighted[K comparable, V any] struct {
	mu     sync.Mutex // guards total against concurrent Add/evict
	c      *lru.Cache[K, V]
	weight func(V) int
	total  int
	budget int
	counts *CacheCounts
}

func newWeighted[K comparable, V any](entries, budget int, weight func(V) int, counts *CacheCounts) *weighted[K, V] {
	w := &weighted[K, V]{weight: weight, budget: max(budget, 1), counts: counts}
	// The eviction callback runs inside Add/RemoveOldest, which are only
	// called with w.mu held.
	w.c, _ = lru.NewWithEvict[K, V](max(entries, 1), func(_ K, v V) { w.total -= w.weight(v) })
	return w
}

func (w *weighted[K, V]) Get(k K) (V, bool) {
	v, ok := w.c.Get(k)
	if ok {
		w.counts.Hits.Add(1)
	} else {
		w.counts.Misses.Add(1)
	}
	return v, ok
}

// Peek looks k up without counting it or making it recent.
func (w *weighted[K, V]) Peek(k K) (V, bool) { return w.c.Peek(k) }

func (w *weighted[K, V]) Add(k K, v V) {
	n := w.weight(v)
	if n > w.budget {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.c.Peek(k); ok {
		w.total -= w.weight(old) // replacing a value evicts nothing
	}
	w.c.Add(k, v)
	w.total += n
	for w.total > w.budget {
		if _, _, ok := w.c.RemoveOldest(); !ok {
			break
		}
	}
}

func (w *weighted[K, V]) Remove(k K) {
	w.mu.Lock()
	w.c.Remove(k)
	w.mu.Unlock()
}

// Weight is the sum of the cached entries' weights.
func (w *weighted[K, V]) Weight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}

// Len is the number of cached entries.
func (w *weighted[K, V]) Len() int { return w.c.Len() }

// CacheUse is what one cache holds, in the unit of its budget.
type CacheUse struct {
	Name string
	Size int
}

// CacheUsage reports the service's caches for metrics.
func (s *Service) CacheUsage() []CacheUse {
	return []CacheUse{
		{"event", s.events.Len()},
		{"state", s.states.bases.Weight()},
		{"auth_chain", s.chains.w.Weight()},
		{"resolution", s.resolutions.Len()},
		{"joined_servers", s.joined.Len()},
	}
}
