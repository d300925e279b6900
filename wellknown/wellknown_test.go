package wellknown

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// loopbackZone gives each host an A record for the test TLS server.
func loopbackZone(hosts ...string) []string {
	var z []string
	for _, h := range hosts {
		z = append(z, h+". 300 IN A 127.0.0.1")
	}
	return z
}

func TestWellKnownFetch(t *testing.T) {
	hosts := []string{"ok.test", "plain-type.test", "extra.test", "hdr.test", "s404.test", "s500.test",
		"trunc.test", "array.test", "null.test", "empty.test", "number.test", "blank.test", "badname.test",
		"badport.test", "huge.test", "rd0.test", "rd1.test", "rd2.test", "rd3.test", "rd4.test", "rd5.test",
		"rd6.test", "loopa.test", "loopb.test", "tohttp.test", "toport.test", "portdest.test", "badcert.invalid"}
	e := newEnv(t, loopbackZone(hosts...), nil)
	w := e.wk
	w.json("ok.test", 200, `{"m.server": "deleg.test:8448"}`, "Content-Type: application/json")
	w.json("plain-type.test", 200, `{"m.server": "deleg.test"}`, "Content-Type: text/plain")
	w.json("extra.test", 200, `{"m.server": "[2001:db8::2]:443", "org.example.other": {"x": 1}}`)
	w.route("hdr.test", func(rw http.ResponseWriter, r *http.Request) {
		// The request must be exactly what production sends: no test port
		// in Host, SNI = hostname, the spec path.
		if r.Host != "hdr.test" || r.TLS.ServerName != "hdr.test" || r.URL.Path != "/.well-known/matrix/server" ||
			r.Method != http.MethodGet || r.Header.Get("User-Agent") != "edge" {
			http.Error(rw, fmt.Sprintf("host %q sni %q path %q", r.Host, r.TLS.ServerName, r.URL.Path), 400)
			return
		}
		rw.Write([]byte(`{"m.server": "deleg.test"}`))
	})
	w.json("s404.test", 404, `{"errcode": "M_NOT_FOUND"}`)
	w.json("s500.test", 500, `{"m.server": "deleg.test"}`)
	w.json("trunc.test", 200, `{"m.server": "deleg.test"`)
	w.json("array.test", 200, `["deleg.test"]`)
	w.json("null.test", 200, `null`)
	w.json("empty.test", 200, `{}`)
	w.json("number.test", 200, `{"m.server": 8448}`)
	w.json("blank.test", 200, `{"m.server": ""}`)
	w.json("badname.test", 200, `{"m.server": "deleg test"}`)
	w.json("badport.test", 200, `{"m.server": "deleg.test:99999"}`)
	w.json("huge.test", 200, `{"m.server": "deleg.test", "pad": "`+strings.Repeat("x", 60<<10)+`"}`)
	for i := range 6 {
		w.redirect(fmt.Sprintf("rd%d.test", i), fmt.Sprintf("https://rd%d.test/.well-known/matrix/server", i+1))
	}
	w.json("rd6.test", 200, `{"m.server": "end.test"}`)
	w.redirect("loopa.test", "https://loopb.test/.well-known/matrix/server")
	w.redirect("loopb.test", "https://loopa.test/.well-known/matrix/server")
	w.redirect("tohttp.test", "http://ok.test/.well-known/matrix/server")
	w.redirect("toport.test", fmt.Sprintf("https://portdest.test:%d/elsewhere", w.port))
	w.json("portdest.test", 200, `{"m.server": "moved.test"}`)
	w.json("badcert.invalid", 200, `{"m.server": "deleg.test"}`)

	cases := []struct {
		host      string
		want      string // m.server on success
		errs      []error
		msg       string
		redirects int
	}{
		{host: "ok.test", want: "deleg.test:8448"},
		{host: "plain-type.test", want: "deleg.test"},
		{host: "extra.test", want: "[2001:db8::2]:443"},
		{host: "hdr.test", want: "deleg.test"},
		{host: "s404.test", errs: []error{ErrNoWellKnown}, msg: "HTTP 404"},
		{host: "s500.test", errs: []error{ErrNoWellKnown}, msg: "HTTP 500"},
		{host: "trunc.test", errs: []error{ErrInvalidWellKnown}, msg: "not a JSON object"},
		{host: "array.test", errs: []error{ErrInvalidWellKnown}, msg: "not a JSON object"},
		{host: "null.test", errs: []error{ErrInvalidWellKnown}, msg: "not a JSON object"},
		{host: "empty.test", errs: []error{ErrInvalidWellKnown}, msg: "no m.server"},
		{host: "number.test", errs: []error{ErrInvalidWellKnown}, msg: "not a string"},
		{host: "blank.test", errs: []error{ErrInvalidWellKnown, ErrInvalidServerName}},
		{host: "badname.test", errs: []error{ErrInvalidWellKnown, ErrInvalidServerName}},
		{host: "badport.test", errs: []error{ErrInvalidWellKnown, ErrInvalidServerName}, msg: "port"},
		{host: "huge.test", errs: []error{ErrInvalidWellKnown}, msg: "larger than 51200 bytes"},
		{host: "rd1.test", want: "end.test", redirects: 5},
		{host: "rd0.test", errs: []error{ErrWellKnownFetch, ErrWellKnownRedirect}, msg: "more than 5 redirects", redirects: 6},
		{host: "loopa.test", errs: []error{ErrWellKnownRedirect}, msg: "loop", redirects: 2},
		{host: "tohttp.test", errs: []error{ErrWellKnownRedirect}, msg: "non-https", redirects: 1},
		{host: "toport.test", want: "moved.test", redirects: 1},
		{host: "missing.test", errs: []error{ErrWellKnownFetch, ErrNoAddress}},
		{host: "badcert.invalid", errs: []error{ErrWellKnownFetch}, msg: "certificate"},
		{host: "127.0.0.1", errs: []error{ErrInvalidServerName}},
		{host: "ok.test:443", errs: []error{ErrInvalidServerName}},
	}
	for _, tc := range cases {
		t.Run(tc.host, func(t *testing.T) {
			name, rec, err := e.r.WellKnown(context.Background(), tc.host)
			if tc.errs == nil {
				if err != nil {
					t.Fatalf("error %v; record %+v", err, rec)
				}
				if name.String() != tc.want || rec.MServer != tc.want || rec.Status != 200 {
					t.Errorf("got %q (record %q, status %d), want %q", name, rec.MServer, rec.Status, tc.want)
				}
			} else {
				for _, want := range tc.errs {
					if !errors.Is(err, want) {
						t.Errorf("error %v is not %v", err, want)
					}
				}
				if err != nil && !strings.Contains(err.Error(), tc.msg) {
					t.Errorf("error %q lacks %q", err, tc.msg)
				}
				if rec.Error == "" || name.Host != "" {
					t.Errorf("record %+v, name %v", rec, name)
				}
			}
			if len(rec.Redirects) != tc.redirects {
				t.Errorf("redirects %v, want %d", rec.Redirects, tc.redirects)
			}
		})
	}
	if n := e.wk.count("ok.test"); n != 1 {
		t.Errorf("the http:// redirect reached ok.test (%d requests)", n)
	}
	if got := e.wk.count("huge.test"); got != 1 {
		t.Errorf("huge.test fetched %d times", got)
	}
}

// TestWellKnownCache drives the cache with an injected clock: lifetimes
// from Cache-Control and Expires, the 24h default, the 5m floor, the 48h
// cap, and cached errors with the default and configured ErrorTTL.
func TestWellKnownCache(t *testing.T) {
	type check struct {
		advance time.Duration
		fetches int
	}
	ok := `{"m.server": "deleg.test"}`
	cases := []struct {
		name    string
		status  int
		headers func() []string
		opts    func(*Options)
		life    time.Duration // expected Expires - FetchedAt
		wantErr error
		checks  []check
	}{
		{name: "max-age", status: 200, headers: hdrs("Cache-Control: public, max-age=600"), life: 10 * time.Minute,
			checks: []check{{599 * time.Second, 1}, {2 * time.Second, 2}}},
		{name: "no headers: 24h", status: 200, life: 24 * time.Hour,
			checks: []check{{24*time.Hour - time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "short max-age: 5m floor", status: 200, headers: hdrs("Cache-Control: max-age=10"), life: 5 * time.Minute,
			checks: []check{{4 * time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "no-store: 5m floor", status: 200, headers: hdrs("Cache-Control: no-store"), life: 5 * time.Minute,
			checks: []check{{4 * time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "long max-age: 48h cap", status: 200, headers: hdrs("Cache-Control: max-age=1000000"), life: 48 * time.Hour,
			checks: []check{{48*time.Hour - time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "Expires", status: 200, headers: func() []string {
			return []string{"Expires: " + time.Now().UTC().Add(2*time.Hour).Format(http.TimeFormat)}
		}, checks: []check{{2*time.Hour - time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "max-age beats Expires", status: 200, headers: func() []string {
			return []string{"Expires: " + time.Now().UTC().Add(10*time.Hour).Format(http.TimeFormat), "Cache-Control: max-age=3600"}
		}, life: time.Hour, checks: []check{{59 * time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "404 cached 1h", status: 404, wantErr: ErrNoWellKnown, life: time.Hour,
			checks: []check{{59 * time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "error ignores max-age", status: 500, headers: hdrs("Cache-Control: max-age=86400"), wantErr: ErrNoWellKnown, life: time.Hour,
			checks: []check{{59 * time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "ErrorTTL 10m", status: 404, opts: func(o *Options) { o.ErrorTTL = 10 * time.Minute }, wantErr: ErrNoWellKnown,
			life: 10 * time.Minute, checks: []check{{9 * time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "ErrorTTL capped at 48h", status: 404, opts: func(o *Options) { o.ErrorTTL = 100 * time.Hour }, wantErr: ErrNoWellKnown,
			life: 48 * time.Hour, checks: []check{{48*time.Hour - time.Minute, 1}, {2 * time.Minute, 2}}},
		{name: "DefaultTTL option", status: 200, opts: func(o *Options) { o.DefaultTTL = 2 * time.Hour }, life: 2 * time.Hour,
			checks: []check{{119 * time.Minute, 1}, {2 * time.Minute, 2}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, loopbackZone("c.test"), tc.opts)
			e.wk.route("c.test", func(w http.ResponseWriter, r *http.Request) {
				if tc.headers != nil {
					for _, h := range tc.headers() {
						k, v, _ := strings.Cut(h, ": ")
						w.Header().Set(k, v)
					}
				}
				w.WriteHeader(tc.status)
				w.Write([]byte(ok))
			})
			start := e.clock.Now()
			_, rec, err := e.r.WellKnown(context.Background(), "c.test")
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("first fetch: %v, want %v", err, tc.wantErr)
			}
			if rec.Cached || !rec.FetchedAt.Equal(start) || e.wk.count("c.test") != 1 {
				t.Errorf("first fetch record %+v", rec)
			}
			if tc.life != 0 && rec.Expires.Sub(rec.FetchedAt) != tc.life {
				t.Errorf("lifetime %v, want %v", rec.Expires.Sub(rec.FetchedAt), tc.life)
			}
			prev := 1
			for i, c := range tc.checks {
				e.clock.Add(c.advance)
				_, rec, err := e.r.WellKnown(context.Background(), "c.test")
				if got := e.wk.count("c.test"); got != c.fetches {
					t.Fatalf("check %d (+%v): %d fetches, want %d", i, c.advance, got, c.fetches)
				}
				if fresh := c.fetches > prev; rec.Cached == fresh {
					t.Errorf("check %d: Cached = %v", i, rec.Cached)
				}
				prev = c.fetches
				if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
					t.Errorf("check %d: error %v, want %v", i, err, tc.wantErr)
				}
			}
		})
	}
}

func hdrs(h ...string) func() []string { return func() []string { return h } }

// TestWellKnownCacheMore: transport errors are cached too, Forget drops an
// entry, the cache stays within MaxCacheEntries, and a slow server times out.
func TestWellKnownCacheMore(t *testing.T) {
	e := newEnv(t, loopbackZone("a.test", "b.test", "c.test", "slow.test"), func(o *Options) {
		o.MaxCacheEntries = 2
		o.FetchTimeout = 300 * time.Millisecond
	})
	for _, h := range []string{"a.test", "b.test", "c.test"} {
		e.wk.json(h, 200, `{"m.server": "x.test"}`)
	}
	// slow.test answers only after the test: returning early on a cancelled
	// request could race a reply in just before the client gives up.
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	e.wk.route("slow.test", func(w http.ResponseWriter, r *http.Request) { <-stall })

	aQueries := func() int {
		n := 0
		for _, q := range e.dns.queries() {
			if q == "udp gone.test. A" {
				n++
			}
		}
		return n
	}
	for i := range 3 {
		if _, _, err := e.r.WellKnown(context.Background(), "gone.test"); !errors.Is(err, ErrNoAddress) {
			t.Fatalf("gone.test: %v", err)
		}
		if aQueries() != 1 {
			t.Fatalf("lookup %d: %d DNS queries; the error was not cached", i, aQueries())
		}
	}
	e.clock.Add(time.Hour + time.Second)
	e.r.WellKnown(context.Background(), "gone.test")
	if aQueries() != 2 {
		t.Errorf("error not refetched after an hour")
	}

	e.r.WellKnown(context.Background(), "a.test")
	e.r.Forget("A.test")
	e.r.WellKnown(context.Background(), "a.test")
	if e.wk.count("a.test") != 2 {
		t.Errorf("Forget did not drop a.test")
	}

	// a.test expires first; b.test and c.test push it (and gone.test) out.
	e.clock.Add(time.Second)
	e.r.WellKnown(context.Background(), "b.test")
	e.clock.Add(time.Second)
	e.r.WellKnown(context.Background(), "c.test")
	if n := len(e.r.cache.entries); n > 2 {
		t.Errorf("cache holds %d entries, max 2", n)
	}
	e.r.WellKnown(context.Background(), "c.test")
	e.r.WellKnown(context.Background(), "a.test")
	if e.wk.count("c.test") != 1 || e.wk.count("a.test") != 3 {
		t.Errorf("eviction: c fetched %d, a fetched %d", e.wk.count("c.test"), e.wk.count("a.test"))
	}

	begin := time.Now()
	_, rec, err := e.r.WellKnown(context.Background(), "slow.test")
	if !errors.Is(err, ErrWellKnownFetch) || !errors.Is(err, context.DeadlineExceeded) || time.Since(begin) > 3*time.Second {
		t.Errorf("slow server: %v after %v", err, time.Since(begin))
	}
	if rec.Expires.Sub(rec.FetchedAt) != time.Hour {
		t.Errorf("timeout cached for %v", rec.Expires.Sub(rec.FetchedAt))
	}
}

// TestWellKnownInFlight: concurrent resolutions of one host share a single
// fetch, and a caller that gives up does not cache its cancellation.
func TestWellKnownInFlight(t *testing.T) {
	e := newEnv(t, append(loopbackZone("busy.test", "cancel.test"), "deleg.test. 300 IN A 127.0.0.8"), nil)
	release := make(chan struct{})
	e.wk.route("busy.test", func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Write([]byte(`{"m.server": "deleg.test:8448"}`))
	})
	var wg sync.WaitGroup
	results := make([]*Result, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = e.r.Resolve(context.Background(), "busy.test") })
	}
	waitFor(t, func() bool { return e.wk.count("busy.test") == 1 })
	time.Sleep(50 * time.Millisecond) // let the others join the fetch in flight
	close(release)
	wg.Wait()
	for i := range results {
		if errs[i] != nil || results[i].Host != "deleg.test:8448" || results[i].Addrs()[0] != "127.0.0.8:8448" {
			t.Errorf("caller %d: %v %v", i, results[i], errs[i])
		}
	}
	if n := e.wk.count("busy.test"); n != 1 {
		t.Errorf("%d fetches for 8 concurrent callers", n)
	}

	release2 := make(chan struct{})
	e.wk.route("cancel.test", func(w http.ResponseWriter, r *http.Request) {
		<-release2
		w.Write([]byte(`{"m.server": "deleg.test:8448"}`))
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, _, err := e.r.WellKnown(ctx, "cancel.test")
		done <- err
	}()
	waitFor(t, func() bool { return e.wk.count("cancel.test") == 1 })
	cancel()
	if err := <-done; !errors.Is(err, ErrWellKnownFetch) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller got %v", err)
	}
	close(release2)
	name, rec, err := e.r.WellKnown(context.Background(), "cancel.test")
	if err != nil || name.String() != "deleg.test:8448" || !rec.Cached || e.wk.count("cancel.test") != 1 {
		t.Errorf("after cancel: %v %v %+v, %d fetches", name, err, rec, e.wk.count("cancel.test"))
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAllowPrivateOff: with the default policy, private addresses are
// refused for IP literals, resolved targets, SRV targets and the
// well-known connection itself (which is then never made).
func TestAllowPrivateOff(t *testing.T) {
	zone := []string{
		"bare.test. 300 IN A 127.0.0.1",
		"mixed.test. 300 IN A 10.0.0.1",
		"mixed.test. 300 IN A 93.184.216.34",
		"mixed.test. 300 IN AAAA fd00::1",
		"_matrix-fed._tcp.psrv.test. 300 IN SRV 0 0 8448 lan.test.",
		"lan.test. 300 IN A 192.168.1.10",
		"_matrix-fed._tcp.msrv.test. 300 IN SRV 0 0 8448 lan.test.",
		"_matrix-fed._tcp.msrv.test. 300 IN SRV 1 0 8449 pub.test.",
		"pub.test. 300 IN AAAA 2606:4700::1111",
		"rebind.test. 300 IN CNAME bare.test.",
	}
	e := newEnv(t, zone, func(o *Options) { o.AllowPrivate = false })
	e.wk.json("bare.test", 200, `{"m.server": "pub.test:443"}`)

	for _, name := range []string{"127.0.0.1", "127.0.0.1:8448", "[::1]", "10.1.2.3:8448", "172.16.5.4", "192.168.0.1",
		"100.64.1.1", "169.254.1.1", "[fe80::1]", "[fd00::1]:8448", "0.0.0.0", "224.0.0.1", "[::ffff:127.0.0.1]"} {
		_, rep, err := e.r.ResolveReport(context.Background(), name)
		if !errors.Is(err, ErrPrivateAddress) {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st := findStep(rep, "1"); st.Outcome != OutcomeFailed || len(st.Refused) != 1 {
			t.Errorf("%s: step 1 %+v", name, st)
		}
	}
	if res, err := e.r.Resolve(context.Background(), "8.8.8.8"); err != nil || res.Addrs()[0] != "8.8.8.8:8448" {
		t.Errorf("public literal refused: %v", err)
	}

	// bare.test's well-known is on loopback: refused before any connection,
	// then step 6 finds only the same loopback address.
	for _, host := range []string{"bare.test", "rebind.test"} {
		_, rep, err := e.r.ResolveReport(context.Background(), host)
		if !errors.Is(err, ErrPrivateAddress) {
			t.Fatalf("%s: %v", host, err)
		}
		wk := findStep(rep, "3")
		if !errors.Is(wk.Err, ErrPrivateAddress) || len(wk.WellKnown.Refused) != 1 || len(wk.WellKnown.Dialed) != 0 {
			t.Errorf("%s: well-known step %+v / %+v", host, wk, wk.WellKnown)
		}
		if st := findStep(rep, "6"); st.Outcome != OutcomeFailed || len(st.Refused) != 1 {
			t.Errorf("%s: step 6 %+v", host, st)
		}
	}
	if n := e.wk.count("bare.test"); n != 0 {
		t.Errorf("connected to the loopback well-known %d times", n)
	}

	res, rep, err := e.r.ResolveReport(context.Background(), "mixed.test:443")
	if err != nil || !slices.Equal(res.Addrs(), []string{"93.184.216.34:443"}) {
		t.Fatalf("mixed: %v %v", res, err)
	}
	if r := findStep(rep, "2").Refused; len(r) != 2 || r[0] != "fd00::1 (private)" || r[1] != "10.0.0.1 (private)" {
		t.Errorf("mixed refused %v", r)
	}

	if _, err := e.r.Resolve(context.Background(), "psrv.test"); !errors.Is(err, ErrPrivateAddress) {
		t.Errorf("private SRV target: %v", err)
	}
	res, err = e.r.Resolve(context.Background(), "msrv.test")
	if err != nil || !slices.Equal(res.Addrs(), []string{"[2606:4700::1111]:8449"}) {
		t.Errorf("mixed SRV targets: %v %v", res, err)
	}

	// A delegation to a private literal (cached earlier) is refused at 3.1.
	e.r.cache.mu.Lock()
	evil, _ := ParseServerName("10.0.0.7:8448")
	e.r.cache.put("evil.test", &wkEntry{name: evil, expires: e.clock.Now().Add(time.Hour)}, e.clock.Now())
	e.r.cache.mu.Unlock()
	if _, rep, err := e.r.ResolveReport(context.Background(), "evil.test"); !errors.Is(err, ErrPrivateAddress) ||
		rep.Steps[len(rep.Steps)-1].Step != "3.1" {
		t.Errorf("private delegation: %v", err)
	}
}

// TestControlDial checks the last line of defence: the dialer's Control
// hook refuses a loopback address even when handed one directly.
func TestControlDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, allow := range []bool{false, true} {
		r, err := New(Options{Nameservers: []string{"127.0.0.1:53"}, AllowPrivate: allow})
		if err != nil {
			t.Fatal(err)
		}
		c, err := r.dialer.DialContext(context.Background(), "tcp", ln.Addr().String())
		if allow {
			if err != nil {
				t.Errorf("AllowPrivate dial: %v", err)
			} else {
				c.Close()
			}
		} else if !errors.Is(err, ErrPrivateAddress) {
			t.Errorf("loopback dial not refused: %v", err)
		}
		if !allow {
			if _, err := r.dialWellKnown(context.Background(), "tcp", "[::1]:443"); !errors.Is(err, ErrPrivateAddress) {
				t.Errorf("dialWellKnown to ::1: %v", err)
			}
		}
	}
}
