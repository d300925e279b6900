package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
)

// mxBridge is mautrix-go's own application service (the library the
// mautrix bridges are built on) serving on loopback, with what it parsed
// out of our transactions collected for the test.
type mxBridge struct {
	AS   *appservice.AppService
	down atomic.Bool // answer 503, as a bridge that is not running

	mu       sync.Mutex
	events   []*event.Event
	toDevice []*event.Event
	otk      []*mautrix.OTKCount
	devLists []*mautrix.DeviceLists
	bodies   []map[string]json.RawMessage
}

// startMXBridge listens on loopback and writes the bridge's registration
// (made and saved by mautrix-go) into dir.
func startMXBridge(t *testing.T, dir string) (*mxBridge, *appservice.Registration) {
	return startMXBridgeOn(t, dir, "localhost")
}

// startMXBridgeOn is startMXBridge for a node whose server name is
// serverName ("": not known yet, so its users are @mx_* on any server).
func startMXBridgeOn(t *testing.T, dir, serverName string) (*mxBridge, *appservice.Registration) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := appservice.CreateRegistration()
	reg.ID = "mxbridge"
	reg.URL = "http://" + ln.Addr().String()
	reg.SenderLocalpart = "mxbot"
	reg.EphemeralEvents = true
	reg.MSC3202 = true
	reg.MSC4190 = true
	users := `@mx_.*`
	if serverName != "" {
		users += ":" + regexp.QuoteMeta(serverName)
	}
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(users), true)
	if err := reg.Save(filepath.Join(dir, "mxbridge.yaml")); err != nil {
		t.Fatal(err)
	}
	b := &mxBridge{AS: appservice.Create()}
	b.AS.Registration = reg
	b.AS.HomeserverDomain = serverName
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.Method == http.MethodPut {
			data, _ := io.ReadAll(r.Body)
			var body map[string]json.RawMessage
			_ = json.Unmarshal(data, &body)
			b.mu.Lock()
			b.bodies = append(b.bodies, body)
			b.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(data))
		}
		b.AS.Router.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-b.AS.Events:
				b.mu.Lock()
				b.events = append(b.events, ev)
				b.mu.Unlock()
			case ev := <-b.AS.ToDeviceEvents:
				b.mu.Lock()
				b.toDevice = append(b.toDevice, ev)
				b.mu.Unlock()
			case c := <-b.AS.OTKCounts:
				b.mu.Lock()
				b.otk = append(b.otk, c)
				b.mu.Unlock()
			case dl := <-b.AS.DeviceLists:
				b.mu.Lock()
				b.devLists = append(b.devLists, dl)
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); _ = srv.Close() })
	return b, reg
}

// wait polls until cond (called with b.mu held) holds.
func (b *mxBridge) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		b.mu.Lock()
		ok := cond()
		b.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the bridge never received %s", what)
}

// ephemeral finds the ephemeral events of a type the bridge got.
func (b *mxBridge) ephemeral(typ string) []*event.Event {
	var out []*event.Event
	for _, ev := range b.events {
		if ev.Type.Type == typ && ev.Type.Class == event.EphemeralEventType {
			out = append(out, ev)
		}
	}
	return out
}

// TestAppServiceEphemeralMautrix: a mautrix-go bridge with
// receive_ephemeral and MSC3202 gets typing, receipts, presence,
// to-device messages, device lists and key counts in its transactions,
// also what was sent while it was down across a restart of the server;
// and it acts as its puppet's own device to upload keys.
func TestAppServiceEphemeralMautrix(t *testing.T) {
	regDir := t.TempDir()
	bridge, _ := startMXBridge(t, regDir)
	n := startNode(t, func(c *config.Config) { c.AppServices = []string{filepath.Join(regDir, "*.yaml")} })
	if err := bridge.AS.SetHomeserverURL(n.URL); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)

	// The connection check mautrix bridges make at start (spec v1.7 ping).
	bot := bridge.AS.BotIntent()
	if !bot.EnsureAppserviceConnection(ctx) {
		t.Fatal("the bridge's ping through the homeserver failed")
	}
	_, err := bot.AppservicePing(ctx, "someone-else", "t1")
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	bridge.down.Store(true)
	_, err = bot.AppservicePing(ctx, bridge.AS.Registration.ID, "t2")
	wantMatrixErr(t, err, 502, "M_BAD_STATUS")
	bridge.down.Store(false)

	alice := n.register(t, "")
	puppetID := id.UserID("@mx_alice:localhost")
	intent := bridge.AS.Intent(puppetID)
	if err := intent.EnsureRegistered(ctx); err != nil {
		t.Fatalf("puppet registration: %v", err)
	}
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{puppetID}})
	if _, err := intent.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("puppet join: %v", err)
	}

	// The bridge makes its puppet an encryption device (MSC4190) and acts
	// as that device (MSC3202 device masquerading) to upload keys.
	puppet := bridge.AS.Client(puppetID)
	if err := puppet.CreateDeviceMSC4190(ctx, "MXDEV", "bridge"); err != nil {
		t.Fatalf("creating the puppet's device: %v", err)
	}
	// 201 for a new device, 200 for an existing one; only for the AS.
	putDevice := func(c *mautrix.Client, userID id.UserID, device string) int {
		t.Helper()
		u := n.URL + "/_matrix/client/v3/devices/" + device
		if userID != "" {
			u += "?user_id=" + url.QueryEscape(userID.String())
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, u, strings.NewReader(`{"display_name":"bridge"}`))
		req.Header.Set("Authorization", "Bearer "+c.AccessToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := putDevice(puppet, puppetID, "MXDEV2"); got != http.StatusCreated {
		t.Errorf("AS creating a device: %d, want 201", got)
	}
	if got := putDevice(puppet, puppetID, "MXDEV2"); got != http.StatusOK {
		t.Errorf("AS updating a device: %d, want 200", got)
	}
	if got := putDevice(alice, "", "NEWDEV"); got != http.StatusNotFound {
		t.Errorf("a user creating a device: %d, want 404", got)
	}
	if got := putDevice(puppet, puppetID, strings.Repeat("D", 256)); got != http.StatusBadRequest {
		t.Errorf("AS creating a device with a 256-byte ID: %d, want 400", got)
	}
	// The AS deletes its user's device without UIA.
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, n.URL+"/_matrix/client/v3/devices/MXDEV2?user_id="+url.QueryEscape(puppetID.String()), strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+puppet.AccessToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("AS deleting a device: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if who, err := puppet.Whoami(ctx); err != nil || who.DeviceID != "MXDEV" || who.UserID != puppetID {
		t.Fatalf("whoami as the puppet's device: %+v %v", who, err)
	}
	var up struct {
		Counts map[string]int `json:"one_time_key_counts"`
	}
	_, err = puppet.MakeRequest(ctx, http.MethodPost, puppet.BuildClientURL("v3", "keys", "upload"), map[string]any{
		"one_time_keys": map[string]any{"curve25519:K1": "a2V5MQ", "curve25519:K2": "a2V5Mg"},
		"fallback_keys": map[string]any{"curve25519:F1": "ZmFsbGJhY2s"},
	}, &up)
	if err != nil || up.Counts["curve25519"] != 2 {
		t.Fatalf("key upload as the puppet's device: %+v %v", up, err)
	}
	bridge.wait(t, "the puppet device's one-time key count", func() bool {
		return slices.ContainsFunc(bridge.otk, func(c *mautrix.OTKCount) bool {
			return c.UserID == puppetID && c.DeviceID == "MXDEV" && c.Curve25519 == 2
		})
	})
	bridge.wait(t, "the puppet device's unused fallback key types", func() bool {
		for _, b := range bridge.bodies {
			var fb map[string]map[string][]string
			if json.Unmarshal(b["org.matrix.msc3202.device_unused_fallback_key_types"], &fb) == nil && slices.Contains(fb[puppetID.String()]["MXDEV"], "curve25519") {
				return true
			}
		}
		return false
	})
	// A claim by someone else lowers the count the bridge hears of.
	if _, err := alice.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{puppetID: {"MXDEV": id.KeyAlgorithmCurve25519}}}); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "the count after a claim", func() bool {
		return slices.ContainsFunc(bridge.otk, func(c *mautrix.OTKCount) bool {
			return c.UserID == puppetID && c.DeviceID == "MXDEV" && c.Curve25519 == 1
		})
	})
	// Another user's device is not the bridge's to act as.
	other := bridge.AS.NewMautrixClient(puppetID)
	other.DeviceID, other.SetAppServiceDeviceID = "NOSUCH", true
	_, err = other.Whoami(ctx)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")

	// Typing, a read receipt and presence of a user sharing the room.
	if _, err := alice.UserTyping(ctx, roomID, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "alice typing", func() bool {
		return slices.ContainsFunc(bridge.ephemeral("m.typing"), func(ev *event.Event) bool {
			return ev.RoomID == roomID && slices.Contains(ev.Content.AsTyping().UserIDs, alice.UserID)
		})
	})
	msg, err := alice.SendText(ctx, roomID, "hello bridge")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, roomID, msg.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "alice's read receipt", func() bool {
		return slices.ContainsFunc(bridge.ephemeral("m.receipt"), func(ev *event.Event) bool {
			_, ok := (*ev.Content.AsReceipt())[msg.EventID][event.ReceiptTypeRead][alice.UserID]
			return ev.RoomID == roomID && ok
		})
	})
	// Not sent: typing in a room without the bridge's users, and private
	// receipts. Both go before a public receipt the bridge does get.
	room2 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if _, err := alice.UserTyping(ctx, room2, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	msg2, err := alice.SendText(ctx, roomID, "second")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, roomID, msg2.EventID, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	msg3, err := alice.SendText(ctx, roomID, "third")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, roomID, msg3.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "alice's second read receipt", func() bool {
		return slices.ContainsFunc(bridge.ephemeral("m.receipt"), func(ev *event.Event) bool {
			_, ok := (*ev.Content.AsReceipt())[msg3.EventID][event.ReceiptTypeRead][alice.UserID]
			return ok
		})
	})
	bridge.mu.Lock()
	for _, ev := range bridge.ephemeral("m.typing") {
		if ev.RoomID == room2 {
			t.Errorf("typing in a room without the bridge's users reached it: %+v", ev)
		}
	}
	for _, ev := range bridge.ephemeral("m.receipt") {
		if _, ok := (*ev.Content.AsReceipt())[msg2.EventID]; ok {
			t.Errorf("a private receipt reached the bridge: %+v", ev.Content.Raw)
		}
	}
	bridge.mu.Unlock()

	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "bridging"}); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "alice's presence", func() bool {
		return slices.ContainsFunc(bridge.ephemeral("m.presence"), func(ev *event.Event) bool {
			p := ev.Content.AsPresence()
			return ev.Sender == alice.UserID && p.Presence == event.PresenceOnline && p.StatusMessage == "bridging"
		})
	})
	// Both names of the ephemeral field, as Synapse sends.
	bridge.mu.Lock()
	both := slices.ContainsFunc(bridge.bodies, func(b map[string]json.RawMessage) bool {
		return b["ephemeral"] != nil && bytes.Equal(b["ephemeral"], b["de.sorunome.msc2409.ephemeral"])
	})
	bridge.mu.Unlock()
	if !both {
		t.Error("no transaction carried both ephemeral and de.sorunome.msc2409.ephemeral")
	}

	// A to-device message for the puppet's device goes to the bridge,
	// once, and not to the device's /sync inbox.
	sendToPuppet := func(tag string) {
		t.Helper()
		_, err := alice.SendToDevice(ctx, event.Type{Type: "m.test.bridge", Class: event.ToDeviceEventType}, &mautrix.ReqSendToDevice{
			Messages: map[id.UserID]map[id.DeviceID]*event.Content{puppetID: {"MXDEV": {Raw: map[string]any{"tag": tag}}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	toDeviceTagged := func(tag string) int {
		n := 0
		for _, ev := range bridge.toDevice {
			if ev.ToUserID == puppetID && ev.ToDeviceID == "MXDEV" && ev.Sender == alice.UserID && ev.Content.Raw["tag"] == tag {
				n++
			}
		}
		return n
	}
	sendToPuppet("one")
	bridge.wait(t, "the to-device message", func() bool { return toDeviceTagged("one") == 1 })
	if sync, err := puppet.SyncRequest(ctx, 0, "", "", false, ""); err != nil || len(sync.ToDevice.Events) != 0 {
		t.Fatalf("the puppet device's /sync: %v, to_device %+v, want none", err, sync)
	}

	// A new device of alice's changes her device list.
	if _, err := alice.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: alice.UserID.String()}, Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "alice in device_lists.changed", func() bool {
		return slices.ContainsFunc(bridge.devLists, func(dl *mautrix.DeviceLists) bool { return slices.Contains(dl.Changed, alice.UserID) })
	})

	// While the bridge is down, what happens waits in the store, across
	// a restart of the server.
	bridge.down.Store(true)
	if _, err := alice.UserTyping(ctx, roomID, false, 0); err != nil {
		t.Fatal(err)
	}
	sendToPuppet("two")
	time.Sleep(300 * time.Millisecond)
	n = reopenNode(t, n)
	bridge.down.Store(false)
	bridge.wait(t, "the to-device message sent while it was down", func() bool { return toDeviceTagged("two") == 1 })
	bridge.wait(t, "alice stopping typing while it was down", func() bool {
		return slices.ContainsFunc(bridge.ephemeral("m.typing"), func(ev *event.Event) bool {
			return ev.RoomID == roomID && len(ev.Content.AsTyping().UserIDs) == 0
		})
	})
	time.Sleep(200 * time.Millisecond)
	bridge.mu.Lock()
	if c := toDeviceTagged("two"); c != 1 {
		t.Errorf("the held to-device message arrived %d times", c)
	}
	bridge.mu.Unlock()

	// Alice leaving the only room she shares with the bridge's users.
	alice2, _ := mautrix.NewClient(n.URL, alice.UserID, alice.AccessToken)
	if _, err := alice2.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "alice in device_lists.left", func() bool {
		return slices.ContainsFunc(bridge.devLists, func(dl *mautrix.DeviceLists) bool { return slices.Contains(dl.Left, alice.UserID) })
	})
}

// TestAppServiceEphemeralFederated: typing, presence and device list
// changes of a user on another server who shares a room with a bridged
// user reach the bridge, and so does that user leaving the room.
func TestAppServiceEphemeralFederated(t *testing.T) {
	ca := newRFCA(t)
	regDir := t.TempDir()
	bridge, _ := startMXBridgeOn(t, regDir, "")
	a := startRFNode(t, ca, func(c *config.Config) { c.AppServices = []string{filepath.Join(regDir, "*.yaml")} })
	b := startRFNode(t, ca)
	bridge.AS.HomeserverDomain = a.Name
	if err := bridge.AS.SetHomeserverURL(a.URL); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)

	alice := a.register(t, "")
	bob := &rfSyncer{c: b.register(t, "")}
	puppetID := id.NewUserID("mx_carol", a.Name)
	intent := bridge.AS.Intent(puppetID)
	if err := intent.EnsureRegistered(ctx); err != nil {
		t.Fatalf("puppet registration: %v", err)
	}
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := intent.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("puppet join: %v", err)
	}
	if _, err := bob.c.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins through A: %v", err)
	}
	bridge.wait(t, "bob's join", func() bool {
		return slices.ContainsFunc(bridge.events, func(ev *event.Event) bool {
			return ev.Type == event.StateMember && ev.GetStateKey() == bob.c.UserID.String()
		})
	})

	if _, err := bob.c.UserTyping(ctx, roomID, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "bob typing, over federation", func() bool {
		return slices.ContainsFunc(bridge.ephemeral("m.typing"), func(ev *event.Event) bool {
			return ev.RoomID == roomID && slices.Contains(ev.Content.AsTyping().UserIDs, bob.c.UserID)
		})
	})
	if err := bob.c.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "remote"}); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "bob's presence, over federation", func() bool {
		return slices.ContainsFunc(bridge.ephemeral("m.presence"), func(ev *event.Event) bool {
			return ev.Sender == bob.c.UserID && ev.Content.AsPresence().StatusMessage == "remote"
		})
	})
	// A new device of bob's: B tells A, A tells the bridge.
	if _, err := bob.c.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: bob.c.UserID.String()}, Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "bob in device_lists.changed", func() bool {
		return slices.ContainsFunc(bridge.devLists, func(dl *mautrix.DeviceLists) bool { return slices.Contains(dl.Changed, bob.c.UserID) })
	})
	if _, err := bob.c.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	bridge.wait(t, "bob in device_lists.left", func() bool {
		return slices.ContainsFunc(bridge.devLists, func(dl *mautrix.DeviceLists) bool { return slices.Contains(dl.Left, bob.c.UserID) })
	})
}
