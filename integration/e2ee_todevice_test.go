package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// toDeviceEvent is one to_device event as /sync returns it.
type toDeviceEvent struct {
	Sender  string          `json:"sender"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// toDeviceSync syncs (timeout in ms) and returns the to-device events and next_batch.
func toDeviceSync(t testing.TB, c *mautrix.Client, since string, timeout int) ([]toDeviceEvent, string) {
	t.Helper()
	var resp struct {
		NextBatch string `json:"next_batch"`
		ToDevice  struct {
			Events []toDeviceEvent `json:"events"`
		} `json:"to_device"`
	}
	q := map[string]string{"timeout": fmt.Sprint(timeout)}
	if since != "" {
		q["since"] = since
	}
	if err := e2eeDo(t, c, http.MethodGet, []any{"sync"}, q, nil, &resp); err != nil {
		t.Fatalf("sync: %v", err)
	}
	return resp.ToDevice.Events, resp.NextBatch
}

func sendToDevice(t testing.TB, c *mautrix.Client, evType, txnID string, messages map[string]any) error {
	t.Helper()
	return e2eeDo(t, c, http.MethodPut, []any{"sendToDevice", evType, txnID}, nil, map[string]any{"messages": messages}, nil)
}

// TestToDeviceDeliveryAndAck covers /sendToDevice and the to_device part of
// /sync: idempotent transactions, "*", delivery in order, redelivery until
// the client acknowledges with a newer since, and waking a waiting sync.
func TestToDeviceDeliveryAndAck(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, "alice"), n.register(t, "bob")
	_, s0 := toDeviceSync(t, bob, "", 0)
	dev := bob.DeviceID.String()

	msg := func(i int) map[string]any {
		return map[string]any{bob.UserID.String(): map[string]any{dev: map[string]any{"n": i}}}
	}
	if err := sendToDevice(t, alice, "m.test", "txn1", msg(1)); err != nil {
		t.Fatal(err)
	}
	// A retried transaction is not delivered twice.
	if err := sendToDevice(t, alice, "m.test", "txn1", msg(1)); err != nil {
		t.Fatal(err)
	}
	if err := sendToDevice(t, alice, "m.test", "txn2", msg(2)); err != nil {
		t.Fatal(err)
	}
	evs, s1 := toDeviceSync(t, bob, s0, 0)
	if len(evs) != 2 || evs[0].Sender != alice.UserID.String() || evs[0].Type != "m.test" ||
		string(evs[0].Content) != `{"n":1}` || string(evs[1].Content) != `{"n":2}` {
		t.Fatalf("first delivery = %+v", evs)
	}
	// The client lost the response and retries with the old since: same messages.
	again, _ := toDeviceSync(t, bob, s0, 0)
	if len(again) != 2 || string(again[1].Content) != `{"n":2}` {
		t.Fatalf("retry with old since = %+v", again)
	}
	// Advancing acknowledges them: nothing new, and the old since no longer brings them back.
	if evs, _ := toDeviceSync(t, bob, s1, 0); len(evs) != 0 {
		t.Fatalf("after acknowledgement: %+v", evs)
	}
	if evs, _ := toDeviceSync(t, bob, s0, 0); len(evs) != 0 {
		t.Fatalf("acknowledged messages redelivered to an old since: %+v", evs)
	}
	// Acknowledged messages are deleted, not just hidden: an initial sync has none.
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, _ := toDeviceSync(t, bob, "", 0)
		if len(evs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged messages still stored: %+v", evs)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// "*" reaches every device of the user; unknown devices and remote users are ignored.
	bob2 := e2eeLogin(t, n, bob.UserID, "bob2")
	_, b2tok := toDeviceSync(t, bob2, "", 0)
	_, btok := toDeviceSync(t, bob, s1, 0)
	err := sendToDevice(t, alice, "m.star", "txn3", map[string]any{
		bob.UserID.String():     map[string]any{"*": map[string]any{"to": "all"}},
		"@carol:remote.example": map[string]any{"DEV": map[string]any{}},
		"@nobody:localhost":     map[string]any{"DEV": map[string]any{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cl  *mautrix.Client
		tok string
	}{{bob, btok}, {bob2, b2tok}} {
		evs, _ := toDeviceSync(t, c.cl, c.tok, 0)
		if len(evs) != 1 || evs[0].Type != "m.star" {
			t.Errorf("%s got %+v from *", c.cl.DeviceID, evs)
		}
	}
	// A device named explicitly gets its own message, "*" the others.
	_, btok = toDeviceSync(t, bob, btok, 0)
	_, b2tok = toDeviceSync(t, bob2, b2tok, 0)
	if err := sendToDevice(t, alice, "m.mixed", "txn4", map[string]any{bob.UserID.String(): map[string]any{
		"*": map[string]any{"to": "star"}, bob2.DeviceID.String(): map[string]any{"to": "named"}}}); err != nil {
		t.Fatal(err)
	}
	if evs, _ := toDeviceSync(t, bob2, b2tok, 0); len(evs) != 1 || string(evs[0].Content) != `{"to":"named"}` {
		t.Errorf("named device got %+v", evs)
	}
	if evs, _ := toDeviceSync(t, bob, btok, 0); len(evs) != 1 || string(evs[0].Content) != `{"to":"star"}` {
		t.Errorf("other device got %+v", evs)
	}

	// A waiting sync wakes for a to-device message.
	_, btok = toDeviceSync(t, bob, btok, 0)
	done := make(chan []toDeviceEvent, 1)
	go func() {
		evs, _ := toDeviceSync(t, bob, btok, 20000)
		done <- evs
	}()
	time.Sleep(200 * time.Millisecond)
	began := time.Now()
	if err := sendToDevice(t, alice, "m.wake", "txn5", msg(5)); err != nil {
		t.Fatal(err)
	}
	select {
	case evs := <-done:
		if len(evs) != 1 || evs[0].Type != "m.wake" {
			t.Errorf("woken sync got %+v", evs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("to-device message did not wake the waiting sync")
	}
	if time.Since(began) > 5*time.Second {
		t.Errorf("wake took %v", time.Since(began))
	}
}

// TestToDeviceDeletedDevice checks that a deleted device's inbox goes with
// it: a new device reusing its ID starts empty.
func TestToDeviceDeletedDevice(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, "alice"), n.register(t, "bob")
	bob2 := e2eeLogin(t, n, bob.UserID, "bob2")
	dev := bob2.DeviceID
	if err := sendToDevice(t, alice, "m.test", "t1", map[string]any{bob.UserID.String(): map[string]any{dev.String(): map[string]any{"x": 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob2.Logout(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	again, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.Login(ctxT(t), &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: bob.UserID.Localpart()},
		Password: "correct horse battery", DeviceID: dev, StoreCredentials: true,
	}); err != nil {
		t.Fatal(err)
	}
	if again.DeviceID != dev {
		t.Fatalf("login got device %s, want %s", again.DeviceID, dev)
	}
	if evs, _ := toDeviceSync(t, again, "", 0); len(evs) != 0 {
		t.Fatalf("new device with a deleted device's ID received its messages: %+v", evs)
	}
}

// TestToDeviceBadInput checks /sendToDevice's errors.
func TestToDeviceBadInput(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, "alice"), n.register(t, "bob")
	bobDev := map[string]any{bob.DeviceID.String(): map[string]any{}}
	err := e2eeDo(t, alice, http.MethodPut, []any{"sendToDevice", "m.test", "a"}, nil, map[string]any{}, nil)
	e2eeWantErr(t, "missing messages", err, 400, "M_MISSING_PARAM")
	err = sendToDevice(t, alice, "m.test", "b", map[string]any{bob.UserID.String(): map[string]any{bob.DeviceID.String(): "not an object"}})
	e2eeWantErr(t, "string content", err, 400, "M_BAD_JSON")
	err = sendToDevice(t, alice, "m.test", "c", map[string]any{"bob": bobDev})
	e2eeWantErr(t, "malformed user ID", err, 400, "M_INVALID_PARAM")
	err = e2eeDo(t, alice, http.MethodPut, []any{"sendToDevice", "m.test", "d"}, nil, map[string]any{"messages": []int{1}}, nil)
	e2eeWantErr(t, "messages a list", err, 400, "M_BAD_JSON")
	err = e2eeRaw(t, alice, http.MethodPut, []any{"sendToDevice", "m.test", "e"}, []byte("{nope"))
	e2eeWantErr(t, "not JSON", err, 400, "M_NOT_JSON")
	many := map[string]any{}
	for i := range 10001 {
		many[fmt.Sprintf("D%d", i)] = map[string]any{}
	}
	err = sendToDevice(t, alice, "m.test", "f", map[string]any{bob.UserID.String(): many})
	e2eeWantErr(t, "10001 messages", err, 413, "M_TOO_LARGE")
	anon, _ := mautrix.NewClient(n.URL, "", "")
	err = sendToDevice(t, anon, "m.test", "g", map[string]any{bob.UserID.String(): bobDev})
	e2eeWantErr(t, "no token", err, 401, "M_MISSING_TOKEN")
	err = e2eeDo(t, alice, http.MethodPost, []any{"sendToDevice", "m.test", "h"}, nil, map[string]any{"messages": map[string]any{}}, nil)
	e2eeWantErr(t, "wrong method", err, 405, "M_UNRECOGNIZED")
	// None of the refused requests delivered anything.
	if evs, _ := toDeviceSync(t, bob, "", 0); len(evs) != 0 {
		t.Errorf("refused requests delivered %+v", evs)
	}
	// A user may message their own devices, including the sending one.
	if err := sendToDevice(t, bob, "m.self", "i", map[string]any{bob.UserID.String(): map[string]any{"*": map[string]any{}}}); err != nil {
		t.Fatal(err)
	}
	if evs, _ := toDeviceSync(t, bob, "", 0); len(evs) != 1 || evs[0].Sender != string(bob.UserID) {
		t.Errorf("message to own devices: %+v", evs)
	}
}

// TestToDeviceTxnPerDevice: a transaction ID is scoped to the sending
// device, so another device of the same user reusing it is not a retry.
func TestToDeviceTxnPerDevice(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, "alice"), n.register(t, "bob")
	alice2 := e2eeLogin(t, n, alice.UserID, "alice2")
	_, since := toDeviceSync(t, bob, "", 0)
	msg := map[string]any{bob.UserID.String(): map[string]any{bob.DeviceID.String(): map[string]any{"from": "x"}}}
	for _, c := range []*mautrix.Client{alice, alice, alice2} {
		if err := sendToDevice(t, c, "m.test", "same-txn", msg); err != nil {
			t.Fatal(err)
		}
	}
	if evs, _ := toDeviceSync(t, bob, since, 0); len(evs) != 2 {
		t.Fatalf("two devices, one retried: got %d messages, want 2: %+v", len(evs), evs)
	}
}
