package federation

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
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"edge/edge/config"
	"edge/edge/store"
	"edge/wellknown"
)

// testCA is a certificate authority made for the test run; every test
// server presents a certificate it issued for 127.0.0.1, ::1 and localhost.
type testCA struct {
	pool *x509.CertPool
	pem  []byte // the CA certificate
	leaf tls.Certificate
}

var (
	caOnce sync.Once
	theCA  *testCA
)

func ca(t *testing.T) *testCA {
	t.Helper()
	caOnce.Do(func() {
		caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		caTmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge test CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		caCert, _ := x509.ParseCertificate(caDER)
		leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		leafTmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(caCert)
		theCA = &testCA{pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
			leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}
	})
	return theCA
}

// serveTLS serves h over TLS (HTTP/2 and 1.1) on ln with the test CA's
// certificate; the returned function stops it.
func serveTLS(t *testing.T, ln net.Listener, h http.Handler) func() {
	t.Helper()
	hs := &http.Server{
		Handler:   h,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca(t).leaf}, NextProtos: []string{"h2", "http/1.1"}},
		ErrorLog:  slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	var once sync.Once
	return func() { once.Do(func() { _ = hs.Close() }) }
}

// reservePort returns a loopback server name whose port nothing listens on.
func reservePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	name := ln.Addr().String()
	ln.Close()
	return name
}

type nodeOpts struct {
	name        string // listen on this "127.0.0.1:port"; empty picks a port
	dir         string // reuse a node's directory (restart); empty makes one
	trusted     []config.TrustedKeyServer
	resolver    Resolver
	denyPrivate bool
	keyValidity time.Duration
	retryMin    time.Duration
	retryMax    time.Duration
	queueLimit  int
	setup       func(*Server) // hooks and routes, before Start
	// intercept sees each request first and may answer it (returns true).
	intercept func(w http.ResponseWriter, r *http.Request) bool
}

// testNode is one federation server on a real TLS listener.
type testNode struct {
	name  string
	dir   string
	cfg   *config.Config
	store *store.Store
	srv   *Server
	keys  []config.SigningKey
	hits  *hitCounter
	stop  func()
}

// hitCounter counts requests per path.
type hitCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *hitCounter) get(path string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[path]
}

func startNode(t *testing.T, o nodeOpts) *testNode {
	t.Helper()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	keyPath := filepath.Join(o.dir, "signing.key")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		k, err := config.GenerateSigningKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := config.WriteSigningKey(keyPath, k); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := config.ReadSigningKeys(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	addr := o.name
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	for try := 0; ; try++ { // a just-closed port can linger briefly
		if ln, err = net.Listen("tcp", addr); err == nil || try == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	name := ln.Addr().String()
	cfg := config.Default(name)
	cfg.Dir = o.dir
	cfg.Federation.AllowPrivateAddresses = !o.denyPrivate
	cfg.Federation.TrustedKeyServers = o.trusted
	cfg.Federation.RequestTimeout = 5 * time.Second
	cfg.Federation.RetryMinInterval = 50 * time.Millisecond
	cfg.Federation.RetryMaxInterval = 200 * time.Millisecond
	if o.keyValidity != 0 {
		cfg.Federation.KeyValidity = o.keyValidity
	}
	if o.retryMin != 0 {
		cfg.Federation.RetryMinInterval, cfg.Federation.RetryMaxInterval = o.retryMin, o.retryMax
	}
	if o.queueLimit != 0 {
		cfg.Federation.QueueLimit = o.queueLimit
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(o.dir, "edge.db"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Deps{Config: cfg, Store: st, Keys: keys, Resolver: o.resolver, RootCAs: ca(t).pool, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	srv.Keyring.BackoffMin, srv.Keyring.BackoffMax = 100*time.Millisecond, 200*time.Millisecond
	if o.setup != nil {
		o.setup(srv)
	}
	hits := &hitCounter{n: map[string]int{}}
	mux := http.NewServeMux()
	srv.Register(mux)
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.mu.Lock()
		hits.n[r.URL.Path]++
		hits.mu.Unlock()
		if o.intercept != nil && o.intercept(w, r) {
			return
		}
		mux.ServeHTTP(w, r)
	})
	stopHTTP := serveTLS(t, ln, counted)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	n := &testNode{name: name, dir: o.dir, cfg: cfg, store: st, srv: srv, keys: keys, hits: hits}
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			stopHTTP()
			srv.Close()
			st.Close()
		})
	}
	t.Cleanup(n.stop)
	return n
}

// httpsClient trusts the test CA and nothing else.
func httpsClient(t *testing.T) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca(t).pool}, ForceAttemptHTTP2: true,
	}}
}

// call sends a request to node with the given Authorization header (none
// if empty) and returns the status and body.
func call(t *testing.T, n *testNode, method, path string, body []byte, auth string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+n.name+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := httpsClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func errcode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Code string `json:"errcode"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	return e.Code
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or 10s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// refusingResolver resolves IP literals except the names it refuses, as if
// those servers were unreachable from here.
type refusingResolver struct{ refuse map[string]bool }

func (r refusingResolver) Resolve(ctx context.Context, name string) (*wellknown.Result, error) {
	if r.refuse[name] {
		return nil, errors.New("test: unreachable from here")
	}
	return IPLiteralResolver{}.Resolve(ctx, name)
}
