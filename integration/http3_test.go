package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"maunium.net/go/mautrix"

	"edge/edge/config"
	"edge/edge/tlsmode"
	"edge/federation"
)

// internalNode starts a node in tls.mode internal with a CA made as
// `edge init --tls internal` makes it, and returns the CA as a pool.
func internalNode(t *testing.T, mutate func(c *config.Config)) (*tlsNode, *x509.CertPool) {
	t.Helper()
	var caFile string
	n := newTLSNode(t, "localhost", false, func(c *config.Config, dir string) {
		c.TLS.Mode = config.TLSInternal
		caFile = filepath.Join(dir, c.TLS.Internal.CACertFile)
		if _, err := tlsmode.CreateCA(caFile, filepath.Join(dir, c.TLS.Internal.CAKeyFile), c.ServerName); err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			mutate(c)
		}
	})
	n.start(t)
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	return n, pool
}

// TestTLSInternalMode: the node issues itself a certificate from the
// local CA; a client trusting the CA talks to the client API and to
// federation, one that does not is refused; the CA key is private.
func TestTLSInternalMode(t *testing.T) {
	n, pool := internalNode(t, nil)
	for _, port := range []int{n.TLS, n.Fed} {
		v, _ := getJSON(t, httpsClient(pool, "localhost", port), fmt.Sprintf("https://localhost:%d/_matrix/client/versions", port))
		if _, ok := v["versions"]; !ok {
			t.Fatalf("port %d: %v", port, v)
		}
		if _, err := served(x509.NewCertPool(), "localhost", port); err == nil {
			t.Fatalf("port %d: handshake verified without the internal CA", port)
		}
	}
	fi, err := os.Stat(filepath.Join(n.Dir, "tls-ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %o, want 600", fi.Mode().Perm())
	}
	// A CA key others can read is refused at start.
	n.stop()
	if err := os.Chmod(filepath.Join(n.Dir, "tls-ca.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(filepath.Join(n.Dir, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsmode.New(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable CA key: %v, want a chmod hint", err)
	}
}

// h3Do sends one request over HTTP/3 and returns status and body.
func h3Do(t *testing.T, rt http.RoundTripper, method, url, token string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Transport: rt, Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// TestHTTP3SameAnswers: over HTTP/3 (quic-go's client) the client API
// gives the answers it gives over HTTP/2: /versions, a login, a sync.
func TestHTTP3SameAnswers(t *testing.T) {
	n, pool := internalNode(t, nil)
	plainURL := fmt.Sprintf("http://127.0.0.1:%d", n.Plain)
	// A user with a room, made over plain HTTP.
	c, err := mautrix.NewClient(plainURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.RegisterDummy(ctxT(t), &mautrix.ReqRegister[any]{Username: "h3user", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	c.SetCredentials(reg.UserID, reg.AccessToken)
	roomID := mustCreateRoom(t, c, &mautrix.ReqCreateRoom{Name: "over quic"})

	base := fmt.Sprintf("https://localhost:%d", n.TLS)
	h2 := httpsClient(pool, "localhost", n.TLS).Transport
	h3 := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}
	t.Cleanup(func() { _ = h3.Close() })
	h3base := fmt.Sprintf("https://127.0.0.1:%d", n.TLS)

	// The TCP answer advertises h3 on the same port.
	req, _ := http.NewRequest("GET", base+"/_matrix/client/versions", nil)
	resp, err := h2.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	h2versions, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if alt := resp.Header.Get("Alt-Svc"); alt != fmt.Sprintf(`h3=":%d"; ma=86400`, n.TLS) {
		t.Fatalf("Alt-Svc %q", alt)
	}
	if resp.ProtoMajor != 2 {
		t.Fatalf("TCP answer over %s, want HTTP/2", resp.Proto)
	}

	// /versions over HTTP/3, and it says it is HTTP/3.
	h3req, _ := http.NewRequestWithContext(ctxT(t), "GET", h3base+"/_matrix/client/versions", nil)
	h3resp, err := h3.RoundTrip(h3req)
	if err != nil {
		t.Fatalf("HTTP/3: %v", err)
	}
	h3versions, _ := io.ReadAll(h3resp.Body)
	h3resp.Body.Close()
	if h3resp.ProtoMajor != 3 || h3resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP/3 answer %s %d", h3resp.Proto, h3resp.StatusCode)
	}
	if !bytes.Equal(h2versions, h3versions) {
		t.Fatalf("/versions differs:\nh2 %s\nh3 %s", h2versions, h3versions)
	}

	// A login over each.
	login := []byte(`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"h3user"},"password":"correct horse battery"}`)
	tokens := map[string]string{}
	for name, rt := range map[string]http.RoundTripper{"h2": h2, "h3": h3} {
		u := base
		if name == "h3" {
			u = h3base
		}
		status, body := h3Do(t, rt, "POST", u+"/_matrix/client/v3/login", "", login)
		var lr struct {
			UserID      string `json:"user_id"`
			AccessToken string `json:"access_token"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &lr) != nil || lr.UserID != string(reg.UserID) || lr.AccessToken == "" {
			t.Fatalf("%s login: %d %s", name, status, body)
		}
		tokens[name] = lr.AccessToken
	}
	// A bad password is refused alike.
	bad := bytes.Replace(login, []byte("correct horse"), []byte("wrong horse"), 1)
	s2, b2 := h3Do(t, h2, "POST", base+"/_matrix/client/v3/login", "", bad)
	s3, b3 := h3Do(t, h3, "POST", h3base+"/_matrix/client/v3/login", "", bad)
	if s2 != http.StatusForbidden || s3 != s2 || !bytes.Equal(b2, b3) {
		t.Fatalf("bad login: h2 %d %s, h3 %d %s", s2, b2, s3, b3)
	}

	// A sync over each: the same rooms and the same timeline.
	syncOver := func(name string, rt http.RoundTripper, u string) (rooms []string, timeline []string) {
		status, body := h3Do(t, rt, "GET", u+"/_matrix/client/v3/sync?timeout=0", tokens[name], nil)
		var sr struct {
			NextBatch string `json:"next_batch"`
			Rooms     struct {
				Join map[string]struct {
					Timeline struct {
						Events []struct {
							EventID string `json:"event_id"`
						} `json:"events"`
					} `json:"timeline"`
				} `json:"join"`
			} `json:"rooms"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &sr) != nil || sr.NextBatch == "" {
			t.Fatalf("%s sync: %d %s", name, status, body)
		}
		for id, jr := range sr.Rooms.Join {
			rooms = append(rooms, id)
			for _, ev := range jr.Timeline.Events {
				timeline = append(timeline, ev.EventID)
			}
		}
		sort.Strings(rooms)
		return rooms, timeline
	}
	r2, tl2 := syncOver("h2", h2, base)
	r3, tl3 := syncOver("h3", h3, h3base)
	if len(r2) != 1 || r2[0] != string(roomID) || !reflect.DeepEqual(r2, r3) || !reflect.DeepEqual(tl2, tl3) || len(tl3) == 0 {
		t.Fatalf("sync differs: h2 rooms %v timeline %v, h3 rooms %v timeline %v", r2, tl2, r3, tl3)
	}

	// Federation's listener speaks HTTP/3 too.
	fedReq, _ := http.NewRequestWithContext(ctxT(t), "GET", fmt.Sprintf("https://127.0.0.1:%d/_matrix/key/v2/server", n.Fed), nil)
	fedResp, err := h3.RoundTrip(fedReq)
	if err != nil {
		t.Fatalf("federation over HTTP/3: %v", err)
	}
	fedResp.Body.Close()
	if fedResp.StatusCode != http.StatusOK || fedResp.ProtoMajor != 3 {
		t.Fatalf("federation over HTTP/3: %s %d", fedResp.Proto, fedResp.StatusCode)
	}
}

// TestHTTP3Off: http3: false serves TCP only and advertises nothing.
func TestHTTP3Off(t *testing.T) {
	n, pool := internalNode(t, func(c *config.Config) { c.TLS.HTTP3 = false })
	_, resp := getJSON(t, httpsClient(pool, "localhost", n.TLS), fmt.Sprintf("https://localhost:%d/_matrix/client/versions", n.TLS))
	if alt := resp.Header.Get("Alt-Svc"); alt != "" {
		t.Fatalf("Alt-Svc %q with http3 off", alt)
	}
	h3 := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}
	defer h3.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("https://127.0.0.1:%d/_matrix/client/versions", n.TLS), nil)
	if resp, err := h3.RoundTrip(req); err == nil {
		resp.Body.Close()
		t.Fatal("HTTP/3 answered with http3: false")
	}
}

// fedH3Client is an outbound federation client logging to a buffer.
func fedH3Client(t *testing.T, ca *fedCA) (*federation.Client, *lockedBuffer) {
	t.Helper()
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	c, err := federation.NewClient(federation.ClientOptions{ServerName: "h3-client.test", Key: key, RootCAs: ca.pool,
		AllowPrivate: true, Timeout: 15 * time.Second,
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, logs
}

// TestFederationClientHTTP3: the federation client learns HTTP/3 from a
// peer's Alt-Svc and uses it for the next requests.
func TestFederationClientHTTP3(t *testing.T) {
	ca := newFedCA(t)
	b := newFedNode(t, ca, fedOpts{})
	c, logs := fedH3Client(t, ca)
	for i, want := range []string{"proto=HTTP/2.0", "proto=HTTP/3.0", "proto=HTTP/3.0"} {
		var keys map[string]any
		if err := c.Get(ctxT(t), b.Name, "/_matrix/key/v2/server", &keys); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if keys["server_name"] != b.Name {
			t.Fatalf("request %d: %v", i, keys)
		}
		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		if last := lines[len(lines)-1]; !strings.Contains(last, want) {
			t.Fatalf("request %d: want %s, log:\n%s", i, want, logs.String())
		}
	}
}

// TestFederationClientHTTP3Fallback: a peer advertising HTTP/3 it does
// not serve costs one failed attempt; the request goes over TCP and the
// destination stays on TCP afterwards.
func TestFederationClientHTTP3Fallback(t *testing.T) {
	ca := newFedCA(t)
	dead := tlsTestPort(t) // no UDP listener there
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.tlsCert(t, "127.0.0.1")}},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Alt-Svc", fmt.Sprintf(`h3=":%d"; ma=3600`, dead))
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"server_name":"liar"}`))
		}),
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	c, logs := fedH3Client(t, ca)
	for i := range 3 {
		var out map[string]any
		if err := c.Get(ctxT(t), ln.Addr().String(), "/_matrix/key/v2/server", &out); err != nil || out["server_name"] != "liar" {
			t.Fatalf("request %d: %v %v", i, out, err)
		}
	}
	if n := strings.Count(logs.String(), "HTTP/3 failed; using TCP"); n != 1 {
		t.Fatalf("%d HTTP/3 failures logged, want 1 (then TCP only):\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "proto=HTTP/3.0") {
		t.Fatal("a request went over HTTP/3 to a peer without it")
	}
}
