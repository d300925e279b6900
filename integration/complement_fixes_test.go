package integration

import (
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// Client API behaviour Complement checks (docs/complement.md): each case
// failed in the first full run.

// A body that is not UTF-8 is not JSON, whatever the endpoint does next
// (sytest "POST rejects invalid utf-8 in JSON").
func TestComplementInvalidUTF8IsNotJSON(t *testing.T) {
	n := startNode(t)
	anon, _ := mautrix.NewClient(n.URL, "", "")
	body := []byte(`{ "test":"a` + "\x81" + `" }`)
	r := doRaw(t, anon, "POST", anon.BuildClientURL("v3", "register"), body, nil)
	if r.Status != 400 || r.Body["errcode"] != "M_NOT_JSON" {
		t.Fatalf("invalid UTF-8: HTTP %d %s, want 400 M_NOT_JSON", r.Status, r.Raw)
	}
	c := n.register(t, "")
	r = doRaw(t, c, "PUT", c.BuildClientURL("v3", "user", c.UserID, "account_data", "org.example"), body, nil)
	if r.Status != 400 || r.Body["errcode"] != "M_NOT_JSON" {
		t.Fatalf("invalid UTF-8 (account data): HTTP %d %s, want 400 M_NOT_JSON", r.Status, r.Raw)
	}
}

// Another user's password in a UIA stage is a plain 403, not a stage to
// try again.
func TestComplementUIAWrongUser(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	url := alice.BuildClientURL("v3", "devices", alice.DeviceID)
	start := func() string {
		r := doRaw(t, alice, "DELETE", url, []byte("{}"), nil)
		session, _ := r.Body["session"].(string)
		if r.Status != 401 || session == "" {
			t.Fatalf("first DELETE: HTTP %d %s, want 401 with a session", r.Status, r.Raw)
		}
		return session
	}
	raw, _ := jsonBytes(map[string]any{"auth": passwordAuth(bob, "correct horse battery", start())})
	r := doRaw(t, alice, "DELETE", url, raw, nil)
	if r.Status != 403 || r.Body["errcode"] != "M_FORBIDDEN" || r.Body["flows"] != nil {
		t.Fatalf("bob's credentials for alice's device: HTTP %d %s, want a plain 403", r.Status, r.Raw)
	}
	// Alice's own password still works.
	raw, _ = jsonBytes(map[string]any{"auth": passwordAuth(alice, "correct horse battery", start())})
	if r := doRaw(t, alice, "DELETE", url, raw, nil); r.Status != 200 {
		t.Fatalf("alice's own password: HTTP %d %s", r.Status, r.Raw)
	}
}

// Extra keys of a join body go into the member event (a per-room display
// name, custom keys); membership cannot be overridden.
func TestComplementJoinCustomContent(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	body, _ := jsonBytes(map[string]any{"foo": "bar", "displayname": "Bob here", "membership": "leave", "reason": "hi"})
	if r := doRaw(t, bob, "POST", bob.BuildClientURL("v3", "join", roomID), body, nil); r.Status != 200 {
		t.Fatalf("join: HTTP %d %s", r.Status, r.Raw)
	}
	var content map[string]any
	if err := bob.StateEvent(ctxT(t), roomID, event.StateMember, bob.UserID.String(), &content); err != nil {
		t.Fatal(err)
	}
	if content["foo"] != "bar" || content["displayname"] != "Bob here" || content["membership"] != "join" || content["reason"] != "hi" {
		t.Fatalf("member content %v", content)
	}
	// The same join again sends no second member event.
	if r := doRaw(t, bob, "POST", bob.BuildClientURL("v3", "join", roomID), body, nil); r.Status != 200 {
		t.Fatalf("second join: HTTP %d %s", r.Status, r.Raw)
	}
	msgs, err := bob.Messages(ctxT(t), roomID, "", "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	joins := 0
	for _, ev := range msgs.Chunk {
		if ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String() {
			joins++
		}
	}
	if joins != 1 {
		t.Fatalf("%d member events for bob after joining twice with the same content, want 1", joins)
	}
	bad, _ := jsonBytes(map[string]any{"reason": 7})
	if r := doRaw(t, bob, "POST", bob.BuildClientURL("v3", "rooms", roomID, "join"), bad, nil); r.Status != 400 || r.Body["errcode"] != "M_BAD_JSON" {
		t.Fatalf("numeric reason: HTTP %d %s", r.Status, r.Raw)
	}
}

// In room versions with privileged creators (v12), what the auth rules
// would refuse is a bad request at createRoom.
func TestComplementCreateRoomCreators(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	url := alice.BuildClientURL("v3", "createRoom")
	create := func(body map[string]any) rawResp {
		raw, _ := json.Marshal(body)
		return doRaw(t, alice, "POST", url, raw, nil)
	}
	for name, body := range map[string]map[string]any{
		"creator in users": {"room_version": "12", "power_level_content_override": map[string]any{
			"users": map[string]int{alice.UserID.String(): 100}}},
		"additional creator in users": {"room_version": "12",
			"creation_content":             map[string]any{"additional_creators": []string{"@x:example.org"}},
			"power_level_content_override": map[string]any{"users": map[string]int{"@x:example.org": 50}}},
		"additional_creators not an array": {"room_version": "12", "creation_content": map[string]any{"additional_creators": "@x:example.org"}},
		"additional_creators not strings":  {"room_version": "12", "creation_content": map[string]any{"additional_creators": []int{1}}},
		"additional_creators not user IDs": {"room_version": "12", "creation_content": map[string]any{"additional_creators": []string{"x"}}},
		"additional_creators bad domain":   {"room_version": "12", "creation_content": map[string]any{"additional_creators": []string{"@invalid:dom$ain$.com"}}},
	} {
		if r := create(body); r.Status != 400 || r.Body["errcode"] != "M_BAD_JSON" {
			t.Errorf("%s: HTTP %d %s, want 400 M_BAD_JSON", name, r.Status, r.Raw)
		}
	}
	for name, body := range map[string]map[string]any{
		"valid additional creators": {"room_version": "12", "creation_content": map[string]any{"additional_creators": []string{"@foo:example.com", "@bar:baz.code"}}},
		// Before v12 the creator is an ordinary user in the power levels.
		"creator in users, v10": {"room_version": "10", "power_level_content_override": map[string]any{
			"users": map[string]int{alice.UserID.String(): 100}}},
	} {
		if r := create(body); r.Status != 200 {
			t.Errorf("%s: HTTP %d %s, want 200", name, r.Status, r.Raw)
		}
	}
}

// A password change that logs out the other devices removes the pushers
// they set, and keeps the changing device's own.
func TestComplementPasswordChangePushers(t *testing.T) {
	n := startNode(t)
	main := n.register(t, "alice")
	other := loginPassword(t, n, "alice", testPassword)
	setPusher := func(c *mautrix.Client, key string) {
		raw, _ := jsonBytes(map[string]any{"kind": "http", "app_id": "app", "pushkey": key,
			"app_display_name": "App", "device_display_name": "Dev", "lang": "en",
			"data": map[string]any{"url": "https://push.example/_matrix/push/v1/notify"}})
		if r := doRaw(t, c, "POST", c.BuildClientURL("v3", "pushers", "set"), raw, nil); r.Status != 200 {
			t.Fatalf("set pusher %s: HTTP %d %s", key, r.Status, r.Raw)
		}
	}
	setPusher(main, "mine")
	setPusher(other, "theirs")
	url := main.BuildClientURL("v3", "account", "password")
	session := uiaStart(t, main, url, map[string]any{"new_password": "a new secret"}, "m.login.password")
	raw, _ := jsonBytes(map[string]any{"new_password": "a new secret", "auth": passwordAuth(main, testPassword, session)})
	if r := doRaw(t, main, "POST", url, raw, nil); r.Status != 200 {
		t.Fatalf("change password: HTTP %d %s", r.Status, r.Raw)
	}
	r := doRaw(t, main, "GET", main.BuildClientURL("v3", "pushers"), nil, nil)
	pushers, _ := r.Body["pushers"].([]any)
	if r.Status != 200 || len(pushers) != 1 || pushers[0].(map[string]any)["pushkey"] != "mine" {
		t.Fatalf("pushers after the password change: HTTP %d %s, want only \"mine\"", r.Status, r.Raw)
	}
}
