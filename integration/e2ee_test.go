package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	goolmaccount "maunium.net/go/mautrix/crypto/goolm/account"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// e2eeStateStore answers an OlmMachine's questions about rooms: every room
// it was told of is encrypted with default settings and shared history.
type e2eeStateStore struct {
	mu    sync.Mutex
	rooms []id.RoomID
}

func (s *e2eeStateStore) add(roomID id.RoomID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.rooms, roomID) {
		s.rooms = append(s.rooms, roomID)
	}
}

func (s *e2eeStateStore) IsEncrypted(_ context.Context, roomID id.RoomID) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.rooms, roomID), nil
}

func (s *e2eeStateStore) GetEncryptionEvent(context.Context, id.RoomID) (*event.EncryptionEventContent, error) {
	return &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}, nil
}

func (s *e2eeStateStore) GetHistoryVisibility(context.Context, id.RoomID) (*event.HistoryVisibilityEventContent, error) {
	return &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityShared}, nil
}

func (s *e2eeStateStore) FindSharedRooms(context.Context, id.UserID) ([]id.RoomID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.rooms), nil
}

// e2eeDevice is a client device with real Olm/Megolm crypto (mautrix's
// OlmMachine over an in-memory store), synced by hand so tests control
// every step.
type e2eeDevice struct {
	*mautrix.Client
	mach   *crypto.OlmMachine
	state  *e2eeStateStore
	since  string
	events map[id.EventID]*event.Event // encrypted timeline events seen
	lists  mautrix.DeviceLists         // device_lists accumulated over syncs
}

// newE2EEDevice loads an Olm account for c, uploads its device and
// one-time keys, and does an initial sync.
func newE2EEDevice(t testing.TB, c *mautrix.Client) *e2eeDevice {
	t.Helper()
	ctx := ctxT(t)
	d := &e2eeDevice{Client: c, state: &e2eeStateStore{}, events: map[id.EventID]*event.Event{}}
	d.mach = crypto.NewOlmMachine(c, nil, crypto.NewMemoryStore(nil), d.state)
	if err := d.mach.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.mach.ShareKeys(ctx, 0); err != nil {
		t.Fatalf("share keys: %v", err)
	}
	d.sync(t)
	return d
}

// sync does one non-blocking /sync and feeds it to the OlmMachine.
func (d *e2eeDevice) sync(t testing.TB) *mautrix.RespSync {
	t.Helper()
	ctx := ctxT(t)
	resp, err := d.SyncRequest(ctx, 0, d.since, "", false, "")
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	for roomID, jr := range resp.Rooms.Join {
		for _, evs := range [][]*event.Event{jr.State.Events, jr.Timeline.Events} {
			for _, ev := range evs {
				ev.RoomID = roomID
				switch ev.Type.Type {
				case event.StateEncryption.Type:
					d.state.add(roomID)
				case event.EventEncrypted.Type:
					d.events[ev.ID] = ev
				case event.StateMember.Type:
					// As a client's syncer would: a membership change makes the
					// machine start a new megolm session for the room.
					ev.Type.Class = event.StateEventType
					if err := ev.Content.ParseRaw(ev.Type); err == nil || errors.Is(err, event.ErrContentAlreadyParsed) {
						d.mach.HandleMemberEvent(ctx, ev)
					}
				}
			}
		}
	}
	d.lists.Changed = append(d.lists.Changed, resp.DeviceLists.Changed...)
	d.lists.Left = append(d.lists.Left, resp.DeviceLists.Left...)
	d.mach.ProcessSyncResponse(ctx, resp, d.since)
	d.since = resp.NextBatch
	return resp
}

// sendEncrypted shares the room's megolm session with users' devices (over
// /keys/query, /keys/claim and /sendToDevice) and sends body encrypted.
func (d *e2eeDevice) sendEncrypted(t testing.TB, roomID id.RoomID, users []id.UserID, body string) id.EventID {
	t.Helper()
	ctx := ctxT(t)
	d.state.add(roomID)
	if err := d.mach.ShareGroupSession(ctx, roomID, users); err != nil {
		t.Fatalf("share group session: %v", err)
	}
	enc, err := d.mach.EncryptMegolmEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body})
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	resp, err := d.SendMessageEvent(ctx, roomID, event.EventEncrypted, enc)
	if err != nil {
		t.Fatalf("send encrypted: %v", err)
	}
	return resp.EventID
}

// history pages a room's timeline backwards through /messages, as a
// client scrolling back does, and remembers its encrypted events.
func (d *e2eeDevice) history(t testing.TB, roomID id.RoomID) []id.EventID {
	t.Helper()
	var out []id.EventID
	from := ""
	for range 20 {
		resp, err := d.Messages(ctxT(t), roomID, from, "", mautrix.DirectionBackward, nil, 50)
		if err != nil {
			t.Fatalf("messages: %v", err)
		}
		for _, ev := range resp.Chunk {
			if ev.Type.Type == event.EventEncrypted.Type {
				ev.RoomID = roomID
				d.events[ev.ID] = ev
				out = append(out, ev.ID)
			}
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			return out
		}
		from = resp.End
	}
	t.Fatal("history did not end")
	return nil
}

// decrypt decrypts an encrypted event this device has synced.
func (d *e2eeDevice) decrypt(t testing.TB, eventID id.EventID) (string, error) {
	t.Helper()
	ev := d.events[eventID]
	if ev == nil {
		t.Fatalf("%s did not sync encrypted event %s", d.DeviceID, eventID)
	}
	if err := ev.Content.ParseRaw(ev.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		t.Fatalf("parse encrypted content: %v", err)
	}
	dec, err := d.mach.DecryptMegolmEvent(ctxT(t), ev)
	if err != nil {
		return "", err
	}
	if err := dec.Content.ParseRaw(dec.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		t.Fatalf("parse decrypted content: %v", err)
	}
	return dec.Content.AsMessage().Body, nil
}

// e2eeLogin logs in to an existing account as a new device.
func e2eeLogin(t testing.TB, n *testNode, user id.UserID, name string) *mautrix.Client {
	t.Helper()
	c, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Login(ctxT(t), &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user.Localpart()},
		Password:                 "correct horse battery",
		InitialDeviceDisplayName: name,
		StoreCredentials:         true,
	})
	if err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return c
}

// e2eeDo sends a JSON request to a client API path under /v3 and decodes
// the response into out (when not nil).
func e2eeDo(t testing.TB, c *mautrix.Client, method string, path []any, query map[string]string, body, out any) error {
	t.Helper()
	u := c.BuildURLWithQuery(mautrix.ClientURLPath(append([]any{"v3"}, path...)), query)
	_, err := c.MakeRequest(ctxT(t), method, u, body, out)
	return err
}

// e2eeRaw sends a raw body, for requests that are not valid JSON.
func e2eeRaw(t testing.TB, c *mautrix.Client, method string, path []any, body []byte) error {
	t.Helper()
	_, err := c.MakeFullRequest(ctxT(t), mautrix.FullRequest{
		Method: method, URL: c.BuildClientURL(append([]any{"v3"}, path...)...), RequestBytes: body, MaxAttempts: 1,
	})
	return err
}

// e2eeWantErr asserts a Matrix error's status and errcode.
func e2eeWantErr(t testing.TB, what string, err error, status int, errcode string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		t.Fatalf("%s: want %d %s, got %v", what, status, errcode, err)
	}
	code := ""
	if he.RespError != nil {
		code = he.RespError.ErrCode
	}
	if he.Response.StatusCode != status || code != errcode {
		t.Fatalf("%s: want %d %s, got %d %s (%v)", what, status, errcode, he.Response.StatusCode, code, err)
	}
}

// e2eeKeyPair is an ed25519 key for hand-made signed objects.
type e2eeKeyPair struct {
	pub  string
	priv ed25519.PrivateKey
}

func newE2EEKeyPair(t testing.TB) e2eeKeyPair {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return e2eeKeyPair{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

// sign adds kp's signature as signer/keyID to obj, per the spec's
// Signing JSON: canonical JSON without signatures and unsigned.
func (kp e2eeKeyPair) sign(t testing.TB, obj map[string]any, signer, keyID string) map[string]any {
	t.Helper()
	bare := map[string]any{}
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			bare[k] = v
		}
	}
	msg, err := canonicaljson.Marshal(bare)
	if err != nil {
		t.Fatal(err)
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(kp.priv, msg))
	sigs, _ := obj["signatures"].(map[string]any)
	if sigs == nil {
		sigs = map[string]any{}
	}
	bySigner, _ := sigs[signer].(map[string]any)
	if bySigner == nil {
		bySigner = map[string]any{}
	}
	bySigner[keyID] = sig
	sigs[signer] = bySigner
	obj["signatures"] = sigs
	return obj
}

// e2eeDeviceKeys builds a device_keys object signed by its own key.
func e2eeDeviceKeys(t testing.TB, c *mautrix.Client, kp e2eeKeyPair, curve string) map[string]any {
	dev := c.DeviceID.String()
	obj := map[string]any{
		"user_id":    c.UserID.String(),
		"device_id":  dev,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]any{"ed25519:" + dev: kp.pub, "curve25519:" + dev: curve},
	}
	return kp.sign(t, obj, c.UserID.String(), "ed25519:"+dev)
}

// e2eeRoom makes an encrypted room of alice's that bob joined.
func e2eeRoom(t testing.TB, alice, bob *mautrix.Client) id.RoomID {
	t.Helper()
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		Invite: []id.UserID{bob.UserID},
		InitialState: []*event.Event{{
			Type:    event.StateEncryption,
			Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
		}},
	})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	return roomID
}

// TestE2EEEncryptedMessage is what Element does: alice and bob exchange
// keys through /keys/query, /keys/claim and to-device messages, alice sends
// a megolm-encrypted message and bob decrypts it; bob's second device,
// once alice's client learns of it through device_lists, decrypts the next.
func TestE2EEEncryptedMessage(t *testing.T) {
	n := startNode(t)
	aliceC, bobC := n.register(t, "alice"), n.register(t, "bob")
	alice, bob := newE2EEDevice(t, aliceC), newE2EEDevice(t, bobC)
	roomID := e2eeRoom(t, aliceC, bobC)
	alice.sync(t)
	bob.sync(t)
	users := []id.UserID{alice.UserID, bob.UserID}

	// Alice's client claims one of bob's 50 one-time keys for the Olm session.
	first := alice.sendEncrypted(t, roomID, users, "hello bob, secretly")
	bobResp := bob.sync(t)
	if len(bobResp.ToDevice.Events) == 0 {
		t.Fatal("bob got no to-device room key")
	}
	if got, err := bob.decrypt(t, first); err != nil || got != "hello bob, secretly" {
		t.Fatalf("bob decrypts %q, %v", got, err)
	}
	if c := bobResp.DeviceOTKCount.SignedCurve25519; c != 49 && c != 50 {
		t.Errorf("bob's one-time key count after one claim = %d", c) // 50 again if his client topped up already
	}
	// The room key arrived once: the next sync acknowledges it and brings nothing.
	if again := bob.sync(t); len(again.ToDevice.Events) != 0 {
		t.Errorf("to-device redelivered after acknowledgement: %d events", len(again.ToDevice.Events))
	}

	// Bob logs in on a second device; alice's sync lists bob as changed.
	bob2 := newE2EEDevice(t, e2eeLogin(t, n, bob.UserID, "bob's laptop"))
	alice.lists = mautrix.DeviceLists{}
	alice.sync(t)
	if !slices.Contains(alice.lists.Changed, bob.UserID) {
		t.Fatalf("alice's device_lists.changed = %v, want bob", alice.lists.Changed)
	}
	second := alice.sendEncrypted(t, roomID, users, "now to both of your devices")
	bob.sync(t)
	bob2.sync(t)
	for _, d := range []*e2eeDevice{bob, bob2} {
		if got, err := d.decrypt(t, second); err != nil || got != "now to both of your devices" {
			t.Fatalf("%s decrypts %q, %v", d.DeviceID, got, err)
		}
	}
	// bob2 joined after the first message: alice never shared that session with it.
	if _, err := bob2.decrypt(t, first); err == nil {
		t.Fatal("bob's new device decrypted a message from before it existed")
	}
	// Key sharing between bob's devices: bob2 asks bob1 for that session
	// (m.room_key_request), bob1 forwards it over a new Olm session.
	bob.mach.ShareKeysMinTrust = id.TrustStateUnset // bob1 has not verified bob2
	enc := bob2.events[first].Content.AsEncrypted()
	if err := bob2.mach.SendRoomKeyRequest(ctxT(t), roomID, enc.SenderKey, enc.SessionID, "", map[id.UserID][]id.DeviceID{bob.UserID: {bob.DeviceID}}); err != nil {
		t.Fatal(err)
	}
	bob.sync(t) // handles the request in the background
	deadline := time.Now().Add(10 * time.Second)
	for {
		bob2.sync(t)
		if got, err := bob2.decrypt(t, first); err == nil {
			if got != "hello bob, secretly" {
				t.Fatalf("forwarded key decrypts %q", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bob2 never received the forwarded room key")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Bob's reply decrypts on alice's side: the exchange works both ways.
	reply := bob.sendEncrypted(t, roomID, users, "got it")
	alice.sync(t)
	if got, err := alice.decrypt(t, reply); err != nil || got != "got it" {
		t.Fatalf("alice decrypts %q, %v", got, err)
	}
}

// TestE2EEFallbackKey: with bob's one-time keys used up, alice's client
// gets his fallback key from /keys/claim, and the Olm session built on it
// still carries the room key; bob's sync then reports the fallback key used.
func TestE2EEFallbackKey(t *testing.T) {
	n := startNode(t)
	aliceC, bobC, carol := n.register(t, "alice"), n.register(t, "bob"), n.register(t, "carol")
	alice, bob := newE2EEDevice(t, aliceC), newE2EEDevice(t, bobC)
	roomID := e2eeRoom(t, aliceC, bobC)
	alice.sync(t)

	// Carol drains bob's one-time keys.
	for i := 0; ; i++ {
		if keyID, _ := keysClaim(t, carol, bob.UserID, bob.DeviceID).claimedKeyID(bob.UserID, bob.DeviceID); keyID == "" {
			break
		}
		if i > 100 {
			t.Fatal("one-time keys never ran out")
		}
	}
	// Bob's Olm account makes a fallback key; his client uploads it signed.
	acc, ok := bob.mach.GetAccount().Internal.(*goolmaccount.Account)
	if !ok {
		t.Fatalf("olm account is %T, want goolm", bob.mach.GetAccount().Internal)
	}
	if err := acc.GenFallbackKey(); err != nil {
		t.Fatal(err)
	}
	fallback := map[string]any{}
	for keyID, key := range acc.FallbackKeyUnpublished() {
		otk := mautrix.OneTimeKey{Key: key, Fallback: true, IsSigned: true}
		sig, err := bob.mach.GetAccount().SignJSON(&otk)
		if err != nil {
			t.Fatal(err)
		}
		otk.Signatures = signatures.NewSingleSignature(bob.UserID, id.KeyAlgorithmEd25519, bob.DeviceID.String(), sig)
		fallback["signed_curve25519:"+keyID] = &otk
	}
	if _, err := keysUpload(t, bobC, map[string]any{"fallback_keys": fallback}); err != nil {
		t.Fatal(err)
	}

	msg := alice.sendEncrypted(t, roomID, []id.UserID{alice.UserID, bob.UserID}, "via the fallback key")
	resp := bob.sync(t)
	if got, err := bob.decrypt(t, msg); err != nil || got != "via the fallback key" {
		t.Fatalf("bob decrypts %q, %v", got, err)
	}
	if resp.FallbackKeys == nil || len(resp.FallbackKeys) != 0 || resp.DeviceOTKCount.SignedCurve25519 != 0 {
		t.Errorf("bob's sync after the fallback claim: unused fallback %v, count %d", resp.FallbackKeys, resp.DeviceOTKCount.SignedCurve25519)
	}
}

// TestE2EESecretStorageAccountData checks that secret-storage and
// cross-signing account data (Element's recovery setup) round-trip through
// /sync unchanged and in the order written.
func TestE2EESecretStorageAccountData(t *testing.T) {
	n := startNode(t)
	c := n.register(t, "")
	ctx := ctxT(t)
	mustCreateRoom(t, c, &mautrix.ReqCreateRoom{}) // so the since token below is past position 0
	resp, err := c.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	since := resp.NextBatch
	entries := []struct {
		typ     string
		content string
	}{
		{"m.secret_storage.key.abc", `{"algorithm":"m.secret_storage.v1.aes-hmac-sha2","iv":"aXY","mac":"bWFj","passphrase":{"algorithm":"m.pbkdf2","iterations":500000,"salt":"c2FsdA"}}`},
		{"m.secret_storage.default_key", `{"key":"abc"}`},
		{"m.cross_signing.master", `{"encrypted":{"abc":{"ciphertext":"Y2lwaGVy","iv":"aXY","mac":"bWFj"}}}`},
		{"m.cross_signing.self_signing", `{"encrypted":{"abc":{"ciphertext":"c2VsZg","iv":"aXY","mac":"bWFj"}}}`},
		{"m.cross_signing.user_signing", `{"encrypted":{"abc":{"ciphertext":"dXNlcg","iv":"aXY","mac":"bWFj"}}}`},
		{"m.megolm_backup.v1", `{"encrypted":{"abc":{"ciphertext":"YmFja3Vw","iv":"aXY","mac":"bWFj"}}}`},
	}
	for _, e := range entries {
		if err := c.SetAccountData(ctx, e.typ, json.RawMessage(e.content)); err != nil {
			t.Fatalf("put %s: %v", e.typ, err)
		}
	}
	var got []string
	for _, sinceTok := range []string{since, ""} {
		var raw struct {
			AccountData struct {
				Events []struct {
					Type    string          `json:"type"`
					Content json.RawMessage `json:"content"`
				} `json:"events"`
			} `json:"account_data"`
		}
		q := map[string]string{}
		if sinceTok != "" {
			q["since"] = sinceTok
		}
		if err := e2eeDo(t, c, http.MethodGet, []any{"sync"}, q, nil, &raw); err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		byType := map[string]json.RawMessage{}
		for _, ev := range raw.AccountData.Events {
			if strings.HasPrefix(ev.Type, "m.secret_storage.") || strings.HasPrefix(ev.Type, "m.cross_signing.") || ev.Type == "m.megolm_backup.v1" {
				got = append(got, ev.Type)
				byType[ev.Type] = ev.Content
			}
		}
		for _, e := range entries {
			if !e2eeSameJSON(t, byType[e.typ], json.RawMessage(e.content)) {
				t.Errorf("%s (since %q) = %s, want %s", e.typ, sinceTok, byType[e.typ], e.content)
			}
		}
		if sinceTok != "" {
			want := make([]string, len(entries))
			for i, e := range entries {
				want[i] = e.typ
			}
			if !slices.Equal(got, want) {
				t.Errorf("incremental order = %v, want %v", got, want)
			}
		}
	}
	// And through GET /user/{userId}/account_data/{type}.
	var direct json.RawMessage
	if err := c.GetAccountData(ctx, "m.cross_signing.master", &direct); err != nil || !e2eeSameJSON(t, direct, json.RawMessage(entries[2].content)) {
		t.Errorf("GET m.cross_signing.master = %s, %v", direct, err)
	}
}

func e2eeSameJSON(t testing.TB, a, b json.RawMessage) bool {
	t.Helper()
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	ca, err1 := canonicaljson.CanonicalJSON(a)
	cb, err2 := canonicaljson.CanonicalJSON(b)
	return err1 == nil && err2 == nil && string(ca) == string(cb)
}
