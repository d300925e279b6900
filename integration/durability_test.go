package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// moduleRoot finds the directory of edge's go.mod above the working directory.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(data, []byte("module edge\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod of module edge not found above the working directory")
		}
		dir = parent
	}
}

// buildEdge builds the edge binary as a user would get it.
func buildEdge(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "edge")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/edge")
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), "GOEXPERIMENT=jsonv2", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/edge: %v\n%s", err, out)
	}
	return bin
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// edgeCmd runs the binary to completion and returns its exit code and output.
func edgeCmd(t testing.TB, bin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Stdin = strings.NewReader("")
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("edge %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// noStackTrace fails if output looks like a Go panic.
func noStackTrace(t testing.TB, what, output string) {
	t.Helper()
	if strings.Contains(output, "goroutine ") || strings.Contains(output, "panic:") || strings.Contains(output, ".go:") {
		t.Errorf("%s printed a Go stack trace:\n%s", what, output)
	}
}

// edgeProc is a running `edge run`.
type edgeProc struct {
	cmd    *exec.Cmd
	stderr *lockedWriter
	url    string
	done   chan struct{}
}

// startEdge runs `edge run -c cfg` and waits until it answers on addr.
func startEdge(t testing.TB, bin, cfg, addr string) *edgeProc {
	t.Helper()
	p := &edgeProc{cmd: exec.Command(bin, "run", "-c", cfg), stderr: &lockedWriter{w: &bytes.Buffer{}}, url: "http://" + addr, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	c, _ := mautrix.NewClient(p.url, "", "")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Versions(ctx)
		cancel()
		if err == nil {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("edge run exited early:\n%s", p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge run not answering at %s: %v\n%s", p.url, err, p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL: no shutdown code runs, as in a power cut.
func (p *edgeProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// String reads what was written so far; the process may still be writing.
func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// initNode runs `edge init` in a fresh directory and returns the config path and address.
func initNode(t testing.TB, bin string) (cfg, addr string) {
	t.Helper()
	dir := t.TempDir()
	addr = freeAddr(t)
	code, out, errOut := edgeCmd(t, bin, "init", "--server-name", "localhost", "--dir", dir, "--listen", addr)
	if code != 0 {
		t.Fatalf("edge init: exit %d\n%s%s", code, out, errOut)
	}
	return filepath.Join(dir, "edge.yaml"), addr
}

func TestDurability(t *testing.T) {
	bin := buildEdge(t)

	t.Run("acknowledged events survive SIGKILL", func(t *testing.T) {
		cfg, addr := initNode(t, bin)
		p := startEdge(t, bin, cfg, addr)
		ctx := ctxT(t)
		alice, err := mautrix.NewClient(p.url, "", "")
		if err != nil {
			t.Fatal(err)
		}
		reg, err := alice.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: testPassword})
		if err != nil {
			t.Fatal(err)
		}
		alice.SetCredentials(reg.UserID, reg.AccessToken)
		roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "durable"})
		first := sendText(t, alice, roomID, "before the crash")
		// Concurrent sends share commits; each acknowledged one must survive.
		var mu sync.Mutex
		acked := []id.EventID{first}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := alice.SendText(ctx, roomID, fmt.Sprint("burst ", i))
				if err == nil {
					mu.Lock()
					acked = append(acked, resp.EventID)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		p.kill()

		p = startEdge(t, bin, cfg, addr)
		// The session survived too: the old token still works.
		if who, err := alice.Whoami(ctx); err != nil || who.UserID != reg.UserID {
			t.Fatalf("whoami after restart: %v %v", who, err)
		}
		msgs, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatal(err)
		}
		got := eventIDs(msgs.Chunk)
		for _, want := range acked {
			if !slices.Contains(got, want) {
				t.Errorf("acknowledged event %s lost in the crash (/messages has %d events)", want, len(got))
			}
		}
		sync, err := alice.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		jr := sync.Rooms.Join[roomID]
		if jr == nil || len(msgs.Chunk) == 0 || !slices.Contains(eventIDs(jr.Timeline.Events), msgs.Chunk[0].ID) {
			t.Fatalf("sync after restart lacks the newest event: %+v", sync.Rooms)
		}
		found := false
		for from := ""; ; {
			page, err := alice.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 5)
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(eventIDs(page.Chunk), first) {
				found = true
			}
			if page.End == "" {
				break
			}
			from = page.End
		}
		if !found {
			t.Error("first message not reachable by paging after restart")
		}
		// And the node keeps working.
		sendText(t, alice, roomID, "after the crash")
		if strings.Contains(p.stderr.String(), "panic") {
			t.Errorf("restarted node logged a panic:\n%s", p.stderr)
		}
	})

	t.Run("register on a stopped node", func(t *testing.T) {
		cfg, addr := initNode(t, bin)
		code, out, errOut := edgeCmd(t, bin, "register", "alice", "--password", testPassword, "-c", cfg)
		if code != 0 || !strings.Contains(out, "@alice:localhost") {
			t.Fatalf("edge register: exit %d\n%s%s", code, out, errOut)
		}
		code, _, errOut = edgeCmd(t, bin, "register", "alice", "--password", testPassword, "-c", cfg)
		if code == 0 || !strings.Contains(errOut, "already exists") {
			t.Errorf("registering alice twice: exit %d %s", code, errOut)
		}
		noStackTrace(t, "edge register (taken)", errOut)
		code, _, errOut = edgeCmd(t, bin, "register", "bob", "--password", "short", "-c", cfg)
		if code == 0 || !strings.Contains(errOut, "password") {
			t.Errorf("weak password: exit %d %s", code, errOut)
		}
		p := startEdge(t, bin, cfg, addr)
		c := &testNode{URL: p.url}
		loginPassword(t, c, "alice", testPassword)
	})

	t.Run("register on a running node", func(t *testing.T) {
		cfg, addr := initNode(t, bin)
		p := startEdge(t, bin, cfg, addr)
		code, out, errOut := edgeCmd(t, bin, "register", "@carol:localhost", "--password", testPassword, "-c", cfg)
		if code != 0 || !strings.Contains(out, "@carol:localhost") {
			t.Fatalf("edge register against a running node: exit %d\n%s%s", code, out, errOut)
		}
		c := &testNode{URL: p.url}
		carol := loginPassword(t, c, "carol", testPassword)
		if who, err := carol.Whoami(ctxT(t)); err != nil || who.UserID != "@carol:localhost" {
			t.Errorf("whoami: %v %v", who, err)
		}
		code, _, errOut = edgeCmd(t, bin, "register", "carol", "--password", testPassword, "-c", cfg)
		if code == 0 || !strings.Contains(errOut, "taken") && !strings.Contains(errOut, "exists") && !strings.Contains(errOut, "in use") {
			t.Errorf("registering carol twice online: exit %d %s", code, errOut)
		}
		noStackTrace(t, "edge register (online, taken)", errOut)
	})

	t.Run("bad config", func(t *testing.T) {
		dir := t.TempDir()
		missing := filepath.Join(dir, "nope.yaml")
		code, _, errOut := edgeCmd(t, bin, "run", "-c", missing)
		if code == 0 || !strings.Contains(errOut, missing) || !strings.Contains(errOut, "edge init") {
			t.Errorf("missing config: exit %d %q", code, errOut)
		}
		noStackTrace(t, "edge run (missing config)", errOut)

		cfg, _ := initNode(t, bin)
		good, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, find, replace, field string
		}{
			{"listen", "listen: ", "listen: \"no port here\"\n#", "listen"},
			{"server name", "server_name: ", "server_name: \"bad name!\"\n#", "server_name"},
			{"request limit", "max_request_bytes: ", "max_request_bytes: 10\n#", "limits.max_request_bytes"},
			{"room version", "default_version: ", "default_version: \"99\"\n#", "rooms.default_version"},
			{"log level", "level: ", "level: loud\n#", "log.level"},
			{"wrong type", "login_burst: ", "login_burst: many\n#", "login_burst"},
			{"yaml syntax", "server_name: ", "server_name: [unclosed\n#", "line"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				i := bytes.Index(good, []byte(tc.find))
				if i < 0 {
					t.Fatalf("edge.yaml from init has no %q", tc.find)
				}
				bad := append(append(append([]byte{}, good[:i]...), tc.replace...), good[i+len(tc.find):]...)
				path := filepath.Join(filepath.Dir(cfg), "bad.yaml")
				if err := os.WriteFile(path, bad, 0o600); err != nil {
					t.Fatal(err)
				}
				code, _, errOut := edgeCmd(t, bin, "run", "-c", path)
				if code == 0 {
					t.Fatalf("edge run with a bad %s exited 0", tc.name)
				}
				if !strings.Contains(errOut, tc.field) {
					t.Errorf("edge run with a bad %s does not name %q:\n%s", tc.name, tc.field, errOut)
				}
				noStackTrace(t, "edge run (bad "+tc.name+")", errOut)
			})
		}

		// A valid config whose signing key is gone names the key setting.
		if err := os.Remove(filepath.Join(filepath.Dir(cfg), "signing.key")); err != nil {
			t.Fatal(err)
		}
		code, _, errOut = edgeCmd(t, bin, "run", "-c", cfg)
		if code == 0 || !strings.Contains(errOut, "signing_key_path") {
			t.Errorf("missing signing key: exit %d %q", code, errOut)
		}
		noStackTrace(t, "edge run (missing key)", errOut)
	})
}
