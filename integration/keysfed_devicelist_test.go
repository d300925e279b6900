package integration

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
	"edge/edge/keysfed"
)

// dlDecrypts syncs d until it decrypts eventID as want.
func dlDecrypts(t *testing.T, d *e2eeDevice, eventID id.EventID, want string) {
	t.Helper()
	var text string
	var err error
	keysFedEventually(t, string(d.UserID)+"/"+string(d.DeviceID)+" decrypting "+want, func() bool {
		d.sync(t)
		if d.events[eventID] == nil {
			return false
		}
		text, err = d.decrypt(t, eventID)
		return err == nil
	})
	if text != want {
		t.Fatalf("%s decrypts %q, want %q", d.DeviceID, text, want)
	}
}

// dlSeesChange syncs d until user is in its device_lists.changed.
func dlSeesChange(t *testing.T, d *e2eeDevice, user id.UserID) {
	t.Helper()
	d.lists = mautrix.DeviceLists{}
	keysFedEventually(t, string(user)+" in "+string(d.UserID)+"'s device_lists.changed", func() bool {
		d.sync(t)
		return slices.Contains(d.lists.Changed, user)
	})
}

// dlRecipients lists the devices the sender's current megolm session of
// roomID was shared with.
func dlRecipients(t *testing.T, d *e2eeDevice, roomID id.RoomID) []crypto.UserDevice {
	t.Helper()
	s, err := d.mach.CryptoStore.GetOutboundGroupSession(ctxT(t), roomID)
	if err != nil || s == nil {
		t.Fatalf("outbound session of %s: %v", roomID, err)
	}
	var out []crypto.UserDevice
	for ud, st := range s.Users {
		if st == crypto.OGSAlreadyShared {
			out = append(out, ud)
		}
	}
	return out
}

// dlDeviceIDs is the device IDs of user in a /keys/query answer, sorted.
func dlDeviceIDs(q *mautrix.RespQueryKeys, user id.UserID) []string {
	var ids []string
	for d := range q.DeviceKeys[user] {
		ids = append(ids, d.String())
	}
	slices.Sort(ids)
	return ids
}

// TestKeysFedDeviceListCache: A caches bob's device list. Bob's new device
// reaches alice's OlmMachine (an m.device_list_update applied to the
// cache, /keys/query answered from it) and decrypts the next message; after
// bob deletes it, alice's next megolm session is no longer shared with it.
// When bob leaves, alice's /sync lists him in device_lists.left and A stops
// answering for him from the cache.
func TestKeysFedDeviceListCache(t *testing.T) {
	a, b, alice, bob, roomID := keysFedPair(t)
	stats := keysfed.StatsFor(a.Name)
	ctx := ctxT(t)
	alice.sync(t)
	bob.sync(t)
	users := []id.UserID{alice.UserID, bob.UserID}

	first := alice.sendEncrypted(t, roomID, users, "one")
	dlDecrypts(t, bob, first, "one")
	if stats.CacheAnswers.Load() == 0 || stats.Resyncs.Load() == 0 {
		t.Fatalf("alice's first query for bob: %d cache answers, %d resyncs; want the list fetched and cached",
			stats.CacheAnswers.Load(), stats.Resyncs.Load())
	}
	resyncs, applied, answers := stats.Resyncs.Load(), stats.Applied.Load(), stats.CacheAnswers.Load()

	alice.sync(t) // older changes out of the way
	bob2 := newE2EEDevice(t, e2eeLogin(t, b.testNode, bob.UserID, "bob's laptop"))
	dlSeesChange(t, alice, bob.UserID)
	second := alice.sendEncrypted(t, roomID, users, "two")
	dlDecrypts(t, bob, second, "two")
	dlDecrypts(t, bob2, second, "two")
	if !slices.Contains(dlRecipients(t, alice, roomID), crypto.UserDevice{UserID: bob.UserID, DeviceID: bob2.DeviceID}) {
		t.Fatalf("alice's session was not shared with bob's new device: %v", dlRecipients(t, alice, roomID))
	}
	if stats.Applied.Load() == applied || stats.CacheAnswers.Load() == answers || stats.Resyncs.Load() != resyncs {
		t.Fatalf("new device: applied %d→%d, cache answers %d→%d, resyncs %d→%d; want the EDU applied and no resync",
			applied, stats.Applied.Load(), answers, stats.CacheAnswers.Load(), resyncs, stats.Resyncs.Load())
	}

	uia := devicesUIA(t, bob.Client, http.MethodDelete, bob.BuildClientURL("v3", "devices", bob2.DeviceID), map[string]any{})
	if err := bob.DeleteDevice(ctx, bob2.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: devicesPasswordAuth(bob.UserID, devicesPassword, uia.Session)}); err != nil {
		t.Fatalf("delete device: %v", err)
	}
	dlSeesChange(t, alice, bob.UserID)
	if got := dlDeviceIDs(e2eeQuery(t, alice.Client, bob.UserID), bob.UserID); !slices.Equal(got, []string{bob.DeviceID.String()}) {
		t.Fatalf("alice's query for bob after the deletion lists %v", got)
	}
	third := alice.sendEncrypted(t, roomID, users, "three")
	rec := dlRecipients(t, alice, roomID)
	if slices.Contains(rec, crypto.UserDevice{UserID: bob.UserID, DeviceID: bob2.DeviceID}) ||
		!slices.Contains(rec, crypto.UserDevice{UserID: bob.UserID, DeviceID: bob.DeviceID}) {
		t.Fatalf("alice's session after the deletion went to %v; want bob's remaining device only", rec)
	}
	dlDecrypts(t, bob, third, "three")

	// Bob leaves: no room is shared any more.
	if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
		t.Fatalf("bob leaves: %v", err)
	}
	alice.lists = mautrix.DeviceLists{}
	keysFedEventually(t, "bob in alice's device_lists.left", func() bool {
		alice.sync(t)
		return slices.Contains(alice.lists.Left, bob.UserID)
	})
	answers = stats.CacheAnswers.Load()
	if got := dlDeviceIDs(e2eeQuery(t, alice.Client, bob.UserID), bob.UserID); !slices.Equal(got, []string{bob.DeviceID.String()}) {
		t.Fatalf("alice's query for bob after he left lists %v", got)
	}
	if stats.CacheAnswers.Load() != answers {
		t.Fatal("bob shares no room with A's users but was answered from the cache")
	}
}

// dlFedPair starts restartable nodes A and B of ca (B's config adjusted by
// cfgB), alice on A creates a room, bob on B joins it on an Olm device,
// and A has cached bob's device list.
func dlFedPair(t *testing.T, ca *fedCA, cfgB func(*config.Config)) (a, b *fedNode, bT *testNode, aliceC *mautrix.Client, bob *e2eeDevice) {
	t.Helper()
	a = newFedNode(t, ca, fedOpts{})
	b = newFedNode(t, ca, fedOpts{cfg: cfgB})
	aT := &testNode{URL: "http://" + a.ClientAddr}
	bT = &testNode{URL: "http://" + b.ClientAddr}
	aliceC = aT.register(t, "alice")
	bobC := bT.register(t, "bob")
	alice := &rfSyncer{c: aliceC}
	roomID := mustCreateRoom(t, aliceC, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bobC.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins through A: %v", err)
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.GetStateKey() == bobC.UserID.String() && ev.Content.Raw["membership"] == "join"
	}))
	bob = newE2EEDevice(t, bobC)
	answers := keysfed.StatsFor(a.Name).CacheAnswers.Load()
	keysFedEventually(t, "A caching bob's device", func() bool {
		q := e2eeQuery(t, aliceC, bob.UserID)
		return slices.Equal(dlDeviceIDs(q, bob.UserID), []string{bob.DeviceID.String()}) && len(q.Failures) == 0
	})
	if keysfed.StatsFor(a.Name).CacheAnswers.Load() == answers {
		t.Fatal("A did not answer from its cache")
	}
	return a, b, bT, aliceC, bob
}

// TestKeysFedDeviceListPeerDown: A is down while bob on B adds and
// removes devices and uploads cross-signing keys; B's queue (limited to 3
// items) drops the oldest updates, so when A is back the first update it
// gets refers to a prev_id it never saw: A resyncs with GET /user/devices
// and its /keys/query, from the cache, lists exactly bob's current devices
// and keys.
func TestKeysFedDeviceListPeerDown(t *testing.T) {
	a, _, bT, aliceC, bob := dlFedPair(t, newFedCA(t), func(c *config.Config) { c.Federation.QueueLimit = 3 })
	stats := keysfed.StatsFor(a.Name)
	ctx := ctxT(t)

	a.stop()
	bob2 := newE2EEDevice(t, e2eeLogin(t, bT, bob.UserID, "laptop"))
	bob3 := newE2EEDevice(t, e2eeLogin(t, bT, bob.UserID, "phone"))
	uia := devicesUIA(t, bob.Client, http.MethodDelete, bob.BuildClientURL("v3", "devices", bob2.DeviceID), map[string]any{})
	if err := bob.DeleteDevice(ctx, bob2.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: devicesPasswordAuth(bob.UserID, devicesPassword, uia.Session)}); err != nil {
		t.Fatalf("delete device: %v", err)
	}
	keys, err := bob.mach.GenerateCrossSigningKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.mach.PublishCrossSigningKeys(ctx, keys, nil); err != nil {
		t.Fatalf("cross-signing upload: %v", err)
	}
	if err := bob.mach.SignOwnDevice(ctx, bob.mach.OwnIdentity()); err != nil {
		t.Fatalf("sign own device: %v", err)
	}
	resyncs, gaps := stats.Resyncs.Load(), stats.Gaps.Load()
	a.start(t)

	waitFor(t, 30*time.Second, "A resyncing bob's list after a gap", func() bool {
		return stats.Gaps.Load() > gaps && stats.Resyncs.Load() > resyncs
	})
	answers := stats.CacheAnswers.Load()
	q := e2eeQuery(t, aliceC, bob.UserID)
	want := []string{bob.DeviceID.String(), bob3.DeviceID.String()}
	slices.Sort(want)
	if got := dlDeviceIDs(q, bob.UserID); !slices.Equal(got, want) {
		t.Fatalf("A lists bob's devices %v, want %v", got, want)
	}
	if stats.CacheAnswers.Load() == answers {
		t.Fatal("A's answer for bob did not come from its cache")
	}
	dlCheckCrossSigning(t, q, bob, keys)
}

// dlCheckCrossSigning checks a /keys/query answer against keys: bob's
// master and self-signing keys, and his device signed by the latter.
func dlCheckCrossSigning(t *testing.T, q *mautrix.RespQueryKeys, bob *e2eeDevice, keys *crypto.CrossSigningKeysCache) {
	t.Helper()
	if got := csFirstKey(q.MasterKeys[bob.UserID]); got != keys.MasterKey.PublicKey() {
		t.Fatalf("bob's master key %s, want %s", got, keys.MasterKey.PublicKey())
	}
	ssk := keys.SelfSigningKey.PublicKey()
	if got := csFirstKey(q.SelfSigningKeys[bob.UserID]); got != ssk {
		t.Fatalf("bob's self-signing key %s, want %s", got, ssk)
	}
	dk, ok := q.DeviceKeys[bob.UserID][bob.DeviceID]
	if !ok || dk.Signatures[bob.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, ssk.String())] == "" {
		t.Fatalf("bob's device is not signed by his self-signing key: %+v", dk.Signatures)
	}
	if dk.Signatures[bob.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, bob.DeviceID.String())] == "" {
		t.Fatal("bob's device lost its own signature")
	}
}

// TestKeysFedGroupRoom: alice and carol on A, bob on B, all on Olm
// devices in one encrypted room: each one's megolm message decrypts for
// the two others.
func TestKeysFedGroupRoom(t *testing.T) {
	a, _, alice, bob, roomID := keysFedPair(t)
	carolC := a.register(t, "carol")
	if _, err := carolC.JoinRoom(ctxT(t), roomID.String(), nil); err != nil {
		t.Fatalf("carol joins: %v", err)
	}
	carol := newE2EEDevice(t, carolC)
	carol.state.add(roomID)
	all := []*e2eeDevice{alice, bob, carol}
	users := []id.UserID{alice.UserID, bob.UserID, carol.UserID}
	// Everyone's server knows of carol's join before anyone encrypts.
	keysFedEventually(t, "carol's join on B", func() bool {
		ms, err := bob.JoinedMembers(ctxT(t), roomID)
		_, ok := ms.Joined[carol.UserID]
		return err == nil && ok
	})
	for _, d := range all {
		d.sync(t)
	}
	for _, sender := range all {
		body := "from " + sender.UserID.String()
		ev := sender.sendEncrypted(t, roomID, users, body)
		for _, r := range all {
			if r != sender {
				dlDecrypts(t, r, ev, body)
			}
		}
	}
}

// TestKeysFedCrossSigning: bob's master and self-signing keys and his
// device signed by the latter reach alice on A through
// m.signing_key_update and m.device_list_update (answered from A's
// cache), and so do the replacements after bob uploads new keys.
func TestKeysFedCrossSigning(t *testing.T) {
	a, _, alice, bob, _ := keysFedPair(t)
	stats := keysfed.StatsFor(a.Name)
	ctx := ctxT(t)
	// A starts tracking bob.
	if got := dlDeviceIDs(e2eeQuery(t, alice.Client, bob.UserID), bob.UserID); !slices.Equal(got, []string{bob.DeviceID.String()}) {
		t.Fatalf("alice lists bob's devices %v", got)
	}
	for i, uia := range []mautrix.UIACallback{nil, passwordUIA(bob.UserID)} {
		resyncs := stats.Resyncs.Load()
		keys, err := bob.mach.GenerateCrossSigningKeys()
		if err != nil {
			t.Fatal(err)
		}
		if err := bob.mach.PublishCrossSigningKeys(ctx, keys, uia); err != nil {
			t.Fatalf("cross-signing upload %d: %v", i, err)
		}
		if err := bob.mach.SignOwnDevice(ctx, bob.mach.OwnIdentity()); err != nil {
			t.Fatalf("sign own device %d: %v", i, err)
		}
		keysFedEventually(t, "bob's new keys at A", func() bool {
			q := e2eeQuery(t, alice.Client, bob.UserID)
			dk := q.DeviceKeys[bob.UserID][bob.DeviceID]
			return csFirstKey(q.MasterKeys[bob.UserID]) == keys.MasterKey.PublicKey() &&
				dk.Signatures[bob.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, keys.SelfSigningKey.PublicKey().String())] != ""
		})
		dlCheckCrossSigning(t, e2eeQuery(t, alice.Client, bob.UserID), bob, keys)
		if stats.Resyncs.Load() != resyncs {
			t.Fatalf("upload %d: A resynced instead of applying the updates", i)
		}
		if i > 0 {
			continue // a replaced master key is no longer trusted on first use
		}
		// Alice's client trusts bob's device through his cross-signing keys.
		if _, err := alice.mach.FetchKeys(ctx, []id.UserID{bob.UserID}, true); err != nil {
			t.Fatal(err)
		}
		if dev, err := alice.mach.GetOrFetchDevice(ctx, bob.UserID, bob.DeviceID); err != nil ||
			alice.mach.ResolveTrust(dev) < id.TrustStateCrossSignedTOFU {
			t.Fatalf("upload %d: alice's trust in bob's device = %v, %v", i, alice.mach.ResolveTrust(dev), err)
		}
	}
}

// TestKeysFedDeviceListStale: with B down, an m.device_list_update for bob
// whose prev_id A never saw makes A resync, which fails: bob's list is
// stale, so A's /keys/query tries B again and reports it in failures rather
// than answer from the stale list. Once B is back, A's background retry
// refreshes the list and queries are answered from the cache again.
func TestKeysFedDeviceListStale(t *testing.T) {
	ca := newFedCA(t)
	a, b, _, aliceC, bob := dlFedPair(t, ca, nil)
	stats := keysfed.StatsFor(a.Name)
	bk := b.signingKey()
	failures, resyncs := stats.ResyncFailures.Load(), stats.Resyncs.Load()
	b.stop()

	body := fedTxn(b.Name, fedEDU("m.device_list_update", map[string]any{
		"user_id": bob.UserID.String(), "device_id": "GHOST", "stream_id": 1 << 40, "prev_id": []int64{1<<40 - 1}, "deleted": false,
	}))
	uri := "/_matrix/federation/v1/send/stale1"
	sig := fedSign(t, bk.Priv, http.MethodPut, uri, b.Name, a.Name, body)
	if st, code := fedRaw(t, ca.httpClient(), http.MethodPut, a.fedURL(uri), fedAuthHeader(b.Name, a.Name, bk.ID, sig), body); st != http.StatusOK {
		t.Fatalf("transaction from B: HTTP %d %s", st, code)
	}
	if stats.ResyncFailures.Load() == failures {
		t.Fatal("the gap did not make A try to resync bob's list")
	}
	q := e2eeQuery(t, aliceC, bob.UserID)
	if _, ok := q.Failures[b.Name]; !ok || len(q.DeviceKeys[bob.UserID]) != 0 {
		t.Fatalf("query with bob's list stale and B down: failures %v, devices %v; want B in failures and no devices", q.Failures, q.DeviceKeys)
	}

	b.start(t)
	waitFor(t, 30*time.Second, "A's background resync of bob's list", func() bool { return stats.Resyncs.Load() > resyncs })
	answers := stats.CacheAnswers.Load()
	q = e2eeQuery(t, aliceC, bob.UserID)
	if got := dlDeviceIDs(q, bob.UserID); !slices.Equal(got, []string{bob.DeviceID.String()}) || len(q.Failures) != 0 {
		t.Fatalf("after B is back A lists %v (failures %v), want bob's one device", got, q.Failures)
	}
	if stats.CacheAnswers.Load() == answers {
		t.Fatal("the refreshed list was not answered from the cache")
	}
}

// TestKeysFedDevicesAnnouncedOnJoin: when alice (A) joins a room on B,
// whose server shares no other room with her, A sends B her devices
// (m.device_list_update) — before anyone on B asks for her keys — and a
// display-name change afterwards (a join after a join) sends none. (A
// faster join announces nothing: see AnnounceDevicesOnJoin; A joins in
// full here.)
func TestKeysFedDevicesAnnouncedOnJoin(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca, func(c *config.Config) { c.Federation.FasterJoins = false })
	b := startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	roomID := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	stats := keysfed.StatsFor(b.Name)
	heard := func() int64 { return stats.Applied.Load() + stats.Gaps.Load() + stats.Resyncs.Load() }
	before := heard()
	if _, err := alice.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "B to hear of alice's devices", func() bool { return heard() > before })
	// A display-name change is a join after a join: no new announcement.
	time.Sleep(500 * time.Millisecond) // let the join's announcement settle
	settled := heard()
	if err := alice.SetDisplayName(ctxT(t), "Alice A."); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if now := heard(); now != settled {
		t.Errorf("a display-name change announced alice's devices again (%d → %d)", settled, now)
	}
}

// TestKeysFedDeviceListAfterRejoin: bob (B) leaves alice's room, the only
// one they share, changes his device's keys meanwhile (A is told nothing:
// no shared room), and rejoins. A must not answer from the list it cached
// before the leave (Complement's TestDeviceListUpdates, remote rejoin).
func TestKeysFedDeviceListAfterRejoin(t *testing.T) {
	a, _, alice, bob, roomID := keysFedPair(t)
	ctx := ctxT(t)
	if _, err := bob.Client.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	isBob := func(membership string) func() bool {
		return func() bool {
			ev, _ := rfStateEvent(t, a, roomID, "m.room.member", bob.UserID.String())
			return ev != nil && ev.Membership() == membership
		}
	}
	waitFor(t, 10*time.Second, "A to see bob leave", isBob("leave"))
	dev := bob.DeviceID.String()
	newCurve := randomCurveKey(t)
	if _, err := keysUpload(t, bob.Client, map[string]any{"device_keys": map[string]any{
		"user_id": bob.UserID.String(), "device_id": dev, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]any{"ed25519:" + dev: randomCurveKey(t), "curve25519:" + dev: newCurve},
		"signatures": map[string]any{},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Client.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "A to see bob rejoin", isBob("join"))
	keysFedEventually(t, "alice to see bob's new keys", func() bool {
		dk := e2eeQuery(t, alice.Client, bob.UserID).DeviceKeys[bob.UserID][bob.DeviceID]
		return dk.Keys[id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, bob.DeviceID)] == newCurve
	})
}

// TestKeysFedDeviceListGapSameList: B tells A of a change to bob's list
// with a prev_id A never saw; A refetches the list, which is the one it
// already holds. The update is still news: bob goes into alice's
// device_lists.changed (her client may hold an older copy). Complement's
// "Device list tracked for new members in partial state room" sends such
// updates.
func TestKeysFedDeviceListGapSameList(t *testing.T) {
	a, b, _, aliceC, bob := dlFedPair(t, newFedCA(t), nil)
	stats := keysfed.StatsFor(a.Name)
	ctx := ctxT(t)

	// A token after every change so far has been seen.
	resp, err := aliceC.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	since := resp.NextBatch
	for quiet := false; !quiet; {
		resp, err := aliceC.SyncRequest(ctx, 1500, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		quiet = !slices.Contains(resp.DeviceLists.Changed, bob.UserID)
		since = resp.NextBatch
	}

	resyncs, gaps := stats.Resyncs.Load(), stats.Gaps.Load()
	edu := fedEDU("m.device_list_update", map[string]any{
		"user_id": bob.UserID, "device_id": bob.DeviceID,
		"stream_id": 1_000_000, "prev_id": []int64{999_999}, "deleted": false,
	})
	if err := b.Fed.Client.Put(ctx, a.Name, "/_matrix/federation/v1/send/gap-same-list", json.RawMessage(fedTxn(b.Name, edu)), nil); err != nil {
		t.Fatalf("B → A transaction: %v", err)
	}
	waitFor(t, 20*time.Second, "A resyncing bob's list after the gap", func() bool {
		return stats.Gaps.Load() > gaps && stats.Resyncs.Load() > resyncs
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := aliceC.SyncRequest(ctx, 1000, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(resp.DeviceLists.Changed, bob.UserID) {
			break
		}
		since = resp.NextBatch
		if time.Now().After(deadline) {
			t.Fatal("bob's refetched (unchanged) list did not put him in alice's device_lists.changed")
		}
	}
	if got := dlDeviceIDs(e2eeQuery(t, aliceC, bob.UserID), bob.UserID); !slices.Equal(got, []string{bob.DeviceID.String()}) {
		t.Fatalf("A lists bob's devices %v after the resync", got)
	}
}
