package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
)

// pushGW is a push gateway on loopback recording each /notify body.
type pushGW struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []map[string]any
	hits   int
	answer string
}

func newPushGW(t *testing.T, answer string) *pushGW {
	g := &pushGW{answer: answer}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.hits++
		var body struct {
			Notification map[string]any `json:"notification"`
		}
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/_matrix/push/v1/notify" || json.Unmarshal(b, &body) != nil {
			t.Errorf("gateway got %s %s %s", r.Method, r.URL.Path, b)
		}
		g.bodies = append(g.bodies, body.Notification)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, g.answer)
	}))
	t.Cleanup(g.Close)
	return g
}

// wait returns the first notification for eventID sent to pushKey.
func (g *pushGW) wait(t *testing.T, eventID id.EventID, pushKey string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		g.mu.Lock()
		for _, n := range g.bodies {
			devs, _ := n["devices"].([]any)
			if n["event_id"] == string(eventID) && len(devs) == 1 && devs[0].(map[string]any)["pushkey"] == pushKey {
				g.mu.Unlock()
				return n
			}
		}
		g.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no notification of %s for pushkey %s", eventID, pushKey)
	return nil
}

func pushGWSetPusher(t *testing.T, c *mautrix.Client, gatewayURL, pushKey string, data map[string]any) {
	t.Helper()
	d := map[string]any{"url": gatewayURL + "/_matrix/push/v1/notify"}
	for k, v := range data {
		d[k] = v
	}
	body := map[string]any{"kind": "http", "app_id": "im.vector.app.android", "pushkey": pushKey, "append": true,
		"app_display_name": "Element", "device_display_name": "phone", "lang": "en", "data": d}
	if _, err := c.MakeRequest(ctxT(t), http.MethodPost, c.BuildClientURL("v3", "pushers", "set"), body, nil); err != nil {
		t.Fatalf("pushers/set: %v", err)
	}
}

func pushGWPushers(t *testing.T, c *mautrix.Client) []map[string]any {
	t.Helper()
	var resp struct {
		Pushers []map[string]any `json:"pushers"`
	}
	if _, err := c.MakeRequest(ctxT(t), http.MethodGet, c.BuildClientURL("v3", "pushers"), nil, &resp); err != nil {
		t.Fatal(err)
	}
	return resp.Pushers
}

// pushGWRoom: alice creates a named room, bob (named "Bob Builder") joins
// it; returns the room.
func pushGWRoom(t *testing.T, alice, bob *mautrix.Client) id.RoomID {
	t.Helper()
	ctx := ctxT(t)
	if err := bob.SetDisplayName(ctx, "Bob Builder"); err != nil {
		t.Fatal(err)
	}
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Push Lounge", Invite: []id.UserID{bob.UserID}})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	return roomID
}

func allowPrivateGateways(c *config.Config) { c.Push.AllowPrivateGateways = true }

// TestPushGatewayDelivers: bob's message in alice's room reaches alice's
// gateway with the event, names, counts and device (data without url);
// the event_id_only pusher gets only IDs, counts and devices; a second
// message raises the unread count.
func TestPushGatewayDelivers(t *testing.T) {
	n := startNode(t, allowPrivateGateways)
	gw := newPushGW(t, `{"rejected":[]}`)
	alice, bob := n.register(t, ""), n.register(t, "")
	pushGWSetPusher(t, alice, gw.URL, "pk-full", map[string]any{"extra": "kept"})
	pushGWSetPusher(t, alice, gw.URL, "pk-ids", map[string]any{"format": "event_id_only"})
	roomID := pushGWRoom(t, alice, bob)
	ctx := ctxT(t)
	sent, err := bob.SendText(ctx, roomID, "hello alice")
	if err != nil {
		t.Fatal(err)
	}

	full := gw.wait(t, sent.EventID, "pk-full")
	for k, want := range map[string]any{"room_id": string(roomID), "type": "m.room.message", "sender": string(bob.UserID),
		"sender_display_name": "Bob Builder", "room_name": "Push Lounge", "prio": "high"} {
		if full[k] != want {
			t.Errorf("%s = %v, want %v", k, full[k], want)
		}
	}
	if c, _ := full["content"].(map[string]any); c["body"] != "hello alice" || c["msgtype"] != "m.text" {
		t.Errorf("content = %v", full["content"])
	}
	if c, _ := full["counts"].(map[string]any); c["unread"] != 1.0 {
		t.Errorf("counts = %v, want unread 1", full["counts"])
	}
	dev := full["devices"].([]any)[0].(map[string]any)
	data, _ := dev["data"].(map[string]any)
	if dev["app_id"] != "im.vector.app.android" || data["extra"] != "kept" || data["url"] != nil {
		t.Errorf("device = %v", dev)
	}
	if tw, _ := dev["tweaks"].(map[string]any); tw["sound"] != "default" {
		t.Errorf("tweaks = %v (room_one_to_one sets sound)", dev["tweaks"])
	}

	ids := gw.wait(t, sent.EventID, "pk-ids")
	for _, k := range []string{"content", "sender", "sender_display_name", "room_name", "type"} {
		if _, ok := ids[k]; ok {
			t.Errorf("event_id_only notification has %s: %v", k, ids)
		}
	}
	if c, _ := ids["counts"].(map[string]any); ids["room_id"] != string(roomID) || c["unread"] != 1.0 {
		t.Errorf("event_id_only notification = %v", ids)
	}
	dev = ids["devices"].([]any)[0].(map[string]any)
	if data, _ := dev["data"].(map[string]any); data["format"] != "event_id_only" || data["url"] != nil {
		t.Errorf("event_id_only device data = %v", dev["data"])
	}

	second, err := bob.SendText(ctx, roomID, "are you there?")
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := gw.wait(t, second.EventID, "pk-full")["counts"].(map[string]any); c["unread"] != 2.0 {
		t.Errorf("second message counts = %v, want unread 2", c)
	}
	// Alice's own message notifies nobody with a pusher.
	own, err := alice.SendText(ctx, roomID, "yes")
	if err != nil {
		t.Fatal(err)
	}
	third, err := bob.SendText(ctx, roomID, "good")
	if err != nil {
		t.Fatal(err)
	}
	gw.wait(t, third.EventID, "pk-full")
	gw.mu.Lock()
	for _, b := range gw.bodies {
		if b["event_id"] == string(own.EventID) {
			t.Errorf("alice was pushed her own message")
		}
	}
	gw.mu.Unlock()
}

// TestPushGatewayRejectedPushkey: a gateway answering "rejected" with the
// pushkey makes the server remove that pusher.
func TestPushGatewayRejectedPushkey(t *testing.T) {
	n := startNode(t, allowPrivateGateways)
	gw := newPushGW(t, `{"rejected":["pk-gone"]}`)
	alice, bob := n.register(t, ""), n.register(t, "")
	pushGWSetPusher(t, alice, gw.URL, "pk-gone", nil)
	roomID := pushGWRoom(t, alice, bob)
	sent, err := bob.SendText(ctxT(t), roomID, "ping")
	if err != nil {
		t.Fatal(err)
	}
	gw.wait(t, sent.EventID, "pk-gone")
	deadline := time.Now().Add(10 * time.Second)
	for len(pushGWPushers(t, alice)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("rejected pusher still listed: %v", pushGWPushers(t, alice))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPushGatewayRefusesLoopback: without push.allow_private_gateways a
// gateway on 127.0.0.1 is never connected to.
func TestPushGatewayRefusesLoopback(t *testing.T) {
	n := startNode(t)
	gw := newPushGW(t, `{"rejected":[]}`)
	alice, bob := n.register(t, ""), n.register(t, "")
	pushGWSetPusher(t, alice, gw.URL, "pk-local", nil)
	roomID := pushGWRoom(t, alice, bob)
	if _, err := bob.SendText(ctxT(t), roomID, "ping"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for n.PushGateway().Stats().Refused == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal recorded: %+v", n.PushGateway().Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	gw.mu.Lock()
	defer gw.mu.Unlock()
	if gw.hits != 0 {
		t.Fatalf("refused gateway got %d requests", gw.hits)
	}
}
