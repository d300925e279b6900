package integration

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
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
	// The same device keys again are fine; new identity keys replace the
	// old (as in Synapse), and /keys/query shows the new ones. So do keys
	// with an empty signatures object (the spec leaves checking them to
	// clients); a signature that is there must verify (above).
	if _, err := keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, kp, curve)}); err != nil {
		t.Fatalf("re-upload same device keys: %v", err)
	}
	queryCurve := func() string {
		t.Helper()
		var q mautrix.RespQueryKeys
		if err := e2eeDo(t, alice, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{"device_keys": map[string]any{alice.UserID.String(): []string{}}}, &q); err != nil {
			t.Fatal(err)
		}
		dk := q.DeviceKeys[alice.UserID][alice.DeviceID]
		return dk.Keys[id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, alice.DeviceID)]
	}
	newCurve := randomCurveKey(t)
	if _, err := keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, kp, newCurve)}); err != nil {
		t.Fatalf("changed identity key: %v", err)
	}
	if got := queryCurve(); got != newCurve {
		t.Fatalf("after the change /keys/query has curve25519 %q, want %q", got, newCurve)
	}
	unsignedKeys := e2eeDeviceKeys(t, alice, kp, randomCurveKey(t))
	unsignedKeys["signatures"] = map[string]any{}
	if _, err := keysUpload(t, alice, map[string]any{"device_keys": unsignedKeys}); err != nil {
		t.Fatalf("device keys with empty signatures: %v", err)
	}
	if _, err := keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, kp, curve)}); err != nil {
		t.Fatalf("back to the first keys: %v", err)
	}
	if got := queryCurve(); got != curve {
		t.Fatalf("/keys/query has curve25519 %q, want %q", got, curve)
	}
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

// TestKeysClaimConcurrent races 50 claims for a device's 10 one-time
// keys, as the issue asks: each key goes to exactly one claimer, and the
// other 40 get the fallback key.
func TestKeysClaimConcurrent(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	claimers := []*mautrix.Client{n.register(t, "bob"), n.register(t, "carol"), n.register(t, "dave"), n.register(t, "erin")}
	kp := newE2EEKeyPair(t)
	const keys, racers = 10, 50
	otks := map[string]any{}
	for i := range keys {
		otks[fmt.Sprintf("signed_curve25519:K%d", i)] = signedOTK(t, alice, kp, false)
	}
	if counts, err := keysUpload(t, alice, map[string]any{
		"device_keys":   e2eeDeviceKeys(t, alice, kp, randomCurveKey(t)),
		"one_time_keys": otks,
		"fallback_keys": map[string]any{"signed_curve25519:FB": signedOTK(t, alice, kp, true)},
	}); err != nil || counts["signed_curve25519"] != keys {
		t.Fatalf("upload: %v, %v", counts, err)
	}
	results := make([]string, racers)
	bodies := make([]json.RawMessage, racers)
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
			results[i], bodies[i] = resp.claimedKeyID(alice.UserID, alice.DeviceID)
		}()
	}
	close(start)
	wg.Wait()
	seen := map[string]int{}
	for i, k := range results {
		seen[k]++
		// Each claimer got the key that was uploaded under that ID.
		if want := otks[k]; want != nil && !e2eeSameJSON(t, bodies[i], mustJSON(t, want)) {
			t.Errorf("claim %d: %s came back as %s", i, k, bodies[i])
		}
	}
	for i := range keys {
		if k := fmt.Sprintf("signed_curve25519:K%d", i); seen[k] != 1 {
			t.Errorf("%s handed out %d times, want once (results %v)", k, seen[k], results)
		}
	}
	if seen["signed_curve25519:FB"] != racers-keys {
		t.Errorf("fallback handed out %d times, want %d (results %v)", seen["signed_curve25519:FB"], racers-keys, results)
	}
	if counts, err := keysUpload(t, alice, map[string]any{}); err != nil || counts["signed_curve25519"] != 0 {
		t.Errorf("counts after the race: %v, %v", counts, err)
	}
	// The fallback key was used: alice's client is told to replace it.
	if got := e2eeUnusedFallback(t, alice); got == nil || len(got) != 0 {
		t.Errorf("unused fallback types after the race = %v, want present and empty", got)
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

// e2eeWantErrMsg is e2eeWantErr that also wants the error message to
// name field.
func e2eeWantErrMsg(t testing.TB, what string, err error, status int, errcode, field string) {
	t.Helper()
	e2eeWantErr(t, what, err, status, errcode)
	var he mautrix.HTTPError
	if errors.As(err, &he); !strings.Contains(he.RespError.Err, field) {
		t.Errorf("%s: message %q does not name %q", what, he.RespError.Err, field)
	}
}

// TestKeysBadInput checks the bad-input rules: malformed or
// unsigned keys are refused with M_BAD_JSON / M_INVALID_PARAM (or
// M_INVALID_SIGNATURE when a signature does not verify) and a message
// naming the field; a refused upload stores nothing; claims for unknown
// users and devices give nothing for those and keys for the rest.
func TestKeysBadInput(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, "alice"), n.register(t, "bob")
	kp := newE2EEKeyPair(t)
	user, dev := alice.UserID.String(), alice.DeviceID.String()
	curve := randomCurveKey(t)
	upload := func(body map[string]any) error {
		t.Helper()
		_, err := keysUpload(t, alice, body)
		return err
	}

	// A signed one-time key before any device keys cannot be checked.
	err := upload(map[string]any{"one_time_keys": map[string]any{"signed_curve25519:EARLY": signedOTK(t, alice, kp, false)}})
	e2eeWantErrMsg(t, "signed key before device keys", err, 400, "M_INVALID_PARAM", "one_time_keys.signed_curve25519:EARLY")

	// device_keys: each missing field is named.
	for _, field := range []string{"user_id", "device_id", "algorithms", "keys", "signatures"} {
		dk := e2eeDeviceKeys(t, alice, kp, curve)
		delete(dk, field)
		err := upload(map[string]any{"device_keys": dk})
		e2eeWantErrMsg(t, "device_keys without "+field, err, 400, "M_BAD_JSON", "device_keys."+field)
	}
	wrongDevice := e2eeDeviceKeys(t, alice, kp, curve)
	wrongDevice["device_id"] = "OTHERDEVICE"
	err = upload(map[string]any{"device_keys": kp.sign(t, wrongDevice, user, "ed25519:OTHERDEVICE")})
	e2eeWantErrMsg(t, "device_keys for another device", err, 400, "M_INVALID_PARAM", "device_keys.device_id")
	noEd := map[string]any{"user_id": user, "device_id": dev, "algorithms": []string{"m.megolm.v1.aes-sha2"}, "keys": map[string]any{"curve25519:" + dev: curve}}
	err = upload(map[string]any{"device_keys": kp.sign(t, noEd, user, "ed25519:"+dev)})
	e2eeWantErrMsg(t, "device_keys without an ed25519 key", err, 400, "M_INVALID_PARAM", "device_keys.keys")
	// (device_keys without the device's own signature are stored, as
	// Synapse does: TestKeysUploadQueryClaim.)
	numericKey := e2eeDeviceKeys(t, alice, kp, curve)
	numericKey["keys"] = map[string]any{"ed25519:" + dev: 5}
	err = upload(map[string]any{"device_keys": numericKey})
	e2eeWantErrMsg(t, "device_keys with a numeric key", err, 400, "M_BAD_JSON", "keys")
	tampered := e2eeDeviceKeys(t, alice, kp, curve)
	tampered["algorithms"] = []string{"m.olm.v1.curve25519-aes-sha2"} // after signing
	err = upload(map[string]any{"device_keys": tampered})
	e2eeWantErrMsg(t, "device_keys changed after signing", err, 400, "M_INVALID_SIGNATURE", "device_keys")

	// Nothing half-written: valid device keys with one badly signed
	// one-time key store neither.
	badSig := signedOTK(t, alice, kp, false)
	badSig["key"] = randomCurveKey(t) // no longer what was signed
	err = upload(map[string]any{
		"device_keys":   e2eeDeviceKeys(t, alice, kp, curve),
		"one_time_keys": map[string]any{"signed_curve25519:GOOD": signedOTK(t, alice, kp, false), "signed_curve25519:BAD": badSig},
	})
	e2eeWantErrMsg(t, "one badly signed one-time key", err, 400, "M_INVALID_SIGNATURE", "one_time_keys.signed_curve25519:BAD")
	if q := e2eeQuery(t, bob, alice.UserID); len(q.DeviceKeys[alice.UserID]) != 0 {
		t.Fatalf("refused upload stored device keys: %+v", q.DeviceKeys[alice.UserID])
	}
	if counts, err := keysUpload(t, alice, map[string]any{}); err != nil || counts["signed_curve25519"] != 0 {
		t.Fatalf("refused upload stored one-time keys: %v, %v", counts, err)
	}

	// Now a good upload, then malformed one-time and fallback keys.
	stored := signedOTK(t, alice, kp, false)
	if err := upload(map[string]any{
		"device_keys":   e2eeDeviceKeys(t, alice, kp, curve),
		"one_time_keys": map[string]any{"signed_curve25519:A1": stored, "curve25519:PLAIN": randomCurveKey(t)},
	}); err != nil {
		t.Fatalf("good upload: %v", err)
	}
	unsigned := map[string]any{"key": randomCurveKey(t)}
	for _, c := range []struct {
		what, errcode, field string
		body                 map[string]any
	}{
		{"unsigned one-time key", "M_BAD_JSON", "one_time_keys.signed_curve25519:U1", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:U1": unsigned}}},
		{"signed key as a string", "M_BAD_JSON", "one_time_keys.signed_curve25519:S1", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:S1": randomCurveKey(t)}}},
		{"signed key without key", "M_BAD_JSON", "one_time_keys.signed_curve25519:K1.key", map[string]any{"one_time_keys": map[string]any{
			"signed_curve25519:K1": kp.sign(t, map[string]any{"other": "x"}, user, "ed25519:"+dev)}}},
		{"signed by another key", "M_INVALID_SIGNATURE", "one_time_keys.signed_curve25519:W1", map[string]any{"one_time_keys": map[string]any{
			"signed_curve25519:W1": signedOTK(t, alice, newE2EEKeyPair(t), false)}}},
		{"unsigned fallback key", "M_BAD_JSON", "fallback_keys.signed_curve25519:F1", map[string]any{"fallback_keys": map[string]any{"signed_curve25519:F1": unsigned}}},
		{"badly signed fallback key", "M_INVALID_SIGNATURE", "fallback_keys.signed_curve25519:F2", map[string]any{"fallback_keys": map[string]any{
			"signed_curve25519:F2": signedOTK(t, alice, newE2EEKeyPair(t), true)}}},
		{"key ID without algorithm", "M_INVALID_PARAM", "one_time_keys", map[string]any{"one_time_keys": map[string]any{"A2": signedOTK(t, alice, kp, false)}}},
		{"one-time key a number", "M_BAD_JSON", "one_time_keys.curve25519:N", map[string]any{"one_time_keys": map[string]any{"curve25519:N": 7}}},
		{"one-time key ID reused", "M_INVALID_PARAM", "signed_curve25519:A1", map[string]any{
			"one_time_keys": map[string]any{"signed_curve25519:A1": signedOTK(t, alice, kp, false), "signed_curve25519:NEW": signedOTK(t, alice, kp, false)},
			"fallback_keys": map[string]any{"signed_curve25519:FB": signedOTK(t, alice, kp, true)}}},
	} {
		err := upload(c.body)
		e2eeWantErrMsg(t, c.what, err, 400, c.errcode, c.field)
	}
	// None of the refused uploads left anything behind.
	if counts, err := keysUpload(t, alice, map[string]any{}); err != nil || counts["signed_curve25519"] != 1 || counts["curve25519"] != 1 {
		t.Errorf("counts after refused uploads: %v, %v", counts, err)
	}
	if got := e2eeUnusedFallback(t, alice); got == nil || len(got) != 0 {
		t.Errorf("a refused upload stored a fallback key: %v", got)
	}

	// One claim for the real device, an unknown device, an unknown user, a
	// user without keys and a remote user: a key for the first, nothing
	// for the others, no error, and a failure only for the remote server.
	var cr keysClaimResp
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "claim"}, nil, map[string]any{"one_time_keys": map[string]any{
		user:                    map[string]string{dev: "signed_curve25519", "NOSUCHDEVICE": "signed_curve25519"},
		"@nobody:localhost":     map[string]string{"DEV": "signed_curve25519"},
		bob.UserID.String():     map[string]string{bob.DeviceID.String(): "signed_curve25519"},
		"@carol:remote.example": map[string]string{"DEV": "signed_curve25519"},
	}}, &cr)
	if err != nil {
		t.Fatalf("mixed claim: %v", err)
	}
	if keyID, raw := cr.claimedKeyID(alice.UserID, alice.DeviceID); keyID != "signed_curve25519:A1" || !e2eeSameJSON(t, raw, mustJSON(t, stored)) {
		t.Errorf("mixed claim gave alice's device %q %s", keyID, raw)
	}
	if len(cr.OneTimeKeys) != 1 || len(cr.OneTimeKeys[user]) != 1 {
		t.Errorf("mixed claim answered for more than alice's device: %+v", cr.OneTimeKeys)
	}
	if len(cr.Failures) != 1 || cr.Failures["remote.example"] == nil {
		t.Errorf("mixed claim failures = %v, want remote.example only", cr.Failures)
	}
	// An algorithm the device has no key for gives nothing either.
	var plain keysClaimResp
	err = e2eeDo(t, bob, http.MethodPost, []any{"keys", "claim"}, nil, map[string]any{"one_time_keys": map[string]any{
		user: map[string]string{dev: "signed_other"}}}, &plain)
	if err != nil || len(plain.OneTimeKeys) != 0 {
		t.Errorf("claim of an algorithm without keys: %+v, %v", plain, err)
	}
}

// e2eeDeleteDevice deletes one of c's user's devices through
// DELETE /devices/{deviceId}, answering the password UIA challenge.
func e2eeDeleteDevice(t testing.TB, c *mautrix.Client, deviceID id.DeviceID) {
	t.Helper()
	path := "/_matrix/client/v3/devices/" + deviceID.String()
	status, body := e2eeHTTP(t, c, http.MethodDelete, path, map[string]any{})
	if status != 401 || body["session"] == nil {
		t.Fatalf("delete device without auth: %d %v", status, body)
	}
	auth := map[string]any{"type": "m.login.password", "session": body["session"], "password": "correct horse battery",
		"identifier": map[string]any{"type": "m.id.user", "user": c.UserID.String()}}
	if status, body := e2eeHTTP(t, c, http.MethodDelete, path, map[string]any{"auth": auth}); status != 200 {
		t.Fatalf("delete device %s: %d %v", deviceID, status, body)
	}
}

// TestKeysDeviceListsMembership covers the device-list cases
// TestKeysDeviceListsAndChanges leaves out: a device deleted through
// DELETE /devices (Element's "sign out of this session"), a device renamed,
// a user leaving one of two shared rooms (still shared: not left), the
// syncing user leaving (the others are left), and a rejoin (changed again).
func TestKeysDeviceListsMembership(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, "alice"), n.register(t, "bob"), n.register(t, "carol")
	ctx := ctxT(t)
	room1 := e2eeGroupRoom(t, alice, bob, carol)
	room2 := e2eeGroupRoom(t, alice, carol)
	tok := map[id.UserID]string{}
	syncAll := func() map[id.UserID]*mautrix.RespSync {
		t.Helper()
		out := map[id.UserID]*mautrix.RespSync{}
		for _, c := range []*mautrix.Client{alice, bob, carol} {
			resp, err := c.SyncRequest(ctx, 0, tok[c.UserID], "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			tok[c.UserID] = resp.NextBatch
			out[c.UserID] = resp
		}
		return out
	}
	syncAll()

	// Bob's second device, with keys, then deleted through DELETE /devices.
	bob2 := e2eeLogin(t, n, bob.UserID, "bob's tablet")
	if _, err := keysUpload(t, bob2, map[string]any{"device_keys": e2eeDeviceKeys(t, bob2, newE2EEKeyPair(t), randomCurveKey(t))}); err != nil {
		t.Fatal(err)
	}
	r := syncAll()
	for _, u := range []id.UserID{alice.UserID, carol.UserID, bob.UserID} {
		if !slices.Contains(r[u].DeviceLists.Changed, bob.UserID) {
			t.Errorf("%s's changed after bob's new device = %v", u, r[u].DeviceLists.Changed)
		}
	}
	e2eeDeleteDevice(t, bob, bob2.DeviceID)
	r = syncAll()
	for _, u := range []id.UserID{alice.UserID, carol.UserID} {
		if !slices.Equal(r[u].DeviceLists.Changed, []id.UserID{bob.UserID}) {
			t.Errorf("%s's changed after bob deleted a device = %v", u, r[u].DeviceLists.Changed)
		}
	}
	if _, ok := e2eeQuery(t, alice, bob.UserID).DeviceKeys[bob.UserID][bob2.DeviceID]; ok {
		t.Error("deleted device still in /keys/query")
	}

	// Renaming a device changes what /keys/query shows: a change too.
	if err := bob.SetDeviceInfo(ctx, bob.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "bob's phone"}); err != nil {
		t.Fatal(err)
	}
	if r = syncAll(); !slices.Contains(r[alice.UserID].DeviceLists.Changed, bob.UserID) {
		t.Errorf("alice's changed after bob renamed a device = %v", r[alice.UserID].DeviceLists.Changed)
	}

	// Carol leaves room1 but still shares room2 with alice: not left for
	// alice; bob shares nothing else with her: left for bob.
	if _, err := carol.LeaveRoom(ctx, room1); err != nil {
		t.Fatal(err)
	}
	r = syncAll()
	if slices.Contains(r[alice.UserID].DeviceLists.Left, carol.UserID) {
		t.Errorf("alice, still sharing room2 with carol, got her in left: %v", r[alice.UserID].DeviceLists.Left)
	}
	if !slices.Equal(r[bob.UserID].DeviceLists.Left, []id.UserID{carol.UserID}) {
		t.Errorf("bob's left after carol left their only shared room = %v", r[bob.UserID].DeviceLists.Left)
	}
	// Carol's own sync: bob is left, alice is not.
	if got := r[carol.UserID].DeviceLists.Left; !slices.Equal(got, []id.UserID{bob.UserID}) {
		t.Errorf("carol's left after leaving room1 = %v, want [bob]", got)
	}
	// Her key changes still reach alice through room2, but not bob.
	carol2 := e2eeLogin(t, n, carol.UserID, "carol2")
	if _, err := keysUpload(t, carol2, map[string]any{"device_keys": e2eeDeviceKeys(t, carol2, newE2EEKeyPair(t), randomCurveKey(t))}); err != nil {
		t.Fatal(err)
	}
	r = syncAll()
	if !slices.Contains(r[alice.UserID].DeviceLists.Changed, carol.UserID) || slices.Contains(r[bob.UserID].DeviceLists.Changed, carol.UserID) {
		t.Errorf("carol's new device: alice's changed %v, bob's changed %v", r[alice.UserID].DeviceLists.Changed, r[bob.UserID].DeviceLists.Changed)
	}

	// Carol rejoins room1: bob must fetch her devices again, and she his.
	if _, err := carol.JoinRoomByID(ctx, room1); err == nil {
		t.Fatal("carol rejoined a private room without an invite")
	}
	if _, err := alice.InviteUser(ctx, room1, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.JoinRoomByID(ctx, room1); err != nil {
		t.Fatal(err)
	}
	r = syncAll()
	if !slices.Contains(r[bob.UserID].DeviceLists.Changed, carol.UserID) || slices.Contains(r[bob.UserID].DeviceLists.Left, carol.UserID) {
		t.Errorf("bob after carol rejoined: changed %v, left %v", r[bob.UserID].DeviceLists.Changed, r[bob.UserID].DeviceLists.Left)
	}
	if !slices.Contains(r[carol.UserID].DeviceLists.Changed, bob.UserID) {
		t.Errorf("carol after rejoining: changed %v", r[carol.UserID].DeviceLists.Changed)
	}

	// Alice leaves both rooms: everyone is left for her, and she for them.
	for _, roomID := range []id.RoomID{room1, room2} {
		if _, err := alice.LeaveRoom(ctx, roomID); err != nil {
			t.Fatal(err)
		}
	}
	r = syncAll()
	if got := r[alice.UserID].DeviceLists.Left; !slices.Equal(got, []id.UserID{bob.UserID, carol.UserID}) && !slices.Equal(got, []id.UserID{carol.UserID, bob.UserID}) {
		t.Errorf("alice's left after leaving everything = %v", got)
	}
	for _, u := range []id.UserID{bob.UserID, carol.UserID} {
		if !slices.Contains(r[u].DeviceLists.Left, alice.UserID) {
			t.Errorf("%s's left after alice left = %v", u, r[u].DeviceLists.Left)
		}
	}
	// And her later key changes reach nobody.
	if _, err := keysUpload(t, alice, map[string]any{"device_keys": e2eeDeviceKeys(t, alice, newE2EEKeyPair(t), randomCurveKey(t))}); err != nil {
		t.Fatal(err)
	}
	r = syncAll()
	for _, u := range []id.UserID{bob.UserID, carol.UserID} {
		if slices.Contains(r[u].DeviceLists.Changed, alice.UserID) {
			t.Errorf("%s heard of alice's keys after she left every shared room", u)
		}
	}
	if !slices.Contains(r[alice.UserID].DeviceLists.Changed, alice.UserID) {
		t.Errorf("alice's own change missing: %v", r[alice.UserID].DeviceLists.Changed)
	}
}
