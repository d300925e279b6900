package pushgw

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"edge/edge/room"
)

// gateway is a push gateway on loopback that records what it is sent and
// answers with the status and body reply chooses.
type gateway struct {
	*httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	hits   atomic.Int64
	reply  func(n int64) (int, string)
}

func newGateway(t *testing.T, reply func(n int64) (int, string)) *gateway {
	g := &gateway{reply: reply}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := g.hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		g.bodies = append(g.bodies, b)
		g.mu.Unlock()
		status, body := http.StatusOK, `{"rejected":[]}`
		if g.reply != nil {
			status, body = g.reply(n)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(g.Close)
	return g
}

func (g *gateway) url() string { return g.URL + "/_matrix/push/v1/notify" }

func pusherJSON(t *testing.T, url, pushKey string, extra map[string]any) json.RawMessage {
	data := map[string]any{"url": url}
	for k, v := range extra {
		data[k] = v
	}
	b, err := json.Marshal(map[string]any{"kind": "http", "app_id": "org.example.app", "pushkey": pushKey,
		"app_display_name": "App", "device_display_name": "Phone", "lang": "en", "data": data})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var testEvent = Event{ID: "$ev", RoomID: "!r:example.org", Type: "m.room.message", Sender: "@bob:example.org",
	SenderDisplayName: "Bob", RoomName: "Lounge", Content: json.RawMessage(`{"msgtype":"m.text","body":"hi"}`)}

func decodeNotification(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var out struct {
		Notification map[string]any `json:"notification"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.Notification == nil {
		t.Fatalf("not a notify body: %s (%v)", body, err)
	}
	return out.Notification
}

// TestBuild: the full format carries the event, the counts and the device
// with its data minus url; event_id_only leaves out everything but the IDs,
// counts, priority and devices; zero counts are omitted.
func TestBuild(t *testing.T) {
	target := Target{UserID: "@alice:example.org", Unread: 3,
		Tweaks: map[string]json.RawMessage{"sound": json.RawMessage(`"default"`), "highlight": json.RawMessage("false")}}
	req, err := Build(testEvent, target, pusherJSON(t, "https://push.example.org/_matrix/push/v1/notify", "pk1", map[string]any{"extra": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	if req.URL != "https://push.example.org/_matrix/push/v1/notify" || req.PushKey != "pk1" || req.UserID != "@alice:example.org" {
		t.Fatalf("request = %+v", req)
	}
	n := decodeNotification(t, req.Body)
	for k, want := range map[string]string{"event_id": "$ev", "room_id": "!r:example.org", "type": "m.room.message",
		"sender": "@bob:example.org", "sender_display_name": "Bob", "room_name": "Lounge", "prio": "high"} {
		if n[k] != want {
			t.Errorf("%s = %v, want %q", k, n[k], want)
		}
	}
	if c, _ := n["content"].(map[string]any); c["body"] != "hi" {
		t.Errorf("content = %v", n["content"])
	}
	if c, _ := n["counts"].(map[string]any); c["unread"] != 3.0 || c["missed_calls"] != nil {
		t.Errorf("counts = %v", n["counts"])
	}
	devs, _ := n["devices"].([]any)
	if len(devs) != 1 {
		t.Fatalf("devices = %v", n["devices"])
	}
	d := devs[0].(map[string]any)
	data, _ := d["data"].(map[string]any)
	if d["app_id"] != "org.example.app" || d["pushkey"] != "pk1" || data["extra"] != "x" || data["url"] != nil {
		t.Errorf("device = %v", d)
	}
	if tw, _ := d["tweaks"].(map[string]any); tw["sound"] != "default" || tw["highlight"] != false {
		t.Errorf("tweaks = %v", d["tweaks"])
	}

	req, err = Build(testEvent, Target{UserID: "@alice:example.org"},
		pusherJSON(t, "https://push.example.org/_matrix/push/v1/notify", "pk2", map[string]any{"format": FormatEventIDOnly}))
	if err != nil {
		t.Fatal(err)
	}
	n = decodeNotification(t, req.Body)
	for _, k := range []string{"content", "sender", "sender_display_name", "room_name", "type"} {
		if _, ok := n[k]; ok {
			t.Errorf("event_id_only sent %s", k)
		}
	}
	if n["event_id"] != "$ev" || n["room_id"] != "!r:example.org" || n["prio"] != "low" {
		t.Errorf("event_id_only notification = %v", n)
	}
	if c, _ := n["counts"].(map[string]any); len(c) != 0 {
		t.Errorf("zero counts sent: %v", c)
	}
	d = n["devices"].([]any)[0].(map[string]any)
	if data, _ := d["data"].(map[string]any); data["format"] != FormatEventIDOnly || data["url"] != nil {
		t.Errorf("event_id_only device data = %v", d["data"])
	}
}

// TestBuildRejectsBadPushers: a pusher without an http(s) url or of
// another kind is not pushed to.
func TestBuildRejectsBadPushers(t *testing.T) {
	for name, raw := range map[string]string{
		"no url":    `{"kind":"http","app_id":"a","pushkey":"k","data":{}}`,
		"bad url":   `{"kind":"http","app_id":"a","pushkey":"k","data":{"url":"file:///etc/passwd"}}`,
		"email":     `{"kind":"email","app_id":"a","pushkey":"k","data":{"url":"https://x/_matrix/push/v1/notify"}}`,
		"not json":  `{`,
		"null kind": `{"kind":null,"app_id":"a","pushkey":"k","data":{"url":"https://x/_matrix/push/v1/notify"}}`,
	} {
		if _, err := Build(testEvent, Target{}, json.RawMessage(raw)); err == nil {
			t.Errorf("%s: built a request", name)
		}
	}
}

// newTestPusher pushes every event to target (one pusher per URL given).
func newTestPusher(t *testing.T, opts Options, target Target) *Pusher {
	if opts.Targets == nil {
		opts.Targets = func(ev *room.Event) (Event, []Target, error) {
			e := testEvent
			e.ID = ev.ID
			return e, []Target{target}, nil
		}
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff, opts.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
	}
	p := New(opts)
	t.Cleanup(p.Close)
	return p
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPusherRetriesWithBackoff: a gateway failing twice gets a third try,
// which it accepts; a gateway that always fails is given up on after
// MaxAttempts tries.
func TestPusherRetriesWithBackoff(t *testing.T) {
	flaky := newGateway(t, func(n int64) (int, string) {
		if n <= 2 {
			return http.StatusBadGateway, `{}`
		}
		return http.StatusOK, `{"rejected":[]}`
	})
	p := newTestPusher(t, Options{AllowPrivate: true}, Target{UserID: "@a:x", Pushers: []json.RawMessage{pusherJSON(t, flaky.url(), "pk", nil)}})
	if !p.Submit(&room.Event{ID: "$1"}) {
		t.Fatal("Submit dropped the event")
	}
	waitFor(t, "a delivery", func() bool { return p.Stats().Sent == 1 })
	if got := flaky.hits.Load(); got != 3 {
		t.Fatalf("gateway got %d requests, want 3", got)
	}
	if s := p.Stats(); s.Retried != 2 || s.Failed != 0 {
		t.Fatalf("stats = %+v", s)
	}

	down := newGateway(t, func(int64) (int, string) { return http.StatusInternalServerError, `{}` })
	p = newTestPusher(t, Options{AllowPrivate: true, MaxAttempts: 3}, Target{UserID: "@a:x", Pushers: []json.RawMessage{pusherJSON(t, down.url(), "pk", nil)}})
	p.Submit(&room.Event{ID: "$2"})
	waitFor(t, "giving up", func() bool { return p.Stats().Failed == 1 })
	if got := down.hits.Load(); got != 3 {
		t.Fatalf("gateway got %d requests, want MaxAttempts=3", got)
	}
}

// TestPusherRemovesRejected: the gateway's rejected pushkey is reported
// for removal with the user and app it belongs to; other keys are not.
func TestPusherRemovesRejected(t *testing.T) {
	g := newGateway(t, func(int64) (int, string) { return http.StatusOK, `{"rejected":["pk-dead","someone-else"]}` })
	var mu sync.Mutex
	var removed []string
	p := newTestPusher(t, Options{AllowPrivate: true, Rejected: func(userID, appID, pushKey string) error {
		mu.Lock()
		removed = append(removed, userID+"|"+appID+"|"+pushKey)
		mu.Unlock()
		return nil
	}}, Target{UserID: "@a:x", Pushers: []json.RawMessage{pusherJSON(t, g.url(), "pk-dead", nil)}})
	p.Submit(&room.Event{ID: "$1"})
	waitFor(t, "the removal", func() bool { return p.Stats().Rejected == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(removed) != 1 || removed[0] != "@a:x|org.example.app|pk-dead" {
		t.Fatalf("removed %v", removed)
	}
}

// TestPusherRefusesPrivateGateways: without AllowPrivate a gateway on
// 127.0.0.1 (or a name resolving to loopback) is never connected to, and
// the refusal is not retried.
func TestPusherRefusesPrivateGateways(t *testing.T) {
	g := newGateway(t, nil)
	byName := "http://localhost:" + g.Listener.Addr().(*net.TCPAddr).String()[len("127.0.0.1:"):] + "/_matrix/push/v1/notify"
	p := newTestPusher(t, Options{}, Target{UserID: "@a:x", Pushers: []json.RawMessage{
		pusherJSON(t, g.url(), "pk1", nil), pusherJSON(t, byName, "pk2", nil)}})
	p.Submit(&room.Event{ID: "$1"})
	waitFor(t, "the refusals", func() bool { return p.Stats().Refused == 2 })
	if got := g.hits.Load(); got != 0 {
		t.Fatalf("a refused gateway got %d requests", got)
	}
	if s := p.Stats(); s.Retried != 0 || s.Sent != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestPusherQueueIsBounded: Submit never blocks; beyond QueueSize queued
// events are dropped and counted.
func TestPusherQueueIsBounded(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	p := New(Options{Workers: 1, QueueSize: 2, Targets: func(*room.Event) (Event, []Target, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return Event{}, nil, nil
	}})
	defer p.Close()
	defer close(release)
	p.Submit(&room.Event{ID: "$busy"})
	<-started // the only worker is now held
	done := make(chan [3]bool)
	go func() {
		done <- [3]bool{p.Submit(&room.Event{ID: "$1"}), p.Submit(&room.Event{ID: "$2"}), p.Submit(&room.Event{ID: "$3"})}
	}()
	select {
	case got := <-done:
		if got != [3]bool{true, true, false} {
			t.Fatalf("Submit results = %v, want the third dropped", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Submit blocked")
	}
	if d := p.Stats().Dropped; d != 1 {
		t.Fatalf("Dropped = %d", d)
	}
}
