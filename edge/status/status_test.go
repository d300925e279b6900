package status

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"maunium.net/go/mautrix/crypto/canonicaljson"
)

// testCA issues certificates for the fake servers.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial atomic.Int64

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "status test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue makes a server certificate for hosts valid for validFor.
func (ca *testCA) issue(t *testing.T, validFor time.Duration, hosts ...string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(10 + serial.Add(1)), Subject: pkix.Name{CommonName: hosts[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validFor),
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
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// signObj signs obj as server with keyID (appendix "Signing JSON").
func signObj(t *testing.T, obj map[string]any, server, keyID string, priv ed25519.PrivateKey) []byte {
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
	sigs, _ := obj["signatures"].(map[string]map[string]string)
	if sigs == nil {
		sigs = map[string]map[string]string{}
	}
	if sigs[server] == nil {
		sigs[server] = map[string]string{}
	}
	sigs[server][keyID] = base64.RawStdEncoding.EncodeToString(ed25519.Sign(priv, canon))
	obj["signatures"] = sigs
	out, _ := json.Marshal(obj)
	return out
}

// fakeServer is a federation endpoint with a real TLS listener.
type fakeServer struct {
	name   string // server name its key response claims
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	tamper bool // serve a key response whose signature does not verify
	srv    *httptest.Server
	// notary answers /_matrix/key/v2/query/{server} when set.
	notary func(server string) []byte
	// clientBase is the base_url of /.well-known/matrix/client ("" = 404).
	clientBase string
	// serverWK is the body of /.well-known/matrix/server ("" = 404).
	serverWK string
	// validFor is how far valid_until_ts lies ahead (default 24h).
	validFor time.Duration
	// skew shifts the Date header of key responses.
	skew time.Duration
}

func (f *fakeServer) keyResponse(t *testing.T) map[string]any {
	return map[string]any{
		"server_name":    f.name,
		"valid_until_ts": time.Now().Add(cmp.Or(f.validFor, 24*time.Hour)).UnixMilli(),
		"verify_keys":    map[string]any{"ed25519:a1": map[string]string{"key": base64.RawStdEncoding.EncodeToString(f.pub)}},
	}
}

func startFake(t *testing.T, cert tls.Certificate, name string) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	f.pub, f.priv, _ = ed25519.GenerateKey(rand.Reader)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/key/v2/server", func(w http.ResponseWriter, r *http.Request) {
		body := signObj(t, f.keyResponse(t), f.name, "ed25519:a1", f.priv)
		if f.tamper { // change a signed field after signing
			body = bytes.Replace(body, []byte(`"server_name"`), []byte(`"old_verify_keys":{},"server_name"`), 1)
		}
		w.Header().Set("Content-Type", "application/json")
		if f.skew != 0 {
			w.Header().Set("Date", time.Now().Add(f.skew).UTC().Format(http.TimeFormat))
		}
		_, _ = w.Write(body)
	})
	mux.HandleFunc("GET /.well-known/matrix/server", func(w http.ResponseWriter, r *http.Request) {
		if f.serverWK == "" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(f.serverWK))
	})
	mux.HandleFunc("GET /_matrix/federation/v1/version", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"server":{"name":"fake","version":"1.0"}}`))
	})
	mux.HandleFunc("GET /_matrix/key/v2/query/{server}", func(w http.ResponseWriter, r *http.Request) {
		if f.notary == nil {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(f.notary(r.PathValue("server")))
	})
	mux.HandleFunc("GET /.well-known/matrix/client", func(w http.ResponseWriter, r *http.Request) {
		if f.clientBase == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", "*")
		_, _ = w.Write([]byte(`{"m.homeserver":{"base_url":"` + f.clientBase + `"}}`))
	})
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.srv.EnableHTTP2 = true
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.name = name
	if name == "" {
		f.name = f.srv.Listener.Addr().String()
	}
	return f
}

func (f *fakeServer) port() int { return f.srv.Listener.Addr().(*net.TCPAddr).Port }

// startDNS serves zone (name → records in zone-file form) on loopback UDP.
func startDNS(t *testing.T, zone []string) string {
	t.Helper()
	var rrs []dns.RR
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatal(err)
		}
		rrs = append(rrs, rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		known := false
		for _, rr := range rrs {
			h := rr.Header()
			if !strings.EqualFold(h.Name, q.Name) {
				continue
			}
			known = true
			if h.Rrtype == q.Qtype || h.Rrtype == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
		if !known {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func inspect(t *testing.T, name string, opts Options) *Report {
	t.Helper()
	opts.AllowPrivate = true
	opts.Timeout = 3 * time.Second
	if opts.Nameservers == nil {
		opts.Nameservers = []string{startDNS(t, nil)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := Inspect(ctx, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func hasFinding(fs []Finding, check string) *Finding {
	for i := range fs {
		if fs[i].Check == check {
			return &fs[i]
		}
	}
	return nil
}

func TestStatusHealthyFake(t *testing.T) {
	ca := newTestCA(t)
	cert := ca.issue(t, 90*24*time.Hour, "127.0.0.1")
	f := startFake(t, cert, "")
	rep := inspect(t, f.name, Options{RootCAs: ca.pool})
	if !rep.FederationOK || len(rep.Failures) > 0 {
		t.Fatalf("want FederationOK, got failures %+v", rep.Failures)
	}
	if len(rep.Connections) != 1 {
		t.Fatalf("connections: %+v", rep.Connections)
	}
	c := rep.Connections[0]
	ch := c.Checks
	if !ch.AllChecksOK || !ch.MatchingServerName || !ch.ValidCertificates || !ch.FutureValidUntilTS || !ch.HasEd25519Key ||
		!ch.AllEd25519ChecksOK || !ch.Ed25519Checks["ed25519:a1"].MatchingSignature || !ch.Ed25519Checks["ed25519:a1"].ValidEd25519 {
		t.Fatalf("checks: %+v", ch)
	}
	sum := sha256.Sum256(cert.Certificate[0])
	if len(c.Certificates) != 1 || c.Certificates[0].SHA256Fingerprint != strings.ToUpper(hex.EncodeToString(sum[:])) ||
		c.Certificates[0].DaysLeft < 88 || c.Certificates[0].IPAddresses[0] != "127.0.0.1" {
		t.Fatalf("certificates: %+v", c.Certificates)
	}
	if c.TLSVersion != "TLS 1.3" || c.CipherSuite == "" || c.ALPN != "h2" {
		t.Fatalf("TLS: %s %s %q", c.TLSVersion, c.CipherSuite, c.ALPN)
	}
	if rep.Version == nil || rep.Version.Name != "fake" || rep.Version.Version != "1.0" {
		t.Fatalf("version: %+v", rep.Version)
	}
	if c.ClockSkewSeconds == nil || *c.ClockSkewSeconds > 2 || *c.ClockSkewSeconds < -2 {
		t.Fatalf("clock skew: %v", c.ClockSkewSeconds)
	}
	if hasFinding(rep.Warnings, "CertificateExpiry") != nil {
		t.Fatalf("a 90-day certificate got an expiry warning: %+v", rep.Warnings)
	}
	if rep.WellKnown.Skipped == "" {
		t.Fatalf("an IP literal with port should skip the well-known: %+v", rep.WellKnown)
	}
	var out bytes.Buffer
	WriteText(&out, rep)
	for _, want := range []string{"✓ MatchingServerName", "✓ ed25519:a1 ValidEd25519, ✓ MatchingSignature", "FederationOK: ✓ yes", "version: fake 1.0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStatusTamperedSignature(t *testing.T) {
	ca := newTestCA(t)
	f := startFake(t, ca.issue(t, 90*24*time.Hour, "127.0.0.1"), "")
	f.tamper = true
	rep := inspect(t, f.name, Options{RootCAs: ca.pool})
	if rep.FederationOK {
		t.Fatal("FederationOK with a signature that does not verify")
	}
	kc := rep.Connections[0].Checks.Ed25519Checks["ed25519:a1"]
	if !kc.ValidEd25519 || kc.MatchingSignature {
		t.Fatalf("ed25519 checks: %+v", kc)
	}
	if f := hasFinding(rep.Failures, "MatchingSignature"); f == nil || f.Fix == "" {
		t.Fatalf("failures: %+v", rep.Failures)
	}
	var out bytes.Buffer
	WriteText(&out, rep)
	if !strings.Contains(out.String(), "✗ MatchingSignature") || !strings.Contains(out.String(), "FederationOK: ✗ no") {
		t.Fatalf("text output:\n%s", out.String())
	}
}

func TestStatusCertificateProblems(t *testing.T) {
	ca := newTestCA(t)
	t.Run("expiring", func(t *testing.T) {
		f := startFake(t, ca.issue(t, 5*24*time.Hour, "127.0.0.1"), "")
		rep := inspect(t, f.name, Options{RootCAs: ca.pool})
		w := hasFinding(rep.Warnings, "CertificateExpiry")
		if w == nil || !strings.Contains(w.Reason, "days left") || w.Addr != f.srv.Listener.Addr().String() {
			t.Fatalf("no expiry warning: %+v", rep.Warnings)
		}
		if !rep.FederationOK || rep.Connections[0].Certificates[0].DaysLeft > 5 {
			t.Fatalf("an expiring certificate still works: ok=%v %+v", rep.FederationOK, rep.Connections[0].Certificates)
		}
	})
	t.Run("wrong name", func(t *testing.T) {
		f := startFake(t, ca.issue(t, 90*24*time.Hour, "other.example", "127.0.0.2"), "")
		rep := inspect(t, f.name, Options{RootCAs: ca.pool})
		ch := rep.Connections[0].Checks
		if rep.FederationOK || ch.MatchingServerName || !ch.ValidCertificates || ch.AllChecksOK {
			t.Fatalf("ok=%v checks %+v", rep.FederationOK, ch)
		}
		if f := hasFinding(rep.Failures, "MatchingServerName"); f == nil || !strings.Contains(f.Reason, "other.example") {
			t.Fatalf("failures: %+v", rep.Failures)
		}
	})
	t.Run("untrusted CA", func(t *testing.T) {
		f := startFake(t, ca.issue(t, 90*24*time.Hour, "127.0.0.1"), "")
		rep := inspect(t, f.name, Options{RootCAs: newTestCA(t).pool})
		ch := rep.Connections[0].Checks
		if rep.FederationOK || ch.ValidCertificates || !ch.MatchingServerName || !ch.AllEd25519ChecksOK {
			t.Fatalf("ok=%v checks %+v", rep.FederationOK, ch)
		}
	})
}

// TestStatusSRVAndClientWellKnown: a hostname found through SRV (and a
// CNAME), with both SRV names reported and client discovery probed.
func TestStatusSRVAndClientWellKnown(t *testing.T) {
	ca := newTestCA(t)
	f := startFake(t, ca.issue(t, 90*24*time.Hour, "srv.test"), "srv.test")
	versions := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/client/versions" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"versions":["v1.11","v1.12"]}`))
	}))
	t.Cleanup(versions.Close)
	f.clientBase = versions.URL
	port := f.port()
	ns := startDNS(t, []string{
		"_matrix-fed._tcp.srv.test. 60 IN SRV 10 5 " + itoa(port) + " fed.srv.test.",
		"_matrix._tcp.srv.test. 60 IN SRV 10 5 " + itoa(port) + " fed.srv.test.",
		"fed.srv.test. 60 IN CNAME host.srv.test.",
		"host.srv.test. 60 IN A 127.0.0.1",
		"srv.test. 60 IN A 127.0.0.1",
	})
	rep := inspect(t, "srv.test", Options{RootCAs: ca.pool, Nameservers: []string{ns}, WellKnownPort: port})
	if !rep.FederationOK {
		t.Fatalf("failures: %+v", rep.Failures)
	}
	if len(rep.DNS.SRV) != 2 || rep.DNS.SRV[0].Name != "_matrix-fed._tcp.srv.test" || rep.DNS.SRV[1].Name != "_matrix._tcp.srv.test" ||
		!rep.DNS.SRV[1].Deprecated || len(rep.DNS.SRV[0].Records) != 1 || rep.DNS.SRV[0].Records[0].Target != "fed.srv.test" ||
		rep.DNS.SRV[0].Records[0].Port != uint16(port) || len(rep.DNS.SRV[1].Records) != 1 {
		t.Fatalf("SRV: %+v", rep.DNS.SRV)
	}
	if len(rep.DNS.CNAMEs) != 1 || rep.DNS.CNAMEs[0] != "fed.srv.test → host.srv.test" {
		t.Fatalf("CNAMEs: %v", rep.DNS.CNAMEs)
	}
	if len(rep.DNS.Addrs) != 1 || rep.DNS.Addrs[0] != "127.0.0.1:"+itoa(port) || rep.TLSServerName != "srv.test" {
		t.Fatalf("addrs %v tls name %q", rep.DNS.Addrs, rep.TLSServerName)
	}
	if rep.WellKnown.Found || rep.WellKnown.Status != http.StatusNotFound || rep.WellKnown.CacheExpires.IsZero() {
		t.Fatalf("well-known: %+v", rep.WellKnown)
	}
	cw := rep.ClientWellKnown
	if !cw.Found || !cw.Reachable || cw.CORS != "*" || cw.BaseURL != versions.URL || len(cw.Versions) != 2 {
		t.Fatalf("client well-known: %+v", cw)
	}
	if hasFinding(rep.Warnings, "SRV") != nil {
		t.Fatalf("both SRV names exist, yet: %+v", rep.Warnings)
	}

	// Only the deprecated name: still federates, with a warning.
	ns = startDNS(t, []string{
		"_matrix._tcp.srv.test. 60 IN SRV 10 5 " + itoa(port) + " host.srv.test.",
		"host.srv.test. 60 IN A 127.0.0.1",
		"srv.test. 60 IN A 127.0.0.1",
	})
	f.clientBase = ""
	rep = inspect(t, "srv.test", Options{RootCAs: ca.pool, Nameservers: []string{ns}, WellKnownPort: port})
	if !rep.FederationOK || hasFinding(rep.Warnings, "SRV") == nil || hasFinding(rep.Warnings, "ClientWellKnown") == nil {
		t.Fatalf("ok=%v warnings %+v", rep.FederationOK, rep.Warnings)
	}
	if rep.Resolution.Result.Step != "5" {
		t.Fatalf("resolved at step %s", rep.Resolution.Result.Step)
	}

	// A well-known that is not JSON: discovery goes on, with a warning.
	f.serverWK = "<html>oops</html>"
	rep = inspect(t, "srv.test", Options{RootCAs: ca.pool, Nameservers: []string{ns}, WellKnownPort: port})
	if w := hasFinding(rep.Warnings, "WellKnown"); w == nil || w.Fix == "" || rep.WellKnown.Found || rep.WellKnown.Status != 200 {
		t.Fatalf("well-known %+v, warnings %+v", rep.WellKnown, rep.Warnings)
	}
	if !rep.FederationOK {
		t.Fatalf("failures: %+v", rep.Failures)
	}
}

func TestStatusKeysAndClock(t *testing.T) {
	ca := newTestCA(t)
	f := startFake(t, ca.issue(t, 90*24*time.Hour, "127.0.0.1"), "")
	f.validFor = -time.Minute
	f.skew = 10 * time.Minute
	rep := inspect(t, f.name, Options{RootCAs: ca.pool})
	ch := rep.Connections[0].Checks
	if rep.FederationOK || ch.FutureValidUntilTS || !ch.AllEd25519ChecksOK || hasFinding(rep.Failures, "FutureValidUntilTS") == nil {
		t.Fatalf("expired keys: ok=%v checks %+v", rep.FederationOK, ch)
	}
	if s := rep.Connections[0].ClockSkewSeconds; s == nil || *s < 590 || *s > 610 || hasFinding(rep.Warnings, "ClockSkew") == nil {
		t.Fatalf("skew %v warnings %+v", s, rep.Warnings)
	}

	f.validFor, f.skew = 0, 0
	f.name = "someone.else"
	rep = inspect(t, f.srv.Listener.Addr().String(), Options{RootCAs: ca.pool})
	if rep.FederationOK || rep.Connections[0].Checks.MatchingKeyServerName || !rep.Connections[0].Checks.MatchingServerName {
		t.Fatalf("key response for another server: %+v", rep.Connections[0].Checks)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestStatusNotary(t *testing.T) {
	ca := newTestCA(t)
	f := startFake(t, ca.issue(t, 90*24*time.Hour, "127.0.0.1"), "")
	n := startFake(t, ca.issue(t, 90*24*time.Hour, "127.0.0.1"), "")
	var wrongKey atomic.Bool
	n.notary = func(server string) []byte {
		resp := f.keyResponse(t)
		if wrongKey.Load() {
			other, _, _ := ed25519.GenerateKey(rand.Reader)
			resp["verify_keys"] = map[string]any{"ed25519:a1": map[string]string{"key": base64.RawStdEncoding.EncodeToString(other)}}
		}
		var obj map[string]any
		_ = json.Unmarshal(signObj(t, resp, f.name, "ed25519:a1", f.priv), &obj)
		notarised := signObj(t, obj, n.name, "ed25519:a1", n.priv)
		return []byte(`{"server_keys":[` + string(notarised) + `]}`)
	}
	notary := Notary{ServerName: n.name, VerifyKeys: map[string]string{"ed25519:a1": base64.RawStdEncoding.EncodeToString(n.pub)}}

	rep := inspect(t, f.name, Options{RootCAs: ca.pool, Notaries: []Notary{notary}})
	if !rep.FederationOK || len(rep.Notaries) != 1 || !rep.Notaries[0].Match || !rep.Notaries[0].SignatureChecked {
		t.Fatalf("ok=%v notaries %+v failures %+v", rep.FederationOK, rep.Notaries, rep.Failures)
	}

	wrongKey.Store(true)
	rep = inspect(t, f.name, Options{RootCAs: ca.pool, Notaries: []Notary{notary}})
	if rep.FederationOK || rep.Notaries[0].Match || len(rep.Notaries[0].Mismatch) != 1 || hasFinding(rep.Failures, "NotaryKeys") == nil {
		t.Fatalf("ok=%v notaries %+v", rep.FederationOK, rep.Notaries)
	}

	// A notary answer not signed by the configured key is not trusted.
	wrongKey.Store(false)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	notary.VerifyKeys = map[string]string{"ed25519:a1": base64.RawStdEncoding.EncodeToString(other)}
	rep = inspect(t, f.name, Options{RootCAs: ca.pool, Notaries: []Notary{notary}})
	if rep.Notaries[0].SignatureChecked || rep.Notaries[0].Error == "" || hasFinding(rep.Warnings, "Notary") == nil {
		t.Fatalf("notaries %+v", rep.Notaries)
	}
}

// TestStatusDelegation: the well-known delegates to another name, whose
// certificate must then be valid for the delegated name.
func TestStatusDelegation(t *testing.T) {
	ca := newTestCA(t)
	ns := startDNS(t, []string{"wk.test. 60 IN A 127.0.0.1", "deleg.test. 60 IN A 127.0.0.1"})
	for _, tc := range []struct {
		hosts []string
		ok    bool
	}{{[]string{"wk.test", "deleg.test"}, true}, {[]string{"wk.test"}, false}} {
		f := startFake(t, ca.issue(t, 90*24*time.Hour, tc.hosts...), "wk.test")
		f.serverWK = `{"m.server": "deleg.test:` + itoa(f.port()) + `"}`
		rep := inspect(t, "wk.test", Options{RootCAs: ca.pool, Nameservers: []string{ns}, WellKnownPort: f.port()})
		wk := rep.WellKnown
		if !wk.Found || wk.MServer != "deleg.test:"+itoa(f.port()) || wk.CacheExpires.Before(time.Now()) {
			t.Fatalf("well-known: %+v", wk)
		}
		if rep.TLSServerName != "deleg.test" || rep.Resolution.Result.Step != "3.2" {
			t.Fatalf("TLS name %q step %s", rep.TLSServerName, rep.Resolution.Result.Step)
		}
		if rep.FederationOK != tc.ok || rep.Connections[0].Checks.MatchingServerName != tc.ok {
			t.Fatalf("certificate for %v: ok=%v failures %+v", tc.hosts, rep.FederationOK, rep.Failures)
		}
		if !tc.ok && !strings.Contains(hasFinding(rep.Failures, "MatchingServerName").Fix, "deleg.test") {
			t.Fatalf("fix does not name the delegated host: %+v", rep.Failures)
		}
	}
}
