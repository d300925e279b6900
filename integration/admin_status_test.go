package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"edge/edge"
	"edge/edge/config"
	"edge/edge/status"
	"edge/edge/store"
)

// `edge status` without a SERVER: the running node's health from its
// authenticated admin listener.

func TestAdminStatusCommand(t *testing.T) {
	bin := buildEdge(t)
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := config.Default("localhost")
	cfg.Listen, cfg.AdminListen = listen, admin
	cfg.RateLimits = config.RateLimits{}
	cfg.Federation.TrustedKeyServers = nil
	cfg.Log.Level = "warn"
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSigningKey(filepath.Join(dir, cfg.SigningKeyPath), key); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "edge.yaml")
	if err := config.WriteFile(cfgPath, cfg); err != nil {
		t.Fatal(err)
	}
	p := startEdge(t, bin, cfgPath, listen)

	tokenPath := filepath.Join(dir, status.AdminTokenFile)
	waitFor(t, 10*time.Second, "admin.token", func() bool {
		_, err := status.FetchNodeStatus(context.Background(), "http://"+admin, readToken(t, tokenPath))
		return err == nil
	})
	if fi, err := os.Stat(tokenPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v mode %v", err, fi.Mode())
	}

	c, _ := mautrix.NewClient(p.url, "", "")
	reg, err := c.RegisterDummy(ctxT(t), &mautrix.ReqRegister[any]{Username: "alice", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	c.SetCredentials(reg.UserID, reg.AccessToken)
	mustCreateRoom(t, c, &mautrix.ReqCreateRoom{Name: "status"})

	code, out, errOut := edgeCmd(t, bin, "status", "-c", cfgPath, "--json")
	var st status.NodeStatus
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("edge status --json: exit %d\n%s\n%s", code, out, errOut)
	}
	if st.ServerName != "localhost" || st.Version == "" || st.GoVersion == "" || st.Users != 1 || st.Rooms != 1 ||
		st.StoreSizeBytes <= 0 || st.StreamPosition == 0 || st.UptimeSeconds < 0 || time.Since(st.StartedAt) > time.Minute {
		t.Fatalf("node status: %+v", st)
	}
	names := map[string]bool{}
	for _, c := range st.Caches {
		names[c.Name] = true
		if c.HitRate < 0 || c.HitRate > 1 {
			t.Errorf("cache %s hit rate %v", c.Name, c.HitRate)
		}
	}
	if !names["event"] || !names["state"] || st.Peers == nil || len(st.Peers) != 0 {
		t.Fatalf("caches %+v peers %+v", st.Caches, st.Peers)
	}

	code, out, _ = edgeCmd(t, bin, "status", "-c", cfgPath)
	for _, want := range []string{"server localhost", "users 1, rooms 1", "caches:", "peers: none yet"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("text status (exit %d) lacks %q:\n%s", code, want, out)
		}
	}

	// The admin listener wants the token.
	for _, auth := range []string{"", "Bearer wrong"} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+admin+status.AdminStatusPath, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "users") {
			t.Fatalf("auth %q: HTTP %d %s", auth, resp.StatusCode, body)
		}
	}

	// A stale token is explained, not a stack trace.
	good := readToken(t, tokenPath)
	if err := os.WriteFile(tokenPath, []byte("stale\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = edgeCmd(t, bin, "status", "-c", cfgPath)
	if code != 1 || !strings.Contains(errOut, "refused the token") {
		t.Fatalf("stale token: exit %d\n%s%s", code, out, errOut)
	}
	if err := os.WriteFile(tokenPath, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}

	p.kill()
	code, out, errOut = edgeCmd(t, bin, "status", "-c", cfgPath)
	if code != 1 || !strings.Contains(errOut, "did not answer") {
		t.Fatalf("stopped node: exit %d\n%s%s", code, out, errOut)
	}
	noStackTrace(t, "edge status", errOut)
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestAdminStatusPeers: the peer table puts the failing destination first,
// and `edge status SERVER` reads its local view from the admin listener.
func TestAdminStatusPeers(t *testing.T) {
	ca := newFedCA(t)
	a := newFedNode(t, ca, fedOpts{})
	b := newFedNode(t, ca, fedOpts{})
	down := newFedNode(t, ca, fedOpts{stopped: true})
	if err := b.Store.Write(func(tx *store.Tx) error {
		b.Fed.Queue.SendEDUTx(tx, a.Name, fedEDU("m.test.status", map[string]any{}))
		b.Fed.Queue.SendEDUTx(tx, down.Name, fedEDU("m.test.status", map[string]any{}))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "a success to a and a failure to the stopped node", func() bool {
		return !fedQueueStatus(t, b.MetricsURL, a.Name).LastSuccess.IsZero() && fedQueueStatus(t, b.MetricsURL, down.Name).Failures > 0
	})
	srv := httptest.NewServer(b.AdminHandler("sesame"))
	t.Cleanup(srv.Close)

	if _, err := status.FetchNodeStatus(ctxT(t), srv.URL, "open"); !errors.Is(err, status.ErrAdminUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	st, err := status.FetchNodeStatus(ctxT(t), srv.URL, "sesame")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 2 || st.Peers[0].Destination != down.Name || st.Peers[1].Destination != a.Name ||
		(st.Peers[0].Trouble != "backing off" && st.Peers[0].Trouble != "failing") || st.Peers[0].LastError == "" ||
		st.Peers[1].Trouble != "ok" || st.Peers[1].SentTransactions == 0 {
		t.Fatalf("peers: %+v", st.Peers)
	}
	var text strings.Builder
	status.WriteNodeText(&text, st)
	if i, j := strings.Index(text.String(), down.Name), strings.Index(text.String(), a.Name); i < 0 || j < i {
		t.Fatalf("peer table order:\n%s", text.String())
	}

	_, port, _ := net.SplitHostPort(freeAddr(t))
	wkPort, _ := strconv.Atoi(port) // nothing answers the well-known
	rep, err := status.Inspect(ctxT(t), a.Name, status.Options{
		Nameservers: []string{startStatusDNS(t)}, RootCAs: ca.pool, AllowPrivate: true, WellKnownPort: wkPort,
		Timeout: 5 * time.Second, AdminURL: srv.URL, AdminToken: "sesame",
	})
	if err != nil {
		t.Fatal(err)
	}
	if lv := rep.LocalView; lv == nil || !lv.Known || lv.LastSuccess.IsZero() || lv.Error != "" || !rep.FederationOK {
		t.Fatalf("local view %+v, failures %+v", rep.LocalView, rep.Failures)
	}
	if c := rep.Connections[0]; !c.HTTP2 || c.HandshakeMS < 0 || c.HTTP3 == "" {
		t.Fatalf("connection: http2 %v handshake %dms http3 %q", c.HTTP2, c.HandshakeMS, c.HTTP3)
	}
}

// TestImportSynapseNode: `edge import-synapse` on the classic guide's
// homeserver.yaml writes a config that loads, and a node started from it
// serves Synapse's key under the same key ID and server name.
func TestImportSynapseNode(t *testing.T) {
	bin := buildEdge(t)
	synDir, out := t.TempDir(), filepath.Join(t.TempDir(), "edge")
	fixture, err := os.ReadFile(filepath.Join(moduleRoot(t), "edge", "synapseimport", "testdata", "homeserver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	synCfg := filepath.Join(synDir, "homeserver.yaml")
	if err := os.WriteFile(synCfg, fixture, 0o644); err != nil {
		t.Fatal(err)
	}
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSigningKey(filepath.Join(synDir, "localhost.signing.key"), key); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := edgeCmd(t, bin, "import-synapse", "--config", synCfg, "--dir", out)
	if code != 0 || !strings.Contains(stdout, key.ID) || !strings.Contains(stdout, "not carried over:") ||
		!strings.Contains(stdout, "macaroon_secret_key:") || !strings.Contains(stdout, "database (users, rooms, messages, media) is not imported") {
		t.Fatalf("import-synapse: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := edgeCmd(t, bin, "import-synapse", "--config", synCfg, "--dir", out); code != 1 || !strings.Contains(stderr, "exists") {
		t.Fatalf("second import over the first: exit %d %s", code, stderr)
	}
	if code, _, stderr := edgeCmd(t, bin, "import-synapse"); code != 2 || !strings.Contains(stderr, "--config") {
		t.Fatalf("no --config: exit %d %s", code, stderr)
	}

	cfg, err := config.Load(filepath.Join(out, "edge.yaml"))
	if err != nil {
		t.Fatalf("the imported edge.yaml does not load: %v", err)
	}
	node, err := edge.Open(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0") // not 8008: the test machine may use it
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; node.Close() })

	resp, err := http.Get("http://" + ln.Addr().String() + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var keys struct {
		ServerName string `json:"server_name"`
		VerifyKeys map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&keys); err != nil {
		t.Fatal(err)
	}
	want := base64.RawStdEncoding.EncodeToString(key.Public())
	if keys.ServerName != "localhost" || keys.VerifyKeys[key.ID].Key != want {
		t.Fatalf("key response %+v, want %s = %s", keys, key.ID, want)
	}
}
