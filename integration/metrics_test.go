package integration

import (
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// serveMetrics serves the node's metrics_listen handler on a loopback
// port, as Run does, and returns its base URL.
func serveMetrics(t testing.TB, n *testNode) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: n.MetricsHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// scrape reads GET /metrics and returns its samples by "name{labels}",
// checking the exposition format: every sample belongs to a family
// declared by a TYPE line (histograms through _bucket, _sum and _count).
func scrape(t testing.TB, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics: HTTP %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	types := map[string]string{}
	out := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "# TYPE "):
			f := strings.Fields(line)
			if len(f) != 4 || types[f[2]] != "" {
				t.Fatalf("bad or repeated TYPE line %q", line)
			}
			types[f[2]] = f[3]
			continue
		case strings.HasPrefix(line, "# HELP "):
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad value in %q", line)
		}
		name, _, _ := strings.Cut(line[:i], "{")
		family := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && types[base] == "histogram" {
				family = base
			}
		}
		if types[family] == "" {
			t.Fatalf("sample %q without a TYPE line", line)
		}
		if _, dup := out[line[:i]]; dup {
			t.Fatalf("duplicate series %q", line[:i])
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetrics: after traffic, the request, store, cache and runtime
// series have moved, and a waiting /sync shows as a long-poll.
func TestMetrics(t *testing.T) {
	n := startNode(t)
	base := serveMetrics(t, n)
	ctx := ctxT(t)
	before := scrape(t, base)

	alice := n.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "metrics"})
	for i := range 5 {
		if _, err := alice.SendText(ctx, roomID, "message "+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A 404 and a 401 for the error classes.
	if _, err := alice.MakeRequest(ctx, "GET", alice.BuildClientURL("v3", "rooms", "!nope:localhost", "state"), nil, nil); err == nil {
		t.Fatal("state of an unknown room answered")
	}
	if _, err := newAnon(t, n).Whoami(ctx); err == nil {
		t.Fatal("whoami without a token answered")
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}

	// A long-poll with nothing new waits; the gauge sees it. The loop
	// catches up first (its own presence may count as news).
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		since := first.NextBatch
		for pollCtx.Err() == nil {
			resp, err := alice.SyncRequest(pollCtx, 30000, since, "", false, event.PresenceOnline)
			if err == nil {
				since = resp.NextBatch
			}
		}
	}()
	waitFor(t, 5*time.Second, "a /sync long-poll to wait", func() bool {
		if scrape(t, base)["edge_sync_requests_active"] < 1 {
			return false
		}
		time.Sleep(400 * time.Millisecond)
		return scrape(t, base)["edge_sync_requests_active"] >= 1
	})
	stopPoll()
	<-polled
	// A request is counted just after its response went out.
	syncCount := `edge_http_request_duration_seconds_count{route="/_matrix/client/v3/sync"}`
	waitFor(t, 5*time.Second, "the cancelled long-poll to be counted", func() bool {
		m := scrape(t, base)
		return m[syncCount] >= 2 && m["edge_sync_requests_active"] == 0
	})

	after := scrape(t, base)
	if slow := after[syncCount] - after[`edge_http_request_duration_seconds_bucket{route="/_matrix/client/v3/sync",le="0.25"}`]; slow < 1 {
		t.Errorf("no /sync slower than 0.25s counted: %v", after)
	}
	moved := func(series string, atLeast float64) {
		t.Helper()
		if d := after[series] - before[series]; d < atLeast {
			t.Errorf("%s moved by %v, want at least %v (before %v, after %v)", series, d, atLeast, before[series], after[series])
		}
	}
	moved(`edge_http_requests_total{method="PUT",route="/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}",status="2xx"}`, 5)
	moved(`edge_http_requests_total{method="POST",route="/_matrix/client/v3/createRoom",status="2xx"}`, 1)
	moved(`edge_http_requests_total{method="POST",route="/_matrix/client/v3/register",status="2xx"}`, 1)
	moved(`edge_http_requests_total{method="GET",route="/_matrix/client/v3/account/whoami",status="4xx"}`, 1)
	moved(`edge_http_requests_total{method="GET",route="/_matrix/client/v3/rooms/{roomId}/state",status="4xx"}`, 1)
	moved(`edge_http_request_duration_seconds_count{route="/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"}`, 5)
	moved(`edge_http_request_duration_seconds_bucket{route="/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}",le="+Inf"}`, 5)
	moved(`edge_http_request_duration_seconds_sum{route="/_matrix/client/v3/sync"}`, 0.000001)
	moved("edge_store_commits_total", 8)
	moved("edge_store_batch_size_count", 8)
	moved("edge_store_batch_size_sum", 8)
	moved("edge_store_commit_seconds_total", 0.000001)
	moved("edge_store_stream_position", 5)
	moved("edge_events_local_total", 10) // createRoom's events and the five messages
	moved(`edge_cache_hits_total{cache="event"}`, 1)
	if after[`edge_cache_hits_total{cache="state"}`]+after[`edge_cache_misses_total{cache="state"}`] == 0 {
		t.Error("no state cache lookups counted")
	}
	if after[`edge_cache_size{cache="state"}`] <= 0 || after[`edge_cache_size{cache="event"}`] <= 0 {
		t.Errorf("cache sizes: state %v events %v, want the room's state and events held", after[`edge_cache_size{cache="state"}`], after[`edge_cache_size{cache="event"}`])
	}
	if _, ok := after["edge_device_lists_resyncs_total"]; !ok {
		t.Error("no remote device-list counters")
	}
	for _, c := range []string{"auth_chain", "resolution", "joined_servers"} {
		if _, ok := after[`edge_cache_misses_total{cache="`+c+`"}`]; !ok {
			t.Errorf("no %s cache counters", c)
		}
	}
	if after["edge_store_size_bytes"] <= 0 || after["go_goroutines"] <= 0 || after["go_memstats_heap_alloc_bytes"] <= 0 {
		t.Errorf("gauges: size %v goroutines %v heap %v", after["edge_store_size_bytes"], after["go_goroutines"], after["go_memstats_heap_alloc_bytes"])
	}
	if after["edge_http_requests_in_flight"] < 0 {
		t.Errorf("in-flight gauge negative: %v", after["edge_http_requests_in_flight"])
	}
	// Buckets are cumulative and end at the count.
	route := "/_matrix/client/v3/createRoom"
	prev := 0.0
	for _, le := range []string{"0.005", "0.01", "0.1", "1", "10", "60", "+Inf"} {
		v := after[`edge_http_request_duration_seconds_bucket{route="`+route+`",le="`+le+`"}`]
		if v < prev {
			t.Errorf("bucket le=%s (%v) below the previous one (%v)", le, v, prev)
		}
		prev = v
	}
	if prev != after[`edge_http_request_duration_seconds_count{route="`+route+`"}`] {
		t.Errorf("+Inf bucket %v != count", prev)
	}
	// Route labels are patterns, never raw paths with IDs in them.
	for series := range after {
		if strings.Contains(series, roomID.String()) || strings.Contains(series, "@alice") {
			t.Errorf("series carries an ID: %s", series)
		}
	}
}

// TestMetricsFederationQueueStillServed: the extra series sit beside the
// federation queue families, and /federation/queues still answers.
func TestMetricsFederationQueueStillServed(t *testing.T) {
	n := startNode(t)
	base := scrape(t, serveMetrics(t, n))
	if _, ok := base["edge_federation_destinations"]; !ok {
		t.Fatal("edge_federation_destinations missing")
	}
	if _, ok := base[`edge_build_info{version="dev",go_version="`+runtime.Version()+`"}`]; !ok {
		t.Errorf("edge_build_info missing: %v", base)
	}
	resp, err := http.Get(serveMetrics(t, n) + "/federation/queues")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/federation/queues: HTTP %d", resp.StatusCode)
	}
}
