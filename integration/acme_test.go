package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go/http3"

	"edge/edge"
	"edge/edge/config"
)

// Pebble v2.10.1 (Let's Encrypt's test ACME CA), installed into
// .cache/bin by scripts/pebble.sh, a prerequisite of `make test`, which
// passes its path in EDGE_PEBBLE_BIN.
const pebbleBinEnv = "EDGE_PEBBLE_BIN"

// acmeDomain is the name edge gets certificates for; the test's DNS
// server resolves it to 127.0.0.1 for Pebble's validation.
const acmeDomain = "edge-acme.example.org"

// pebbleBinary finds Pebble: EDGE_PEBBLE_BIN, else the repo's .cache/bin.
// A missing binary fails the test: ACME is part of `make test`.
func pebbleBinary(t *testing.T) string {
	t.Helper()
	p := os.Getenv(pebbleBinEnv)
	if p == "" {
		p, _ = filepath.Abs(filepath.Join("..", ".cache", "bin", "pebble"))
	}
	if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Fatalf("no Pebble binary at %s (%v): run scripts/pebble.sh, or set %s", p, err, pebbleBinEnv)
	}
	return p
}

// tlsTestPort returns a loopback port free for both TCP and UDP a moment
// ago (a TLS listener gets HTTP/3 on the same UDP port).
func tlsTestPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free TCP+UDP port")
	return 0
}

// selfSigned makes a certificate (its own root) for 127.0.0.1 and
// localhost, written as PEM files in dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test pebble"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// pebble is a Pebble process on loopback.
type pebble struct {
	DirectoryURL string
	TLSCAFile    string // the CA of Pebble's own HTTPS (for tls.acme.trust_ca_file)
	mgmt         string
	client       *http.Client
	cmd          *exec.Cmd
	done         chan struct{}
	logs         *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pebbleSpec is where Pebble will listen and with which certificate,
// known before it starts so edge's config can name them.
type pebbleSpec struct {
	Dir, CertFile, KeyFile string
	Listen                 int
	Blocklist              []string // names Pebble refuses to issue for
}

func newPebbleSpec(t *testing.T) pebbleSpec {
	dir := t.TempDir()
	certFile, keyFile := selfSigned(t, dir)
	return pebbleSpec{Dir: dir, CertFile: certFile, KeyFile: keyFile, Listen: tlsTestPort(t)}
}

func (ps pebbleSpec) directoryURL() string { return fmt.Sprintf("https://127.0.0.1:%d/dir", ps.Listen) }

// startPebble runs Pebble validating challenges on httpPort (HTTP-01)
// and tlsPort (TLS-ALPN-01) of the address dns resolves acmeDomain to,
// issuing certificates valid for validity.
func startPebble(t *testing.T, ps pebbleSpec, httpPort, tlsPort int, dns string, validity time.Duration) *pebble {
	t.Helper()
	bin := pebbleBinary(t)
	dir, certFile, keyFile, listen, mgmt := ps.Dir, ps.CertFile, ps.KeyFile, ps.Listen, tlsTestPort(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", listen),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"domainBlocklist":                ps.Blocklist,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{"default": map[string]any{
			"description": "test", "validityPeriod": int(validity / time.Second)}},
	}}
	raw, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	p := &pebble{
		DirectoryURL: ps.directoryURL(), TLSCAFile: certFile,
		mgmt: fmt.Sprintf("https://127.0.0.1:%d", mgmt), done: make(chan struct{}), logs: &lockedBuffer{},
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(certFile)
	pool.AppendCertsFromPEM(pem)
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	p.cmd = exec.Command(bin, "-config", cfgFile, "-dnsserver", dns)
	p.cmd.Dir = dir
	// No sleeps before validation, no deliberately bad nonces: the test
	// is about edge, not about the client's nonce retries.
	p.cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("pebble log:\n%s", p.logs.String())
		}
	})
	waitFor(t, 15*time.Second, "pebble to answer", func() bool {
		resp, err := p.client.Get(p.DirectoryURL)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

func (p *pebble) stop() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// roots is Pebble's issuing root, from its management endpoint.
func (p *pebble) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if resp.StatusCode != http.StatusOK || !pool.AppendCertsFromPEM(body) {
		t.Fatalf("pebble root: %d %s", resp.StatusCode, body)
	}
	return pool
}

// orders counts the certificates Pebble issued.
func (p *pebble) issued() int {
	return strings.Count(p.logs.String(), "Issued certificate serial")
}

// tlsNode is a node started with Node.Run on fixed loopback ports, so it
// can be stopped and started again on the same directory and ports.
type tlsNode struct {
	Dir                  string
	Plain, TLS, Fed, H80 int // ports; H80 0 when acme.http_listen is off
	Logs                 *lockedBuffer

	node   *edge.Node
	cancel context.CancelFunc
	done   chan error
}

// newTLSNode writes a node's config and key into a new directory (ports
// picked now, kept across restarts); mutate sets tls.* as the test needs.
func newTLSNode(t *testing.T, serverName string, http80 bool, mutate func(c *config.Config, dir string)) *tlsNode {
	t.Helper()
	n := &tlsNode{Dir: t.TempDir(), Plain: tlsTestPort(t), TLS: tlsTestPort(t), Fed: tlsTestPort(t), Logs: &lockedBuffer{}}
	if http80 {
		n.H80 = tlsTestPort(t)
	}
	cfg := config.Default(serverName)
	cfg.Listen = fmt.Sprintf("127.0.0.1:%d", n.Plain)
	cfg.TLS.Listen = fmt.Sprintf("127.0.0.1:%d", n.TLS)
	cfg.FederationListen = fmt.Sprintf("127.0.0.1:%d", n.Fed)
	if http80 {
		cfg.TLS.ACME.HTTPListen = fmt.Sprintf("127.0.0.1:%d", n.H80)
	}
	cfg.AdminListen = ""
	cfg.RateLimits = config.RateLimits{}
	cfg.Registration.SharedSecret = "test-shared-secret"
	cfg.Log.Level = "debug"
	cfg.Federation.TrustedKeyServers = nil
	cfg.Federation.AllowPrivateAddresses = true
	mutate(cfg, n.Dir)
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSigningKey(filepath.Join(n.Dir, cfg.SigningKeyPath), key); err != nil {
		t.Fatal(err)
	}
	if err := config.WriteFile(filepath.Join(n.Dir, "edge.yaml"), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.stop()
		if t.Failed() && os.Getenv("EDGE_TEST_LOG") != "" {
			t.Logf("edge log:\n%s", n.Logs.String())
		}
	})
	return n
}

// start loads the config and runs the node; it returns once the plain
// listener answers (not waiting for any certificate).
func (n *tlsNode) start(t *testing.T) {
	t.Helper()
	cfg, err := config.Load(filepath.Join(n.Dir, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out io.Writer = n.Logs
	if os.Getenv("EDGE_TEST_LOG") != "" {
		out = io.MultiWriter(n.Logs, os.Stderr)
	}
	node, err := edge.Open(cfg, slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.node, n.cancel, n.done = node, cancel, make(chan error, 1)
	go func() { n.done <- node.Run(ctx) }()
	waitFor(t, 10*time.Second, "the plain listener", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/_matrix/client/versions", n.Plain))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (n *tlsNode) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	_ = n.node.Close()
	n.cancel = nil
}

// httpsClient talks to the node's port as host (SNI and Host header),
// trusting roots only.
func httpsClient(roots *x509.CertPool, host string, port int) *http.Client {
	dial := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: host},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dial.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
		},
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// served is the certificate chain port presents for host, verified
// against roots.
func served(roots *x509.CertPool, host string, port int) ([]*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port),
		&tls.Config{RootCAs: roots, ServerName: host})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if len(st.VerifiedChains) == 0 {
		return nil, fmt.Errorf("no verified chain")
	}
	return st.VerifiedChains[0], nil
}

// getJSON GETs url with c and decodes a 200 answer.
func getJSON(t *testing.T, c *http.Client, url string) (map[string]any, *http.Response) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s: %v in %s", url, err, body)
	}
	return v, resp
}

// startACMEDNS serves acmeDomain's A record (127.0.0.1) over UDP and
// TCP on one loopback port (Pebble's resolver asks over TCP); other names
// do not exist.
func startACMEDNS(t *testing.T) string {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		switch {
		case !strings.EqualFold(strings.TrimSuffix(q.Name, "."), acmeDomain):
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IPv4(127, 0, 0, 1).To4(),
			})
		}
		_ = w.WriteMsg(m)
	})
	port := tlsTestPort(t)
	pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// acmeSetup starts the DNS server and Pebble for a node with ports
// picked now. http01Only points Pebble's TLS-ALPN-01 checks at a port
// where nothing listens, so only HTTP-01 on acme.http_listen can pass.
func acmeSetup(t *testing.T, validity, renewBefore time.Duration, http01Only bool) (*tlsNode, *pebble) {
	t.Helper()
	dns := startACMEDNS(t)
	ps := newPebbleSpec(t)
	n := newTLSNode(t, acmeDomain, true, func(c *config.Config, dir string) {
		c.TLS.Mode = config.TLSACME
		c.TLS.ACME.Email = "ops@" + acmeDomain
		c.TLS.ACME.RenewBefore = renewBefore
		c.TLS.ACME.DirectoryURL = ps.directoryURL()
		c.TLS.ACME.TrustCAFile = ps.CertFile
	})
	alpnPort := n.TLS
	if http01Only {
		alpnPort = tlsTestPort(t)
	}
	return n, startPebble(t, ps, n.H80, alpnPort, dns, validity)
}

// TestACMEObtainServeRestart: edge gets a certificate from Pebble (real
// TLS-ALPN-01 or HTTP-01 validation against its listeners), serves the
// client API and federation with it (the chain verifies against Pebble's
// root), keeps it in the database, and after a restart serves the same
// certificate with Pebble gone: no new order.
func TestACMEObtainServeRestart(t *testing.T) {
	n, pb := acmeSetup(t, 90*24*time.Hour, 0, false)
	n.start(t)
	roots := pb.roots(t)
	var chain []*x509.Certificate
	waitFor(t, 60*time.Second, "an ACME certificate on the client TLS listener", func() bool {
		var err error
		chain, err = served(roots, acmeDomain, n.TLS)
		return err == nil
	})
	leaf := chain[0]
	if len(chain) < 3 {
		t.Fatalf("chain %d certificates, want leaf, intermediate, root", len(chain))
	}
	if err := leaf.VerifyHostname(acmeDomain); err != nil {
		t.Fatal(err)
	}
	fedChain, err := served(roots, acmeDomain, n.Fed)
	if err != nil {
		t.Fatalf("federation listener: %v", err)
	}
	if fedChain[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("federation serves serial %s, client API %s: want one shared certificate", fedChain[0].SerialNumber, leaf.SerialNumber)
	}
	// The APIs over that certificate.
	v, resp := getJSON(t, httpsClient(roots, acmeDomain, n.TLS), "https://"+acmeDomain+"/_matrix/client/versions")
	if _, ok := v["versions"]; !ok {
		t.Fatalf("versions: %v", v)
	}
	if resp.ProtoMajor != 2 {
		t.Fatalf("client TLS listener spoke %s, want HTTP/2", resp.Proto)
	}
	if alt := resp.Header.Get("Alt-Svc"); !strings.Contains(alt, fmt.Sprintf(`h3=":%d"`, n.TLS)) {
		t.Fatalf("Alt-Svc %q does not advertise h3 on %d", alt, n.TLS)
	}
	// HTTP/3 gets the same certificate: a TLS 1.3-only QUIC hello must
	// not make autocert order a second (RSA) one.
	h3 := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: acmeDomain}}
	defer h3.Close()
	h3req, _ := http.NewRequestWithContext(ctxT(t), "GET", fmt.Sprintf("https://127.0.0.1:%d/_matrix/client/versions", n.TLS), nil)
	h3resp, err := h3.RoundTrip(h3req)
	if err != nil {
		t.Fatalf("HTTP/3: %v", err)
	}
	h3resp.Body.Close()
	if h3resp.ProtoMajor != 3 || h3resp.StatusCode != http.StatusOK || h3resp.TLS.PeerCertificates[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("HTTP/3: %s %d, serial %s, want %s", h3resp.Proto, h3resp.StatusCode, h3resp.TLS.PeerCertificates[0].SerialNumber, leaf.SerialNumber)
	}
	keys, _ := getJSON(t, httpsClient(roots, acmeDomain, n.Fed), "https://"+acmeDomain+"/_matrix/key/v2/server")
	if keys["server_name"] != acmeDomain {
		t.Fatalf("federation key answer: %v", keys)
	}
	// Not trusting Pebble's root, a client refuses: the chain is Pebble's.
	if _, err := served(x509.NewCertPool(), acmeDomain, n.TLS); err == nil {
		t.Fatal("handshake verified without Pebble's root")
	}
	// Port 80 redirects to https on the TLS listener.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/_matrix/client/versions?x=1", n.H80), nil)
	req.Host = acmeDomain
	rresp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rresp.Body.Close()
	if want := fmt.Sprintf("https://%s:%d/_matrix/client/versions?x=1", acmeDomain, n.TLS); rresp.StatusCode != http.StatusFound || rresp.Header.Get("Location") != want {
		t.Fatalf("port 80: %d Location %q, want 302 %q", rresp.StatusCode, rresp.Header.Get("Location"), want)
	}
	issued := pb.issued()
	if issued != 1 {
		t.Fatalf("pebble issued %d certificates, want 1", issued)
	}

	// Restart with Pebble stopped: the certificate comes from the store.
	n.stop()
	pb.stop()
	n.start(t)
	again, err := served(roots, acmeDomain, n.TLS)
	if err != nil {
		t.Fatalf("after restart without the CA: %v", err)
	}
	if again[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("after restart serial %s, want the cached %s", again[0].SerialNumber, leaf.SerialNumber)
	}
	if strings.Contains(n.Logs.String(), "ACME: no certificate yet") {
		t.Fatalf("restart tried to order:\n%s", n.Logs.String())
	}
	// Not in a world-readable file: the database is 0600 and nothing
	// else in the data directory holds a private key.
	err = filepath.Walk(n.Dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, _ := os.ReadFile(p)
		if bytes.Contains(data, []byte("PRIVATE KEY")) && !strings.HasSuffix(p, ".db") {
			t.Errorf("%s holds a private key", p)
		}
		if strings.HasSuffix(p, ".db") && fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is mode %o, want 0600", p, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestACMERenewsNearExpiry: with short-lived certificates and
// tls.acme.renew_before, edge orders a new certificate before the old
// one expires and serves it without a restart.
func TestACMERenewsNearExpiry(t *testing.T) {
	n, pb := acmeSetup(t, 40*time.Second, 32*time.Second, false)
	n.start(t)
	roots := pb.roots(t)
	var first *x509.Certificate
	waitFor(t, 60*time.Second, "the first certificate", func() bool {
		chain, err := served(roots, acmeDomain, n.TLS)
		if err == nil {
			first = chain[0]
		}
		return err == nil
	})
	waitFor(t, 40*time.Second, "a renewed certificate", func() bool {
		chain, err := served(roots, acmeDomain, n.TLS)
		return err == nil && chain[0].SerialNumber.Cmp(first.SerialNumber) != 0
	})
	if time.Now().After(first.NotAfter) {
		t.Fatalf("renewed only after the first certificate expired (%s)", first.NotAfter)
	}
	if got := pb.issued(); got < 2 {
		t.Fatalf("pebble issued %d certificates, want a renewal", got)
	}
}

// TestACMEHTTP01: when TLS-ALPN-01 cannot pass, the port-80 listener
// answers HTTP-01 and the certificate is issued all the same.
func TestACMEHTTP01(t *testing.T) {
	n, pb := acmeSetup(t, 90*24*time.Hour, 0, true)
	n.start(t)
	roots := pb.roots(t)
	waitFor(t, 60*time.Second, "a certificate through HTTP-01", func() bool {
		_, err := served(roots, acmeDomain, n.Fed)
		return err == nil
	})
	if !strings.Contains(pb.logs.String(), "Attempting to validate w/ HTTP") || pb.issued() != 1 {
		t.Fatalf("expected one certificate validated over HTTP-01:\n%s", pb.logs.String())
	}
}

// TestACMERefusedOrder: a CA that refuses the name gets a clear log line
// and a retry later, not an order per TLS handshake (which would spend a
// real CA's rate limit).
func TestACMERefusedOrder(t *testing.T) {
	dns := startACMEDNS(t)
	ps := newPebbleSpec(t)
	ps.Blocklist = []string{acmeDomain}
	n := newTLSNode(t, acmeDomain, false, func(c *config.Config, dir string) {
		c.TLS.Mode = config.TLSACME
		c.TLS.ACME.DirectoryURL = ps.directoryURL()
		c.TLS.ACME.TrustCAFile = ps.CertFile
	})
	pb := startPebble(t, ps, tlsTestPort(t), n.TLS, dns, 90*24*time.Hour)
	n.start(t)
	waitFor(t, 10*time.Second, "the refusal in the log", func() bool {
		return strings.Contains(n.Logs.String(), "ACME: no certificate yet")
	})
	if log := n.Logs.String(); !strings.Contains(log, "rejectedIdentifier") && !strings.Contains(log, "policy") {
		t.Fatalf("log does not carry the CA's reason:\n%s", log)
	}
	for range 10 {
		if _, err := served(nil, acmeDomain, n.TLS); err == nil {
			t.Fatal("handshake succeeded without a certificate")
		}
	}
	if orders := strings.Count(pb.logs.String(), "POST /order-plz"); orders > 2 {
		t.Fatalf("%d orders for one refused name and 10 handshakes, want at most 2", orders)
	}
	// The plain listener serves on.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/_matrix/client/versions", n.Plain))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("plain listener: %d", resp.StatusCode)
	}
}

// TestACMEUnreachableDirectory: a CA that does not answer does not stop
// the node: it starts at once, serves plain HTTP, logs why TLS is not
// there yet, and keeps retrying.
func TestACMEUnreachableDirectory(t *testing.T) {
	dead := tlsTestPort(t) // nothing listens there
	n := newTLSNode(t, acmeDomain, false, func(c *config.Config, dir string) {
		c.TLS.Mode = config.TLSACME
		c.TLS.ACME.DirectoryURL = fmt.Sprintf("https://127.0.0.1:%d/dir", dead)
	})
	began := time.Now()
	n.start(t)
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("start took %s: it waited for the CA", d)
	}
	waitFor(t, 10*time.Second, "the ACME failure in the log", func() bool {
		return strings.Contains(n.Logs.String(), "ACME: no certificate yet")
	})
	log := n.Logs.String()
	if !strings.Contains(log, "retry_in=") || !strings.Contains(log, strconv.Itoa(dead)) {
		t.Fatalf("log does not say where it failed and when it retries:\n%s", log)
	}
	if _, err := served(nil, acmeDomain, n.TLS); err == nil {
		t.Fatal("TLS handshake succeeded without a certificate")
	}
}

// TestACMERefusesIPServerName: ACME CAs do not issue for IP addresses;
// the config says so at load instead of failing orders forever.
func TestACMERefusesIPServerName(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default("192.0.2.7:8448")
	cfg.TLS.Mode = config.TLSACME
	path := filepath.Join(dir, "edge.yaml")
	if err := config.WriteFile(path, cfg); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load(path)
	if err == nil || !strings.Contains(err.Error(), "tls.mode") || !strings.Contains(err.Error(), "IP address") {
		t.Fatalf("Load = %v, want a tls.mode error about IP addresses", err)
	}
}
