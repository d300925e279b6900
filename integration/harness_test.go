package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"edge/edge"
	"edge/edge/config"
)

// testNode is an edge node serving on a loopback port for one test.
type testNode struct {
	*edge.Node
	URL    string
	Dir    string
	cancel context.CancelFunc
	done   chan error
}

// startNode runs a node named serverName with cfg adjusted by opts.
// Rate limits are off unless a test turns them on.
func startNode(t testing.TB, opts ...func(*config.Config)) *testNode {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default("localhost")
	cfg.Listen = ln.Addr().String()
	cfg.RateLimits = config.RateLimits{}
	cfg.Registration.SharedSecret = "test-shared-secret"
	cfg.Log.Level = "warn"
	// No notary: a test node must never reach matrix.org over the network.
	cfg.Federation.TrustedKeyServers = nil
	cfg.Federation.AllowPrivateAddresses = true
	for _, o := range opts {
		o(cfg)
	}
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSigningKey(filepath.Join(dir, cfg.SigningKeyPath), key); err != nil {
		t.Fatal(err)
	}
	if err := config.WriteFile(filepath.Join(dir, "edge.yaml"), cfg); err != nil {
		t.Fatal(err)
	}
	loaded, err := config.Load(filepath.Join(dir, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var logOut io.Writer = io.Discard
	if os.Getenv("EDGE_TEST_LOG") != "" {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	node, err := edge.Open(loaded, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &testNode{Node: node, URL: "http://" + ln.Addr().String(), Dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { tn.done <- node.Serve(ctx, ln) }()
	t.Cleanup(tn.stop)
	return tn
}

func (n *testNode) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	n.cancel = nil
	_ = n.Node.Close()
}

var userSeq atomic.Int64

// register creates a fresh user through POST /register and returns a
// logged-in mautrix client.
func (n *testNode) register(t testing.TB, name string) *mautrix.Client {
	t.Helper()
	if name == "" {
		name = fmt.Sprintf("user%d", userSeq.Add(1))
	}
	c, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "correct horse battery"})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	c.DeviceID = resp.DeviceID
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// mustCreateRoom creates a room and fails the test on error.
func mustCreateRoom(t testing.TB, c *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	resp, err := c.CreateRoom(ctxT(t), req)
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	return resp.RoomID
}
