package room

import "sync/atomic"

// Metrics counts cache use and events since the process started.
type Metrics struct {
	// EventCacheHits and EventCacheMisses count Service.Event lookups.
	EventCacheHits, EventCacheMisses atomic.Uint64
	// StateCacheHits and StateCacheMisses count base snapshot loads.
	StateCacheHits, StateCacheMisses atomic.Uint64
	// LocalEvents counts events this server built, signed and stored.
	LocalEvents atomic.Uint64
	// RemoteEvents counts events received from other servers and stored
	// (rejected and soft-failed ones included).
	RemoteEvents atomic.Uint64
}

// Stats is the process-wide room metrics (tests with several nodes in one
// process see their sum).
var Stats Metrics
