package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// keysFedPair is rfJoinedPair with the room made encrypted by alice and
// both users on Olm devices.
func keysFedPair(t *testing.T) (a, b *rfNode, alice, bob *e2eeDevice, roomID id.RoomID) {
	t.Helper()
	a, b, as, bs, roomID := rfJoinedPair(t, newRFCA(t), "10")
	if _, err := as.c.SendStateEvent(ctxT(t), roomID, event.StateEncryption, "", &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
		t.Fatalf("alice enables encryption: %v", err)
	}
	bs.until(t, "m.room.encryption", rfHasEvent(event.StateEncryption.Type, func(*event.Event) bool { return true }))
	alice, bob = newE2EEDevice(t, as.c), newE2EEDevice(t, bs.c)
	// Each server announced its user's device on joining, before its keys
	// were uploaded; device lists are eventually consistent, so wait until
	// each side's answer has the other's uploaded device.
	for _, p := range [][2]*e2eeDevice{{alice, bob}, {bob, alice}} {
		keysFedEventually(t, fmt.Sprintf("%s to see %s's device keys", p[0].UserID, p[1].UserID), func() bool {
			return len(e2eeQuery(t, p[0].Client, p[1].UserID).DeviceKeys[p[1].UserID][p[1].DeviceID].Keys) > 0
		})
	}
	return a, b, alice, bob, roomID
}

// keysFedEventually retries f until it returns true or 20 s pass.
func keysFedEventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKeysFedQueryClaimToDevice: alice@A's /keys/query and /keys/claim for
// bob@B are answered by B, an unreachable server is reported in failures,
// and a to-device message from alice reaches bob's /sync exactly once.
func TestKeysFedQueryClaimToDevice(t *testing.T) {
	_, _, alice, bob, _ := keysFedPair(t)
	bobDev := bob.DeviceID.String()

	var q struct {
		DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
		Failures   map[string]json.RawMessage            `json:"failures"`
	}
	body := map[string]any{"device_keys": map[string]any{bob.UserID.String(): []string{}, "@nobody:127.0.0.1:1": []string{}}, "timeout": 5000}
	if err := e2eeDo(t, alice.Client, http.MethodPost, []any{"keys", "query"}, nil, body, &q); err != nil {
		t.Fatalf("keys/query: %v", err)
	}
	var dk struct {
		UserID   string            `json:"user_id"`
		DeviceID string            `json:"device_id"`
		Keys     map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(q.DeviceKeys[bob.UserID.String()][bobDev], &dk); err != nil {
		t.Fatalf("bob's device keys from B: %s (%v)", q.DeviceKeys, err)
	}
	if dk.UserID != bob.UserID.String() || dk.DeviceID != bobDev || dk.Keys["ed25519:"+bobDev] != bob.mach.OwnIdentity().SigningKey.String() {
		t.Fatalf("bob's device keys = %+v, want his identity key %s", dk, bob.mach.OwnIdentity().SigningKey)
	}
	if _, ok := q.Failures["127.0.0.1:1"]; !ok || len(q.Failures) != 1 {
		t.Fatalf("failures = %v, want the unreachable 127.0.0.1:1 only", q.Failures)
	}

	var c struct {
		OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		Failures    map[string]json.RawMessage                       `json:"failures"`
	}
	claim := map[string]any{"one_time_keys": map[string]any{bob.UserID.String(): map[string]string{bobDev: "signed_curve25519"}}}
	if err := e2eeDo(t, alice.Client, http.MethodPost, []any{"keys", "claim"}, nil, claim, &c); err != nil {
		t.Fatalf("keys/claim: %v", err)
	}
	if got := c.OneTimeKeys[bob.UserID.String()][bobDev]; len(got) != 1 || len(c.Failures) != 0 {
		t.Fatalf("claimed %v (failures %v), want one of bob's keys", c.OneTimeKeys, c.Failures)
	}
	// B handed that key out: its count for bob went down by one.
	var counts struct {
		Counts map[string]int `json:"one_time_key_counts"`
	}
	if err := e2eeDo(t, bob.Client, http.MethodPost, []any{"keys", "upload"}, nil, map[string]any{}, &counts); err != nil {
		t.Fatal(err)
	}
	if n := counts.Counts["signed_curve25519"]; n != 49 {
		t.Fatalf("bob's one-time keys on B after the claim: %d, want 49", n)
	}

	msg := map[string]any{bob.UserID.String(): map[string]any{"*": map[string]any{"ping": 1}}}
	if err := sendToDevice(t, alice.Client, "org.example.ping", "t1", msg); err != nil {
		t.Fatalf("sendToDevice: %v", err)
	}
	// Retrying the transaction does not send it again.
	if err := sendToDevice(t, alice.Client, "org.example.ping", "t1", msg); err != nil {
		t.Fatalf("sendToDevice retry: %v", err)
	}
	var got []toDeviceEvent
	since := ""
	keysFedEventually(t, "alice's to-device message on B", func() bool {
		evs, next := toDeviceSync(t, bob.Client, since, 1000)
		got, since = append(got, evs...), next
		return len(got) > 0
	})
	time.Sleep(500 * time.Millisecond)
	evs, _ := toDeviceSync(t, bob.Client, since, 0)
	got = append(got, evs...)
	if len(got) != 1 || got[0].Sender != alice.UserID.String() || got[0].Type != "org.example.ping" || string(got[0].Content) != `{"ping":1}` {
		t.Fatalf("bob's to-device events = %+v, want alice's one ping", got)
	}
}

// TestKeysFedEncryptedMessage: Element's flow across servers with
// mautrix's OlmMachine: alice@A encrypts to bob@B (keys queried and claimed
// from B, the room key sent over federation), bob decrypts and replies;
// bob's new device reaches alice as a device-list update and decrypts the
// next message.
func TestKeysFedEncryptedMessage(t *testing.T) {
	_, b, alice, bob, roomID := keysFedPair(t)
	alice.sync(t)
	bob.sync(t)
	users := []id.UserID{alice.UserID, bob.UserID}

	first := alice.sendEncrypted(t, roomID, users, "hello bob, across servers")
	var text string
	var derr error
	keysFedEventually(t, "bob decrypting alice's message", func() bool {
		bob.sync(t)
		if bob.events[first] == nil {
			return false
		}
		text, derr = bob.decrypt(t, first)
		return derr == nil
	})
	if text != "hello bob, across servers" {
		t.Fatalf("bob decrypts %q", text)
	}

	reply := bob.sendEncrypted(t, roomID, users, "hi alice, from B")
	keysFedEventually(t, "alice decrypting bob's reply", func() bool {
		alice.sync(t)
		if alice.events[reply] == nil {
			return false
		}
		text, derr = alice.decrypt(t, reply)
		return derr == nil
	})
	if text != "hi alice, from B" {
		t.Fatalf("alice decrypts %q", text)
	}

	// Bob's second device: B sends m.device_list_update, alice's sync lists bob.
	bob2 := newE2EEDevice(t, e2eeLogin(t, b.testNode, bob.UserID, "bob's laptop"))
	alice.lists = mautrix.DeviceLists{}
	keysFedEventually(t, "bob in alice's device_lists.changed", func() bool {
		alice.sync(t)
		return slices.Contains(alice.lists.Changed, bob.UserID)
	})
	second := alice.sendEncrypted(t, roomID, users, "now to both of your devices")
	for _, d := range []*e2eeDevice{bob, bob2} {
		keysFedEventually(t, string(d.DeviceID)+" decrypting the second message", func() bool {
			d.sync(t)
			if d.events[second] == nil {
				return false
			}
			text, derr = d.decrypt(t, second)
			return derr == nil
		})
		if text != "now to both of your devices" {
			t.Fatalf("%s decrypts %q", d.DeviceID, text)
		}
	}
}

// TestKeysFedDevicesAndEDUs: B serves GET /user/devices for bob (404 for
// others); an m.direct_to_device EDU delivered twice (a retried
// transaction) reaches bob once, one whose sender is not of the origin is
// dropped; bob deleting a device reaches alice as a device-list change and
// alice's /keys/query no longer lists it.
func TestKeysFedDevicesAndEDUs(t *testing.T) {
	a, b, alice, bob, _ := keysFedPair(t)
	ctx := ctxT(t)
	bob2C := e2eeLogin(t, b.testNode, bob.UserID, "bob's laptop")
	newE2EEDevice(t, bob2C)

	var devs struct {
		UserID   string `json:"user_id"`
		StreamID int64  `json:"stream_id"`
		Devices  []struct {
			DeviceID string          `json:"device_id"`
			Keys     json.RawMessage `json:"keys"`
			Name     string          `json:"device_display_name"`
		} `json:"devices"`
	}
	if err := a.Fed.Client.Get(ctx, b.Name, "/_matrix/federation/v1/user/devices/"+bob.UserID.String(), &devs); err != nil {
		t.Fatalf("user/devices: %v", err)
	}
	var ids []string
	for _, d := range devs.Devices {
		if len(d.Keys) == 0 {
			t.Fatalf("device %s without keys: %+v", d.DeviceID, devs)
		}
		ids = append(ids, d.DeviceID)
	}
	slices.Sort(ids)
	want := []string{bob.DeviceID.String(), bob2C.DeviceID.String()}
	slices.Sort(want)
	if devs.UserID != bob.UserID.String() || devs.StreamID <= 0 || !slices.Equal(ids, want) {
		t.Fatalf("user/devices = %+v, want devices %v and a stream_id", devs, want)
	}
	err := a.Fed.Client.Get(ctx, b.Name, "/_matrix/federation/v1/user/devices/@nobody:"+b.Name, nil)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("user/devices for an unknown user: %v, want 404", err)
	}

	// The same message_id in two transactions; a forged sender.
	edu := func(sender, msgID string) map[string]any {
		return map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
			"sender": sender, "type": "org.example.edu", "message_id": msgID,
			"messages": map[string]any{bob.UserID.String(): map[string]any{bob.DeviceID.String(): map[string]any{"n": msgID}}},
		}}
	}
	for i, e := range []map[string]any{edu(alice.UserID.String(), "m1"), edu(alice.UserID.String(), "m1"), edu("@mallory:"+b.Name, "m2")} {
		txn := map[string]any{"origin": a.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{}, "edus": []any{e}}
		if err := a.Fed.Client.Put(ctx, b.Name, fmt.Sprintf("/_matrix/federation/v1/send/keysfed%d", i), txn, nil); err != nil {
			t.Fatalf("send transaction %d: %v", i, err)
		}
	}
	evs, _ := toDeviceSync(t, bob.Client, "", 0)
	var got []string
	for _, ev := range evs {
		if ev.Type == "org.example.edu" {
			got = append(got, ev.Sender+" "+string(ev.Content))
		}
	}
	if want := []string{alice.UserID.String() + ` {"n":"m1"}`}; !slices.Equal(got, want) {
		t.Fatalf("bob's EDU messages = %q, want %q", got, want)
	}

	// Bob deletes his laptop.
	alice.sync(t)
	alice.lists = mautrix.DeviceLists{}
	uia := devicesUIA(t, bob.Client, http.MethodDelete, bob.BuildClientURL("v3", "devices", bob2C.DeviceID), map[string]any{})
	if err := bob.DeleteDevice(ctx, bob2C.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: devicesPasswordAuth(bob.UserID, devicesPassword, uia.Session)}); err != nil {
		t.Fatalf("delete device: %v", err)
	}
	keysFedEventually(t, "bob in alice's device_lists.changed after the deletion", func() bool {
		alice.sync(t)
		return slices.Contains(alice.lists.Changed, bob.UserID)
	})
	var q struct {
		DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
	}
	if err := e2eeDo(t, alice.Client, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{"device_keys": map[string]any{bob.UserID.String(): []string{}}}, &q); err != nil {
		t.Fatal(err)
	}
	if l := q.DeviceKeys[bob.UserID.String()]; len(l) != 1 || l[bob.DeviceID.String()] == nil {
		t.Fatalf("bob's devices after the deletion: %v, want only %s", l, bob.DeviceID)
	}
}
