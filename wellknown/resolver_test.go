package wellknown

import (
	"context"
	"encoding/json"
	"errors"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// stepsZone is the DNS shared by the step-by-step tables. Hosts that reach
// step 3 resolve to 127.0.0.1, the test TLS server; everything else is
// only ever looked up, never dialled.
var stepsZone = []string{
	// .well-known hosts (the TLS server)
	"d-ip.test. 300 IN A 127.0.0.1",
	"d-ip6.test. 300 IN A 127.0.0.1",
	"d-port.test. 300 IN A 127.0.0.1",
	"d-srv.test. 300 IN A 127.0.0.1",
	"d-oldsrv.test. 300 IN A 127.0.0.1",
	"d-plain.test. 300 IN A 127.0.0.1",
	"d-bad.test. 300 IN A 127.0.0.1",
	"d-redir.test. 300 IN A 127.0.0.1",
	"d-redir2.test. 300 IN A 127.0.0.1",
	"self.test. 300 IN A 127.0.0.1",
	"srv.test. 300 IN A 127.0.0.1",
	"oldsrv.test. 300 IN A 127.0.0.1",
	"bare.test. 300 IN A 127.0.0.1",
	"bare.test. 300 IN AAAA ::1",

	// step 2 targets
	"port.test. 300 IN A 127.0.0.2",
	"port.test. 300 IN AAAA fd00::2",
	"cname.test. 300 IN CNAME real.test.",
	"real.test. 300 IN A 127.0.0.3",
	"lazy.test. 300 IN CNAME lazyreal.test.",
	"lazyreal.test. 300 IN A 127.0.0.4",

	// delegation targets
	"target.test. 300 IN A 127.0.0.10",
	"_matrix-fed._tcp.fed.test. 300 IN SRV 10 0 8450 host1.test.",
	"_matrix-fed._tcp.fed.test. 300 IN SRV 20 0 8451 host2.test.",
	"_matrix._tcp.fed.test. 300 IN SRV 0 0 9999 wrong.test.", // must lose to _matrix-fed
	"_matrix._tcp.old.test. 300 IN SRV 0 0 8452 host3.test.",
	"plain.test. 300 IN A 127.0.0.14",
	"host1.test. 300 IN AAAA fd00::11",
	"host1.test. 300 IN A 127.0.0.11",
	"host2.test. 300 IN A 127.0.0.12",
	"host3.test. 300 IN A 127.0.0.13",

	// steps 4 and 5
	"_matrix-fed._tcp.srv.test. 300 IN SRV 0 0 8460 host1.test.",
	"_matrix._tcp.oldsrv.test. 300 IN SRV 0 0 8461 host2.test.",
	"_matrix-fed._tcp.nxwk.test. 300 IN SRV 0 0 8462 host3.test.",
	"_matrix-fed._tcp.srvalias.test. 300 IN CNAME _matrix-fed._tcp.srv.test.",
	"_matrix-fed._tcp.srvtcname.test. 300 IN SRV 0 0 8463 alias-host.test.",
	"alias-host.test. 300 IN CNAME host2.test.",
	"_matrix-fed._tcp.weighted.test. 300 IN SRV 5 1 8471 host1.test.",
	"_matrix-fed._tcp.weighted.test. 300 IN SRV 5 9 8472 host2.test.",
	"_matrix-fed._tcp.weighted.test. 300 IN SRV 1 0 8470 host3.test.",
	"_matrix-fed._tcp.multi.test. 300 IN SRV 0 0 8480 noaddr.test.",
	"_matrix-fed._tcp.multi.test. 300 IN SRV 1 0 8481 host2.test.",

	// failures
	"_matrix-fed._tcp.dotsrv.test. 300 IN SRV 0 0 0 .",
	"_matrix-fed._tcp.srvnoaddr.test. 300 IN SRV 0 0 8464 noaddr.test.",
	`noaddr.test. 300 IN TXT "exists, but no address"`,
	"servfail.test. 300 IN TXT \"SRV answers SERVFAIL\"",
	"loop1.test. 300 IN CNAME loop2.test.",
	"loop2.test. 300 IN CNAME loop1.test.",
}

func stepsEnv(t *testing.T) *env {
	e := newEnv(t, stepsZone, nil)
	e.dns.edit(func(d *testDNS) {
		d.lazy["lazy.test."] = true
		d.rcode["_matrix-fed._tcp.servfail.test. SRV"] = dns.RcodeServerFailure
	})
	e.r.randIntN = func(n int) int { return n - 1 } // always the top of the weight range

	wk := func(ms string) string { return `{"m.server": "` + ms + `"}` }
	e.wk.json("d-ip.test", 200, wk("127.0.0.9:8500"))
	e.wk.json("d-ip6.test", 200, wk("[::1]"))
	e.wk.json("d-port.test", 200, wk("target.test:9000"))
	e.wk.json("d-srv.test", 200, wk("fed.test"))
	e.wk.json("d-oldsrv.test", 200, wk("old.test"))
	e.wk.json("d-plain.test", 200, wk("plain.test"))
	e.wk.json("d-bad.test", 200, wk("not a name"))
	e.wk.redirect("d-redir.test", "https://d-redir2.test/.well-known/matrix/server")
	e.wk.json("d-redir2.test", 200, wk("plain.test:8443"))
	e.wk.json("oldsrv.test", 200, "{not json")
	self, err := NewHandler(Discovery{Server: "target.test:8448"})
	if err != nil {
		t.Fatal(err)
	}
	e.wk.route("self.test", self.ServeHTTP)
	return e
}

func TestResolveSteps(t *testing.T) {
	e := stepsEnv(t)
	cases := []struct {
		name     string
		step     string
		host     string
		tls      string
		addrs    []string
		targets  []string // Endpoint.Target, when checked
		noFetch  bool     // steps 1 and 2 must not touch .well-known
		wkStatus int      // expected status of the step 3 fetch, 0 = not checked
	}{
		// 1: IP literals, with and without port, v4 and v6.
		{name: "1.2.3.4", step: "1", host: "1.2.3.4", tls: "1.2.3.4", addrs: []string{"1.2.3.4:8448"}, noFetch: true},
		{name: "1.2.3.4:1234", step: "1", host: "1.2.3.4:1234", tls: "1.2.3.4", addrs: []string{"1.2.3.4:1234"}, noFetch: true},
		{name: "[2001:db8::1]", step: "1", host: "[2001:db8::1]", tls: "2001:db8::1", addrs: []string{"[2001:db8::1]:8448"}, noFetch: true},
		{name: "[::1]:8009", step: "1", host: "[::1]:8009", tls: "::1", addrs: []string{"[::1]:8009"}, noFetch: true},
		// 2: explicit port; AAAA before A; CNAME chased by the server or by us.
		{name: "port.test:1234", step: "2", host: "port.test:1234", tls: "port.test", addrs: []string{"[fd00::2]:1234", "127.0.0.2:1234"}, noFetch: true},
		{name: "cname.test:443", step: "2", host: "cname.test:443", tls: "cname.test", addrs: []string{"127.0.0.3:443"}, noFetch: true},
		{name: "lazy.test:443", step: "2", host: "lazy.test:443", tls: "lazy.test", addrs: []string{"127.0.0.4:443"}, noFetch: true},
		// 3.1–3.5: delegation.
		{name: "d-ip.test", step: "3.1", host: "127.0.0.9:8500", tls: "127.0.0.9", addrs: []string{"127.0.0.9:8500"}, wkStatus: 200},
		{name: "d-ip6.test", step: "3.1", host: "[::1]", tls: "::1", addrs: []string{"[::1]:8448"}, wkStatus: 200},
		{name: "d-port.test", step: "3.2", host: "target.test:9000", tls: "target.test", addrs: []string{"127.0.0.10:9000"}, wkStatus: 200},
		{name: "self.test", step: "3.2", host: "target.test:8448", tls: "target.test", addrs: []string{"127.0.0.10:8448"}, wkStatus: 200},
		{name: "d-redir.test", step: "3.2", host: "plain.test:8443", tls: "plain.test", addrs: []string{"127.0.0.14:8443"}, wkStatus: 200},
		{name: "d-srv.test", step: "3.3", host: "fed.test", tls: "fed.test",
			addrs:   []string{"[fd00::11]:8450", "127.0.0.11:8450", "127.0.0.12:8451"},
			targets: []string{"host1.test", "host1.test", "host2.test"}, wkStatus: 200},
		{name: "d-oldsrv.test", step: "3.4", host: "old.test", tls: "old.test", addrs: []string{"127.0.0.13:8452"}, wkStatus: 200},
		{name: "d-plain.test", step: "3.5", host: "plain.test", tls: "plain.test", addrs: []string{"127.0.0.14:8448"}, targets: []string{"plain.test"}, wkStatus: 200},
		// 4: well-known 404, missing host, invalid m.server; SRV owner via CNAME; target via CNAME.
		{name: "srv.test", step: "4", host: "srv.test", tls: "srv.test", addrs: []string{"[fd00::11]:8460", "127.0.0.11:8460"}, wkStatus: 404},
		{name: "nxwk.test", step: "4", host: "nxwk.test", tls: "nxwk.test", addrs: []string{"127.0.0.13:8462"}},
		{name: "srvalias.test", step: "4", host: "srvalias.test", tls: "srvalias.test", addrs: []string{"[fd00::11]:8460", "127.0.0.11:8460"}},
		{name: "srvtcname.test", step: "4", host: "srvtcname.test", tls: "srvtcname.test", addrs: []string{"127.0.0.12:8463"}, targets: []string{"alias-host.test"}},
		{name: "weighted.test", step: "4", host: "weighted.test", tls: "weighted.test",
			addrs: []string{"127.0.0.13:8470", "127.0.0.12:8472", "[fd00::11]:8471", "127.0.0.11:8471"}},
		{name: "multi.test", step: "4", host: "multi.test", tls: "multi.test", addrs: []string{"127.0.0.12:8481"}},
		// 5: deprecated SRV after an invalid well-known body.
		{name: "oldsrv.test", step: "5", host: "oldsrv.test", tls: "oldsrv.test", addrs: []string{"127.0.0.12:8461"}, wkStatus: 200},
		// 6: nothing else, port 8448.
		{name: "bare.test", step: "6", host: "bare.test", tls: "bare.test", addrs: []string{"[::1]:8448", "127.0.0.1:8448"}, wkStatus: 404},
		{name: "d-bad.test", step: "6", host: "d-bad.test", tls: "d-bad.test", addrs: []string{"127.0.0.1:8448"}, wkStatus: 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, rep, err := e.r.ResolveReport(context.Background(), tc.name)
			if err != nil {
				t.Fatalf("Resolve: %v\n%s", err, dumpReport(rep))
			}
			if res.Step != tc.step || res.Host != tc.host || res.TLSServerName != tc.tls || res.ServerName != tc.name {
				t.Errorf("got step %s host %q tls %q name %q; want %s %q %q", res.Step, res.Host, res.TLSServerName, res.ServerName, tc.step, tc.host, tc.tls)
			}
			if got := res.Addrs(); !slices.Equal(got, tc.addrs) {
				t.Errorf("endpoints %v, want %v", got, tc.addrs)
			}
			if tc.targets != nil {
				var got []string
				for _, ep := range res.Endpoints {
					got = append(got, ep.Target)
				}
				if !slices.Equal(got, tc.targets) {
					t.Errorf("targets %v, want %v", got, tc.targets)
				}
			}
			if tc.noFetch && e.wk.count(strings.Split(tc.name, ":")[0]) != 0 {
				t.Errorf("steps 1/2 fetched .well-known")
			}
			last := rep.Steps[len(rep.Steps)-1]
			if last.Step != tc.step || last.Outcome != OutcomeUsed || rep.Result != res {
				t.Errorf("report ends with step %s %s", last.Step, last.Outcome)
			}
			if tc.wkStatus != 0 {
				st := findStep(rep, "3")
				if st == nil || st.WellKnown == nil || st.WellKnown.Status != tc.wkStatus {
					t.Errorf("step 3 record %+v, want status %d", st, tc.wkStatus)
				}
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	e := stepsEnv(t)
	cases := []struct {
		name    string
		want    error
		step    string // step that failed
		hasDNS  bool   // the failing step records DNS queries
		message string // substring of the error
	}{
		{name: "exa mple.test", want: ErrInvalidServerName, step: "parse"},
		{name: "", want: ErrInvalidServerName, step: "parse"},
		{name: "host.test:0", want: ErrInvalidServerName, step: "parse"},
		{name: "nothing.test", want: ErrNoAddress, step: "6", hasDNS: true},
		{name: "nothing.test:8448", want: ErrNoAddress, step: "2", hasDNS: true},
		{name: "servfail.test", want: ErrSRVLookup, step: "4", hasDNS: true, message: "SERVFAIL"},
		{name: "dotsrv.test", want: ErrSRVNoService, step: "4", hasDNS: true},
		{name: "srvnoaddr.test", want: ErrNoAddress, step: "4", hasDNS: true, message: "noaddr.test"},
		{name: "loop1.test:1", want: ErrDNSLookup, step: "2", hasDNS: true, message: "CNAME loop"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, rep, err := e.r.ResolveReport(context.Background(), tc.name)
			if !errors.Is(err, tc.want) || res != nil {
				t.Fatalf("got %v, %v; want %v", res, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q lacks %q", err, tc.message)
			}
			last := rep.Steps[len(rep.Steps)-1]
			if last.Step != tc.step || last.Outcome != OutcomeFailed || !errors.Is(last.Err, tc.want) || rep.Error == "" {
				t.Errorf("last step %s %s %v; report error %q", last.Step, last.Outcome, last.Err, rep.Error)
			}
			if tc.hasDNS && len(last.DNS) == 0 {
				t.Errorf("failing step recorded no DNS queries")
			}
		})
	}
}

// TestReport checks the report's content and JSON shape for a delegated SRV
// resolution and for a fall-through past a failed well-known.
func TestReport(t *testing.T) {
	e := stepsEnv(t)
	_, rep, err := e.r.ResolveReport(context.Background(), "d-srv.test")
	if err != nil {
		t.Fatal(err)
	}
	var seq []string
	for _, st := range rep.Steps {
		seq = append(seq, st.Step+":"+string(st.Outcome))
	}
	want := []string{"1:skipped", "2:skipped", "3:found", "3.1:skipped", "3.2:skipped", "3.3:used"}
	if !slices.Equal(seq, want) {
		t.Fatalf("steps %v, want %v", seq, want)
	}
	wk := findStep(rep, "3").WellKnown
	if wk.MServer != "fed.test" || wk.Cached || wk.Body == "" || !wk.Expires.Equal(e.clock.Now().Add(24*time.Hour)) ||
		!slices.Equal(wk.Dialed, []string{"127.0.0.1:" + itoa(e.wk.port)}) || len(wk.DNS) != 2 {
		t.Errorf("well-known record %+v", wk)
	}
	srvStep := findStep(rep, "3.3")
	if len(srvStep.SRV) != 2 || srvStep.SRV[0].Target != "host1.test" || srvStep.SRV[0].Priority != 10 || srvStep.SRV[1].Port != 8451 {
		t.Errorf("SRV records %+v", srvStep.SRV)
	}
	var types []string
	for _, q := range srvStep.DNS {
		types = append(types, q.Type+" "+q.Name)
	}
	wantQ := []string{"SRV _matrix-fed._tcp.fed.test.", "AAAA host1.test.", "A host1.test.", "AAAA host2.test.", "A host2.test."}
	if !slices.Equal(types, wantQ) {
		t.Errorf("queries %v, want %v", types, wantQ)
	}
	if a := srvStep.DNS[0].Answers; len(a) != 2 || a[0].Type != "SRV" || a[0].Value != "10 0 8450 host1.test." || a[0].TTL != 300 {
		t.Errorf("SRV answers %+v", a)
	}

	// A second resolution is served from the cache, and says so.
	_, rep2, _ := e.r.ResolveReport(context.Background(), "d-srv.test")
	if wk2 := findStep(rep2, "3").WellKnown; !wk2.Cached || !wk2.FetchedAt.Equal(wk.FetchedAt) {
		t.Errorf("second report's well-known %+v", wk2)
	}

	// The JSON form carries the fields the status inspector prints.
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"server_name":"d-srv.test"`, `"step":"3.3"`, `"outcome":"used"`, `"m_server":"fed.test"`,
		`"addr":"[fd00::11]:8450"`, `"tls_server_name":"fed.test"`, `"srv":[`, `"value":"10 0 8450 host1.test."`} {
		if !strings.Contains(string(raw), key) {
			t.Errorf("report JSON lacks %s:\n%s", key, raw)
		}
	}

	// A failed well-known is reported with its error, then steps 4–6.
	_, rep, err = e.r.ResolveReport(context.Background(), "nothing.test")
	if err == nil {
		t.Fatal("nothing.test resolved")
	}
	seq = nil
	for _, st := range rep.Steps {
		seq = append(seq, st.Step+":"+string(st.Outcome))
	}
	want = []string{"1:skipped", "2:skipped", "3:failed", "4:not_found", "5:not_found", "6:failed"}
	if !slices.Equal(seq, want) {
		t.Fatalf("steps %v, want %v", seq, want)
	}
	st3 := findStep(rep, "3")
	if !errors.Is(st3.Err, ErrWellKnownFetch) || !errors.Is(st3.Err, ErrNoAddress) || st3.WellKnown.Error == "" ||
		len(st3.WellKnown.DNS) == 0 || st3.WellKnown.DNS[0].Rcode != "NXDOMAIN" {
		t.Errorf("step 3 %+v / %+v", st3, st3.WellKnown)
	}
}

// TestSRVOrder checks RFC 2782 ordering with controlled draws.
func TestSRVOrder(t *testing.T) {
	srv := func(prio, weight uint16, target string) *dns.SRV {
		return &dns.SRV{Priority: prio, Weight: weight, Target: target}
	}
	recs := []*dns.SRV{srv(20, 0, "p20"), srv(10, 10, "y"), srv(10, 0, "x"), srv(10, 5, "z"), srv(30, 0, "p30")}
	cases := []struct {
		name string
		draw func(n int) int
		want []string
	}{
		// Draw 0: the first in the list, which puts weight 0 first.
		{"lowest draw", func(int) int { return 0 }, []string{"x", "y", "z", "p20", "p30"}},
		// Draw the whole sum: the last one with weight.
		{"highest draw", func(n int) int { return n - 1 }, []string{"z", "y", "x", "p20", "p30"}},
		// Draw 11 of 0..15: running sums x=0, y=10, z=15 → z; then 0..10 → y or x.
		{"middle draw", func(n int) int { return min(11, n-1) }, []string{"z", "y", "x", "p20", "p30"}},
		{"draw 5", func(n int) int { return min(5, n-1) }, []string{"y", "z", "x", "p20", "p30"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, s := range orderSRV(recs, tc.draw) {
				got = append(got, s.Target)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("order %v, want %v", got, tc.want)
			}
		})
	}
	// With real randomness, weight 99 goes first far more often than weight 1.
	heavyFirst := 0
	for range 1000 {
		if orderSRV([]*dns.SRV{srv(0, 1, "light"), srv(0, 99, "heavy")}, randIntNReal)[0].Target == "heavy" {
			heavyFirst++
		}
	}
	if heavyFirst < 900 || heavyFirst == 1000 {
		t.Errorf("heavy first %d/1000 times", heavyFirst)
	}
	if recs[0].Target != "p20" {
		t.Error("orderSRV reordered its input")
	}
}

// TestDNSTransport covers the DNS client: TCP retry on truncation, moving
// on from a dead nameserver, and an unreachable nameserver as an error.
func TestDNSTransport(t *testing.T) {
	zone := []string{"big.test. 300 IN A 127.0.0.20", "big.test. 300 IN A 127.0.0.21"}
	e := newEnv(t, zone, nil)
	e.dns.edit(func(d *testDNS) { d.truncate["big.test."] = true })
	res, err := e.r.Resolve(context.Background(), "big.test:8448")
	if err != nil || !slices.Equal(res.Addrs(), []string{"127.0.0.20:8448", "127.0.0.21:8448"}) {
		t.Fatalf("truncated answer: %v %v", res, err)
	}
	if !slices.Contains(e.dns.queries(), "tcp big.test. A") {
		t.Errorf("no TCP retry: %v", e.dns.queries())
	}

	dead := deadUDPAddr(t)
	r, err := New(Options{Nameservers: []string{dead, e.dns.addr}, DNSTimeout: time.Second, AllowPrivate: true})
	if err != nil {
		t.Fatal(err)
	}
	res, rep, err := r.ResolveReport(context.Background(), "big.test:8448")
	if err != nil || len(res.Endpoints) != 2 {
		t.Fatalf("second nameserver not used: %v %v", res, err)
	}
	if q := findStep(rep, "2").DNS[0]; q.Server != e.dns.addr {
		t.Errorf("answer attributed to %q", q.Server)
	}

	r, _ = New(Options{Nameservers: []string{dead}, DNSTimeout: time.Second, AllowPrivate: true})
	if _, err := r.Resolve(context.Background(), "big.test:8448"); !errors.Is(err, ErrDNSLookup) {
		t.Errorf("dead nameserver: %v", err)
	}
	if _, err := r.Resolve(context.Background(), "big.test"); !errors.Is(err, ErrSRVLookup) {
		t.Errorf("dead nameserver, SRV: %v", err)
	}
}

func TestNewOptions(t *testing.T) {
	r, err := New(Options{ResolvConf: "testdata/resolv.conf"})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Nameservers(); !slices.Equal(got, []string{"192.0.2.53:53", "[2001:db8::53]:53"}) {
		t.Errorf("nameservers %v", got)
	}
	if r.opts.DefaultTTL != 24*time.Hour || r.opts.MaxTTL != 48*time.Hour || r.opts.ErrorTTL != time.Hour ||
		r.opts.MaxRedirects != 5 || r.opts.AllowPrivate {
		t.Errorf("defaults %+v", r.opts)
	}
	r, _ = New(Options{Nameservers: []string{"127.0.0.1:53"}, ErrorTTL: 100 * time.Hour})
	if r.opts.ErrorTTL != 48*time.Hour {
		t.Errorf("ErrorTTL not capped: %v", r.opts.ErrorTTL)
	}
	for _, bad := range []Options{
		{ResolvConf: "testdata/missing.conf"},
		{ResolvConf: "testdata/empty.conf"},
		{Nameservers: []string{"dns.example:53"}},
		{Nameservers: []string{"127.0.0.1"}},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
}

func findStep(rep *Report, id string) *Step {
	for _, st := range rep.Steps {
		if st.Step == id {
			return st
		}
	}
	return nil
}

func dumpReport(rep *Report) string {
	b, _ := json.MarshalIndent(rep, "", "  ")
	return string(b)
}

var randIntNReal = mrand.IntN

func itoa(i uint16) string { return strconv.Itoa(int(i)) }

// deadUDPAddr is a loopback UDP port with nobody listening: queries to it
// fail at once with "connection refused".
func deadUDPAddr(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}
