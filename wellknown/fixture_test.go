package wellknown

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Test fixtures: a real miekg/dns server on 127.0.0.1 (UDP and TCP on one
// port) answering from an in-memory zone, and one real TLS server on
// 127.0.0.1 whose certificate (from a CA made per test run) covers *.test.
// The resolver is pointed at both through its ordinary options: Nameservers
// (test DNS answers A 127.0.0.1 for well-known hosts), RootCAs (the test
// CA) and WellKnownPort (443 → the TLS server's port). Nothing else is
// stubbed, so the dial guard, TLS verification and redirects run as in
// production, and no test leaves the loopback interface.

// testDNS is an authoritative-looking test server. By default it chases
// CNAMEs inside the zone like a recursive resolver; names in lazy get only
// the CNAME, so the client must ask again.
type testDNS struct {
	addr string

	mu       sync.Mutex
	rrs      []dns.RR
	lazy     map[string]bool
	rcode    map[string]int  // "name TYPE" or "name" → forced rcode
	truncate map[string]bool // UDP answers for these names set TC
	log      []string        // "udp name TYPE" per query
}

func startDNS(t *testing.T, zone ...string) *testDNS {
	t.Helper()
	d := &testDNS{lazy: map[string]bool{}, rcode: map[string]int{}, truncate: map[string]bool{}}
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatalf("zone line %q: %v", z, err)
		}
		d.rrs = append(d.rrs, rr)
	}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 { // find a port free for both UDP and TCP
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	d.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: d}, {Listener: ln, Handler: d}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return d
}

func (d *testDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	name, qtype := strings.ToLower(q.Name), q.Qtype
	_, udp := w.LocalAddr().(*net.UDPAddr)
	d.mu.Lock()
	defer d.mu.Unlock()
	proto := "tcp"
	if udp {
		proto = "udp"
	}
	d.log = append(d.log, proto+" "+name+" "+dns.TypeToString[qtype])

	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	if rc, ok := d.rcode[name+" "+dns.TypeToString[qtype]]; ok {
		m.Rcode = rc
		w.WriteMsg(m)
		return
	}
	if rc, ok := d.rcode[name]; ok {
		m.Rcode = rc
		w.WriteMsg(m)
		return
	}
	if udp && d.truncate[name] {
		m.Truncated = true
		w.WriteMsg(m)
		return
	}
	cur := name
	for range 10 {
		var found []dns.RR
		var cname *dns.CNAME
		for _, rr := range d.rrs {
			h := rr.Header()
			if !strings.EqualFold(h.Name, cur) {
				continue
			}
			if h.Rrtype == qtype {
				found = append(found, rr)
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if len(found) > 0 {
			m.Answer = append(m.Answer, found...)
			break
		}
		if cname == nil {
			break
		}
		m.Answer = append(m.Answer, cname)
		if d.lazy[cur] {
			break
		}
		cur = strings.ToLower(cname.Target)
	}
	if len(m.Answer) == 0 && !d.exists(name) {
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// edit changes the server's behaviour under its lock.
func (d *testDNS) edit(f func(d *testDNS)) {
	d.mu.Lock()
	f(d)
	d.mu.Unlock()
}

func (d *testDNS) exists(name string) bool {
	for _, rr := range d.rrs {
		if strings.EqualFold(rr.Header().Name, name) {
			return true
		}
	}
	return false
}

func (d *testDNS) queries() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

// testCA is a throwaway CA and the leaf it issued for *.test and loopback.
type testCA struct {
	pool *x509.CertPool
	leaf tls.Certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wellknown test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "wellknown test server"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"*.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &testCA{pool: pool, leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}
}

// wkServer is the one TLS server behind every test hostname; it routes on
// the Host header and counts requests per host.
type wkServer struct {
	srv  *httptest.Server
	port uint16

	mu     sync.Mutex
	routes map[string]http.HandlerFunc
	hits   map[string]int
}

func startWK(t *testing.T, ca *testCA) *wkServer {
	t.Helper()
	s := &wkServer{routes: map[string]http.HandlerFunc{}, hits: map[string]int{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		s.mu.Lock()
		s.hits[host]++
		h := s.routes[host]
		s.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf}}
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the bad-certificate case is expected
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	s.port = netip.MustParseAddrPort(s.srv.Listener.Addr().String()).Port()
	return s
}

func (s *wkServer) route(host string, h http.HandlerFunc) {
	s.mu.Lock()
	s.routes[host] = h
	s.mu.Unlock()
}

// json serves a fixed body with optional headers ("Name: value").
func (s *wkServer) json(host string, status int, body string, headers ...string) {
	s.route(host, func(w http.ResponseWriter, r *http.Request) {
		for _, h := range headers {
			k, v, _ := strings.Cut(h, ": ")
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
	})
}

// redirect answers with a 302 to target.
func (s *wkServer) redirect(host, target string) {
	s.route(host, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target, http.StatusFound)
	})
}

func (s *wkServer) count(host string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[host]
}

// testClock is the injected Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is one DNS server, one TLS server and a resolver wired to both.
type env struct {
	dns   *testDNS
	wk    *wkServer
	ca    *testCA
	clock *testClock
	r     *Resolver
}

// newEnv starts the servers; AllowPrivate is on (everything is loopback)
// unless mutate turns it off.
func newEnv(t *testing.T, zone []string, mutate func(*Options)) *env {
	t.Helper()
	e := &env{dns: startDNS(t, zone...), ca: newTestCA(t), clock: newClock()}
	e.wk = startWK(t, e.ca)
	opts := Options{
		Nameservers:   []string{e.dns.addr},
		DNSTimeout:    2 * time.Second,
		RootCAs:       e.ca.pool,
		FetchTimeout:  5 * time.Second,
		WellKnownPort: int(e.wk.port),
		AllowPrivate:  true,
		Now:           e.clock.Now,
	}
	if mutate != nil {
		mutate(&opts)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.r = r
	return e
}
