package edge

import (
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"edge/edge/client"
	"edge/edge/keysfed"
	"edge/edge/room"
	"edge/edge/store"
)

// Metrics beyond the federation queues: HTTP traffic, /sync long-polls,
// store commits, caches and the Go runtime, in the Prometheus text format.
// Written by hand so the binary does not carry a metrics library.

func init() {
	// Version is final here: -ldflags -X sets its initial value.
	client.ServerVersion = "edge/" + Version
}

// durationBuckets are the request-duration histogram's upper bounds in
// seconds; the top ones are for /sync long-polls.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// routeKey labels a request series.
type routeKey struct {
	method, route, class string
}

// routeStats is one route's duration histogram.
type routeStats struct {
	buckets []uint64 // per durationBuckets, non-cumulative; last is +Inf
	count   uint64
	sum     float64
}

// httpMetrics is the process-wide request accounting (tests that run
// several nodes in one process see their sum).
var httpMetrics = struct {
	mu        sync.Mutex
	requests  map[routeKey]uint64
	durations map[string]*routeStats
	inFlight  atomic.Int64
	syncs     atomic.Int64
}{requests: map[routeKey]uint64{}, durations: map[string]*routeStats{}}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush keeps streaming responses streaming through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument counts requests by route pattern (not path: paths carry IDs
// and would make unbounded series), method and status class.
func (n *Node) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		httpMetrics.inFlight.Add(1)
		defer httpMetrics.inFlight.Add(-1)
		if strings.HasSuffix(r.URL.Path, "/sync") && strings.HasPrefix(r.URL.Path, "/_matrix/client/") {
			httpMetrics.syncs.Add(1)
			defer httpMetrics.syncs.Add(-1)
		}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			// The innermost ServeMux leaves its pattern on r.
			route := r.Pattern
			if _, path, ok := strings.Cut(route, " "); ok {
				route = path
			}
			if route == "" || route == "/" {
				route = "unmatched"
			}
			status := sw.status
			if status == 0 {
				status = http.StatusOK
			}
			if p := recover(); p != nil {
				status = http.StatusInternalServerError
				defer panic(p)
			}
			observeRequest(r.Method, route, status, time.Since(start))
		}()
		h.ServeHTTP(sw, r)
	})
}

// methods bounds the method label; anything else is "other".
var methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}

func observeRequest(method, route string, status int, d time.Duration) {
	if !slices.Contains(methods, method) {
		method = "other"
	}
	key := routeKey{method, route, fmt.Sprintf("%dxx", status/100)}
	secs := d.Seconds()
	httpMetrics.mu.Lock()
	defer httpMetrics.mu.Unlock()
	httpMetrics.requests[key]++
	rs := httpMetrics.durations[route]
	if rs == nil {
		rs = &routeStats{buckets: make([]uint64, len(durationBuckets)+1)}
		httpMetrics.durations[route] = rs
	}
	i, _ := slices.BinarySearch(durationBuckets, secs)
	rs.buckets[i]++
	rs.count++
	rs.sum += secs
}

// extraMetrics renders everything but the federation queues.
func (n *Node) extraMetrics() string {
	var b strings.Builder
	head := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	one := func(name, typ, help string, v any) {
		head(name, typ, help)
		fmt.Fprintf(&b, "%s %v\n", name, v)
	}
	lbl := labelEscaper.Replace

	fmt.Fprintf(&b, "# HELP edge_build_info The running edge version.\n# TYPE edge_build_info gauge\nedge_build_info{version=\"%s\",go_version=\"%s\"} 1\n",
		lbl(Version), lbl(runtime.Version()))

	httpMetrics.mu.Lock()
	keys := make([]routeKey, 0, len(httpMetrics.requests))
	for k := range httpMetrics.requests {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b routeKey) int {
		return strings.Compare(a.route+" "+a.method+" "+a.class, b.route+" "+b.method+" "+b.class)
	})
	head("edge_http_requests_total", "counter", "HTTP requests answered, by method, route pattern and status class.")
	for _, k := range keys {
		fmt.Fprintf(&b, "edge_http_requests_total{method=\"%s\",route=\"%s\",status=\"%s\"} %d\n", k.method, lbl(k.route), k.class, httpMetrics.requests[k])
	}
	routes := make([]string, 0, len(httpMetrics.durations))
	for r := range httpMetrics.durations {
		routes = append(routes, r)
	}
	slices.Sort(routes)
	head("edge_http_request_duration_seconds", "histogram", "Time to answer HTTP requests, by route pattern (long-polls included).")
	for _, route := range routes {
		rs := httpMetrics.durations[route]
		var cum uint64
		for i, le := range durationBuckets {
			cum += rs.buckets[i]
			fmt.Fprintf(&b, "edge_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %d\n", lbl(route), le, cum)
		}
		fmt.Fprintf(&b, "edge_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %d\n", lbl(route), rs.count)
		fmt.Fprintf(&b, "edge_http_request_duration_seconds_sum{route=\"%s\"} %g\n", lbl(route), rs.sum)
		fmt.Fprintf(&b, "edge_http_request_duration_seconds_count{route=\"%s\"} %d\n", lbl(route), rs.count)
	}
	httpMetrics.mu.Unlock()
	one("edge_http_requests_in_flight", "gauge", "HTTP requests being answered now.", httpMetrics.inFlight.Load())
	one("edge_sync_requests_active", "gauge", "Client /sync requests in progress (mostly long-polls waiting for news).", httpMetrics.syncs.Load())

	st := &store.Stats
	one("edge_store_commits_total", "counter", "Write transactions committed.", st.Commits.Load())
	one("edge_store_commit_failures_total", "counter", "Write transactions that failed to commit.", st.Failed.Load())
	one("edge_store_commit_seconds_total", "counter", "Time spent in committed write transactions, fsync included.",
		float64(st.CommitNanos.Load())/1e9)
	head("edge_store_batch_size", "histogram", "Write requests sharing one committed transaction.")
	var cum uint64
	for i, le := range store.BatchBuckets {
		cum += st.Batch[i].Load()
		fmt.Fprintf(&b, "edge_store_batch_size_bucket{le=\"%d\"} %d\n", le, cum)
	}
	fmt.Fprintf(&b, "edge_store_batch_size_bucket{le=\"+Inf\"} %d\nedge_store_batch_size_sum %d\nedge_store_batch_size_count %d\n",
		cum, st.Requests.Load(), cum)
	one("edge_store_size_bytes", "gauge", "Size of the database file.", n.Store.Size())
	one("edge_store_stream_position", "gauge", "Last committed stream position.", n.Store.Pos())

	rs := &room.Stats
	one("edge_events_local_total", "counter", "Events this server created and stored.", rs.LocalEvents.Load())
	one("edge_events_remote_total", "counter", "Events received from other servers and stored.", rs.RemoteEvents.Load())
	caches := []struct {
		name string
		c    *room.CacheCounts
	}{{"event", &rs.EventCache}, {"state", &rs.StateCache}, {"auth_chain", &rs.AuthChainCache}, {"resolution", &rs.ResolutionCache}, {"power_levels", &rs.PowerLevelsCache}, {"joined_servers", &rs.JoinedCache}}
	head("edge_cache_hits_total", "counter", "Cache lookups answered from memory, by cache.")
	for _, c := range caches {
		fmt.Fprintf(&b, "edge_cache_hits_total{cache=\"%s\"} %d\n", c.name, c.c.Hits.Load())
	}
	head("edge_cache_misses_total", "counter", "Cache lookups that went to the store or were computed, by cache.")
	for _, c := range caches {
		fmt.Fprintf(&b, "edge_cache_misses_total{cache=\"%s\"} %d\n", c.name, c.c.Misses.Load())
	}
	head("edge_cache_size", "gauge", "What a cache holds now in the unit its budget counts: events, state entries, auth-chain event IDs, resolutions.")
	for _, u := range n.Rooms.CacheUsage() {
		fmt.Fprintf(&b, "edge_cache_size{cache=\"%s\"} %d\n", u.Name, u.Size)
	}

	ks := keysfed.StatsFor(n.Config.ServerName)
	one("edge_device_lists_resyncs_total", "counter", "Remote device lists fetched whole (GET /user/devices).", ks.Resyncs.Load())
	one("edge_device_lists_resync_failures_total", "counter", "Remote device-list fetches that failed, leaving the list stale.", ks.ResyncFailures.Load())
	one("edge_device_lists_gaps_total", "counter", "Device-list updates whose prev_id was unknown (each starts a resync).", ks.Gaps.Load())
	one("edge_device_lists_updates_applied_total", "counter", "Device-list and signing-key updates applied to cached lists.", ks.Applied.Load())
	one("edge_device_lists_cache_answers_total", "counter", "Remote users of /keys/query answered from the cache.", ks.CacheAnswers.Load())

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	one("go_goroutines", "gauge", "Goroutines that currently exist.", runtime.NumGoroutine())
	one("go_memstats_heap_alloc_bytes", "gauge", "Bytes of allocated heap objects.", ms.HeapAlloc)
	one("go_memstats_heap_inuse_bytes", "gauge", "Bytes in in-use heap spans.", ms.HeapInuse)
	one("go_memstats_sys_bytes", "gauge", "Bytes of memory obtained from the OS.", ms.Sys)
	one("go_memstats_mallocs_total", "counter", "Heap objects allocated.", ms.Mallocs)
	one("go_gc_cycles_total", "counter", "Completed GC cycles.", ms.NumGC)
	one("go_gc_pause_seconds_total", "counter", "Total stop-the-world GC pause time.", float64(ms.PauseTotalNs)/1e9)
	return b.String()
}
