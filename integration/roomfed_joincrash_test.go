package integration

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"edge/edge/config"
	"edge/edge/roomfed"
	"edge/edge/store"
)

// TestRoomFedJoinCrashSwept: a join whose process dies after chunks of the
// answer were committed (unindexed records, no room yet) leaves no garbage:
// the next start deletes those records, keeps every other event, and the
// room can be joined again.
func TestRoomFedJoinCrashSwept(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca)
	fullJoin := func(c *config.Config) { c.Federation.FasterJoins = false }
	b := startRFNode(t, ca, fullJoin)
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, body := range []string{"one", "two", "three"} {
		if _, err := alice.SendText(ctxT(t), roomID, body); err != nil {
			t.Fatal(err)
		}
	}
	// What B holds before the join, which the sweep must keep: a room of
	// its own and its events.
	bob := b.register(t, "bob")
	own := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	sent, err := bob.SendText(ctxT(t), own, "mine")
	if err != nil {
		t.Fatal(err)
	}
	ownCreate, _ := rfStateEvent(t, b, own, "m.room.create", "")
	keep := []string{sent.EventID.String(), ownCreate.ID}

	// Two events a chunk: the answer (a handful of events) takes three.
	// After the second chunk's commit the process "dies": B's database is
	// closed under the join, so nothing after that moment reaches the disk
	// (the join's failure cleanup included), as with kill -9.
	roomfed.JoinChunk = 2
	var mu sync.Mutex
	var stored []uint64
	chunks := 0
	crashed, release := make(chan struct{}), make(chan struct{})
	roomfed.JoinChunkStored = func(_ uint64, nids []uint64) {
		mu.Lock()
		stored = append(stored, nids...)
		chunks++
		n := chunks
		mu.Unlock()
		if n == 2 {
			close(crashed)
			<-release
		}
	}
	t.Cleanup(func() { roomfed.JoinChunk, roomfed.JoinChunkStored = 2000, nil })
	joined := make(chan error, 1)
	go func() {
		_, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
		joined <- err
	}()
	select {
	case <-crashed:
	case err := <-joined:
		t.Fatalf("the join ended before its second chunk was stored: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("timed out waiting for the join's second chunk")
	}
	if err := b.Store.Close(); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-joined; err == nil {
		t.Fatal("the join succeeded on a closed database")
	}
	b.stop()
	roomfed.JoinChunkStored = nil
	mu.Lock()
	garbage := append([]uint64(nil), stored...)
	mu.Unlock()
	if len(garbage) != 4 {
		t.Fatalf("%d records stored before the crash, want two chunks of 2", len(garbage))
	}

	// The crash left the records on disk (read without edge, which would
	// sweep them).
	dbPath := filepath.Join(b.Dir, "edge.db")
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	_ = db.View(func(tx *bolt.Tx) error {
		events := tx.Bucket([]byte("eventnid_event"))
		for _, nid := range garbage {
			if events != nil && events.Get(u64Key(nid)) != nil {
				left++
			}
		}
		return nil
	})
	db.Close()
	if left != len(garbage) {
		t.Fatalf("the crash left %d of the %d records stored on disk", left, len(garbage))
	}

	// Restart on the same database (under a new listener, hence a new
	// server name: what B stored stays as it was).
	c := startRFNode(t, ca, fullJoin, func(cfg *config.Config) { cfg.DatabasePath = dbPath })
	if c.Store.Swept < len(garbage) {
		t.Errorf("the restart swept %d records, want at least %d", c.Store.Swept, len(garbage))
	}
	_ = c.Store.View(func(tx *store.Tx) error {
		for _, nid := range garbage {
			if _, err := tx.Event(nid); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("record %d of the crashed join survived the restart (%v)", nid, err)
			}
		}
		for _, id := range keep {
			if _, err := tx.EventByID(id); err != nil {
				t.Errorf("%s lost by the sweep: %v", id, err)
			}
		}
		if n := tx.PendingRecords(); n != 0 {
			t.Errorf("%d records still noted pending", n)
		}
		return nil
	})

	// A later join of the same room works (its records chunked too).
	carol := c.register(t, "carol")
	if _, err := carol.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("joining again after the crash: %v", err)
	}
	msgs, err := carol.Messages(ctxT(t), roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range msgs.Chunk {
		if ev.Type == event.StateMember && ev.GetStateKey() == carol.UserID.String() {
			found = true
		}
	}
	if !found {
		t.Error("carol's join is not in the room's history after joining again")
	}
	if err := c.Store.View(func(tx *store.Tx) error {
		_, err := tx.Room(roomID.String())
		return err
	}); err != nil {
		t.Fatalf("the room after joining again: %v", err)
	}
	_ = c.Store.View(func(tx *store.Tx) error {
		if n := tx.PendingRecords(); n != 0 {
			t.Errorf("%d records still noted pending after a join that succeeded", n)
		}
		return nil
	})
}

func u64Key(v uint64) []byte {
	b := make([]byte, 8)
	for i := range 8 {
		b[7-i] = byte(v >> (8 * i))
	}
	return b
}

// TestRoomFedJoinKilledSwept: the same crash with a real kill. A hostile
// resident pads its send_join answer (4100 validly signed tiny events:
// two chunks and some) and withholds its last byte; once the joining edge
// process has logged both chunks stored, it gets SIGKILL. On restart it
// deletes those records, keeps its other events, and joins the room
// again (unpadded).
func TestRoomFedJoinKilledSwept(t *testing.T) {
	bin := buildEdge(t)
	ca := newRFCA(t)
	st := &staller{stall: "/_matrix/federation/v2/send_join/", release: make(chan struct{})}
	a := startRFNodeWrapped(t, ca, st.wrap)
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	st.forgeExtra(t, a, roomID.String(), alice.UserID.String(), 4100)

	cfgPath, addr, dbPath := rfProcConfig(t, ca, false)
	p := startEdge(t, bin, cfgPath, addr)
	bob := rfProcUser(t, p, "bob")
	own := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	mine := sendText(t, bob, own, "mine")

	st.on.Store(true)
	go func() {
		_, _ = bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
	}()
	waitFor(t, 60*time.Second, "the joining process to store two chunks", func() bool {
		return strings.Count(p.stderr.String(), "events=2000 stored=") >= 2
	})
	p.kill()
	st.on.Store(false)
	close(st.release)

	// Two chunks of 2000, a few of them the room's own events.
	if n := fillerRecords(t, dbPath); n < 3950 {
		t.Fatalf("the kill left %d records of the padding on disk, want nearly the two chunks' 4000", n)
	}

	// The restart sweeps them; the node's own events stay, and the join
	// succeeds this time.
	p = startEdge(t, bin, cfgPath, addr)
	if !strings.Contains(p.stderr.String(), "deleted the stored events of joins left unfinished") {
		t.Errorf("the restart did not report sweeping the killed join's records:\n%s", p.stderr)
	}
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("joining again after the kill: %v", err)
	}
	if _, err := bob.SendText(ctxT(t), roomID, "back"); err != nil {
		t.Fatalf("sending in the room joined after the kill: %v", err)
	}
	msgs, err := bob.Messages(ctxT(t), own, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(eventIDs(msgs.Chunk), mine) {
		t.Error("the node's own message is gone after the sweep")
	}
	p.kill()
	if n := fillerRecords(t, dbPath); n != 0 {
		t.Errorf("%d records of the killed join's padding survived the restart", n)
	}
	if strings.Contains(p.stderr.String(), "panic") {
		t.Errorf("the restarted node logged a panic:\n%s", p.stderr)
	}
}

// staller is an inflater whose padded answer of requests under stall
// stops before its last byte, until released: the joiner has every event
// but cannot finish. Stalling the resync's /state, it leaves the
// send_join answer unpadded.
type staller struct {
	inflater
	stall   string
	release chan struct{}
}

func (s *staller) wrap(h http.Handler) http.Handler {
	inner := s.inflater.wrap(h)
	const sendJoin = "/_matrix/federation/v2/send_join/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.stall != sendJoin && strings.HasPrefix(r.URL.Path, sendJoin) {
			h.ServeHTTP(w, r)
			return
		}
		if !s.on.Load() || !strings.HasPrefix(r.URL.Path, s.stall) {
			inner.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body[:len(body)-1])
		http.NewResponseController(w).Flush()
		select {
		case <-s.release:
		case <-r.Context().Done():
		}
	})
}

// fillerRecords counts the event records of the database at path (read
// without edge, which would sweep) holding a padding event.
func fillerRecords(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	_ = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("eventnid_event"))
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			if bytes.Contains(v, []byte(`"filler `)) {
				n++
			}
			return nil
		})
	})
	return n
}

func writePEM(t *testing.T, path, kind string, der []byte, isPEM bool) {
	t.Helper()
	out := der
	if !isPEM {
		out = pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rfNoPendingRecords fails unless no join or state fetch of the nodes has
// records noted unindexed (store.Tx.NotePendingRecords).
func rfNoPendingRecords(t *testing.T, nodes ...*rfNode) {
	t.Helper()
	for _, n := range nodes {
		var pending uint64
		_ = n.Store.View(func(tx *store.Tx) error { pending = tx.PendingRecords(); return nil })
		if pending != 0 {
			t.Errorf("%s: %d records still noted pending", n.Name, pending)
		}
	}
}

// rfProcConfig writes the configuration of an edge process federating
// with the rfCA's nodes, serving federation over TLS under the name
// 127.0.0.1:PORT, and returns its path, its client listener's address and
// its database's path.
func rfProcConfig(t *testing.T, ca *rfCA, fasterJoins bool) (cfgPath, addr, dbPath string) {
	t.Helper()
	dir := t.TempDir()
	name := freeAddr(t)
	addr = freeAddr(t)
	cfg := config.Default(name)
	cfg.Listen = addr
	cfg.FederationListen = name
	cfg.AdminListen = freeAddr(t)
	cfg.RateLimits = config.RateLimits{}
	cfg.Log.Level = "debug"
	cfg.Federation.TrustCAFile = filepath.Join(dir, "ca.pem")
	cfg.Federation.AllowPrivateAddresses = true
	cfg.Federation.TrustedKeyServers = nil
	cfg.Federation.FasterJoins = fasterJoins
	cfg.TLSCertFile, cfg.TLSKeyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePEM(t, cfg.Federation.TrustCAFile, "CERTIFICATE", ca.pem, true)
	writePEM(t, cfg.TLSCertFile, "CERTIFICATE", ca.leaf.Certificate[0], false)
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, cfg.TLSKeyFile, "PRIVATE KEY", keyDER, false)
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSigningKey(filepath.Join(dir, cfg.SigningKeyPath), key); err != nil {
		t.Fatal(err)
	}
	cfgPath = filepath.Join(dir, "edge.yaml")
	if err := config.WriteFile(cfgPath, cfg); err != nil {
		t.Fatal(err)
	}
	return cfgPath, addr, filepath.Join(dir, cfg.DatabasePath)
}

// rfProcUser registers name on the edge process p.
func rfProcUser(t *testing.T, p *edgeProc, name string) *mautrix.Client {
	t.Helper()
	c, err := mautrix.NewClient(p.url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.RegisterDummy(ctxT(t), &mautrix.ReqRegister[any]{Username: name, Password: testPassword})
	if err != nil {
		t.Fatal(err)
	}
	c.SetCredentials(reg.UserID, reg.AccessToken)
	return c
}

// TestRoomFedResyncKilledSwept: a faster join's resync killed while it
// stores the /state answer (a state fetch: its records go under the
// existing room's NID, never indexed) leaves no garbage either: the
// restart sweeps them, keeps the partial state's events, and the resumed
// resync completes the room.
func TestRoomFedResyncKilledSwept(t *testing.T) {
	bin := buildEdge(t)
	ca := newRFCA(t)
	st := &staller{stall: "/_matrix/federation/v1/state/", release: make(chan struct{})}
	a := startRFNodeWrapped(t, ca, st.wrap)
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	hello := sendText(t, alice, roomID, "hello")
	st.forgeExtra(t, a, roomID.String(), alice.UserID.String(), 4100)

	cfgPath, addr, dbPath := rfProcConfig(t, ca, true)
	p := startEdge(t, bin, cfgPath, addr)
	bob := rfProcUser(t, p, "bob")
	own := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	mine := sendText(t, bob, own, "mine")

	// The padded /state_ids makes the resync fetch /state, which stalls
	// once all its events are sent.
	st.on.Store(true)
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("the faster join: %v", err)
	}
	// Full chunks: the send_join answer's chunk is a few events.
	waitFor(t, 60*time.Second, "the resync to store two chunks", func() bool {
		return strings.Count(p.stderr.String(), "events=2000 stored=") >= 2
	})
	p.kill()
	st.on.Store(false)
	close(st.release)
	if n := fillerRecords(t, dbPath); n < 3950 {
		t.Fatalf("the kill left %d records of the padding on disk, want nearly the two chunks' 4000", n)
	}

	p = startEdge(t, bin, cfgPath, addr)
	if !strings.Contains(p.stderr.String(), "deleted the stored events of joins left unfinished") {
		t.Errorf("the restart did not report sweeping the killed resync's records:\n%s", p.stderr)
	}
	waitFor(t, 60*time.Second, "the resumed resync to complete", func() bool {
		return strings.Contains(p.stderr.String(), "partial-state room now has its full state")
	})
	if _, err := bob.SendText(ctxT(t), roomID, "back"); err != nil {
		t.Fatalf("sending in the room after the resync: %v", err)
	}
	p.kill()
	if n := fillerRecords(t, dbPath); n != 0 {
		t.Errorf("%d records of the killed resync's padding survived the restart", n)
	}
	s, err := store.Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.View(func(tx *store.Tx) error {
		for _, id := range []string{mine.String(), hello.String()} {
			if _, err := tx.EventByID(id); err != nil {
				t.Errorf("%s lost: %v", id, err)
			}
		}
		if _, err := tx.PartialState(roomID.String()); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the room is still partial after the resumed resync (%v)", err)
		}
		if n := tx.PendingRecords(); n != 0 {
			t.Errorf("%d records still noted pending", n)
		}
		return nil
	})
	if strings.Contains(p.stderr.String(), "panic") {
		t.Errorf("the restarted node logged a panic:\n%s", p.stderr)
	}
}
