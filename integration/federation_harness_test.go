package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"maunium.net/go/mautrix/crypto/canonicaljson"

	"edge/edge"
	"edge/edge/config"
	"edge/federation"
)

// Federation test worlds: every node is a whole edge node (edge.Open,
// ServeListeners) with a plain-HTTP client listener and a TLS federation
// listener on loopback. Certificates come from a CA made per test; the
// nodes trust it through federation.trust_ca_file, exactly as an operator
// would configure a LAN with `edge init --trust-ca`. Server names are IP
// literals with the federation port ("127.0.0.1:PORT"), which discovery
// resolves without DNS, or a test hostname answered by a loopback DNS
// server.

// fedCA is a certificate authority for one test.
type fedCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	file string // the CA certificate, PEM
}

func newFedCA(t testing.TB) *fedCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge federation test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &fedCA{cert: cert, key: key, pool: pool, file: file}
}

var fedSerial atomic.Int64

// issue returns a PEM certificate and key for hosts (IP literals become IP
// SANs, the rest DNS SANs).
func (ca *fedCA) issue(t testing.TB, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100 + fedSerial.Add(1)), Subject: pkix.Name{CommonName: hosts[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// issueFiles writes a certificate for hosts into dir as cert.pem/key.pem.
func (ca *fedCA) issueFiles(t testing.TB, dir string, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	c, k := ca.issue(t, hosts...)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, c, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, k, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// tlsCert is issue as a tls.Certificate, for test servers that are not nodes.
func (ca *fedCA) tlsCert(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	c, k := ca.issue(t, hosts...)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// httpClient talks TLS (HTTP/2 when offered) to servers with the CA's certificates.
func (ca *fedCA) httpClient() *http.Client {
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.pool}, ForceAttemptHTTP2: true,
	}}
}

// fedOpts shape one node.
type fedOpts struct {
	// host is the host part of the server name; default "127.0.0.1". The
	// certificate covers it and 127.0.0.1.
	host string
	// cfg adjusts the configuration before it is written.
	cfg func(*config.Config)
	// setup runs after edge.Open and before serving, at every start: hooks.
	setup func(*edge.Node)
	// stopped leaves the node created but not running.
	stopped bool
}

// fedNode is a whole edge node with a TLS federation listener.
type fedNode struct {
	*edge.Node
	Name       string // server name: host and the federation port
	Dir        string
	CfgPath    string
	FedAddr    string // 127.0.0.1:port of the TLS listener
	ClientAddr string
	// MetricsURL is the admin listener's base URL.
	MetricsURL string
	// Accepted counts connections accepted on the federation listener,
	// over every start.
	Accepted atomic.Int64

	setup  func(*edge.Node)
	held   [3]net.Listener // bound at creation, used by the first start
	cancel context.CancelFunc
	done   chan error
}

// newFedNode creates a node and, unless o.stopped, starts it.
func newFedNode(t testing.TB, ca *fedCA, o fedOpts) *fedNode {
	t.Helper()
	n := &fedNode{Dir: t.TempDir(), setup: o.setup}
	for i := range n.held {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n.held[i] = ln
	}
	n.FedAddr, n.ClientAddr = n.held[0].Addr().String(), n.held[1].Addr().String()
	n.MetricsURL = "http://" + n.held[2].Addr().String()
	host := o.host
	if host == "" {
		host = "127.0.0.1"
	}
	_, port, _ := net.SplitHostPort(n.FedAddr)
	n.Name = net.JoinHostPort(host, port)
	hosts := []string{"127.0.0.1"}
	if host != "127.0.0.1" {
		hosts = []string{host, "127.0.0.1"}
	}
	certFile, keyFile := ca.issueFiles(t, n.Dir, hosts...)

	cfg := config.Default(n.Name)
	cfg.Listen = n.ClientAddr
	cfg.FederationListen = n.FedAddr
	cfg.TLSCertFile, cfg.TLSKeyFile = certFile, keyFile
	cfg.MetricsListen = n.held[2].Addr().String()
	cfg.RateLimits = config.RateLimits{}
	cfg.Registration.SharedSecret = "test-shared-secret"
	cfg.Log.Level = "warn"
	cfg.Federation.TrustCAFile = ca.file
	cfg.Federation.AllowPrivateAddresses = true
	cfg.Federation.TrustedKeyServers = nil // only where a test sets a notary
	cfg.Federation.RequestTimeout = 10 * time.Second
	cfg.Federation.RetryMinInterval = 100 * time.Millisecond
	cfg.Federation.RetryMaxInterval = time.Second
	if o.cfg != nil {
		o.cfg(cfg)
	}
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSigningKey(filepath.Join(n.Dir, cfg.SigningKeyPath), key); err != nil {
		t.Fatal(err)
	}
	n.CfgPath = filepath.Join(n.Dir, "edge.yaml")
	if err := config.WriteFile(n.CfgPath, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.stop()
		for _, ln := range n.held {
			if ln != nil {
				ln.Close()
			}
		}
	})
	if o.stopped {
		for i, ln := range n.held {
			ln.Close()
			n.held[i] = nil
		}
		return n
	}
	n.start(t)
	return n
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// start opens the node from its config file and serves on its addresses.
func (n *fedNode) start(t testing.TB) {
	t.Helper()
	if n.cancel != nil {
		t.Fatalf("%s is already running", n.Name)
	}
	var ls [3]net.Listener
	for i, addr := range []string{n.FedAddr, n.ClientAddr, strings.TrimPrefix(n.MetricsURL, "http://")} {
		if n.held[i] != nil {
			ls[i], n.held[i] = n.held[i], nil
			continue
		}
		var err error
		for try := 0; ; try++ { // a port just closed can linger briefly
			if ls[i], err = net.Listen("tcp", addr); err == nil || try == 50 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("rebinding %s: %v", addr, err)
		}
	}
	cfg, err := config.Load(n.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var logOut io.Writer = io.Discard
	if os.Getenv("EDGE_TEST_LOG") != "" {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.Name)
	node, err := edge.Open(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if n.setup != nil {
		n.setup(node)
	}
	n.Node = node
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() {
		n.done <- node.ServeListeners(ctx, edge.Listeners{
			Federation: countingListener{ls[0], &n.Accepted}, Client: ls[1], Metrics: ls[2],
		})
	}()
}

// stop shuts the node down gracefully; its store is closed.
func (n *fedNode) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	n.cancel = nil
	_ = n.Node.Close()
}

// fedURL is the URL of path on the node's TLS federation listener.
func (n *fedNode) fedURL(path string) string { return "https://" + n.FedAddr + path }

// signingKey is the node's current key.
func (n *fedNode) signingKey() config.SigningKey { return n.Keys[0] }

// fedInbox records what a node's transaction endpoint hands on.
type fedInbox struct {
	mu   sync.Mutex
	edus []fedReceived
	pdus []fedReceived
	// onEDU, when set, runs after each EDU is recorded (on the handler's
	// goroutine: it may block the transaction).
	onEDU func(fedReceived)
}

type fedReceived struct {
	Origin  string
	Type    string
	Content map[string]any
}

// install sets the node's OnEDU and OnPDUs hooks.
func (ib *fedInbox) install(n *edge.Node) {
	n.Fed.OnEDU = func(_ context.Context, origin string, e federation.EDU) {
		r := fedReceived{Origin: origin, Type: e.Type}
		_ = json.Unmarshal(e.Content, &r.Content)
		ib.mu.Lock()
		ib.edus = append(ib.edus, r)
		hook := ib.onEDU
		ib.mu.Unlock()
		if hook != nil {
			hook(r)
		}
	}
	n.Fed.OnPDUs = func(_ context.Context, origin string, pdus []json.RawMessage) map[string]error {
		ib.mu.Lock()
		defer ib.mu.Unlock()
		for _, p := range pdus {
			var ev struct {
				Type    string         `json:"type"`
				Content map[string]any `json:"content"`
			}
			_ = json.Unmarshal(p, &ev)
			ib.pdus = append(ib.pdus, fedReceived{Origin: origin, Type: ev.Type, Content: ev.Content})
		}
		return nil
	}
}

func (ib *fedInbox) snapshot() (edus, pdus []fedReceived) {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	return append([]fedReceived(nil), ib.edus...), append([]fedReceived(nil), ib.pdus...)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fedTxn is a transaction body from origin carrying edus.
func fedTxn(origin string, edus ...federation.EDU) []byte {
	if edus == nil {
		edus = []federation.EDU{}
	}
	b, _ := json.Marshal(map[string]any{"origin": origin, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{}, "edus": edus})
	return b
}

// fedEDU is a test EDU with content.
func fedEDU(typ string, content map[string]any) federation.EDU {
	b, _ := json.Marshal(content)
	return federation.EDU{Type: typ, Content: b}
}

// fedSign is an X-Matrix signature by priv over a request, made by hand
// from the spec's "Request Authentication" section.
func fedSign(t testing.TB, priv ed25519.PrivateKey, method, uri, origin, destination string, body []byte) string {
	t.Helper()
	m := map[string]any{"method": method, "uri": uri, "origin": origin, "destination": destination}
	if len(body) > 0 {
		m["content"] = json.RawMessage(body)
	}
	raw, _ := json.Marshal(m)
	canon, err := canonicaljson.CanonicalJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawStdEncoding.EncodeToString(ed25519.Sign(priv, canon))
}

func fedAuthHeader(origin, destination, keyID, sig string) string {
	return fmt.Sprintf(`X-Matrix origin="%s",destination="%s",key="%s",sig="%s"`, origin, destination, keyID, sig)
}

// fedRaw sends a request with the given Authorization header (none when
// empty) and returns the status and errcode.
func fedRaw(t testing.TB, hc *http.Client, method, url, auth string, body []byte) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var e struct {
		Code string `json:"errcode"`
	}
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &e)
	return resp.StatusCode, e.Code
}

// fedSignJSON adds server's signature with keyID to a JSON object, as the
// appendix "Signing JSON" describes.
func fedSignJSON(t testing.TB, obj map[string]any, server, keyID string, priv ed25519.PrivateKey) map[string]any {
	t.Helper()
	plain := map[string]any{}
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			plain[k] = v
		}
	}
	raw, _ := json.Marshal(plain)
	canon, err := canonicaljson.CanonicalJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for k, v := range obj {
		out[k] = v
	}
	sigs := map[string]map[string]string{}
	if old, ok := obj["signatures"].(map[string]map[string]string); ok {
		for s, byKey := range old {
			sigs[s] = map[string]string{}
			for k, v := range byKey {
				sigs[s][k] = v
			}
		}
	}
	if sigs[server] == nil {
		sigs[server] = map[string]string{}
	}
	sigs[server][keyID] = base64.RawStdEncoding.EncodeToString(ed25519.Sign(priv, canon))
	out["signatures"] = sigs
	return out
}

// fedQueueStatus reads GET /federation/queues of a metrics listener and
// returns the entry for dest (zero Destination when absent).
func fedQueueStatus(t testing.TB, metricsURL, dest string) federation.DestinationStatus {
	t.Helper()
	resp, err := http.Get(metricsURL + "/federation/queues")
	if err != nil {
		t.Fatalf("queue status: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		Destinations []federation.DestinationStatus `json:"destinations"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		t.Fatalf("queue status: HTTP %d", resp.StatusCode)
	}
	for _, d := range out.Destinations {
		if d.Destination == dest {
			return d
		}
	}
	return federation.DestinationStatus{}
}

// fedMetrics reads GET /metrics and returns the samples by "name{labels}"
// (or "name" without labels), checking the text format line by line.
func fedMetrics(t testing.TB, metricsURL string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(metricsURL + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("metrics: HTTP %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	data, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	typed := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if strings.HasPrefix(line, "# TYPE ") {
			f := strings.Fields(line)
			if len(f) != 4 || (f[3] != "gauge" && f[3] != "counter" && f[3] != "histogram") {
				t.Fatalf("metrics: bad TYPE line %q", line)
			}
			typed[f[2]] = true
			continue
		}
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("metrics: bad sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics: bad value in %q", line)
		}
		name, _, _ := strings.Cut(line[:i], "{")
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && typed[base] {
				name = base // a histogram's samples belong to its family
			}
		}
		if !typed[name] {
			t.Fatalf("metrics: sample %q before its TYPE line", line)
		}
		out[line[:i]] = v
	}
	return out
}

// startFedDNS serves A records (name → IPv4) on a loopback UDP port with
// miekg/dns and returns its "ip:port". Other names get NXDOMAIN; other
// types of a known name an empty answer.
func startFedDNS(t testing.TB, records map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		ip, ok := records[strings.ToLower(strings.TrimSuffix(q.Name, "."))]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.ParseIP(ip).To4(),
			})
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}
