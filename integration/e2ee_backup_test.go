package integration

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// backupKey is a session key as a backup stores it.
func backupKey(fmi, fc int, verified bool, tag string) map[string]any {
	return map[string]any{
		"first_message_index": fmi,
		"forwarded_count":     fc,
		"is_verified":         verified,
		"session_data":        map[string]any{"ephemeral": "eph", "ciphertext": tag, "mac": "mac"},
	}
}

type backupUpdate struct {
	Etag  string `json:"etag"`
	Count int    `json:"count"`
}

type backupInfoResp struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int             `json:"count"`
	Etag      string          `json:"etag"`
	Version   string          `json:"version"`
}

// TestKeyBackup covers /room_keys: versions, the three levels of keys,
// the replacement rules, etags and counts, and writing to an old version.
func TestKeyBackup(t *testing.T) {
	n := startNode(t)
	c := n.register(t, "")
	const alg = "m.megolm_backup.v1.curve25519-aes-sha2"
	do := func(method string, path []any, version string, body, out any) error {
		t.Helper()
		var q map[string]string
		if version != "" {
			q = map[string]string{"version": version}
		}
		return e2eeDo(t, c, method, append([]any{"room_keys"}, path...), q, body, out)
	}
	keysPath := func(parts ...any) []any { return append([]any{"keys"}, parts...) }
	room, room2 := "!room:localhost", "!other:localhost"

	err := do(http.MethodGet, []any{"version"}, "", nil, nil)
	e2eeWantErr(t, "no backup yet", err, 404, "M_NOT_FOUND")
	err = do(http.MethodPut, keysPath(room, "s1"), "1", backupKey(0, 0, false, "a"), nil)
	e2eeWantErr(t, "keys without a backup", err, 404, "M_NOT_FOUND")
	err = do(http.MethodPost, []any{"version"}, "", map[string]any{"auth_data": map[string]any{}}, nil)
	e2eeWantErr(t, "create without algorithm", err, 400, "M_MISSING_PARAM")
	err = do(http.MethodPost, []any{"version"}, "", map[string]any{"algorithm": alg}, nil)
	e2eeWantErr(t, "create without auth_data", err, 400, "M_MISSING_PARAM")
	err = do(http.MethodPost, []any{"version"}, "", map[string]any{"algorithm": alg, "auth_data": "x"}, nil)
	e2eeWantErr(t, "auth_data a string", err, 400, "M_BAD_JSON")

	var created struct {
		Version string `json:"version"`
	}
	if err := do(http.MethodPost, []any{"version"}, "", map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "pk1"}}, &created); err != nil || created.Version != "1" {
		t.Fatalf("create: %+v, %v", created, err)
	}
	var info backupInfoResp
	if err := do(http.MethodGet, []any{"version"}, "", nil, &info); err != nil || info.Version != "1" || info.Algorithm != alg || info.Count != 0 || info.Etag == "" ||
		!e2eeSameJSON(t, info.AuthData, json.RawMessage(`{"public_key":"pk1"}`)) {
		t.Fatalf("latest: %+v, %v", info, err)
	}
	etag0 := info.Etag

	// One session.
	var up backupUpdate
	if err := do(http.MethodPut, keysPath(room, "s1"), "1", backupKey(5, 1, false, "first"), &up); err != nil || up.Count != 1 || up.Etag == etag0 {
		t.Fatalf("put s1: %+v, %v", up, err)
	}
	etag1 := up.Etag
	get := func(roomID, session string) map[string]any {
		t.Helper()
		var k map[string]any
		if err := do(http.MethodGet, keysPath(roomID, session), "1", nil, &k); err != nil {
			t.Fatalf("get %s/%s: %v", roomID, session, err)
		}
		return k
	}
	tagOf := func(k map[string]any) string { return k["session_data"].(map[string]any)["ciphertext"].(string) }
	if k := get(room, "s1"); tagOf(k) != "first" || k["first_message_index"].(float64) != 5 {
		t.Fatalf("get s1 = %v", k)
	}

	// Replacement rules: a worse key is ignored (etag unchanged), a better one wins.
	steps := []struct {
		key  map[string]any
		want string
	}{
		{backupKey(7, 0, false, "later index"), "first"},        // higher first_message_index loses
		{backupKey(5, 2, false, "more forwarded"), "first"},     // same index, more forwards loses
		{backupKey(5, 1, false, "identical metadata"), "first"}, // a tie keeps the stored key
		{backupKey(5, 0, false, "fewer forwards"), "fewer forwards"},
		{backupKey(3, 9, false, "lower index"), "lower index"},
		{backupKey(9, 9, true, "verified"), "verified"},         // verified beats everything unverified
		{backupKey(0, 0, false, "unverified best"), "verified"}, // and is not displaced by it
		{backupKey(8, 0, true, "verified lower"), "verified lower"},
	}
	etag := etag1
	for i, st := range steps {
		if err := do(http.MethodPut, keysPath(room, "s1"), "1", st.key, &up); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		got := tagOf(get(room, "s1"))
		if got != st.want {
			t.Fatalf("step %d (%s): stored %q, want %q", i, tagOf(st.key), got, st.want)
		}
		if changed := up.Etag != etag; changed != (got == tagOf(st.key)) || up.Count != 1 {
			t.Fatalf("step %d: etag %s→%s, count %d", i, etag, up.Etag, up.Count)
		}
		etag = up.Etag
	}

	// Room and all-rooms levels.
	if err := do(http.MethodPut, keysPath(room), "1", map[string]any{"sessions": map[string]any{"s2": backupKey(0, 0, false, "s2"), "s3": backupKey(0, 0, false, "s3")}}, &up); err != nil || up.Count != 3 {
		t.Fatalf("put room: %+v, %v", up, err)
	}
	if err := do(http.MethodPut, keysPath(), "1", map[string]any{"rooms": map[string]any{room2: map[string]any{"sessions": map[string]any{"t1": backupKey(0, 0, true, "t1")}}}}, &up); err != nil || up.Count != 4 {
		t.Fatalf("put all: %+v, %v", up, err)
	}
	var all struct {
		Rooms map[string]struct {
			Sessions map[string]json.RawMessage `json:"sessions"`
		} `json:"rooms"`
	}
	if err := do(http.MethodGet, keysPath(), "1", nil, &all); err != nil || len(all.Rooms) != 2 || len(all.Rooms[room].Sessions) != 3 || len(all.Rooms[room2].Sessions) != 1 {
		t.Fatalf("get all: %+v, %v", all, err)
	}
	var one struct {
		Sessions map[string]json.RawMessage `json:"sessions"`
	}
	if err := do(http.MethodGet, keysPath(room2), "1", nil, &one); err != nil || len(one.Sessions) != 1 {
		t.Fatalf("get room: %+v, %v", one, err)
	}
	var empty struct {
		Sessions map[string]json.RawMessage `json:"sessions"`
	}
	if err := do(http.MethodGet, keysPath("!empty:localhost"), "1", nil, &empty); err != nil || empty.Sessions == nil || len(empty.Sessions) != 0 {
		t.Fatalf("get empty room: %+v, %v", empty, err)
	}
	err = do(http.MethodGet, keysPath(room, "nope"), "1", nil, nil)
	e2eeWantErr(t, "missing session", err, 404, "M_NOT_FOUND")
	if err := do(http.MethodGet, []any{"version", "1"}, "", nil, &info); err != nil || info.Count != 4 || info.Etag != up.Etag {
		t.Fatalf("version info %+v, %v (last update %+v)", info, err, up)
	}

	// Bad key data and parameters.
	err = do(http.MethodPut, keysPath(room, "bad"), "1", map[string]any{"first_message_index": 0}, nil)
	e2eeWantErr(t, "key without session_data", err, 400, "M_BAD_JSON")
	err = do(http.MethodPut, keysPath(room), "1", map[string]any{}, nil)
	e2eeWantErr(t, "room without sessions", err, 400, "M_BAD_JSON")
	// One bad session among good ones: nothing is written.
	err = do(http.MethodPut, keysPath(), "1", map[string]any{"rooms": map[string]any{
		room:  map[string]any{"sessions": map[string]any{"new1": backupKey(0, 0, true, "new1")}},
		room2: map[string]any{"sessions": map[string]any{"new2": map[string]any{"first_message_index": 0, "forwarded_count": 0, "session_data": map[string]any{}}}},
	}}, nil)
	e2eeWantErr(t, "a session without is_verified", err, 400, "M_BAD_JSON")
	err = do(http.MethodGet, keysPath(room, "new1"), "1", nil, nil)
	e2eeWantErr(t, "the good session of a refused request", err, 404, "M_NOT_FOUND")
	err = do(http.MethodPut, keysPath(room, "s9"), "", backupKey(0, 0, false, "x"), nil)
	e2eeWantErr(t, "no version parameter", err, 400, "M_MISSING_PARAM")
	err = do(http.MethodGet, keysPath(), "", nil, nil)
	e2eeWantErr(t, "get without version", err, 400, "M_MISSING_PARAM")
	err = do(http.MethodGet, keysPath(), "77", nil, nil)
	e2eeWantErr(t, "get from an unknown version", err, 404, "M_NOT_FOUND")

	// Updating the version: only auth_data, same algorithm, matching version.
	err = do(http.MethodPut, []any{"version", "1"}, "", map[string]any{"algorithm": "m.other", "auth_data": map[string]any{}}, nil)
	e2eeWantErr(t, "update with another algorithm", err, 400, "M_INVALID_PARAM")
	err = do(http.MethodPut, []any{"version", "1"}, "", map[string]any{"algorithm": alg, "auth_data": map[string]any{}, "version": "2"}, nil)
	e2eeWantErr(t, "update with a mismatched version", err, 400, "M_INVALID_PARAM")
	err = do(http.MethodPut, []any{"version", "9"}, "", map[string]any{"algorithm": alg, "auth_data": map[string]any{}}, nil)
	e2eeWantErr(t, "update an unknown version", err, 404, "M_NOT_FOUND")
	if err := do(http.MethodPut, []any{"version", "1"}, "", map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "pk1b"}, "version": "1"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := do(http.MethodGet, []any{"version", "1"}, "", nil, &info); err != nil || !e2eeSameJSON(t, info.AuthData, json.RawMessage(`{"public_key":"pk1b"}`)) || info.Count != 4 {
		t.Fatalf("after update: %+v, %v", info, err)
	}

	// A new version becomes current: writes to the old one are refused with the current version.
	if err := do(http.MethodPost, []any{"version"}, "", map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "pk2"}}, &created); err != nil || created.Version != "2" {
		t.Fatalf("create 2: %+v, %v", created, err)
	}
	err = do(http.MethodPut, keysPath(room, "s1"), "1", backupKey(0, 0, true, "x"), nil)
	e2eeWantErr(t, "write to the old version", err, 403, "M_WRONG_ROOM_KEYS_VERSION")
	if status, body := e2eeHTTP(t, c, http.MethodPut, "/_matrix/client/v3/room_keys/keys?version=1", map[string]any{"rooms": map[string]any{}}); status != 403 || body["current_version"] != "2" {
		t.Errorf("wrong-version error body: %d %v", status, body)
	}
	if err := do(http.MethodGet, []any{"version"}, "", nil, &info); err != nil || info.Version != "2" || info.Count != 0 {
		t.Fatalf("latest after create 2: %+v, %v", info, err)
	}
	// The old version stays readable.
	if tagOf(get(room, "s1")) != "verified lower" {
		t.Error("old version's keys changed")
	}

	// Deleting keys at each level updates count and etag.
	for _, st := range []struct {
		path    []any
		want    int
		changes bool
	}{{keysPath(room, "s1"), 3, true}, {keysPath(room, "s1"), 3, false}, {keysPath(room), 1, true}, {keysPath(), 0, true}} {
		before := up.Etag
		if err := do(http.MethodDelete, st.path, "1", nil, &up); err != nil || up.Count != st.want {
			t.Fatalf("delete %v: %+v, %v", st.path, up, err)
		}
		if (up.Etag != before) != st.changes {
			t.Errorf("delete %v: etag %s→%s", st.path, before, up.Etag)
		}
	}
	err = do(http.MethodGet, keysPath(room, "s1"), "1", nil, nil)
	e2eeWantErr(t, "deleted session", err, 404, "M_NOT_FOUND")

	// Deleting a version: its keys go, deleting again succeeds, unknown ones are 404.
	if err := do(http.MethodDelete, []any{"version", "2"}, "", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := do(http.MethodDelete, []any{"version", "2"}, "", nil, nil); err != nil {
		t.Errorf("deleting a deleted version: %v", err)
	}
	err = do(http.MethodDelete, []any{"version", "99"}, "", nil, nil)
	e2eeWantErr(t, "deleting an unknown version", err, 404, "M_NOT_FOUND")
	err = do(http.MethodGet, []any{"version", "2"}, "", nil, nil)
	e2eeWantErr(t, "getting a deleted version", err, 404, "M_NOT_FOUND")
	err = do(http.MethodGet, []any{"version", "abc"}, "", nil, nil)
	e2eeWantErr(t, "getting a malformed version", err, 404, "M_NOT_FOUND")
	if err := do(http.MethodGet, []any{"version"}, "", nil, &info); err != nil || info.Version != "1" {
		t.Fatalf("latest after deleting 2: %+v, %v", info, err)
	}
	// Version numbers are not reused.
	if err := do(http.MethodPost, []any{"version"}, "", map[string]any{"algorithm": alg, "auth_data": map[string]any{}}, &created); err != nil || created.Version != "3" {
		t.Fatalf("create after delete: %+v, %v", created, err)
	}

	// Another user sees none of it.
	other := n.register(t, "")
	err = e2eeDo(t, other, http.MethodGet, []any{"room_keys", "version", "1"}, nil, nil, nil)
	e2eeWantErr(t, "another user's version", err, 404, "M_NOT_FOUND")
}

// TestKeyBackupRestoreOnNewDevice is Element's "restore from backup", end
// to end on mautrix's OlmMachine: alice sets up recovery (secret storage,
// cross-signing, a curve25519 backup key signed by her device and master
// key), backs up the megolm sessions of a conversation with bob, and a
// brand-new device of hers, given only the recovery key, fetches the
// backup key from secret storage, trusts the backup version through the
// signatures the server kept, downloads the keys and decrypts the history
// sent before it existed.
func TestKeyBackupRestoreOnNewDevice(t *testing.T) {
	n := startNode(t)
	aliceC, bobC := n.register(t, "alice"), n.register(t, "bob")
	alice, bob := newE2EEDevice(t, aliceC), newE2EEDevice(t, bobC)
	roomID := e2eeRoom(t, aliceC, bobC)
	alice.sync(t)
	bob.sync(t)
	ctx := ctxT(t)
	users := []id.UserID{alice.UserID, bob.UserID}

	// Recovery setup, as Element's "set up secure backup" does it.
	recoveryKey, xsKeys, err := alice.mach.GenerateAndUploadCrossSigningKeys(ctx, nil, "")
	if err != nil {
		t.Fatalf("cross-signing bootstrap: %v", err)
	}
	if err := alice.mach.SignOwnDevice(ctx, alice.mach.OwnIdentity()); err != nil {
		t.Fatal(err)
	}
	keyID, keyData, err := alice.mach.SSSS.GetDefaultKeyData(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ssssKey, err := keyData.VerifyRecoveryKey(keyID, recoveryKey)
	if err != nil {
		t.Fatal(err)
	}
	backupKey, err := backup.NewMegolmBackupKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.mach.SSSS.SetEncryptedAccountData(ctx, event.AccountDataMegolmBackupKey, backupKey.Bytes(), ssssKey); err != nil {
		t.Fatal(err)
	}
	authData := backup.MegolmAuthData{PublicKey: id.Ed25519(base64.RawStdEncoding.EncodeToString(backupKey.PublicKey().Bytes()))}
	devSig, err := alice.mach.GetAccount().SignJSON(authData)
	if err != nil {
		t.Fatal(err)
	}
	masterSig, err := xsKeys.MasterKey.SignJSON(authData)
	if err != nil {
		t.Fatal(err)
	}
	authData.Signatures = signatures.Signatures{alice.UserID: {
		id.NewKeyID(id.KeyAlgorithmEd25519, alice.DeviceID.String()):               devSig,
		id.NewKeyID(id.KeyAlgorithmEd25519, xsKeys.MasterKey.PublicKey().String()): masterSig,
	}}
	created, err := aliceC.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
		Algorithm: id.KeyBackupAlgorithmMegolmBackupV1, AuthData: authData,
	})
	if err != nil {
		t.Fatalf("create backup version: %v", err)
	}

	// History: one message from each of them.
	fromAlice := alice.sendEncrypted(t, roomID, users, "alice, before the new device")
	bob.sync(t)
	fromBob := bob.sendEncrypted(t, roomID, users, "bob, before the new device")
	alice.sync(t)
	if got, err := alice.decrypt(t, fromBob); err != nil || got != "bob, before the new device" {
		t.Fatalf("alice decrypts bob: %q, %v", got, err)
	}

	// Alice's client backs up both room keys it holds, encrypted to the backup key.
	sessions, err := alice.mach.CryptoStore.GetGroupSessionsForRoom(ctx, roomID).AsList()
	if err != nil || len(sessions) != 2 {
		t.Fatalf("alice holds %d sessions for the room, %v", len(sessions), err)
	}
	backedUp := mautrix.ReqRoomKeyBackup{Sessions: map[id.SessionID]mautrix.ReqKeyBackupData{}}
	for _, igs := range sessions {
		first := igs.Internal.FirstKnownIndex()
		exported, err := igs.Internal.Export(first)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := backup.EncryptSessionData(backupKey, backup.MegolmSessionData{
			Algorithm:          id.AlgorithmMegolmV1,
			ForwardingKeyChain: []string{},
			SenderClaimedKeys:  backup.SenderClaimedKeys{Ed25519: igs.SigningKey},
			SenderKey:          igs.SenderKey,
			SessionKey:         string(exported),
		})
		if err != nil {
			t.Fatal(err)
		}
		backedUp.Sessions[igs.ID()] = mautrix.ReqKeyBackupData{FirstMessageIndex: int(first), IsVerified: true, SessionData: mustJSON(t, enc)}
	}
	req := &mautrix.ReqKeyBackup{Rooms: map[id.RoomID]mautrix.ReqRoomKeyBackup{roomID: backedUp}}
	up, err := aliceC.PutKeysInBackup(ctx, created.Version, req)
	if err != nil || up.Count != 2 {
		t.Fatalf("back up keys: %+v, %v", up, err)
	}
	// Element uploads again on every start: the same keys change nothing.
	if again, err := aliceC.PutKeysInBackup(ctx, created.Version, req); err != nil || again.Count != 2 || again.ETag != up.ETag {
		t.Fatalf("re-upload: %+v, %v (first %+v)", again, err, up)
	}

	// A brand-new device of alice's: the history is there but unreadable.
	alice2 := newE2EEDevice(t, e2eeLogin(t, n, alice.UserID, "alice's new laptop"))
	hist := alice2.history(t, roomID)
	if !slices.Contains(hist, fromAlice) || !slices.Contains(hist, fromBob) {
		t.Fatalf("new device's history %v lacks %s / %s", hist, fromAlice, fromBob)
	}
	for _, ev := range []id.EventID{fromAlice, fromBob} {
		if _, err := alice2.decrypt(t, ev); err == nil {
			t.Fatalf("new device decrypted %s before restoring", ev)
		}
	}

	// The user enters the recovery key: cross-signing keys come from
	// secret storage and sign the new device; then the backup key.
	if err := alice2.mach.VerifyWithRecoveryKey(ctx, recoveryKey); err != nil {
		t.Fatalf("verify with recovery key: %v", err)
	}
	keyID2, keyData2, err := alice2.mach.SSSS.GetDefaultKeyData(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ssssKey2, err := keyData2.VerifyRecoveryKey(keyID2, recoveryKey)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := alice2.mach.SSSS.GetDecryptedAccountData(ctx, event.AccountDataMegolmBackupKey, ssssKey2)
	if err != nil {
		t.Fatalf("backup key from secret storage: %v", err)
	}
	restoredKey, err := backup.MegolmBackupKeyFromBytes(secret)
	if err != nil {
		t.Fatal(err)
	}
	// Without the key in hand, the version is trusted through the master
	// key's signature of its auth_data: the server must return it intact.
	info, err := alice2.mach.GetAndVerifyLatestKeyBackupVersion(ctx, nil)
	if err != nil || info.Version != created.Version || info.Count != 2 || info.ETag != up.ETag {
		t.Fatalf("latest backup version on the new device: %+v, %v", info, err)
	}
	version, err := alice2.mach.DownloadAndStoreLatestKeyBackup(ctx, restoredKey)
	if err != nil || version != created.Version {
		t.Fatalf("restore: version %q, %v", version, err)
	}
	for ev, want := range map[id.EventID]string{fromAlice: "alice, before the new device", fromBob: "bob, before the new device"} {
		if got, err := alice2.decrypt(t, ev); err != nil || got != want {
			t.Errorf("after restore, the new device decrypts %s: %q, %v", ev, got, err)
		}
	}

	// Bob sees the new device as alice's, cross-signed by her.
	if _, err := bob.mach.FetchKeys(ctx, []id.UserID{alice.UserID}, true); err != nil {
		t.Fatal(err)
	}
	dev, err := bob.mach.GetOrFetchDevice(ctx, alice.UserID, alice2.DeviceID)
	if err != nil || bob.mach.ResolveTrust(dev) < id.TrustStateCrossSignedTOFU {
		t.Errorf("bob's trust in alice's new device: %v, %v", dev, err)
	}
}
