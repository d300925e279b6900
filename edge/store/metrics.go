package store

import (
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Metrics counts the writer's work since the process started.
type Metrics struct {
	// Commits is durable transactions; Requests is Write calls they carried.
	Commits, Requests atomic.Uint64
	// Failed is transactions that did not commit (the store's error).
	Failed atomic.Uint64
	// CommitNanos is the time spent in committing transactions.
	CommitNanos atomic.Uint64
	// Batch counts commits by batch size: ≤1, ≤4, ≤16, ≤64, ≤256 (maxBatch).
	Batch [len(BatchBuckets)]atomic.Uint64
}

// BatchBuckets are the upper bounds of Metrics.Batch.
var BatchBuckets = [...]int{1, 4, 16, 64, maxBatch}

// Stats is the process-wide store metrics (one node per process in
// production; tests with several nodes see their sum).
var Stats Metrics

// recordCommit notes one transaction of n requests that took d.
func recordCommit(n int, d time.Duration, err error) {
	if err != nil {
		Stats.Failed.Add(1)
		return
	}
	Stats.Commits.Add(1)
	Stats.Requests.Add(uint64(n))
	Stats.CommitNanos.Add(uint64(d.Nanoseconds()))
	for i, b := range BatchBuckets {
		if n <= b {
			Stats.Batch[i].Add(1)
			break
		}
	}
}

// Size is the database file's size in bytes.
func (s *Store) Size() int64 {
	var n int64
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}
