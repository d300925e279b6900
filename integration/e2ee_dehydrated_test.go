package integration

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// dehydratedPath is MSC3814's unstable endpoint, plus any further segments.
func dehydratedPath(parts ...string) string {
	p := "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"
	for _, s := range parts {
		p += "/" + s
	}
	return p
}

// dehydrated is a device made as Element makes one: a fresh Olm account
// whose pickle, encrypted with a key only the user holds, travels as
// device_data, and whose device and one-time keys go up with it.
type dehydrated struct {
	deviceID  id.DeviceID
	account   olm.Account
	pickleKey []byte
}

func newDehydrated(t testing.TB, deviceID id.DeviceID) *dehydrated {
	t.Helper()
	acc, err := olm.NewAccount()
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return &dehydrated{deviceID: deviceID, account: acc, pickleKey: key}
}

// body is the PUT request: device_data with the pickled account, signed
// device keys marked dehydrated and otks signed one-time keys.
func (d *dehydrated) body(t testing.TB, user id.UserID, otks int) map[string]any {
	t.Helper()
	wrapped := &crypto.OlmAccount{Internal: d.account}
	signing, identity := wrapped.Keys()
	dk := &mautrix.DeviceKeys{
		UserID:     user,
		DeviceID:   d.deviceID,
		Algorithms: []id.Algorithm{id.AlgorithmOlmV1, id.AlgorithmMegolmV1},
		Keys: mautrix.KeyMap{
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, d.deviceID):    signing.String(),
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, d.deviceID): identity.String(),
		},
		Dehydrated: true,
	}
	sig, err := wrapped.SignJSON(dk)
	if err != nil {
		t.Fatal(err)
	}
	dk.Signatures = signatures.NewSingleSignature(user, id.KeyAlgorithmEd25519, d.deviceID.String(), sig)
	if err := d.account.GenOneTimeKeys(uint(otks)); err != nil {
		t.Fatal(err)
	}
	keys, err := d.account.OneTimeKeys()
	if err != nil {
		t.Fatal(err)
	}
	oneTime := map[string]any{}
	for keyID, key := range keys {
		otk := mautrix.OneTimeKey{Key: key, IsSigned: true}
		sig, err := wrapped.SignJSON(&otk)
		if err != nil {
			t.Fatal(err)
		}
		otk.Signatures = signatures.NewSingleSignature(user, id.KeyAlgorithmEd25519, d.deviceID.String(), sig)
		oneTime["signed_curve25519:"+keyID] = &otk
	}
	d.account.MarkKeysAsPublished()
	pickled, err := d.account.Pickle(d.pickleKey)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{
		"device_id":                   d.deviceID,
		"device_data":                 map[string]any{"algorithm": "org.example.test.olm_pickle", "account": string(pickled)},
		"initial_device_display_name": "Offline device",
		"device_keys":                 dk,
		"one_time_keys":               oneTime,
	}
}

// dehydratedEventsResp is POST …/dehydrated_device/{deviceId}/events's answer.
type dehydratedEventsResp struct {
	Events    []toDeviceEvent `json:"events"`
	NextBatch string          `json:"next_batch"`
}

// TestDehydratedDevice runs MSC3814 as Element uses it: bob parks a
// dehydrated device; alice's client sends it a room key like any other
// device of bob's; bob's only real device logs out; a new device of bob's
// fetches the dehydrated device, rehydrates its Olm account, reads its
// to-device inbox page by page, decrypts the room key and with it alice's
// message; then it replaces and finally deletes the dehydrated device.
func TestDehydratedDevice(t *testing.T) {
	n := startNode(t)
	aliceC, bobC := n.register(t, "alice"), n.register(t, "bob")
	alice := newE2EEDevice(t, aliceC)
	roomID := e2eeRoom(t, aliceC, bobC)
	alice.sync(t)
	ctx := ctxT(t)

	// No dehydrated device yet.
	status, body := e2eeHTTP(t, bobC, http.MethodGet, dehydratedPath(), nil)
	if status != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("GET before any: %d %v", status, body)
	}

	d1 := newDehydrated(t, "DEHYDRATED1")
	req := d1.body(t, bobC.UserID, 5)
	// Bad requests store nothing.
	for _, c := range []struct {
		what, errcode string
		status        int
		edit          func(map[string]any) map[string]any
	}{
		{"no device_id", "M_MISSING_PARAM", 400, func(m map[string]any) map[string]any { delete(m, "device_id"); return m }},
		{"no device_data", "M_MISSING_PARAM", 400, func(m map[string]any) map[string]any { delete(m, "device_data"); return m }},
		{"device_data without algorithm", "M_BAD_JSON", 400, func(m map[string]any) map[string]any { m["device_data"] = map[string]any{"account": "x"}; return m }},
		{"device_data a string", "M_BAD_JSON", 400, func(m map[string]any) map[string]any { m["device_data"] = "x"; return m }},
		{"no device_keys", "M_MISSING_PARAM", 400, func(m map[string]any) map[string]any { delete(m, "device_keys"); return m }},
		{"device_keys for another device ID", "M_INVALID_PARAM", 400, func(m map[string]any) map[string]any { m["device_id"] = "OTHERID"; return m }},
		{"device_id of a real device", "M_INVALID_PARAM", 400, func(m map[string]any) map[string]any {
			return newDehydrated(t, bobC.DeviceID).body(t, bobC.UserID, 1)
		}},
		{"unsigned one-time key", "M_BAD_JSON", 400, func(m map[string]any) map[string]any {
			m["one_time_keys"] = map[string]any{"signed_curve25519:X": map[string]any{"key": randomCurveKey(t)}}
			return m
		}},
	} {
		m := map[string]any{}
		for k, v := range req {
			m[k] = v
		}
		status, body := e2eeHTTP(t, bobC, http.MethodPut, dehydratedPath(), c.edit(m))
		if status != c.status || body["errcode"] != c.errcode {
			t.Errorf("PUT with %s: %d %v, want %d %s", c.what, status, body, c.status, c.errcode)
		}
	}
	if status, _ := e2eeHTTP(t, bobC, http.MethodGet, dehydratedPath(), nil); status != 404 {
		t.Fatalf("a refused PUT left a dehydrated device: %d", status)
	}
	if devs, err := bobC.GetDevicesInfo(ctx); err != nil || len(devs.Devices) != 1 {
		t.Fatalf("a refused PUT left a device: %+v, %v", devs, err)
	}

	status, body = e2eeHTTP(t, bobC, http.MethodPut, dehydratedPath(), req)
	if status != 200 || body["device_id"] != "DEHYDRATED1" {
		t.Fatalf("PUT: %d %v", status, body)
	}
	status, body = e2eeHTTP(t, bobC, http.MethodGet, dehydratedPath(), nil)
	if status != 200 || body["device_id"] != "DEHYDRATED1" || !e2eeSameJSON(t, mustJSON(t, body["device_data"]), mustJSON(t, req["device_data"])) {
		t.Fatalf("GET: %d %v", status, body)
	}
	// Alice's client sees bob's new (dehydrated) device, flagged as such.
	alice.lists = mautrix.DeviceLists{}
	alice.sync(t)
	if !slices.Contains(alice.lists.Changed, bobC.UserID) {
		t.Errorf("alice's changed after bob's dehydrated device = %v", alice.lists.Changed)
	}
	dk, ok := e2eeQuery(t, aliceC, bobC.UserID).DeviceKeys[bobC.UserID]["DEHYDRATED1"]
	if !ok || !dk.Dehydrated || dk.Unsigned["device_display_name"] != "Offline device" {
		t.Fatalf("alice's /keys/query of the dehydrated device: %+v (present %v)", dk, ok)
	}

	// Alice writes while bob's real device is gone.
	if _, err := bobC.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	msg := alice.sendEncrypted(t, roomID, []id.UserID{alice.UserID, bobC.UserID}, "for whichever device comes next")

	// Bob logs in on a new device and rehydrates.
	bob2 := e2eeLogin(t, n, bobC.UserID, "bob's new phone")
	status, body = e2eeHTTP(t, bob2, http.MethodGet, dehydratedPath(), nil)
	if status != 200 || body["device_id"] != "DEHYDRATED1" {
		t.Fatalf("GET from the new device: %d %v", status, body)
	}
	var data struct {
		Account string `json:"account"`
	}
	if err := json.Unmarshal(mustJSON(t, body["device_data"]), &data); err != nil {
		t.Fatal(err)
	}
	account, err := olm.AccountFromPickled([]byte(data.Account), d1.pickleKey)
	if err != nil {
		t.Fatalf("unpickle the dehydrated account: %v", err)
	}
	// Wrong device or token: refused.
	status, body = e2eeHTTP(t, bob2, http.MethodPost, dehydratedPath(bob2.DeviceID.String(), "events"), map[string]any{})
	if status != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Errorf("events of a device that is not the dehydrated one: %d %v", status, body)
	}
	status, body = e2eeHTTP(t, bob2, http.MethodPost, dehydratedPath("DEHYDRATED1", "events"), map[string]any{"next_batch": "nonsense"})
	if status != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Errorf("events with a bad next_batch: %d %v", status, body)
	}
	readEvents := func(next string) dehydratedEventsResp {
		t.Helper()
		var resp dehydratedEventsResp
		reqBody := map[string]any{}
		if next != "" {
			reqBody["next_batch"] = next
		}
		status, raw := e2eeHTTP(t, bob2, http.MethodPost, dehydratedPath("DEHYDRATED1", "events"), reqBody)
		if status != 200 {
			t.Fatalf("events: %d %v", status, raw)
		}
		if err := json.Unmarshal(mustJSON(t, raw), &resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	page := readEvents("")
	if len(page.Events) != 1 || page.Events[0].Type != event.ToDeviceEncrypted.Type || page.Events[0].Sender != aliceC.UserID.String() || page.NextBatch == "" {
		t.Fatalf("dehydrated inbox: %+v", page)
	}
	// Reading again without acknowledging gives the same; acknowledging empties it.
	if again := readEvents(""); len(again.Events) != 1 || again.NextBatch != page.NextBatch {
		t.Errorf("re-read without next_batch: %+v", again)
	}
	if rest := readEvents(page.NextBatch); len(rest.Events) != 0 || rest.NextBatch != page.NextBatch {
		t.Errorf("after the last page: %+v", rest)
	}
	if again := readEvents(""); len(again.Events) != 0 {
		t.Errorf("acknowledged messages came back: %+v", again)
	}

	// The rehydrated Olm account decrypts the room key.
	dclient, err := mautrix.NewClient(n.URL, bob2.UserID, bob2.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	dclient.DeviceID = "DEHYDRATED1"
	store := crypto.NewMemoryStore(nil)
	if err := store.PutAccount(ctx, &crypto.OlmAccount{Internal: account, Shared: true}); err != nil {
		t.Fatal(err)
	}
	states := &e2eeStateStore{}
	states.add(roomID)
	rehydrated := crypto.NewOlmMachine(dclient, nil, store, states)
	if err := rehydrated.Load(ctx); err != nil {
		t.Fatal(err)
	}
	for _, te := range page.Events {
		ev := &event.Event{Sender: id.UserID(te.Sender), Type: event.Type{Type: te.Type, Class: event.ToDeviceEventType}}
		if err := json.Unmarshal(te.Content, &ev.Content); err != nil {
			t.Fatal(err)
		}
		if err := ev.Content.ParseRaw(ev.Type); err != nil {
			t.Fatal(err)
		}
		rehydrated.HandleToDeviceEvent(ctx, ev)
	}
	bobNew := &e2eeDevice{Client: bob2, mach: rehydrated, state: states, events: map[id.EventID]*event.Event{}}
	if hist := bobNew.history(t, roomID); !slices.Contains(hist, msg) {
		t.Fatalf("history %v lacks %s", hist, msg)
	}
	if got, err := bobNew.decrypt(t, msg); err != nil || got != "for whichever device comes next" {
		t.Fatalf("decrypt with the rehydrated account: %q, %v", got, err)
	}

	// A new dehydrated device replaces the old one, whose keys go with it.
	d2 := newDehydrated(t, "DEHYDRATED2")
	if status, body := e2eeHTTP(t, bob2, http.MethodPut, dehydratedPath(), d2.body(t, bob2.UserID, 3)); status != 200 || body["device_id"] != "DEHYDRATED2" {
		t.Fatalf("replace: %d %v", status, body)
	}
	devs, err := bob2.GetDevicesInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []id.DeviceID
	for _, d := range devs.Devices {
		ids = append(ids, d.DeviceID)
	}
	if slices.Contains(ids, "DEHYDRATED1") || !slices.Contains(ids, "DEHYDRATED2") {
		t.Errorf("devices after replacing: %v", ids)
	}
	q := e2eeQuery(t, aliceC, bob2.UserID).DeviceKeys[bob2.UserID]
	if _, ok := q["DEHYDRATED1"]; ok {
		t.Error("the replaced dehydrated device's keys are still served")
	}
	if _, ok := q["DEHYDRATED2"]; !ok {
		t.Error("the new dehydrated device's keys are missing")
	}
	if keyID, _ := keysClaim(t, aliceC, bob2.UserID, "DEHYDRATED1").claimedKeyID(bob2.UserID, "DEHYDRATED1"); keyID != "" {
		t.Errorf("the replaced device's one-time key %s is still claimable", keyID)
	}
	status, body = e2eeHTTP(t, bob2, http.MethodPost, dehydratedPath("DEHYDRATED1", "events"), map[string]any{})
	if status != 403 {
		t.Errorf("events of the replaced device: %d %v", status, body)
	}

	// Its inbox pages 100 messages at a time, in order.
	for i := range 105 {
		if err := sendToDevice(t, aliceC, "m.test", fmt.Sprintf("page%d", i), map[string]any{
			bob2.UserID.String(): map[string]any{"DEHYDRATED2": map[string]any{"n": i}}}); err != nil {
			t.Fatal(err)
		}
	}
	readAs := func(next string) dehydratedEventsResp {
		t.Helper()
		var resp dehydratedEventsResp
		reqBody := map[string]any{}
		if next != "" {
			reqBody["next_batch"] = next
		}
		status, raw := e2eeHTTP(t, bob2, http.MethodPost, dehydratedPath("DEHYDRATED2", "events"), reqBody)
		if status != 200 {
			t.Fatalf("events: %d %v", status, raw)
		}
		if err := json.Unmarshal(mustJSON(t, raw), &resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var seen []string
	next := ""
	for range 5 {
		p := readAs(next)
		if len(p.Events) > 100 {
			t.Fatalf("a page of %d events", len(p.Events))
		}
		if len(p.Events) == 0 {
			break
		}
		for _, ev := range p.Events {
			seen = append(seen, string(ev.Content))
		}
		next = p.NextBatch
	}
	if len(seen) != 105 || seen[0] != `{"n":0}` || seen[100] != `{"n":100}` || seen[104] != `{"n":104}` {
		t.Fatalf("paged inbox: %d messages, first %v", len(seen), seen[:min(3, len(seen))])
	}

	// Deleting it: gone from GET, /devices and /keys/query; deleting again is 404.
	status, body = e2eeHTTP(t, bob2, http.MethodDelete, dehydratedPath(), nil)
	if status != 200 || body["device_id"] != "DEHYDRATED2" {
		t.Fatalf("DELETE: %d %v", status, body)
	}
	if status, _ := e2eeHTTP(t, bob2, http.MethodGet, dehydratedPath(), nil); status != 404 {
		t.Errorf("GET after DELETE: %d", status)
	}
	if _, ok := e2eeQuery(t, aliceC, bob2.UserID).DeviceKeys[bob2.UserID]["DEHYDRATED2"]; ok {
		t.Error("deleted dehydrated device still in /keys/query")
	}
	if status, body := e2eeHTTP(t, bob2, http.MethodDelete, dehydratedPath(), nil); status != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Errorf("second DELETE: %d %v", status, body)
	}
	status, body = e2eeHTTP(t, bob2, http.MethodPost, dehydratedPath("DEHYDRATED2", "events"), map[string]any{})
	if status != 404 {
		t.Errorf("events with no dehydrated device: %d %v", status, body)
	}

	// A dehydrated device deleted through DELETE /devices, or taken over
	// by a login, is no longer offered.
	d3 := newDehydrated(t, "DEHYDRATED3")
	if status, body := e2eeHTTP(t, bob2, http.MethodPut, dehydratedPath(), d3.body(t, bob2.UserID, 1)); status != 200 {
		t.Fatalf("PUT 3: %d %v", status, body)
	}
	e2eeDeleteDevice(t, bob2, "DEHYDRATED3")
	if status, _ := e2eeHTTP(t, bob2, http.MethodGet, dehydratedPath(), nil); status != 404 {
		t.Errorf("GET after DELETE /devices of the dehydrated device: %d", status)
	}
	d4 := newDehydrated(t, "DEHYDRATED4")
	if status, body := e2eeHTTP(t, bob2, http.MethodPut, dehydratedPath(), d4.body(t, bob2.UserID, 1)); status != 200 {
		t.Fatalf("PUT 4: %d %v", status, body)
	}
	taker, _ := mautrix.NewClient(n.URL, "", "")
	if _, err := taker.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bob"},
		Password: "correct horse battery", DeviceID: "DEHYDRATED4", StoreCredentials: true,
	}); err != nil {
		t.Fatal(err)
	}
	if status, _ := e2eeHTTP(t, bob2, http.MethodGet, dehydratedPath(), nil); status != 404 {
		t.Errorf("GET after a login took the dehydrated device over: %d", status)
	}
	anon, _ := mautrix.NewClient(n.URL, "", "")
	if status, body := e2eeHTTP(t, anon, http.MethodGet, dehydratedPath(), nil); status != 401 || body["errcode"] != "M_MISSING_TOKEN" {
		t.Errorf("GET without a token: %d %v", status, body)
	}
}
