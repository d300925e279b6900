package room

import "sync/atomic"

// Metrics counts cache use and events since the process started.
type Metrics struct {
	// EventCache counts Service.Event lookups; StateCache base snapshot
	// loads; AuthChainCache the auth chains resolutions look up;
	// ResolutionCache state resolutions looked up by their input snapshots;
	// PowerLevelsCache the parsed power levels memoised on events;
	// JoinedCache the joined servers per snapshot.
	EventCache, StateCache, AuthChainCache, ResolutionCache, PowerLevelsCache, JoinedCache CacheCounts
	// LocalEvents counts events this server built, signed and stored.
	LocalEvents atomic.Uint64
	// RemoteEvents counts events received from other servers and stored
	// (rejected and soft-failed ones included).
	RemoteEvents atomic.Uint64
}

// Stats is the process-wide room metrics (tests with several nodes in one
// process see their sum).
var Stats Metrics
