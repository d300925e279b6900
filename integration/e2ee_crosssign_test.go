package integration

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// e2eeQuery runs /keys/query for users as c.
func e2eeQuery(t testing.TB, c *mautrix.Client, users ...id.UserID) *mautrix.RespQueryKeys {
	t.Helper()
	req := map[string]any{}
	for _, u := range users {
		req[u.String()] = []string{}
	}
	var resp mautrix.RespQueryKeys
	if err := e2eeDo(t, c, http.MethodPost, []any{"keys", "query"}, nil, map[string]any{"device_keys": req}, &resp); err != nil {
		t.Fatalf("query: %v", err)
	}
	return &resp
}

// passwordUIA answers a UIA challenge with the test password.
func passwordUIA(user id.UserID) mautrix.UIACallback {
	return func(r *mautrix.RespUserInteractive) any {
		return map[string]any{
			"type":       "m.login.password",
			"session":    r.Session,
			"identifier": map[string]any{"type": "m.id.user", "user": user.String()},
			"password":   "correct horse battery",
		}
	}
}

// TestCrossSigningWithOlmMachine drives cross-signing as a client does:
// the first upload without UIA, a replacement with it, self-signing a
// device, signing another user's master key, and who sees which signature.
func TestCrossSigningWithOlmMachine(t *testing.T) {
	n := startNode(t)
	aliceC, bobC := n.register(t, "alice"), n.register(t, "bob")
	alice, bob := newE2EEDevice(t, aliceC), newE2EEDevice(t, bobC)
	e2eeRoom(t, aliceC, bobC)
	ctx := ctxT(t)

	aKeys, err := alice.mach.GenerateCrossSigningKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.mach.PublishCrossSigningKeys(ctx, aKeys, nil); err != nil {
		t.Fatalf("first upload (no UIA): %v", err)
	}
	// A retry of the same keys needs no UIA either.
	if err := alice.mach.PublishCrossSigningKeys(ctx, aKeys, nil); err != nil {
		t.Fatalf("identical re-upload: %v", err)
	}
	aMaster := aKeys.MasterKey.PublicKey()
	aSSK := aKeys.SelfSigningKey.PublicKey()
	byBob := e2eeQuery(t, bobC, alice.UserID)
	if csFirstKey(byBob.MasterKeys[alice.UserID]) != aMaster || csFirstKey(byBob.SelfSigningKeys[alice.UserID]) != aSSK {
		t.Fatalf("bob sees alice's keys %+v / %+v", byBob.MasterKeys, byBob.SelfSigningKeys)
	}
	if _, ok := byBob.UserSigningKeys[alice.UserID]; ok {
		t.Error("bob sees alice's user-signing key")
	}
	if own := e2eeQuery(t, aliceC, alice.UserID); csFirstKey(own.UserSigningKeys[alice.UserID]) != aKeys.UserSigningKey.PublicKey() {
		t.Errorf("alice does not see her own user-signing key: %+v", own.UserSigningKeys)
	}

	// Alice's self-signing key signs her device; everyone sees it.
	if err := alice.mach.SignOwnDevice(ctx, alice.mach.OwnIdentity()); err != nil {
		t.Fatalf("sign own device: %v", err)
	}
	dk := e2eeQuery(t, bobC, alice.UserID).DeviceKeys[alice.UserID][alice.DeviceID]
	if dk.Signatures[alice.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, aSSK.String())] == "" {
		t.Fatalf("device signature by the self-signing key missing: %+v", dk.Signatures)
	}
	if dk.Signatures[alice.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, alice.DeviceID.String())] == "" {
		t.Error("the device's own signature was lost when merging")
	}
	// Bob's client now trusts alice's device through her cross-signing keys.
	if _, err := bob.mach.FetchKeys(ctx, []id.UserID{alice.UserID}, true); err != nil {
		t.Fatal(err)
	}
	if dev, err := bob.mach.GetOrFetchDevice(ctx, alice.UserID, alice.DeviceID); err != nil ||
		bob.mach.ResolveTrust(dev) < id.TrustStateCrossSignedTOFU {
		t.Errorf("bob's trust in alice's device = %v, %v", bob.mach.ResolveTrust(dev), err)
	}

	// Alice signs bob's master key: alice sees the signature, bob does not.
	bKeys, err := bob.mach.GenerateCrossSigningKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.mach.PublishCrossSigningKeys(ctx, bKeys, nil); err != nil {
		t.Fatal(err)
	}
	aliceTok := alice.sync(t).NextBatch
	bobTok := bob.sync(t).NextBatch
	if err := alice.mach.SignUser(ctx, bob.UserID, bKeys.MasterKey.PublicKey()); err != nil {
		t.Fatalf("sign bob: %v", err)
	}
	aUSK := id.NewKeyID(id.KeyAlgorithmEd25519, aKeys.UserSigningKey.PublicKey().String())
	if sig := e2eeQuery(t, aliceC, bob.UserID).MasterKeys[bob.UserID].Signatures[alice.UserID][aUSK]; sig == "" {
		t.Error("alice does not see her signature of bob's master key")
	}
	if sigs := e2eeQuery(t, bobC, bob.UserID).MasterKeys[bob.UserID].Signatures[alice.UserID]; len(sigs) != 0 {
		t.Errorf("bob sees alice's private signature: %v", sigs)
	}
	// The signature is a change for alice's view of bob only.
	if r, err := aliceC.SyncRequest(ctx, 0, aliceTok, "", false, ""); err != nil || !slices.Contains(r.DeviceLists.Changed, bob.UserID) {
		t.Errorf("alice's changed after signing bob: %v, %v", r.DeviceLists.Changed, err)
	}
	if r, err := bobC.SyncRequest(ctx, 0, bobTok, "", false, ""); err != nil || len(r.DeviceLists.Changed) != 0 {
		t.Errorf("bob's changed after alice signed him: %v, %v", r.DeviceLists.Changed, err)
	}
	// Signing her own master key with her device is visible to all.
	if err := alice.mach.SignOwnMasterKey(ctx); err != nil {
		t.Fatalf("sign own master key: %v", err)
	}

	// New keys replace old ones only through UIA.
	newKeys, err := alice.mach.GenerateCrossSigningKeys()
	if err != nil {
		t.Fatal(err)
	}
	err = alice.mach.PublishCrossSigningKeys(ctx, newKeys, nil)
	e2eeWantErr(t, "replacing keys without UIA", err, 401, "")
	status, body := e2eeHTTP(t, aliceC, http.MethodPost, "/_matrix/client/v3/keys/device_signing/upload",
		map[string]any{"master_key": map[string]any{"user_id": alice.UserID, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + newE2EEKeyPair(t).pub: "x"}}})
	if flows, _ := json.Marshal(body["flows"]); status != 401 || body["session"] == nil || string(flows) != `[{"stages":["m.login.password"]}]` {
		t.Fatalf("UIA challenge: %d %v", status, body)
	}
	if err := alice.mach.PublishCrossSigningKeys(ctx, newKeys, passwordUIA(alice.UserID)); err != nil {
		t.Fatalf("replacing keys with UIA: %v", err)
	}
	if got := csFirstKey(e2eeQuery(t, bobC, alice.UserID).MasterKeys[alice.UserID]); got != newKeys.MasterKey.PublicKey() {
		t.Errorf("master key after replacement = %s", got)
	}
	// Alice's signature of bob was made with her old user-signing key and
	// is still stored under it; her new key has signed nothing yet.
	newUSK := id.NewKeyID(id.KeyAlgorithmEd25519, newKeys.UserSigningKey.PublicKey().String())
	if sig := e2eeQuery(t, aliceC, bob.UserID).MasterKeys[bob.UserID].Signatures[alice.UserID][newUSK]; sig != "" {
		t.Error("a signature by the new user-signing key appeared from nowhere")
	}
}

// TestCrossSigningBadInput checks /keys/device_signing/upload and
// /keys/signatures/upload with hand-made keys and bad signatures.
func TestCrossSigningBadInput(t *testing.T) {
	n := startNode(t)
	carol, bob := n.register(t, "carol"), n.register(t, "bob")
	user := carol.UserID.String()
	devKP := newE2EEKeyPair(t)
	if _, err := keysUpload(t, carol, map[string]any{"device_keys": e2eeDeviceKeys(t, carol, devKP, randomCurveKey(t))}); err != nil {
		t.Fatal(err)
	}
	master, ssk := newE2EEKeyPair(t), newE2EEKeyPair(t)
	csKey := func(kp e2eeKeyPair, usage string) map[string]any {
		return map[string]any{"user_id": user, "usage": []string{usage}, "keys": map[string]any{"ed25519:" + kp.pub: kp.pub}}
	}
	upload := func(c *mautrix.Client, body map[string]any) error {
		return e2eeDo(t, c, http.MethodPost, []any{"keys", "device_signing", "upload"}, nil, body, nil)
	}

	err := upload(carol, map[string]any{"master_key": csKey(master, "self_signing")})
	e2eeWantErr(t, "master key with the wrong usage", err, 400, "M_INVALID_PARAM")
	two := csKey(master, "master")
	two["keys"].(map[string]any)["ed25519:"+ssk.pub] = ssk.pub
	err = upload(carol, map[string]any{"master_key": two})
	e2eeWantErr(t, "master key with two keys", err, 400, "M_INVALID_PARAM")
	mismatched := csKey(master, "master")
	mismatched["keys"] = map[string]any{"ed25519:" + master.pub: ssk.pub}
	err = upload(carol, map[string]any{"master_key": mismatched})
	e2eeWantErr(t, "master key ID naming another key", err, 400, "M_INVALID_PARAM")
	err = upload(carol, map[string]any{"self_signing_key": master.sign(t, csKey(ssk, "self_signing"), user, "ed25519:"+master.pub)})
	e2eeWantErr(t, "self-signing key without any master key", err, 400, "M_MISSING_PARAM")
	err = upload(carol, map[string]any{"master_key": csKey(master, "master"), "self_signing_key": ssk.sign(t, csKey(ssk, "self_signing"), user, "ed25519:"+master.pub)})
	e2eeWantErr(t, "self-signing key signed by itself", err, 400, "M_INVALID_SIGNATURE")
	err = upload(carol, map[string]any{"master_key": csKey(master, "master"), "user_signing_key": csKey(newE2EEKeyPair(t), "user_signing")})
	e2eeWantErr(t, "unsigned user-signing key", err, 400, "M_INVALID_SIGNATURE")
	err = upload(carol, map[string]any{"master_key": "nope"})
	e2eeWantErr(t, "master key a string", err, 400, "M_BAD_JSON")
	// A cross-signing key may not share its ID with a device.
	clash := newE2EEKeyPair(t)
	clashClient, _ := mautrix.NewClient(n.URL, "", "")
	if _, err := clashClient.Login(ctxT(t), &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "carol"},
		Password: "correct horse battery", DeviceID: id.DeviceID(clash.pub), StoreCredentials: true,
	}); err != nil {
		t.Fatal(err)
	}
	err = upload(carol, map[string]any{"master_key": csKey(clash, "master")})
	e2eeWantErr(t, "master key equal to a device ID", err, 403, "M_FORBIDDEN")
	// None of that stored anything: a valid first upload still needs no UIA.
	if err := upload(carol, map[string]any{
		"master_key":       csKey(master, "master"),
		"self_signing_key": master.sign(t, csKey(ssk, "self_signing"), user, "ed25519:"+master.pub),
	}); err != nil {
		t.Fatalf("valid first upload: %v", err)
	}
	// Adding a user-signing key later is a change: UIA.
	usk := newE2EEKeyPair(t)
	err = upload(carol, map[string]any{"user_signing_key": master.sign(t, csKey(usk, "user_signing"), user, "ed25519:"+master.pub)})
	e2eeWantErr(t, "new user-signing key without UIA", err, 401, "")

	// /keys/signatures/upload.
	sigUpload := func(c *mautrix.Client, body any) map[string]map[string]map[string]string {
		t.Helper()
		var resp struct {
			Failures map[string]map[string]map[string]string `json:"failures"`
		}
		if err := e2eeDo(t, c, http.MethodPost, []any{"keys", "signatures", "upload"}, nil, body, &resp); err != nil {
			t.Fatalf("signatures upload: %v", err)
		}
		return resp.Failures
	}
	dev := carol.DeviceID.String()
	// The stored curve key is random; fetch the exact stored object.
	stored := e2eeQuery(t, carol, carol.UserID).DeviceKeys[carol.UserID][carol.DeviceID]
	exact := func() map[string]any {
		var m map[string]any
		b, _ := json.Marshal(stored)
		_ = json.Unmarshal(b, &m)
		delete(m, "signatures")
		delete(m, "unsigned")
		return m
	}
	f := sigUpload(carol, map[string]any{user: map[string]any{
		dev:          newE2EEKeyPair(t).sign(t, exact(), user, "ed25519:"+ssk.pub), // wrong key
		"NOSUCHDEV":  ssk.sign(t, exact(), user, "ed25519:"+ssk.pub),
		"ed25519:x":  map[string]any{"signatures": map[string]any{}},
		master.pub:   devKP.sign(t, csKey(newE2EEKeyPair(t), "master"), user, "ed25519:"+dev), // not the stored master
		"NOSIGNATUR": exact(),
	}})
	for key, want := range map[string]string{dev: "M_INVALID_SIGNATURE", "NOSUCHDEV": "M_NOT_FOUND", "ed25519:x": "M_INVALID_SIGNATURE", master.pub: "M_INVALID_SIGNATURE", "NOSIGNATUR": "M_INVALID_SIGNATURE"} {
		if got := f[user][key]["errcode"]; got != want {
			t.Errorf("failure for %s = %q, want %s (all: %v)", key, got, want, f)
		}
	}
	// A device object that differs from the stored one, correctly signed.
	changed := exact()
	changed["algorithms"] = []string{"m.megolm.v1.aes-sha2"}
	f = sigUpload(carol, map[string]any{user: map[string]any{dev: ssk.sign(t, changed, user, "ed25519:"+ssk.pub)}})
	if f[user][dev]["errcode"] != "M_INVALID_SIGNATURE" {
		t.Errorf("signing a different object: %v", f)
	}
	// Carol has no user-signing key, so cannot sign bob.
	f = sigUpload(carol, map[string]any{bob.UserID.String(): map[string]any{"somekey": map[string]any{"user_id": bob.UserID.String()}}})
	if f[bob.UserID.String()]["somekey"]["errcode"] != "M_NOT_FOUND" {
		t.Errorf("signing without a user-signing key: %v", f)
	}
	// The valid ones: device by self-signing key, master key by device.
	f = sigUpload(carol, map[string]any{user: map[string]any{
		dev:        ssk.sign(t, exact(), user, "ed25519:"+ssk.pub),
		master.pub: devKP.sign(t, csKey(master, "master"), user, "ed25519:"+dev),
	}})
	if len(f) != 0 {
		t.Fatalf("valid signatures failed: %v", f)
	}
	q := e2eeQuery(t, bob, carol.UserID)
	if q.DeviceKeys[carol.UserID][carol.DeviceID].Signatures[carol.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, ssk.pub)] == "" {
		t.Error("device signature not returned")
	}
	if q.MasterKeys[carol.UserID].Signatures[carol.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, dev)] == "" {
		t.Error("master key signature by the device not returned")
	}
	err = e2eeDo(t, carol, http.MethodPost, []any{"keys", "signatures", "upload"}, nil, map[string]any{user: map[string]any{dev: "str"}}, nil)
	e2eeWantErr(t, "signed object a string", err, 400, "M_BAD_JSON")
	err = e2eeDo(t, carol, http.MethodPost, []any{"keys", "signatures", "upload"}, nil, map[string]any{"carol": map[string]any{}}, nil)
	e2eeWantErr(t, "malformed user ID", err, 400, "M_INVALID_PARAM")
}

// csFirstKey is a cross-signing key's public key ("" when absent).
func csFirstKey(k mautrix.CrossSigningKeys) id.Ed25519 { return k.FirstKey() }

// e2eeHTTP sends a JSON request with c's token and returns the status and
// decoded body, whatever the status.
func e2eeHTTP(t testing.TB, c *mautrix.Client, method, path string, body any) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, c.HomeserverURL.String()+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestCrossSigningVerifiedBothWays follows two users through Element's
// cross-signing: each bootstraps (secret storage, keys, own device and
// master key signed) and the other's sync lists them as changed; each
// sees the other's master and self-signing keys with the signatures the
// spec lets them see; after verifying each other (user-signing
// signatures), each client resolves the other's device as cross-signed
// and verified. A third user sees neither user-signing signature.
func TestCrossSigningVerifiedBothWays(t *testing.T) {
	n := startNode(t)
	aliceC, bobC, carolC := n.register(t, "alice"), n.register(t, "bob"), n.register(t, "carol")
	alice, bob := newE2EEDevice(t, aliceC), newE2EEDevice(t, bobC)
	e2eeRoom(t, aliceC, bobC)
	alice.sync(t)
	bob.sync(t)
	ctx := ctxT(t)
	ed := func(key string) id.KeyID { return id.NewKeyID(id.KeyAlgorithmEd25519, key) }

	keys := map[id.UserID]*crypto.CrossSigningKeysCache{}
	for _, pair := range [][2]*e2eeDevice{{alice, bob}, {bob, alice}} {
		me, peer := pair[0], pair[1]
		peer.lists = mautrix.DeviceLists{}
		if _, err := me.mach.GenerateAndVerifyWithRecoveryKey(ctx); err != nil {
			t.Fatalf("%s bootstraps cross-signing: %v", me.UserID, err)
		}
		keys[me.UserID] = me.mach.CrossSigningKeys
		peer.sync(t)
		if !slices.Contains(peer.lists.Changed, me.UserID) {
			t.Errorf("%s's device_lists.changed after %s's bootstrap = %v", peer.UserID, me.UserID, peer.lists.Changed)
		}
	}

	// What bob sees of alice: master key (and her device's signature of
	// it), self-signing key signed by the master key, her device signed by
	// the self-signing key; no user-signing key.
	aMaster, aSSK := keys[alice.UserID].MasterKey.PublicKey().String(), keys[alice.UserID].SelfSigningKey.PublicKey().String()
	q := e2eeQuery(t, bobC, alice.UserID)
	if mk := q.MasterKeys[alice.UserID]; csFirstKey(mk).String() != aMaster || mk.Signatures[alice.UserID][ed(alice.DeviceID.String())] == "" {
		t.Errorf("bob's view of alice's master key: %+v", mk)
	}
	if sk := q.SelfSigningKeys[alice.UserID]; csFirstKey(sk).String() != aSSK || sk.Signatures[alice.UserID][ed(aMaster)] == "" {
		t.Errorf("bob's view of alice's self-signing key: %+v", sk)
	}
	if q.DeviceKeys[alice.UserID][alice.DeviceID].Signatures[alice.UserID][ed(aSSK)] == "" {
		t.Errorf("bob does not see alice's device signed by her self-signing key")
	}
	if _, ok := q.UserSigningKeys[alice.UserID]; ok {
		t.Error("bob sees alice's user-signing key")
	}
	// Before verifying, bob trusts alice's device only on first use.
	if _, err := bob.mach.FetchKeys(ctx, []id.UserID{alice.UserID}, true); err != nil {
		t.Fatal(err)
	}
	if dev, err := bob.mach.GetOrFetchDevice(ctx, alice.UserID, alice.DeviceID); err != nil || bob.mach.ResolveTrust(dev) != id.TrustStateCrossSignedTOFU {
		t.Errorf("bob's trust in alice's device before verification = %v, %v", bob.mach.ResolveTrust(dev), err)
	}

	// Verification: each signs the other's master key with their user-signing key.
	for _, pair := range [][2]*e2eeDevice{{alice, bob}, {bob, alice}} {
		me, peer := pair[0], pair[1]
		if _, err := me.mach.FetchKeys(ctx, []id.UserID{peer.UserID}, true); err != nil {
			t.Fatal(err)
		}
		if err := me.mach.SignUser(ctx, peer.UserID, keys[peer.UserID].MasterKey.PublicKey()); err != nil {
			t.Fatalf("%s signs %s: %v", me.UserID, peer.UserID, err)
		}
	}
	for _, pair := range [][2]*e2eeDevice{{alice, bob}, {bob, alice}} {
		me, peer := pair[0], pair[1]
		usk := ed(keys[me.UserID].UserSigningKey.PublicKey().String())
		if e2eeQuery(t, me.Client, peer.UserID).MasterKeys[peer.UserID].Signatures[me.UserID][usk] == "" {
			t.Errorf("%s does not see their signature of %s's master key", me.UserID, peer.UserID)
		}
		// Only the signer sees it: not the signed user, not a third user.
		for _, other := range []*mautrix.Client{peer.Client, carolC} {
			if sigs := e2eeQuery(t, other, peer.UserID).MasterKeys[peer.UserID].Signatures[me.UserID]; len(sigs) != 0 {
				t.Errorf("%s sees %s's user-signing signature of %s: %v", other.UserID, me.UserID, peer.UserID, sigs)
			}
		}
		if _, err := me.mach.FetchKeys(ctx, []id.UserID{peer.UserID}, true); err != nil {
			t.Fatal(err)
		}
		if trusted, err := me.mach.IsUserTrusted(ctx, peer.UserID); err != nil || !trusted {
			t.Errorf("%s trusts %s: %v, %v", me.UserID, peer.UserID, trusted, err)
		}
		dev, err := me.mach.GetOrFetchDevice(ctx, peer.UserID, peer.DeviceID)
		if err != nil || me.mach.ResolveTrust(dev) != id.TrustStateCrossSignedVerified {
			t.Errorf("%s's trust in %s's device = %v, %v", me.UserID, peer.UserID, me.mach.ResolveTrust(dev), err)
		}
	}

	// A user-signing signature that does not verify is refused and not stored.
	bMaster := keys[bob.UserID].MasterKey.PublicKey().String()
	stored := e2eeQuery(t, aliceC, bob.UserID).MasterKeys[bob.UserID]
	forged := map[string]any{"user_id": bob.UserID, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + bMaster: bMaster}}
	forged = newE2EEKeyPair(t).sign(t, forged, carolC.UserID.String(), "ed25519:"+carolC.DeviceID.String())
	var resp struct {
		Failures map[string]map[string]map[string]string `json:"failures"`
	}
	if err := e2eeDo(t, carolC, http.MethodPost, []any{"keys", "signatures", "upload"}, nil, map[string]any{bob.UserID.String(): map[string]any{bMaster: forged}}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Failures[bob.UserID.String()][bMaster]["errcode"] != "M_NOT_FOUND" {
		t.Errorf("carol (no user-signing key) signing bob: %v", resp.Failures)
	}
	aUSK := ed(keys[alice.UserID].UserSigningKey.PublicKey().String())
	bad := map[string]any{"user_id": bob.UserID, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + bMaster: bMaster},
		"signatures": map[string]any{alice.UserID.String(): map[string]string{aUSK.String(): stored.Signatures[alice.UserID][aUSK] + "AA"}}}
	if err := e2eeDo(t, aliceC, http.MethodPost, []any{"keys", "signatures", "upload"}, nil, map[string]any{bob.UserID.String(): map[string]any{bMaster: bad}}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Failures[bob.UserID.String()][bMaster]["errcode"] != "M_INVALID_SIGNATURE" {
		t.Errorf("alice uploading a broken signature of bob: %v", resp.Failures)
	}
	if got := e2eeQuery(t, aliceC, bob.UserID).MasterKeys[bob.UserID].Signatures[alice.UserID][aUSK]; got != stored.Signatures[alice.UserID][aUSK] {
		t.Errorf("a refused signature replaced the stored one: %q", got)
	}
}
