package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"edge/edge"
	"edge/edge/config"
)

// A node configured the way the container image is (server name from the
// environment, key generated at first start) answers `edge health -c`.
func TestHealthAgainstNode(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("EDGE_T_SERVER_NAME", "hs1")
	t.Setenv("EDGE_T_LISTEN", ln.Addr().String())
	path := filepath.Join(dir, "edge.yaml")
	yaml := "server_name: ${EDGE_T_SERVER_NAME}\nlisten: ${EDGE_T_LISTEN}\nadmin_listen: \"\"\nsigning_key_generate: true\n"
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "hs1" {
		t.Fatalf("server_name %q, want hs1 from the environment", cfg.ServerName)
	}
	if _, made, err := cfg.EnsureSigningKey(); err != nil || !made {
		t.Fatalf("no key generated: %v", err)
	}
	node, err := edge.Open(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Serve(ctx, ln) }()
	if err := cmdHealth([]string{"-c", path}); err != nil {
		t.Fatalf("health of a running node: %v", err)
	}
	if err := cmdHealth([]string{"--url", "http://" + ln.Addr().String() + "/"}); err != nil {
		t.Fatalf("health by URL: %v", err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("node did not shut down")
	}
	if err := cmdHealth([]string{"-c", path, "--timeout", "2s"}); err == nil {
		t.Fatal("health passed with the node stopped")
	}
}

func TestHealthStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/client/versions" {
			http.NotFound(w, r)
			return
		}
		http.Error(w, "starting", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	if err := cmdHealth([]string{"--url", srv.URL}); err == nil {
		t.Fatal("a 503 counted as healthy")
	}
	if err := cmdHealth([]string{"-c", filepath.Join(t.TempDir(), "missing.yaml")}); err == nil {
		t.Fatal("a missing config counted as healthy")
	}
}

func TestListenURL(t *testing.T) {
	for in, want := range map[string]string{
		"[::]:8008":      "http://localhost:8008",
		"0.0.0.0:80":     "http://localhost:80",
		"127.0.0.1:9000": "http://127.0.0.1:9000",
		"[::1]:8008":     "http://[::1]:8008",
	} {
		if got := listenURL(&config.Config{Listen: in}); got != want {
			t.Errorf("listenURL(%q) = %q, want %q", in, got, want)
		}
	}
}
