package federation

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"edge/edge/config"
	"edge/wellknown"
)

func TestFederationClientRefusesPrivateAddresses(t *testing.T) {
	b := startNode(t, nodeOpts{})
	a := startNode(t, nodeOpts{denyPrivate: true})
	ctx := ctxT(t)
	err := a.srv.Client.Get(ctx, b.name, "/_matrix/federation/v1/version", nil)
	if !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("request to %s: %v, want ErrAddressRefused", b.name, err)
	}
	if _, err := a.srv.Keyring.VerifyKey(ctx, b.name, b.keys[0].ID, time.Now()); err == nil {
		t.Fatal("keys fetched from a loopback server while private addresses are refused")
	}
	if n := b.hits.get("/_matrix/federation/v1/version") + b.hits.get(keyPath); n != 0 {
		t.Fatalf("b received %d requests; the blocklist must stop them before connecting", n)
	}
	// The same request is fine when allowed.
	c := startNode(t, nodeOpts{})
	if err := c.srv.Client.Get(ctx, b.name, "/_matrix/federation/v1/version", nil); err != nil {
		t.Fatal(err)
	}
}

// fixedResolver answers every name with one result, as a DNS name whose
// records point wherever their owner likes.
type fixedResolver struct{ res *wellknown.Result }

func (f fixedResolver) Resolve(context.Context, string) (*wellknown.Result, error) { return f.res, nil }

func TestFederationClientDialCheck(t *testing.T) {
	if _, err := NewClient(ClientOptions{ServerName: "me.example"}); err == nil {
		t.Fatal("a client without a signing key was made")
	}
	key, _ := config.GenerateSigningKey()
	c, err := NewClient(ClientOptions{ServerName: "me.example", Key: key})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr    string
		refused bool
	}{
		{"127.0.0.1:8448", true},
		{"10.1.2.3:8448", true},
		{"172.16.0.1:8448", true},
		{"192.168.1.1:8448", true},
		{"169.254.169.254:80", true},
		{"100.64.0.1:8448", true},
		{"0.0.0.0:8448", true},
		{"[::1]:8448", true},
		{"[fe80::1]:8448", true},
		{"[fd00::1]:8448", true},
		{"[::ffff:127.0.0.1]:8448", true},
		{"8.8.8.8:8448", false},
		{"[2001:4860:4860::8888]:8448", false},
	} {
		err := c.control(context.Background(), "tcp", tc.addr, nil)
		if tc.refused != (err != nil) || (err != nil && !errors.Is(err, ErrAddressRefused)) {
			t.Errorf("%s: %v, refused want %v", tc.addr, err, tc.refused)
		}
	}
	// A resolver's answer does not get past the check either.
	c.opts.Resolver = fixedResolver{&wellknown.Result{Host: "evil.example", TLSServerName: "evil.example",
		Endpoints: []wellknown.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:8448")}}}}
	if err := c.Get(ctxT(t), "evil.example", "/x", nil); !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("resolved to 10.0.0.1: %v, want ErrAddressRefused", err)
	}
}

func TestFederationClientVerifiesTLS(t *testing.T) {
	// httptest's own certificate is not from the test CA.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("{}"))
	}))
	srv.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	srv.StartTLS()
	defer srv.Close()
	a := startNode(t, nodeOpts{})
	name := strings.TrimPrefix(srv.URL, "https://")
	err := a.srv.Client.Get(ctxT(t), name, "/_matrix/federation/v1/version", nil)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted certificate: %v, want a certificate error", err)
	}
}

func TestFederationClientLimitsAndErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := serveTLS(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Write([]byte(`{"pad":"` + strings.Repeat("x", 200<<10) + `"}`))
		case "/small":
			w.Write([]byte(`{"ok":true}`))
		default:
			writeError(w, newErr(http.StatusNotFound, "M_UNRECOGNIZED", "nope"))
		}
	}))
	defer stop()
	a := startNode(t, nodeOpts{})
	c, err := NewClient(ClientOptions{ServerName: a.name, Key: a.keys[0], AllowPrivate: true, RootCAs: ca(t).pool, MaxResponseBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	dest := ln.Addr().String()
	if err := c.Get(ctx, dest, "/big", nil); !errors.Is(err, ErrResponseTooLarge) {
		t.Fatalf("200 KiB response with a 64 KiB cap: %v", err)
	}
	var ok struct{ OK bool }
	if err := c.Get(ctx, dest, "/small", &ok); err != nil || !ok.OK {
		t.Fatalf("small response: %v", err)
	}
	var re *RemoteError
	if err := c.Get(ctx, dest, "/missing", nil); !errors.As(err, &re) || re.Status != 404 || re.Code != "M_UNRECOGNIZED" {
		t.Fatalf("404: %v", err)
	}
	// Streamed: a body within the limit reads whole; one over it fails
	// on the read, never ends as if complete; an error answer is a
	// RemoteError without calling read.
	read := func(path string, limit int64) (int, error) {
		n := 0
		err := c.DoStream(ctx, http.MethodGet, dest, path, nil, limit, func(r io.Reader) error {
			b, err := io.ReadAll(r)
			n = len(b)
			return err
		})
		return n, err
	}
	if n, err := read("/big", 1<<20); err != nil || n < 200<<10 {
		t.Fatalf("streamed 200 KiB with a 1 MiB limit: %d bytes, %v", n, err)
	}
	if _, err := read("/big", 100<<10); !errors.Is(err, ErrResponseTooLarge) {
		t.Fatalf("streamed 200 KiB with a 100 KiB limit: %v", err)
	}
	if _, err := read("/missing", 1<<20); !errors.As(err, &re) || re.Status != 404 {
		t.Fatalf("streamed 404: %v", err)
	}
	if err := c.Get(ctx, a.name, "/x", nil); !errors.Is(err, ErrSelf) {
		t.Fatalf("request to ourselves: %v", err)
	}
	if err := c.Get(ctx, dest, "relative", nil); err == nil {
		t.Fatal("a relative path was accepted")
	}
}

func TestFederationClientTrustCAFile(t *testing.T) {
	b := startNode(t, nodeOpts{})
	dir := t.TempDir()
	file := dir + "/ca.pem"
	if err := writeAtomic(file, ca(t).pem, 0o644); err != nil {
		t.Fatal(err)
	}
	pool, err := LoadRootCAs(file)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := config.GenerateSigningKey()
	c, err := NewClient(ClientOptions{ServerName: "me.example", Key: key, AllowPrivate: true, RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctxT(t), b.name, "/_matrix/federation/v1/version", nil); err != nil {
		t.Fatalf("with the CA from trust_ca_file: %v", err)
	}
	if err := writeAtomic(file, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadRootCAs(file); err == nil {
		t.Fatal("a file without certificates was accepted")
	}
}

// The node resolves through wellknown's resolver; IP-literal names need no
// DNS, so this runs without a nameserver.
func TestFederationClientWithWellknownResolver(t *testing.T) {
	b := startNode(t, nodeOpts{setup: echoRoutes})
	res, err := wellknown.New(wellknown.Options{Nameservers: []string{"127.0.0.1:1"}, AllowPrivate: true, RootCAs: ca(t).pool})
	if err != nil {
		t.Fatal(err)
	}
	a := startNode(t, nodeOpts{resolver: res})
	var got struct{ Origin string }
	if err := a.srv.Client.Get(ctxT(t), b.name, "/_matrix/federation/v1/test/echo", &got); err != nil || got.Origin != a.name {
		t.Fatalf("through wellknown: %+v %v", got, err)
	}
}
