package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge"
	"edge/edge/config"
)

// MSC work Complement's msc* packages and v12 tests check: deleting
// account data (MSC3391), the first cross-signing upload without UIA
// (MSC3967), use_state_after (MSC4222), delayed events (MSC4140), and the
// v12 client rules (MSC4289, MSC4291, MSC4311).

// rawJSON marshals v for doRaw.
func rawJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncRaw runs /sync with the query q ("" for none) and returns the body.
func syncRaw(t testing.TB, c *mautrix.Client, q url.Values) map[string]any {
	t.Helper()
	u := c.BuildClientURL("v3", "sync")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	r := doRaw(t, c, "GET", u, nil, nil)
	if r.Status != 200 {
		t.Fatalf("sync: HTTP %d %s", r.Status, r.Raw)
	}
	return r.Body
}

// hasAccountData tells whether events (a sync account_data list) holds
// evType, and its content.
func hasAccountData(events any, evType string) (map[string]any, bool) {
	list, _ := events.([]any)
	for _, e := range list {
		if dig(e, "type") == evType {
			c, _ := dig(e, "content").(map[string]any)
			return c, true
		}
	}
	return nil, false
}

func TestMSC3391DeleteAccountData(t *testing.T) {
	n := startNode(t)
	c := n.register(t, "")
	roomID := mustCreateRoom(t, c, &mautrix.ReqCreateRoom{})
	const typ = "org.example.test"
	for _, tc := range []struct {
		name      string
		room      bool
		viaDelete bool
	}{{"global DELETE", false, true}, {"global PUT {}", false, false}, {"room DELETE", true, true}, {"room PUT {}", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			parts := []string{"user", c.UserID.String()}
			if tc.room {
				parts = append(parts, "rooms", roomID.String())
			}
			parts = append(parts, "account_data", typ)
			stable := c.BuildClientURL(append([]any{"v3"}, toAny(parts)...)...)
			unstable := c.BuildClientURL(append([]any{"unstable", "org.matrix.msc3391"}, toAny(parts)...)...)
			if r := doRaw(t, c, "PUT", stable, []byte(`{"test_data":1}`), nil); r.Status != 200 {
				t.Fatalf("put: HTTP %d %s", r.Status, r.Raw)
			}
			since, _ := syncRaw(t, c, nil)["next_batch"].(string)
			var r rawResp
			if tc.viaDelete {
				r = doRaw(t, c, "DELETE", unstable, nil, nil)
			} else {
				r = doRaw(t, c, "PUT", stable, []byte(`{}`), nil)
			}
			if r.Status != 200 {
				t.Fatalf("delete: HTTP %d %s", r.Status, r.Raw)
			}
			if r := doRaw(t, c, "GET", stable, nil, nil); r.Status != 404 || r.Body["errcode"] != "M_NOT_FOUND" {
				t.Fatalf("get after delete: HTTP %d %s, want 404", r.Status, r.Raw)
			}
			path := func(body map[string]any) any {
				if tc.room {
					return dig(body, "rooms", "join", roomID.String(), "account_data", "events")
				}
				return dig(body, "account_data", "events")
			}
			// An incremental sync says it is gone: empty content.
			inc := syncRaw(t, c, url.Values{"since": {since}, "timeout": {"0"}})
			if content, ok := hasAccountData(path(inc), typ); !ok || len(content) != 0 {
				t.Fatalf("incremental sync: %v (present %v), want %s with empty content", content, ok, typ)
			}
			// An initial sync leaves it out.
			if _, ok := hasAccountData(path(syncRaw(t, c, nil)), typ); ok {
				t.Fatalf("initial sync still lists %s", typ)
			}
		})
	}
	// Another user's data cannot be deleted.
	other := n.register(t, "")
	u := other.BuildClientURL("unstable", "org.matrix.msc3391", "user", c.UserID, "account_data", typ)
	if r := doRaw(t, other, "DELETE", u, nil, nil); r.Status != 403 {
		t.Fatalf("deleting another user's data: HTTP %d %s, want 403", r.Status, r.Raw)
	}
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// crossSigningKey is a cross-signing key object for pub, signed by signer
// (nil: unsigned).
func crossSigningKey(t testing.TB, userID id.UserID, usage, pub string, signer ed25519.PrivateKey) map[string]any {
	t.Helper()
	k := map[string]any{"user_id": userID.String(), "usage": []string{usage}, "keys": map[string]string{"ed25519:" + pub: pub}}
	if signer != nil {
		canon, err := json.Marshal(k) // maps marshal with sorted keys: canonical here
		if err != nil {
			t.Fatal(err)
		}
		signerPub := base64.RawStdEncoding.EncodeToString(signer.Public().(ed25519.PublicKey))
		sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(signer, canon))
		k["signatures"] = map[string]any{userID.String(): map[string]string{"ed25519:" + signerPub: sig}}
	}
	return k
}

func TestMSC3967FirstCrossSigningUploadWithoutUIA(t *testing.T) {
	n := startNode(t)
	c := n.register(t, "")
	u := c.BuildClientURL("v3", "keys", "device_signing", "upload")
	_, masterPriv, _ := ed25519.GenerateKey(rand.Reader)
	masterPub := base64.RawStdEncoding.EncodeToString(masterPriv.Public().(ed25519.PublicKey))
	first := rawJSON(t, map[string]any{"master_key": crossSigningKey(t, c.UserID, "master", masterPub, nil)})
	for i := range 2 { // the first upload, then the same again
		if r := doRaw(t, c, "POST", u, first, nil); r.Status != 200 {
			t.Fatalf("upload %d without UIA: HTTP %d %s", i, r.Status, r.Raw)
		}
	}
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	other := base64.RawStdEncoding.EncodeToString(otherPub)
	if r := doRaw(t, c, "POST", u, rawJSON(t, map[string]any{"master_key": crossSigningKey(t, c.UserID, "master", other, nil)}), nil); r.Status != 401 || r.Body["flows"] == nil {
		t.Fatalf("replacing the master key: HTTP %d %s, want 401 with flows", r.Status, r.Raw)
	}
	// A new self-signing key needs UIA, and a retry with the used auth
	// dict succeeds, as the keys are then those stored.
	ssPub, _, _ := ed25519.GenerateKey(rand.Reader)
	ss := crossSigningKey(t, c.UserID, "self_signing", base64.RawStdEncoding.EncodeToString(ssPub), masterPriv)
	r := doRaw(t, c, "POST", u, rawJSON(t, map[string]any{"self_signing_key": ss}), nil)
	session, _ := r.Body["session"].(string)
	if r.Status != 401 || session == "" {
		t.Fatalf("new self-signing key: HTTP %d %s, want 401 with a session", r.Status, r.Raw)
	}
	withAuth := rawJSON(t, map[string]any{"self_signing_key": ss, "auth": passwordAuth(c, "correct horse battery", session)})
	for i := range 2 {
		if r := doRaw(t, c, "POST", u, withAuth, nil); r.Status != 200 {
			t.Fatalf("self-signing upload %d with auth: HTTP %d %s", i, r.Status, r.Raw)
		}
	}
}

// stateAfterHas tells whether a joined room's state_after lists type/key.
func stateAfterHas(body map[string]any, roomID id.RoomID, typ, key string) bool {
	list, _ := dig(body, "rooms", "join", roomID.String(), "state_after", "events").([]any)
	for _, e := range list {
		if dig(e, "type") == typ && dig(e, "state_key") == key {
			return true
		}
	}
	return false
}

func TestMSC4222UseStateAfter(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	on := url.Values{"use_state_after": {"true"}}
	lazy := url.Values{"use_state_after": {"true"}, "filter": {`{"room":{"timeline":{"limit":20},"state":{"lazy_load_members":true}}}`}}
	for name, q := range map[string]url.Values{"plain": on, "lazy members": lazy} {
		body := syncRaw(t, alice, q)
		jr, _ := dig(body, "rooms", "join", roomID.String()).(map[string]any)
		if _, ok := jr["state"]; ok {
			t.Errorf("%s: state present with use_state_after", name)
		}
		// The end of the timeline: both members, though their joins are
		// timeline events.
		for _, u := range []id.UserID{alice.UserID, bob.UserID} {
			if !stateAfterHas(body, roomID, "m.room.member", u.String()) {
				t.Errorf("%s: state_after lacks %s's membership: %v", name, u, jr["state_after"])
			}
		}
	}
	// Without the parameter: state, no state_after.
	body := syncRaw(t, alice, nil)
	if jr, _ := dig(body, "rooms", "join", roomID.String()).(map[string]any); jr["state_after"] != nil || jr["state"] == nil {
		t.Fatalf("without use_state_after: %v", jr)
	}
	// Incremental: a state event of the timeline is in state_after too;
	// the unstable parameter name works as well.
	since, _ := body["next_batch"].(string)
	if _, err := alice.SendStateEvent(ctxT(t), roomID, event.Type{Type: "com.example.test", Class: event.StateEventType}, "k", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	inc := syncRaw(t, alice, url.Values{"since": {since}, "timeout": {"0"}, "org.matrix.msc4222.use_state_after": {"true"}})
	if !stateAfterHas(inc, roomID, "com.example.test", "k") {
		t.Fatalf("incremental state_after lacks the new state: %v", dig(inc, "rooms", "join", roomID.String()))
	}
	if stateAfterHas(inc, roomID, "m.room.member", bob.UserID.String()) {
		t.Fatalf("incremental state_after repeats unchanged state")
	}
	// A left room's state_after ends with the leave.
	if _, err := bob.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	left := syncRaw(t, bob, url.Values{"use_state_after": {"true"}, "filter": {`{"room":{"include_leave":true}}`}})
	lr, _ := dig(left, "rooms", "leave", roomID.String()).(map[string]any)
	found := false
	list, _ := dig(lr, "state_after", "events").([]any)
	for _, e := range list {
		if dig(e, "type") == "m.room.member" && dig(e, "state_key") == bob.UserID.String() {
			found = dig(e, "content", "membership") == "leave"
		}
	}
	if _, hasState := lr["state"]; !found || hasState {
		t.Fatalf("left room with use_state_after: %v", lr)
	}
}

// delayedURL is an MSC4140 endpoint.
func delayedURL(c *mautrix.Client, parts ...any) string {
	return c.BuildClientURL(append([]any{"unstable", "org.matrix.msc4140", "delayed_events"}, parts...)...)
}

// listDelayed answers the user's pending delayed events.
func listDelayed(t testing.TB, c *mautrix.Client) []any {
	t.Helper()
	r := doRaw(t, c, "GET", delayedURL(c), nil, nil)
	if r.Status != 200 {
		t.Fatalf("list delayed: HTTP %d %s", r.Status, r.Raw)
	}
	list, _ := r.Body["delayed_events"].([]any)
	return list
}

// stateContent is a state event's content, nil when absent.
func stateContent(t testing.TB, c *mautrix.Client, roomID id.RoomID, typ, key string) map[string]any {
	t.Helper()
	r := doRaw(t, c, "GET", c.BuildClientURL("v3", "rooms", roomID, "state", typ, key), nil, nil)
	if r.Status == 404 {
		return nil
	}
	if r.Status != 200 {
		t.Fatalf("get state: HTTP %d %s", r.Status, r.Raw)
	}
	return r.Body
}

func TestMSC4140DelayedEvents(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	anon, _ := mautrix.NewClient(n.URL, "", "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	delayed := func(u, ms string) string { return u + "?org.matrix.msc4140.delay=" + ms }
	stateURL := func(key string) string {
		return alice.BuildClientURL("v3", "rooms", roomID, "state", "com.example.test", key)
	}
	schedule := func(u string, body []byte) string {
		t.Helper()
		r := doRaw(t, alice, "PUT", u, body, nil)
		id, _ := r.Body["delay_id"].(string)
		if r.Status != 200 || id == "" {
			t.Fatalf("schedule: HTTP %d %s", r.Status, r.Raw)
		}
		return id
	}
	if r := doRaw(t, anon, "GET", delayedURL(anon), nil, nil); r.Status != 401 {
		t.Fatalf("unauthenticated list: HTTP %d", r.Status)
	}

	// A message: the same txn ID (even without a body) answers the same
	// delay ID; it is listed for its sender only, and sent when due.
	sendURL := delayed(alice.BuildClientURL("v3", "rooms", roomID, "send", "com.example.msg", "txn1"), "300")
	msgID := schedule(sendURL, []byte(`{"count":1}`))
	if again := doRaw(t, alice, "PUT", sendURL, nil, nil); again.Body["delay_id"] != msgID {
		t.Fatalf("retried txn: %d %s, want delay_id %s", again.Status, again.Raw, msgID)
	}
	if l := listDelayed(t, alice); len(l) != 1 || dig(l, 0, "delay_id") != msgID || dig(l, 0, "content", "count") != 1.0 {
		t.Fatalf("list: %v", l)
	}
	if l := listDelayed(t, bob); len(l) != 0 {
		t.Fatalf("bob sees alice's delayed events: %v", l)
	}
	waitFor(t, 10*time.Second, "the delayed message is sent", func() bool { return len(listDelayed(t, alice)) == 0 })
	msgs, err := alice.Messages(ctxT(t), roomID, "", "", mautrix.DirectionBackward, nil, 5)
	if err != nil || len(msgs.Chunk) == 0 || msgs.Chunk[0].Type.Type != "com.example.msg" || msgs.Chunk[0].Content.Raw["count"] != 1.0 {
		t.Fatalf("newest event after the delay: %v %v", msgs, err)
	}

	// Bad delays and unknown IDs or actions.
	if r := doRaw(t, alice, "PUT", delayed(stateURL("x"), "soon"), []byte(`{}`), nil); r.Status != 400 {
		t.Fatalf("non-numeric delay: HTTP %d", r.Status)
	}
	if r := doRaw(t, alice, "PUT", delayed(stateURL("x"), "999999999999"), []byte(`{}`), nil); r.Status != 400 || r.Body["errcode"] != "M_MAX_DELAY_EXCEEDED" {
		t.Fatalf("huge delay: HTTP %d %s", r.Status, r.Raw)
	}
	if r := doRaw(t, anon, "POST", delayedURL(anon, "nope", "cancel"), []byte(`{}`), nil); r.Status != 404 {
		t.Fatalf("unknown delay ID: HTTP %d", r.Status)
	}
	if r := doRaw(t, anon, "POST", delayedURL(anon, "nope", "oops"), []byte(`{}`), nil); r.Status != 404 {
		t.Fatalf("unknown action: HTTP %d", r.Status)
	}
	if r := doRaw(t, bob, "PUT", delayed(bob.BuildClientURL("v3", "rooms", roomID, "state", "com.example.test", "b"), "100"), []byte(`{}`), nil); r.Status != 403 {
		t.Fatalf("delayed state in a room bob is not in: HTTP %d %s", r.Status, r.Raw)
	}

	// Cancelled: never sent. The actions need no access token.
	cancelID := schedule(delayed(stateURL("cancelled"), "400"), []byte(`{"v":"none"}`))
	if r := doRaw(t, anon, "POST", delayedURL(anon, cancelID, "cancel"), []byte(`{}`), nil); r.Status != 200 {
		t.Fatalf("cancel: HTTP %d %s", r.Status, r.Raw)
	}
	// Sent on request, long before its delay.
	sendID := schedule(delayed(stateURL("early"), "100000"), []byte(`{"v":"early"}`))
	if r := doRaw(t, anon, "POST", delayedURL(anon, sendID, "send"), []byte(`{}`), nil); r.Status != 200 {
		t.Fatalf("send: HTTP %d %s", r.Status, r.Raw)
	}
	if c := stateContent(t, alice, roomID, "com.example.test", "early"); c["v"] != "early" {
		t.Fatalf("state after send action: %v", c)
	}
	// Restarted: not sent at its first due time, sent at the second.
	restartID := schedule(delayed(stateURL("restarted"), "1500"), []byte(`{"v":"late"}`))
	time.Sleep(1000 * time.Millisecond)
	if r := doRaw(t, anon, "POST", delayedURL(anon, restartID, "restart"), []byte(`{}`), nil); r.Status != 200 {
		t.Fatalf("restart: HTTP %d %s", r.Status, r.Raw)
	}
	time.Sleep(1000 * time.Millisecond)
	if c := stateContent(t, alice, roomID, "com.example.test", "restarted"); c != nil {
		t.Fatalf("restarted event sent at its first due time: %v", c)
	}
	waitFor(t, 10*time.Second, "the restarted event is sent", func() bool {
		return stateContent(t, alice, roomID, "com.example.test", "restarted") != nil
	})
	if c := stateContent(t, alice, roomID, "com.example.test", "cancelled"); c != nil {
		t.Fatalf("cancelled event was sent: %v", c)
	}
	if r := doRaw(t, anon, "POST", delayedURL(anon, cancelID, "send"), []byte(`{}`), nil); r.Status != 404 {
		t.Fatalf("send after cancel: HTTP %d", r.Status)
	}
}

// Pending delayed events survive a restart: one due while the server was
// down is sent when it comes back, a later one at its time.
func TestMSC4140DelayedEventsSurviveRestart(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for key, ms := range map[string]string{"soon": "300", "later": "3000"} {
		u := alice.BuildClientURL("v3", "rooms", roomID, "state", "com.example.test", key) + "?org.matrix.msc4140.delay=" + ms
		if r := doRaw(t, alice, "PUT", u, []byte(`{"k":"`+key+`"}`), nil); r.Status != 200 {
			t.Fatalf("schedule %s: HTTP %d %s", key, r.Status, r.Raw)
		}
	}
	n.stop()
	time.Sleep(500 * time.Millisecond) // "soon" falls due while the node is down

	cfg, err := config.Load(filepath.Join(n.Dir, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := edge.Open(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; _ = node.Close() })
	c, _ := mautrix.NewClient("http://"+ln.Addr().String(), alice.UserID, alice.AccessToken)

	if l := listDelayed(t, c); len(l) == 0 || len(l) > 2 {
		t.Fatalf("after restart: %d pending, want 1 or 2", len(l))
	}
	waitFor(t, 10*time.Second, "the overdue event is sent", func() bool {
		return stateContent(t, c, roomID, "com.example.test", "soon") != nil
	})
	waitFor(t, 15*time.Second, "the later event is sent", func() bool {
		return stateContent(t, c, roomID, "com.example.test", "later") != nil && len(listDelayed(t, c)) == 0
	})
}

func TestV12ClientRules(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	v12 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{RoomVersion: "12", Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), v12); err != nil {
		t.Fatal(err)
	}
	put := func(c *mautrix.Client, roomID id.RoomID, typ string, content any) rawResp {
		return doRaw(t, c, "PUT", c.BuildClientURL("v3", "rooms", roomID, "state", typ, ""), rawJSON(t, content), nil)
	}
	// A creator in the power levels, or an integer past canonical JSON, is
	// a bad request, not a refusal by the auth rules.
	if r := put(alice, v12, "m.room.power_levels", map[string]any{"users": map[string]int{alice.UserID.String(): 100}}); r.Status != 400 || r.Body["errcode"] != "M_BAD_JSON" {
		t.Errorf("creator in users: HTTP %d %s", r.Status, r.Raw)
	}
	if r := put(alice, v12, "m.room.power_levels", map[string]any{"users": map[string]any{bob.UserID.String(): json.Number("9007199254740992")}}); r.Status != 400 {
		t.Errorf("level past 2^53-1: HTTP %d %s", r.Status, r.Raw)
	}
	if r := put(alice, v12, "m.room.power_levels", map[string]any{"users": map[string]int{bob.UserID.String(): 50}}); r.Status != 200 {
		t.Errorf("ordinary power levels: HTTP %d %s", r.Status, r.Raw)
	}
	v11 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{RoomVersion: "11"})
	for _, roomID := range []id.RoomID{v11, v12} {
		if r := put(alice, roomID, "m.room.create", map[string]any{"room_version": "11", "entropy": 100}); r.Status != 400 {
			t.Errorf("PUT m.room.create: HTTP %d %s, want 400", r.Status, r.Raw)
		}
	}
	// trusted_private_chat adds invitees to the given additional creators.
	carol := n.register(t, "")
	dm := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{RoomVersion: "12", Preset: "trusted_private_chat", Invite: []id.UserID{bob.UserID},
		CreationContent: map[string]any{"additional_creators": []string{carol.UserID.String()}}})
	create := stateContent(t, alice, dm, "m.room.create", "")
	if got := fmt.Sprint(create["additional_creators"]); !strings.Contains(got, bob.UserID.String()) || !strings.Contains(got, carol.UserID.String()) {
		t.Errorf("additional_creators %s, want bob and carol", got)
	}
	// An upgrade to v12 names only the predecessor room.
	var up struct {
		Replacement id.RoomID `json:"replacement_room"`
	}
	if _, err := alice.MakeRequest(ctxT(t), "POST", alice.BuildClientURL("v3", "rooms", v11, "upgrade"), map[string]string{"new_version": "12"}, &up); err != nil {
		t.Fatal(err)
	}
	pred, _ := stateContent(t, alice, up.Replacement, "m.room.create", "")["predecessor"].(map[string]any)
	if pred["room_id"] != v11.String() || pred["event_id"] != nil {
		t.Errorf("predecessor %v, want only room_id %s", pred, v11)
	}
	// createRoom's topic comes in the rich form too.
	topical := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Topic: "Test Room"})
	if tc := stateContent(t, alice, topical, "m.room.topic", ""); dig(tc, "m.topic", "m.text", 0, "body") != "Test Room" || tc["topic"] != "Test Room" {
		t.Errorf("topic content %v", tc)
	}
	// An invitee's invite_state has the whole create event (MSC4311).
	if _, err := alice.InviteUser(ctxT(t), v12, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	list, _ := dig(syncRaw(t, carol, nil), "rooms", "invite", v12.String(), "invite_state", "events").([]any)
	found := false
	for _, e := range list {
		if dig(e, "type") == "m.room.create" {
			found = dig(e, "origin_server_ts") != nil && dig(e, "event_id") != nil
		}
	}
	if !found {
		t.Errorf("invite_state create event lacks origin_server_ts/event_id: %v", list)
	}
}

// In org.matrix.msc3757.10 a state key naming a user (alone or followed
// by "_" and more) is that user's: theirs to write, or anyone's above
// their power level; one that names no user is a bad request.
func TestMSC3757OwnedState(t *testing.T) {
	n := startNode(t)
	creator, u1, u2 := n.register(t, ""), n.register(t, ""), n.register(t, "")
	var caps struct {
		Capabilities struct {
			Versions struct {
				Available map[string]string `json:"available"`
			} `json:"m.room_versions"`
		} `json:"capabilities"`
	}
	if _, err := creator.MakeRequest(ctxT(t), "GET", creator.BuildClientURL("v3", "capabilities"), nil, &caps); err != nil || caps.Capabilities.Versions.Available["org.matrix.msc3757.10"] != "unstable" {
		t.Fatalf("capabilities: %+v %v", caps, err)
	}
	pl := &event.PowerLevelsEventContent{Events: map[string]int{"com.example.test": 0}}
	for _, v := range []string{"10", "org.matrix.msc3757.10"} {
		roomID := mustCreateRoom(t, creator, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(v), Preset: "public_chat", PowerLevelOverride: pl})
		for _, c := range []*mautrix.Client{u1, u2} {
			if _, err := c.JoinRoomByID(ctxT(t), roomID); err != nil {
				t.Fatal(err)
			}
		}
		owned := v != "10"
		const suffix = "_state_key_suffix:!@#$123"
		for _, tc := range []struct {
			who  *mautrix.Client
			key  string
			want int // status where owned state applies
			v10  int // status in v10
		}{
			{u1, u1.UserID.String(), 200, 200},
			{u1, u1.UserID.String() + suffix, 200, 403},
			{creator, u1.UserID.String(), 200, 403},
			{creator, u1.UserID.String() + suffix, 200, 403},
			{creator, "@notinroom:example.org", 200, 403},
			{u1, u2.UserID.String(), 403, 403},
			{u1, u2.UserID.String() + suffix, 403, 403},
			{u1, u1.UserID.String() + suffix[1:], 403, 403},
			{u1, "@prefix_" + u1.UserID.String() + suffix, 403, 403},
			{u1, creator.UserID.String(), 403, 403},
			{creator, "@oops", 400, 403},
			{creator, creator.UserID.String() + "@" + suffix[1:], 400, 403},
		} {
			want := tc.v10
			if owned {
				want = tc.want
			}
			u := tc.who.BuildClientURL("v3", "rooms", roomID, "state", "com.example.test", tc.key)
			if r := doRaw(t, tc.who, "PUT", u, []byte(`{}`), nil); r.Status != want {
				t.Errorf("v%s: %s sets %q: HTTP %d %s, want %d", v, tc.who.UserID, tc.key, r.Status, r.Raw, want)
			}
		}
	}
}

// Over federation too, the invitee's invite_state has the create event
// with its origin_server_ts (MSC4311): the inviting server sends it as a
// whole PDU and the invitee's server keeps the field.
func TestMSC4311RemoteInviteCreateEvent(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice, bob := a.register(t, "alice"), b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "12"})
	if _, err := alice.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatalf("invite: %v", err)
	}
	var create map[string]any
	waitFor(t, 15*time.Second, "bob's invite", func() bool {
		list, _ := dig(syncRaw(t, bob, nil), "rooms", "invite", roomID.String(), "invite_state", "events").([]any)
		for _, e := range list {
			if dig(e, "type") == "m.room.create" {
				create, _ = e.(map[string]any)
			}
		}
		return create != nil
	})
	if ts, _ := create["origin_server_ts"].(float64); ts <= 0 || create["room_id"] != roomID.String() {
		t.Fatalf("remote invite_state create event: %v", create)
	}
}
