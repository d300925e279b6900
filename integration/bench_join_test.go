package integration

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"edge/edge/edsig"
	"edge/edge/room"
	"edge/edge/store"
)

// BenchmarkJoinLargeRoom: a full join of a room with many members
// (EDGE_BENCH_JOIN_STATE, default 100,000 member events, as in the rooms
// where joins hurt) served by a resident edge node
// on loopback. The joining node is the edge binary in its own process, so
// its peak RSS (VmHWM) is its own. Reported beside the join's wall time:
// the ed25519 bound, the time to check one signature per event of the
// answer on every core — no join can be faster than that.
//
// Then a faster (partial-state) join of the same room by another node:
// the time until its user's /sync shows the room's timeline.
//
// Run it alone: go test -tags goolm -run XXX -bench JoinLargeRoom -benchtime 1x ./integration/
func BenchmarkJoinLargeRoom(b *testing.B) {
	size := 100_000
	if v, err := strconv.Atoi(os.Getenv("EDGE_BENCH_JOIN_STATE")); err == nil && v > 0 {
		size = v
	}
	ca := newRFCA(b)
	a := startRFNode(b, ca)
	alice := a.register(b, "alice")
	roomID := mustCreateRoom(b, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "big", RoomVersion: "10"})
	start := time.Now()
	fillState(b, a, roomID, size)
	b.Logf("resident room: %d members joined in %v", size, time.Since(start).Round(time.Millisecond))

	bound, boundCPU, edsigFloor := ed25519Bound(b, a, roomID)
	bin := buildEdge(b)
	b.ResetTimer()
	var wall, cpu time.Duration
	var peakKB int64
	for range b.N {
		b.StopTimer()
		joiner := startJoiner(b, bin, ca, false)
		bob := joiner.register(b)
		b.StartTimer()
		t0 := time.Now()
		cpu0 := procCPU(b, joiner.proc.cmd.Process.Pid) + selfCPU()
		if _, err := bob.JoinRoom(context.Background(), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			b.Fatalf("join: %v\n%s", err, tail(joiner.proc.stderr.String(), 20))
		}
		wall += time.Since(t0)
		cpu += procCPU(b, joiner.proc.cmd.Process.Pid) + selfCPU() - cpu0
		b.StopTimer()
		peakKB = max(peakKB, vmHWM(b, joiner.proc.cmd.Process.Pid))
		// The joiner's own breakdown of the join (its stderr is copied
		// from a pipe, so the line may lag the HTTP answer a little).
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if i := strings.Index(joiner.proc.stderr.String(), `msg="joined a room"`); i >= 0 {
				line, _, _ := strings.Cut(joiner.proc.stderr.String()[i:], "\n")
				b.Log(line)
				break
			}
		}
		// Left running: its join is in the room's state now, and a
		// later joiner checks its signature with its key.
		b.StartTimer()
	}
	b.StopTimer()
	per := wall / time.Duration(b.N)
	b.ReportMetric(float64(per.Milliseconds()), "join-ms")
	b.ReportMetric(float64(bound.Milliseconds()), "ed25519-bound-ms")
	b.ReportMetric(float64(per)/float64(bound), "join/bound")
	b.ReportMetric(float64(edsigFloor.Milliseconds()), "edsig-floor-ms")
	b.ReportMetric(float64(per)/float64(edsigFloor), "join/edsig-floor")
	b.ReportMetric(float64(peakKB)/1024, "joiner-peak-RSS-MiB")
	// CPU time, joiner and resident together, against the bound's: on a
	// machine busy with other work the wall-time ratio drifts, this not.
	b.ReportMetric(float64(cpu/time.Duration(b.N))/float64(boundCPU), "join-cpu/bound-cpu")

	// A faster (partial-state) join of the same room: the time until the
	// joining user's /sync shows the room's timeline.
	joiner := startJoiner(b, bin, ca, true)
	bob := joiner.register(b)
	t0 := time.Now()
	if _, err := bob.JoinRoom(context.Background(), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		b.Fatalf("partial join: %v\n%s", err, tail(joiner.proc.stderr.String(), 20))
	}
	for {
		// Lazy-loading members, as Element syncs: an eager sync leaves a
		// partial-state room out until its resync ends (as Synapse does).
		resp, err := bob.SyncRequest(context.Background(), 0, "", `{"room":{"state":{"lazy_load_members":true}}}`, false, "")
		if err != nil {
			b.Fatal(err)
		}
		if jr, ok := resp.Rooms.Join[roomID]; ok && len(jr.Timeline.Events) > 0 {
			break
		}
		if time.Since(t0) > 5*time.Minute {
			b.Fatal("the partially joined room never showed a timeline event")
		}
	}
	b.ReportMetric(float64(time.Since(t0).Milliseconds()), "partial-first-event-ms")
	b.ReportMetric(float64(vmHWM(b, joiner.proc.cmd.Process.Pid))/1024, "partial-joiner-RSS-MiB")
	// Then until the resync has the whole state (the joiner's metrics
	// count no partial-state room; an eager sync, which shows the room
	// only then, would render its 100k members and be the peak). The
	// joiner's peak is the resync's.
	for {
		resp, err := http.Get(joiner.metrics + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "\nedge_partial_state_rooms 0\n") {
			break
		}
		if time.Since(t0) > 10*time.Minute {
			b.Fatal("the partially joined room's resync never ended")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.ReportMetric(float64(time.Since(t0).Milliseconds()), "partial-full-state-ms")
	b.ReportMetric(float64(vmHWM(b, joiner.proc.cmd.Process.Pid))/1024, "resync-joiner-peak-RSS-MiB")
	joiner.proc.kill()
}

// fillState joins count members of node n's server to the room, straight
// through the room service (registering 100k accounts would time password
// hashing), in transactions of 2,000.
func fillState(b testing.TB, n *rfNode, roomID id.RoomID, count int) {
	b.Helper()
	content := json.RawMessage(`{"membership":"join"}`)
	for done := 0; done < count; {
		batch := min(2000, count-done)
		err := n.Store.Write(func(tx *store.Tx) error {
			for i := range batch {
				u := fmt.Sprintf("@m%06d:%s", done+i, n.Name)
				if _, err := n.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &u, Sender: u, Content: content}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		done += batch
	}
}

// ed25519Bound times one ed25519 verification per event of the room's
// state and auth chain — the events a full join's answer carries — spread
// over every core, with crypto/ed25519 (wall and CPU time) and with edsig,
// which edge uses (floor). Messages are the events' own bytes;
// verification cost barely depends on their length.
func ed25519Bound(b *testing.B, n *rfNode, roomID id.RoomID) (wall, cpu, floor time.Duration) {
	b.Helper()
	var msgs [][]byte
	err := n.Store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID.String())
		if err != nil {
			return err
		}
		st, err := n.Rooms.State(tx, r.State)
		if err != nil {
			return err
		}
		evs, err := n.Rooms.StateEvents(tx, st)
		if err != nil {
			return err
		}
		chain, err := n.Rooms.AuthChain(tx, evs)
		if err != nil {
			return err
		}
		for _, ev := range append(evs, chain...) {
			msgs = append(msgs, ev.Raw)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	sigs := make([][]byte, len(msgs))
	for i, m := range msgs {
		sigs[i] = ed25519.Sign(priv, m)
	}
	workers := runtime.GOMAXPROCS(0)
	verifyAll := func(verify func(pub ed25519.PublicKey, msg, sig []byte) bool) {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < len(msgs); i += workers {
					if !verify(pub, msgs[i], sigs[i]) {
						panic("bad signature")
					}
				}
			})
		}
		wg.Wait()
	}
	// The same checks through edsig, which edge uses: its floor, for
	// comparison (it verifies with precomputed multiples of the key).
	for range 300 {
		edsig.Verify(pub, msgs[0], sigs[0])
	}
	start := time.Now()
	verifyAll(edsig.Verify)
	floor = time.Since(start)
	b.Logf("the same through edsig: %v", floor.Round(time.Millisecond))
	start, cpu0 := time.Now(), selfCPU()
	verifyAll(ed25519.Verify)
	d, c := time.Since(start), selfCPU()-cpu0
	b.Logf("ed25519 bound: %d signatures on %d cores in %v (CPU %v)", len(msgs), workers, d.Round(time.Millisecond), c.Round(time.Millisecond))
	return d, c, floor
}

// selfCPU is this process's CPU time so far (user and system).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is process pid's CPU time so far, from /proc/pid/stat.
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command (which may hold spaces) end with ')'.
	_, rest, _ := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
}

// joinerNode is an edge binary in its own process with a TLS federation
// listener trusted by the test CA.
type joinerNode struct {
	proc   *edgeProc
	name   string
	client string
	// metrics is its metrics_listen base URL.
	metrics string
}

func startJoiner(b *testing.B, bin string, ca *rfCA, fasterJoins bool) *joinerNode {
	b.Helper()
	dir := b.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "fed.crt"), filepath.Join(dir, "fed.key"), filepath.Join(dir, "ca.pem")
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.leaf.PrivateKey)
	if err != nil {
		b.Fatal(err)
	}
	for path, data := range map[string][]byte{
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.leaf.Certificate[0]}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		caFile:   ca.pem,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	fed, client := freeAddr(b), freeAddr(b)
	code, out, errOut := edgeCmd(b, bin, "init", "--server-name", fed, "--dir", dir, "--listen", client,
		"--federation-listen", fed, "--tls-cert", certFile, "--tls-key", keyFile, "--trust-ca", caFile, "--allow-private-federation")
	if code != 0 {
		b.Fatalf("edge init: exit %d\n%s%s", code, out, errOut)
	}
	// Benchmarks measure the join, not the rate limiter.
	cfg := filepath.Join(dir, "edge.yaml")
	data, err := os.ReadFile(cfg)
	if err != nil {
		b.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "register_per_second: 0.2", "register_per_second: 0")
	metrics := freeAddr(b)
	text = strings.ReplaceAll(text, `metrics_listen: ""`, "metrics_listen: "+metrics)
	if !fasterJoins {
		text = strings.ReplaceAll(text, "faster_joins: true", "faster_joins: false")
	}
	data = []byte(text)
	if err := os.WriteFile(cfg, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return &joinerNode{proc: startEdge(b, bin, cfg, client), name: fed, client: "http://" + client, metrics: "http://" + metrics}
}

func (j *joinerNode) register(b *testing.B) *mautrix.Client {
	b.Helper()
	c, err := mautrix.NewClient(j.client, "", "")
	if err != nil {
		b.Fatal(err)
	}
	resp, err := c.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: "bob", Password: "correct horse battery"})
	if err != nil {
		b.Fatal(err)
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	return c
}

// vmHWM reads a process's peak resident set size in KiB.
func vmHWM(b *testing.B, pid int) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	b.Fatal("no VmHWM in /proc status")
	return 0
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
