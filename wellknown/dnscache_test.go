package wellknown

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestDNSAnswersCachedForTheirTTL: SRV and address answers are reused for
// their TTL (the smallest in the answer), then asked again.
func TestDNSAnswersCachedForTheirTTL(t *testing.T) {
	e := newEnv(t, []string{
		"_matrix-fed._tcp.ttl.test. 60 IN SRV 10 5 8448 host.ttl.test.",
		"host.ttl.test. 30 IN A 127.0.0.1",
	}, nil)
	// No .well-known for ttl.test: resolution goes on to SRV.
	ctx := context.Background()
	resolve := func() {
		t.Helper()
		res, err := e.r.Resolve(ctx, "ttl.test")
		if err != nil || len(res.Endpoints) == 0 {
			t.Fatalf("resolve: %+v %v", res, err)
		}
	}
	resolve()
	first := len(e.dns.queries())
	if first == 0 {
		t.Fatal("no DNS queries at all")
	}
	resolve()
	if n := len(e.dns.queries()); n != first {
		t.Fatalf("second resolution asked DNS again (%d → %d queries) within the TTLs", first, n)
	}
	e.clock.Add(31 * time.Second) // the A record (30 s) expired, the SRV (60 s) not
	resolve()
	afterA := len(e.dns.queries())
	if afterA == first {
		t.Fatal("expired A record was not asked again")
	}
	for _, q := range e.dns.queries()[first:] {
		if q == "udp _matrix-fed._tcp.ttl.test. SRV" {
			t.Fatalf("SRV asked again before its TTL: %v", e.dns.queries()[first:])
		}
	}
	e.clock.Add(30 * time.Second)
	resolve()
	var srvAgain bool
	for _, q := range e.dns.queries()[afterA:] {
		srvAgain = srvAgain || q == "udp _matrix-fed._tcp.ttl.test. SRV"
	}
	if !srvAgain {
		t.Fatalf("SRV not asked again after its TTL: %v", e.dns.queries()[afterA:])
	}
}

// TestEmptyAddressAnswerCachedBriefly: a host with no address (a server
// that is down, as a stopped container's name is) is asked again seconds
// later, not after the minute negative answers are otherwise kept, so a
// federation retry finds it once it is back.
func TestEmptyAddressAnswerCachedBriefly(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	if res, err := e.r.Resolve(ctx, "back.test"); err == nil && len(res.Endpoints) > 0 {
		t.Fatalf("resolved a host without records: %+v", res)
	}
	rr, err := dns.NewRR("back.test. 30 IN A 127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	e.dns.mu.Lock()
	e.dns.rrs = append(e.dns.rrs, rr)
	e.dns.mu.Unlock()
	e.clock.Add(6 * time.Second)
	res, err := e.r.Resolve(ctx, "back.test")
	if err != nil || len(res.Endpoints) == 0 {
		t.Fatalf("host with an address now still unresolved 6 s later: %+v %v", res, err)
	}
}
