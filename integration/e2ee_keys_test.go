package integration

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// keysUploadResp is POST /keys/upload's answer.
type keysUploadResp struct {
	Counts map[string]int `json:"one_time_key_counts"`
}

// keysClaimResp is POST /keys/claim's answer, kept raw.
type keysClaimResp struct {
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures    map[string]json.RawMessage                       `json:"failures"`
}

func randomCurveKey(t testing.TB) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawStdEncoding.EncodeToString(b)
}

// signedOTK makes a signed_curve25519 key object signed by the device key.
func signedOTK(t testing.TB, c *mautrix.Client, kp e2eeKeyPair, fallback bool) map[string]any {
	obj := map[string]any{"key": randomCurveKey(t)}
	if fallback {
		obj["fallback"] = true
	}
	return kp.sign(t, obj, c.UserID.String(), "ed25519:"+c.DeviceID.String())
}

func keysUpload(t testing.TB, c *mautrix.Client, body map[string]any) (map[string]int, error) {
	t.Helper()
	var resp keysUploadResp
	err := e2eeDo(t, c, http.MethodPost, []any{"keys", "upload"}, nil, body, &resp)
	return resp.Counts, err
}

func keysClaim(t testing.TB, c *mautrix.Client, user id.UserID, device id.DeviceID) keysClaimResp {
	t.Helper()
	var resp keysClaimResp
	body := map[string]any{"one_time_keys": map[string]any{user.String(): map[string]string{device.String(): "signed_curve25519"}}}
	if err := e2eeDo(t, c, http.MethodPost, []any{"keys", "claim"}, nil, body, &resp); err != nil {
		t.Fatalf("claim: %v", err)
	}
	return resp
}

// claimedKeyID returns the single key ID claimed for user/device, or "".
func (r keysClaimResp) claimedKeyID(user id.UserID, device id.DeviceID) (string, json.RawMessage) {
	for k, v := range r.OneTimeKeys[user.String()][device.String()] {
		return k, v
	}
	return "", nil
}

// TestKeysUploadQueryClaim covers /keys/upload, /keys/query and
// /keys/claim for one device: validation, counts, claim order, the
// fallback key and the sync fields that report them.
func TestKeysUploadQueryClaim(t *testing.T) {
	n := startNode(t)
	alice := e2eeLogin(t, n, n.register(t, "alice").UserID, "alice's phone")
	bob := n.register(t, "bob")
	kp := newE2EEKeyPair(t)
	curve := randomCurveKey(t)

	// Bad device keys.
	wrongKey := newE2EEKeyPair(t)
	forged := e2eeDeviceKeys(t, alice, kp, curve)
	forged["signatures"] = nil
	forged = wrongKey.sign(t, forged, alice.UserID.String(), "ed25519:"+alice.DeviceID.String())
	_, err := keysUpload(t, alice, map[string]any{"device_keys": forged})
	e2eeWantErr(t, "device keys signed by another key", err, 400, "M_INVALID_SIGNATURE")
	other := e2eeDeviceKeys(t, bob, kp, curve) // bob's IDs, uploaded by alice
	_, err = keysUpload(t, alice, map[string]any{"device_keys": other})
	e2eeWantErr(t, "device keys for another user", err, 400, "M_INVALID_PARAM")
	unsigned := e2eeDeviceKeys(t, alice, kp, curve)
	delete(unsigned, "signatures")
	_, err = keysUpload(t, alice, map[string]any{"device_keys": unsigned})
	e2eeWantErr(t, "device keys without signatures", err, 400, "M_BAD_JSON")
	_, err = keysUpload(t, alice, map[string]any{"one_time_keys": map[string]any{"nocolon": map[string]any{"key": "x"}}})
	e2eeWantErr(t, "one-time key ID without algorithm", err, 400, "M_INVALID_PARAM")
	_, err = keysUpload(t, alice, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:A": 42}})
	e2eeWantErr(t, "one-time key that is a number", err, 400, "M_BAD_JSON")
	_, err = keysUpload(t, alice, map[string]any{"fallback_keys": map[string]any{
		"signed_curve25519:F1": signedOTK(t, alice, kp, true), "signed_curve25519:F2": signedOTK(t, alice, kp, true)}})
	e2eeWantErr(t, "two fallback keys of one algorithm", err, 400, "M_INVALID_PARAM")
	err = e2eeRaw(t, alice, http.MethodPost, []any{"keys", "upload"}, []byte(`{"device_keys":`))
	e2eeWantErr(t, "truncated JSON", err, 400, "M_NOT_JSON")

	// Device keys, three one-time keys and a fallback key.
	first := map[string]any{}
	for _, k := range []string{"AAAAAA", "AAAAAB", "AAAAAC"} {
		first["signed_curve25519:"+k] = signedOTK(t, alice, kp, false)
	}
	fallback := signedOTK(t, alice, kp, true)
	counts, err := keysUpload(t, alice, map[string]any{
		"device_keys":   e2eeDeviceKeys(t, alice, kp, curve),
		"one_time_keys": first,
		"fallback_keys": map[string]any{"signed_curve25519:FALLBACK1": fallback},
	})
	if err != nil || counts["signed_curve25519"] != 3 {
		t.Fatalf("upload: counts %v, %v", counts, err)
	}
	// The same device keys again are fine; new identity keys are not.
	if _, err := keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, kp, curve)}); err != nil {
		t.Fatalf("re-upload same device keys: %v", err)
	}
	_, err = keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, kp, randomCurveKey(t))})
	e2eeWantErr(t, "changed identity key", err, 400, "M_INVALID_PARAM")
	_, err = keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, newE2EEKeyPair(t), curve)})
	e2eeWantErr(t, "changed signing key", err, 400, "M_INVALID_PARAM")
	// A one-time key ID is unique: the same key again is a no-op, another key is refused.
	counts, err = keysUpload(t, alice, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:AAAAAA": first["signed_curve25519:AAAAAA"]}})
	if err != nil || counts["signed_curve25519"] != 3 {
		t.Fatalf("re-upload same one-time key: counts %v, %v", counts, err)
	}
	_, err = keysUpload(t, alice, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:AAAAAA": signedOTK(t, alice, kp, false)}})
	e2eeWantErr(t, "one-time key ID reused", err, 400, "M_INVALID_PARAM")
	second := map[string]any{"signed_curve25519:AAAAAD": signedOTK(t, alice, kp, false), "signed_curve25519:AAAAAE": signedOTK(t, alice, kp, false)}
	if counts, err = keysUpload(t, alice, map[string]any{"one_time_keys": second}); err != nil || counts["signed_curve25519"] != 5 {
		t.Fatalf("second upload: counts %v, %v", counts, err)
	}
	// An empty upload just reports the counts.
	if counts, err = keysUpload(t, alice, map[string]any{}); err != nil || counts["signed_curve25519"] != 5 {
		t.Fatalf("empty upload: counts %v, %v", counts, err)
	}

	// Sync reports the counts and the unused fallback key.
	sresp, err := alice.SyncRequest(ctxT(t), 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if sresp.DeviceOTKCount.SignedCurve25519 != 5 || !slices.Equal(sresp.FallbackKeys, []id.KeyAlgorithm{"signed_curve25519"}) {
		t.Fatalf("sync: counts %+v, unused fallback %v", sresp.DeviceOTKCount, sresp.FallbackKeys)
	}

	// Bob queries alice: her device with its display name.
	var q mautrix.RespQueryKeys
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{
		"device_keys": map[string]any{alice.UserID.String(): []string{}, "@nobody:localhost": []string{}, "@carol:remote.example": []string{}},
		"timeout":     10000,
	}, &q)
	if err != nil {
		t.Fatal(err)
	}
	dk, ok := q.DeviceKeys[alice.UserID][alice.DeviceID]
	if !ok || dk.Keys[id.DeviceKeyID("curve25519:"+alice.DeviceID.String())] != curve || dk.Unsigned["device_display_name"] != "alice's phone" {
		t.Fatalf("query alice: %+v", q.DeviceKeys)
	}
	if len(q.DeviceKeys[alice.UserID]) != 1 {
		t.Errorf("alice has %d devices with keys, want 1 (her registration device uploaded none)", len(q.DeviceKeys[alice.UserID]))
	}
	if _, ok := q.DeviceKeys["@nobody:localhost"]; ok {
		t.Error("unknown local user in device_keys")
	}
	if _, ok := q.Failures["remote.example"]; !ok || len(q.Failures) != 1 {
		t.Errorf("failures = %v, want remote.example only", q.Failures)
	}
	var only mautrix.RespQueryKeys
	if err := e2eeDo(t, bob, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{
		"device_keys": map[string]any{alice.UserID.String(): []string{"NOSUCHDEVICE"}}}, &only); err != nil || len(only.DeviceKeys[alice.UserID]) != 0 {
		t.Errorf("query for another device: %+v, %v", only.DeviceKeys, err)
	}
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{}, nil)
	e2eeWantErr(t, "query without device_keys", err, 400, "M_MISSING_PARAM")
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{"device_keys": map[string]any{"alice": []string{}}}, nil)
	e2eeWantErr(t, "query for a malformed user ID", err, 400, "M_INVALID_PARAM")
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{"device_keys": []string{"x"}}, nil)
	e2eeWantErr(t, "query with device_keys a list", err, 400, "M_BAD_JSON")

	// Claims come in upload order: the first upload's three, then the second's two.
	var got []string
	for range 5 {
		keyID, raw := keysClaim(t, bob, alice.UserID, alice.DeviceID).claimedKeyID(alice.UserID, alice.DeviceID)
		if keyID == "" || strings.Contains(string(raw), `"fallback"`) {
			t.Fatalf("claim %d: %q %s", len(got)+1, keyID, raw)
		}
		got = append(got, keyID)
	}
	for i, k := range got {
		inFirst := first[k] != nil
		if (i < 3) != inFirst {
			t.Fatalf("claim order %v: the first upload's keys must go first", got)
		}
	}
	if len(slices.Compact(slices.Sorted(slices.Values(got)))) != 5 {
		t.Fatalf("a one-time key was handed out twice: %v", got)
	}
	// Exhausted: the fallback key, again and again, and marked used.
	for range 2 {
		keyID, raw := keysClaim(t, bob, alice.UserID, alice.DeviceID).claimedKeyID(alice.UserID, alice.DeviceID)
		if keyID != "signed_curve25519:FALLBACK1" || !e2eeSameJSON(t, raw, mustJSON(t, fallback)) {
			t.Fatalf("claim after exhaustion: %q %s", keyID, raw)
		}
	}
	sresp, err = alice.SyncRequest(ctxT(t), 0, sresp.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if sresp.DeviceOTKCount.SignedCurve25519 != 0 || sresp.FallbackKeys == nil || len(sresp.FallbackKeys) != 0 {
		t.Fatalf("after claims: counts %+v, unused fallback %v (want present and empty)", sresp.DeviceOTKCount, sresp.FallbackKeys)
	}
	// A new fallback key is unused again; the same one re-uploaded stays used.
	if _, err := keysUpload(t, alice, map[string]any{"fallback_keys": map[string]any{"signed_curve25519:FALLBACK1": fallback}}); err != nil {
		t.Fatal(err)
	}
	if got := e2eeUnusedFallback(t, alice); len(got) != 0 {
		t.Errorf("re-uploaded used fallback key reported unused: %v", got)
	}
	if _, err := keysUpload(t, alice, map[string]any{"fallback_keys": map[string]any{"signed_curve25519:FALLBACK2": signedOTK(t, alice, kp, true)}}); err != nil {
		t.Fatal(err)
	}
	if got := e2eeUnusedFallback(t, alice); !slices.Equal(got, []id.KeyAlgorithm{"signed_curve25519"}) {
		t.Errorf("new fallback key: unused = %v", got)
	}

	// Claims for unknown devices give nothing; remote users a failure.
	var cr keysClaimResp
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "claim"}, nil, map[string]any{"one_time_keys": map[string]any{
		alice.UserID.String():   map[string]string{"NOSUCHDEVICE": "signed_curve25519"},
		"@carol:remote.example": map[string]string{"DEV": "signed_curve25519"},
	}}, &cr)
	if err != nil || len(cr.OneTimeKeys) != 0 || cr.Failures["remote.example"] == nil {
		t.Fatalf("claim unknown/remote: %+v, %v", cr, err)
	}
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "claim"}, nil, map[string]any{}, nil)
	e2eeWantErr(t, "claim without one_time_keys", err, 400, "M_MISSING_PARAM")
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "claim"}, nil, map[string]any{"one_time_keys": map[string]any{"@a:localhost": map[string]int{"D": 1}}}, nil)
	e2eeWantErr(t, "claim with a numeric algorithm", err, 400, "M_BAD_JSON")
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "claim"}, nil, map[string]any{"one_time_keys": map[string]any{"bob": map[string]string{"D": "x"}}}, nil)
	e2eeWantErr(t, "claim for a malformed user ID", err, 400, "M_INVALID_PARAM")
	anon, _ := mautrix.NewClient(n.URL, "", "")
	err = e2eeDo(t, anon, http.MethodPost, []any{"keys", "claim"}, nil, map[string]any{"one_time_keys": map[string]any{}}, nil)
	e2eeWantErr(t, "claim without a token", err, 401, "M_MISSING_TOKEN")
}

func mustJSON(t testing.TB, v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// e2eeUnusedFallback reads device_unused_fallback_key_types from an initial sync.
func e2eeUnusedFallback(t testing.TB, c *mautrix.Client) []id.KeyAlgorithm {
	t.Helper()
	resp, err := c.SyncRequest(ctxT(t), 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	return resp.FallbackKeys
}

// TestKeysClaimConcurrent races twelve claimers for five one-time keys:
// each key goes to exactly one, and the other seven get the fallback key.
func TestKeysClaimConcurrent(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	claimers := []*mautrix.Client{n.register(t, "bob"), n.register(t, "carol"), n.register(t, "dave")}
	kp := newE2EEKeyPair(t)
	otks := map[string]any{}
	for i := range 5 {
		otks[fmt.Sprintf("signed_curve25519:K%d", i)] = signedOTK(t, alice, kp, false)
	}
	if _, err := keysUpload(t, alice, map[string]any{
		"device_keys":   e2eeDeviceKeys(t, alice, kp, randomCurveKey(t)),
		"one_time_keys": otks,
		"fallback_keys": map[string]any{"signed_curve25519:FB": signedOTK(t, alice, kp, true)},
	}); err != nil {
		t.Fatal(err)
	}
	const racers = 12
	results := make([]string, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c := claimers[i%len(claimers)]
			var resp keysClaimResp
			body := map[string]any{"one_time_keys": map[string]any{alice.UserID.String(): map[string]string{alice.DeviceID.String(): "signed_curve25519"}}}
			if err := e2eeDo(t, c, http.MethodPost, []any{"keys", "claim"}, nil, body, &resp); err != nil {
				t.Errorf("claim %d: %v", i, err)
				return
			}
			results[i], _ = resp.claimedKeyID(alice.UserID, alice.DeviceID)
		}()
	}
	close(start)
	wg.Wait()
	seen := map[string]int{}
	for _, k := range results {
		seen[k]++
	}
	for i := range 5 {
		if k := fmt.Sprintf("signed_curve25519:K%d", i); seen[k] != 1 {
			t.Errorf("%s handed out %d times, want once (results %v)", k, seen[k], results)
		}
	}
	if seen["signed_curve25519:FB"] != racers-5 {
		t.Errorf("fallback handed out %d times, want %d (results %v)", seen["signed_curve25519:FB"], racers-5, results)
	}
	if counts, err := keysUpload(t, alice, map[string]any{}); err != nil || counts["signed_curve25519"] != 0 {
		t.Errorf("counts after the race: %v, %v", counts, err)
	}
}

// TestKeysDeviceListsAndChanges follows device-list tracking: new and
// deleted devices, joins and leaves show in device_lists and /keys/changes,
// and a key upload wakes a waiting sync.
func TestKeysDeviceListsAndChanges(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, "alice"), n.register(t, "bob"), n.register(t, "carol")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	sync := func(c *mautrix.Client, since string) *mautrix.RespSync {
		t.Helper()
		resp, err := c.SyncRequest(ctx, 0, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	tok0 := sync(alice, "").NextBatch

	// Bob's new device uploads keys: alice hears of it, carol (no shared room) does not.
	carolTok := sync(carol, "").NextBatch
	bob2 := e2eeLogin(t, n, bob.UserID, "bob2")
	kp := newE2EEKeyPair(t)
	if _, err := keysUpload(t, bob2, map[string]any{
		"device_keys":   e2eeDeviceKeys(t, bob2, kp, randomCurveKey(t)),
		"one_time_keys": map[string]any{"signed_curve25519:X": signedOTK(t, bob2, kp, false)},
	}); err != nil {
		t.Fatal(err)
	}
	r1 := sync(alice, tok0)
	if !slices.Equal(r1.DeviceLists.Changed, []id.UserID{bob.UserID}) {
		t.Fatalf("alice's changed = %v, want [bob]", r1.DeviceLists.Changed)
	}
	if r := sync(carol, carolTok); len(r.DeviceLists.Changed) != 0 {
		t.Errorf("carol (no shared room) saw changes %v", r.DeviceLists.Changed)
	}
	var changes mautrix.RespKeyChanges
	if err := e2eeDo(t, alice, http.MethodGet, []any{"keys", "changes"}, map[string]string{"from": tok0, "to": r1.NextBatch}, nil, &changes); err != nil ||
		!slices.Equal(changes.Changed, []id.UserID{bob.UserID}) {
		t.Fatalf("/keys/changes = %+v, %v", changes, err)
	}
	if err := e2eeDo(t, alice, http.MethodGet, []any{"keys", "changes"}, map[string]string{"from": r1.NextBatch, "to": r1.NextBatch}, nil, &changes); err != nil || len(changes.Changed) != 0 {
		t.Errorf("/keys/changes over an empty range = %+v, %v", changes, err)
	}
	// Nothing new: the next sync lists no changes.
	r2 := sync(alice, r1.NextBatch)
	if len(r2.DeviceLists.Changed) != 0 {
		t.Errorf("changes listed twice: %v", r2.DeviceLists.Changed)
	}

	// Alice's own upload shows in her own device_lists.
	akp := newE2EEKeyPair(t)
	if _, err := keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, akp, randomCurveKey(t))}); err != nil {
		t.Fatal(err)
	}
	r3 := sync(alice, r2.NextBatch)
	if !slices.Contains(r3.DeviceLists.Changed, alice.UserID) {
		t.Errorf("alice's own change missing: %v", r3.DeviceLists.Changed)
	}

	// Bob's second device logs out: its keys are gone, and alice is told.
	if _, err := bob2.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	r4 := sync(alice, r3.NextBatch)
	if !slices.Contains(r4.DeviceLists.Changed, bob.UserID) {
		t.Errorf("device deletion not in alice's changed: %v", r4.DeviceLists.Changed)
	}
	var q mautrix.RespQueryKeys
	if err := e2eeDo(t, alice, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{"device_keys": map[string]any{bob.UserID.String(): []string{}}}, &q); err != nil {
		t.Fatal(err)
	}
	if _, ok := q.DeviceKeys[bob.UserID][bob2.DeviceID]; ok {
		t.Error("deleted device's keys still returned by /keys/query")
	}
	if id, _ := keysClaim(t, alice, bob.UserID, bob2.DeviceID).claimedKeyID(bob.UserID, bob2.DeviceID); id != "" {
		t.Errorf("deleted device's one-time key %s still claimable", id)
	}

	// Carol joins: alice must fetch her devices. Carol leaves: alice may stop tracking her.
	if _, err := carol.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	r5 := sync(alice, r4.NextBatch)
	if !slices.Contains(r5.DeviceLists.Changed, carol.UserID) {
		t.Errorf("carol's join not in alice's changed: %v", r5.DeviceLists.Changed)
	}
	// Carol, on joining, must fetch alice's and bob's devices.
	if r := sync(carol, carolTok); !slices.Contains(r.DeviceLists.Changed, alice.UserID) || !slices.Contains(r.DeviceLists.Changed, bob.UserID) {
		t.Errorf("carol's changed after joining = %v, want alice and bob", r.DeviceLists.Changed)
	}
	if _, err := carol.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	r6 := sync(alice, r5.NextBatch)
	if !slices.Equal(r6.DeviceLists.Left, []id.UserID{carol.UserID}) || slices.Contains(r6.DeviceLists.Changed, carol.UserID) {
		t.Errorf("after carol left: left %v, changed %v", r6.DeviceLists.Left, r6.DeviceLists.Changed)
	}
	if err := e2eeDo(t, alice, http.MethodGet, []any{"keys", "changes"}, map[string]string{"from": r5.NextBatch, "to": r6.NextBatch}, nil, &changes); err != nil ||
		!slices.Equal(changes.Left, []id.UserID{carol.UserID}) {
		t.Errorf("/keys/changes left = %+v, %v", changes, err)
	}

	// A waiting sync wakes when a room-mate's keys change.
	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	done := make(chan result, 1)
	began := time.Now()
	go func() {
		resp, err := alice.SyncRequest(ctx, 20000, r6.NextBatch, "", false, "")
		done <- result{resp, err}
	}()
	time.Sleep(200 * time.Millisecond)
	bob3 := e2eeLogin(t, n, bob.UserID, "bob3")
	if _, err := keysUpload(t, bob3, map[string]any{"device_keys": e2eeDeviceKeys(t, bob3, newE2EEKeyPair(t), randomCurveKey(t))}); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil || !slices.Contains(res.resp.DeviceLists.Changed, bob.UserID) || time.Since(began) > 10*time.Second {
		t.Fatalf("long-poll after bob's upload: %v, %+v after %v", res.err, res.resp, time.Since(began))
	}

	// Bad tokens.
	err := e2eeDo(t, alice, http.MethodGet, []any{"keys", "changes"}, map[string]string{"to": tok0}, nil, nil)
	e2eeWantErr(t, "changes without from", err, 400, "M_MISSING_PARAM")
	err = e2eeDo(t, alice, http.MethodGet, []any{"keys", "changes"}, map[string]string{"from": "garbage"}, nil, nil)
	e2eeWantErr(t, "changes with a bad from", err, 400, "M_INVALID_PARAM")
	err = e2eeDo(t, alice, http.MethodGet, []any{"keys", "changes"}, map[string]string{"from": tok0, "to": "x"}, nil, nil)
	e2eeWantErr(t, "changes with a bad to", err, 400, "M_INVALID_PARAM")
}
