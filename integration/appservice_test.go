package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge"
	"edge/edge/config"
)

// fakeAS is an application service on loopback recording the
// transactions it accepts; while failing is set it answers 500.
type fakeAS struct {
	srv     *http.Server
	URL     string
	mu      sync.Mutex
	failing bool
	txns    map[string][]map[string]any
	order   []string
	badAuth int
	// onRoomQuery answers GET /_matrix/app/v1/rooms/{alias} (nil: 404).
	onRoomQuery func(alias string) bool
}

func startFakeAS(t *testing.T, hsToken string) *fakeAS {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAS{URL: "http://" + ln.Addr().String(), txns: map[string][]map[string]any{}}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /_matrix/app/v1/transactions/{txnId}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+hsToken {
			f.badAuth++
			w.WriteHeader(http.StatusForbidden)
			return
		}
		if f.failing {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var body struct {
			Events []map[string]any `json:"events"`
		}
		data, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(data, &body); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		txn := r.PathValue("txnId")
		if _, dup := f.txns[txn]; !dup {
			f.order = append(f.order, txn)
		}
		f.txns[txn] = body.Events
		_, _ = w.Write([]byte("{}"))
	})
	mux.HandleFunc("GET /_matrix/app/v1/rooms/{alias}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		q, ok := f.onRoomQuery, r.Header.Get("Authorization") == "Bearer "+hsToken
		f.mu.Unlock()
		if !ok || q == nil || !q(r.PathValue("alias")) {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND"}`))
			return
		}
		_, _ = w.Write([]byte("{}"))
	})
	f.srv = &http.Server{Handler: mux}
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(func() { _ = f.srv.Close() })
	return f
}

func (f *fakeAS) setFailing(b bool) { f.mu.Lock(); f.failing = b; f.mu.Unlock() }

// eventIDs lists the IDs of every event received, in transaction order.
func (f *fakeAS) eventIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, txn := range f.order {
		for _, ev := range f.txns[txn] {
			s, _ := ev["event_id"].(string)
			out = append(out, s)
		}
	}
	return out
}

func (f *fakeAS) waitEvent(t *testing.T, eventID string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, id := range f.eventIDs() {
			if id == eventID {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the application service never received %s (got %v)", eventID, f.eventIDs())
}

// reopenNode stops n and serves its directory again on a new port, as a
// restart of the process would.
func reopenNode(t *testing.T, n *testNode) *testNode {
	n.stop()
	loaded, err := config.Load(filepath.Join(n.Dir, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	node, err := edge.Open(loaded, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &testNode{Node: node, URL: "http://" + ln.Addr().String(), Dir: n.Dir, cancel: cancel, done: make(chan error, 1)}
	go func() { tn.done <- node.Serve(ctx, ln) }()
	t.Cleanup(tn.stop)
	return tn
}

func TestAppService(t *testing.T) {
	as := startFakeAS(t, "hs-secret")
	regDir := t.TempDir()
	reg := fmt.Sprintf(`id: bridge
url: %q
as_token: as-secret
hs_token: hs-secret
sender_localpart: bridgebot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@bridge_.*:localhost"
  aliases:
    - exclusive: true
      regex: "#bridge_.*:localhost"
  rooms: []
`, as.URL)
	if err := os.WriteFile(filepath.Join(regDir, "bridge.yaml"), []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, func(c *config.Config) { c.AppServices = []string{filepath.Join(regDir, "*.yaml")} })
	bot, err := mautrix.NewClient(n.URL, "", "as-secret")
	if err != nil {
		t.Fatal(err)
	}

	// The as_token acts as the sender user, which the server created.
	if who, err := bot.Whoami(ctxT(t)); err != nil || who.UserID != "@bridgebot:localhost" {
		t.Fatalf("whoami with the as_token: %+v %v", who, err)
	}
	// It registers users of its namespace without UIA; nobody else may.
	body, _ := json.Marshal(map[string]any{"type": "m.login.application_service", "username": "bridge_alice"})
	if r := doRaw(t, bot, http.MethodPost, bot.BuildClientURL("v3", "register"), body, nil); r.Status != 200 || r.Body["user_id"] != "@bridge_alice:localhost" {
		t.Fatalf("AS registration: %d %s", r.Status, r.Raw)
	}
	body, _ = json.Marshal(map[string]any{"type": "m.login.application_service", "username": "someone"})
	doRaw(t, bot, http.MethodPost, bot.BuildClientURL("v3", "register"), body, nil).want(t, 400, "M_EXCLUSIVE")
	anon, _ := mautrix.NewClient(n.URL, "", "")
	_, err = anon.RegisterDummy(ctxT(t), &mautrix.ReqRegister[any]{Username: "bridge_bob", Password: "correct horse battery"})
	wantMatrixErr(t, err, 400, "M_EXCLUSIVE")

	// Masquerading: within the namespace only.
	if r := doRaw(t, bot, http.MethodGet, bot.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "account", "whoami"}, map[string]string{"user_id": "@bridge_alice:localhost"}), nil, nil); r.Body["user_id"] != "@bridge_alice:localhost" {
		t.Fatalf("masqueraded whoami: %d %s", r.Status, r.Raw)
	}
	alice := n.register(t, "")
	doRaw(t, bot, http.MethodGet, bot.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "account", "whoami"}, map[string]string{"user_id": alice.UserID.String()}), nil, nil).want(t, 403, "M_FORBIDDEN")

	// Exclusive aliases are the AS's.
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	body, _ = json.Marshal(map[string]any{"room_id": roomID})
	doRaw(t, alice, http.MethodPut, alice.BuildClientURL("v3", "directory", "room", "#bridge_x:localhost"), body, nil).want(t, 400, "M_EXCLUSIVE")

	// The bridged user joins and sends with a massaged timestamp.
	asAlice := func(path mautrix.ClientURLPath, q map[string]string) string {
		if q == nil {
			q = map[string]string{}
		}
		q["user_id"] = "@bridge_alice:localhost"
		return bot.BuildURLWithQuery(path, q)
	}
	if r := doRaw(t, bot, http.MethodPost, asAlice(mautrix.ClientURLPath{"v3", "join", roomID.String()}, nil), []byte("{}"), nil); r.Status != 200 {
		t.Fatalf("masqueraded join: %d %s", r.Status, r.Raw)
	}
	r := doRaw(t, bot, http.MethodPut, asAlice(mautrix.ClientURLPath{"v3", "rooms", roomID.String(), "send", "m.room.message", "t1"}, map[string]string{"ts": "1000"}),
		[]byte(`{"msgtype":"m.text","body":"from the past"}`), nil)
	bridged, _ := r.Body["event_id"].(string)
	if r.Status != 200 || bridged == "" {
		t.Fatalf("masqueraded send: %d %s", r.Status, r.Raw)
	}
	ev, err := alice.GetEvent(ctxT(t), roomID, id.EventID(bridged))
	if err != nil || ev.Timestamp != 1000 || ev.Sender != "@bridge_alice:localhost" {
		t.Fatalf("bridged event: %+v %v, want sender @bridge_alice and ts 1000", ev, err)
	}
	// ?ts= is for application services only.
	plain, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "now"}, mautrix.ReqSendEvent{TransactionID: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	as.waitEvent(t, bridged)
	// A room with one of its users: the AS hears everyone in it.
	as.waitEvent(t, plain.EventID.String())

	// m.login.application_service gives a bridged user a device.
	body, _ = json.Marshal(map[string]any{"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "bridge_alice"}})
	if r := doRaw(t, bot, http.MethodPost, bot.BuildClientURL("v3", "login"), body, nil); r.Status != 200 || r.Body["user_id"] != "@bridge_alice:localhost" || r.Body["device_id"] == nil {
		t.Fatalf("AS login: %d %s", r.Status, r.Raw)
	}
	body, _ = json.Marshal(map[string]any{"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": alice.UserID.String()}})
	doRaw(t, bot, http.MethodPost, bot.BuildClientURL("v3", "login"), body, nil).want(t, 403, "M_FORBIDDEN")

	// An unknown alias of its namespace is asked of the AS, which makes it.
	as.mu.Lock()
	as.onRoomQuery = func(alias string) bool {
		if alias != "#bridge_auto:localhost" {
			return false
		}
		_, err := bot.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{RoomAliasName: "bridge_auto"})
		return err == nil
	}
	as.mu.Unlock()
	if res, err := alice.ResolveAlias(ctxT(t), "#bridge_auto:localhost"); err != nil || res.RoomID == "" {
		t.Fatalf("alias made on demand by the AS: %+v %v", res, err)
	}
	_, err = alice.ResolveAlias(ctxT(t), "#bridge_none:localhost")
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")

	// Delivery is durable: events sent while the AS fails survive a restart.
	as.setFailing(true)
	held, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "held"}, mautrix.ReqSendEvent{TransactionID: "p2"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	n = reopenNode(t, n)
	as.setFailing(false)
	as.waitEvent(t, held.EventID.String())
	ids := as.eventIDs()
	if strings.Count(strings.Join(ids, " "), held.EventID.String()) != 1 {
		t.Errorf("held event delivered %d times: %v", strings.Count(strings.Join(ids, " "), held.EventID.String()), ids)
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.badAuth != 0 {
		t.Errorf("%d transactions without the hs_token", as.badAuth)
	}
}

// TestAppServiceRateLimited: an AS registered with rate_limited: false is
// exempt from the send limit its users would otherwise hit.
func TestAppServiceRateLimited(t *testing.T) {
	dir := t.TempDir()
	reg := "id: quick\nurl: null\nas_token: quick-as\nhs_token: quick-hs\nsender_localpart: quickbot\nrate_limited: false\nnamespaces:\n  users: []\n"
	if err := os.WriteFile(filepath.Join(dir, "quick.yaml"), []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, func(c *config.Config) {
		c.AppServices = []string{filepath.Join(dir, "quick.yaml")}
		c.RateLimits.SendPerSecond, c.RateLimits.SendBurst = 0.001, 2
	})
	bot, _ := mautrix.NewClient(n.URL, "", "quick-as")
	roomID := mustCreateRoom(t, bot, &mautrix.ReqCreateRoom{})
	for i := range 5 {
		if _, err := bot.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "x"}, mautrix.ReqSendEvent{TransactionID: fmt.Sprint("q", i)}); err != nil {
			t.Fatalf("AS send %d: %v", i, err)
		}
	}
	alice := n.register(t, "")
	aliceRoom := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	var err error
	for i := 0; i < 3 && err == nil; i++ {
		_, err = alice.SendMessageEvent(ctxT(t), aliceRoom, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "x"}, mautrix.ReqSendEvent{TransactionID: fmt.Sprint("a", i)})
	}
	wantMatrixErr(t, err, 429, "M_LIMIT_EXCEEDED")
}
