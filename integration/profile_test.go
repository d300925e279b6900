package integration

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestProfileSetAndGet(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	anon, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)

	// A new user's display name is their localpart (as Synapse does);
	// fields never set are 404.
	prof, err := bob.GetProfile(ctx, alice.UserID)
	if err != nil || prof.DisplayName != alice.UserID.Localpart() {
		t.Fatalf("new user's profile = %+v, %v; want displayname %q", prof, err, alice.UserID.Localpart())
	}
	var field map[string]any
	udWantErr(t, bob.GetProfileField(ctx, alice.UserID, "avatar_url", &field), 404, "M_NOT_FOUND")

	if err := alice.SetDisplayName(ctx, "  Alice Liddell "); err != nil {
		t.Fatal(err)
	}
	avatar := id.ContentURI{Homeserver: "localhost", FileID: "abcDEF123_-"}
	if err := alice.SetAvatarURL(ctx, avatar); err != nil {
		t.Fatal(err)
	}
	// Anyone may read a profile, logged in or not.
	for _, c := range []*mautrix.Client{bob, anon} {
		p, err := c.GetProfile(ctx, alice.UserID)
		if err != nil {
			t.Fatal(err)
		}
		if p.DisplayName != "Alice Liddell" || p.AvatarURL != avatar {
			t.Fatalf("profile = %+v (displayname is trimmed as in Synapse)", p)
		}
	}
	dn, err := anon.GetDisplayName(ctx, alice.UserID)
	if err != nil || dn.DisplayName != "Alice Liddell" {
		t.Fatalf("displayname = %+v, %v", dn, err)
	}
	if got, err := anon.GetAvatarURL(ctx, alice.UserID); err != nil || got != avatar {
		t.Fatalf("avatar_url = %v, %v", got, err)
	}

	// m.tz and custom fields live beside them.
	if err := alice.SetProfileField(ctx, "m.tz", "Europe/Paris"); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetProfileField(ctx, "org.example.pronouns", map[string]any{"en": "she/her"}); err != nil {
		t.Fatal(err)
	}
	p, err := bob.GetProfile(ctx, alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Extra["m.tz"] != "Europe/Paris" || p.Extra["org.example.pronouns"] == nil {
		t.Fatalf("profile extras = %v", p.Extra)
	}
	field = nil
	if err := anon.GetProfileField(ctx, alice.UserID, "org.example.pronouns", &field); err != nil {
		t.Fatal(err)
	}
	if pr, _ := field["org.example.pronouns"].(map[string]any); pr["en"] != "she/her" {
		t.Fatalf("custom field = %v", field)
	}
	if err := alice.DeleteProfileField(ctx, "org.example.pronouns"); err != nil {
		t.Fatal(err)
	}
	udWantErr(t, anon.GetProfileField(ctx, alice.UserID, "org.example.pronouns", &field), 404, "M_NOT_FOUND")
	// Deleting what is not there succeeds.
	if err := alice.DeleteProfileField(ctx, "org.example.pronouns"); err != nil {
		t.Fatal(err)
	}
	// Setting an empty avatar unsets it.
	if err := alice.SetProfileField(ctx, "avatar_url", ""); err != nil {
		t.Fatal(err)
	}
	udWantErr(t, anon.GetProfileField(ctx, alice.UserID, "avatar_url", &field), 404, "M_NOT_FOUND")

	// Unknown and remote users, malformed IDs.
	_, err = anon.GetProfile(ctx, "@nobody:localhost")
	udWantErr(t, err, 404, "M_NOT_FOUND")
	_, err = anon.GetProfile(ctx, "@someone:remote.example")
	udWantErr(t, err, 404, "M_NOT_FOUND")
	_, err = anon.GetProfile(ctx, "not-a-user-id")
	udWantErr(t, err, 400, "M_INVALID_PARAM")
}

func TestProfileErrors(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	anon, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	put := func(c *mautrix.Client, user id.UserID, key string, body any) (int, map[string]any) {
		return udDo(t, c, http.MethodPut, c.BuildClientURL("v3", "profile", user, key), body)
	}
	cases := []struct {
		name   string
		c      *mautrix.Client
		user   id.UserID
		key    string
		body   any
		status int
		code   string
	}{
		{"someone else's", alice, bob.UserID, "displayname", map[string]any{"displayname": "Bobby"}, 403, "M_FORBIDDEN"},
		{"no token", anon, alice.UserID, "displayname", map[string]any{"displayname": "x"}, 401, "M_MISSING_TOKEN"},
		{"numeric avatar", alice, alice.UserID, "avatar_url", map[string]any{"avatar_url": 7}, 400, "M_INVALID_PARAM"},
		{"long avatar", alice, alice.UserID, "avatar_url", map[string]any{"avatar_url": "mxc://localhost/" + strings.Repeat("a", 2000)}, 400, "M_INVALID_PARAM"},
		{"long displayname", alice, alice.UserID, "displayname", map[string]any{"displayname": strings.Repeat("é", 257)}, 400, "M_INVALID_PARAM"},
		{"numeric displayname", alice, alice.UserID, "displayname", map[string]any{"displayname": 42}, 400, "M_INVALID_PARAM"},
		{"null value", alice, alice.UserID, "displayname", []byte(`{"displayname":null}`), 400, "M_INVALID_PARAM"},
		{"missing key", alice, alice.UserID, "displayname", map[string]any{"avatar_url": "mxc://localhost/a"}, 400, "M_MISSING_PARAM"},
		{"not an object", alice, alice.UserID, "displayname", []byte(`"Alice"`), 400, "M_BAD_JSON"},
		{"not JSON", alice, alice.UserID, "displayname", []byte(`{displayname`), 400, "M_NOT_JSON"},
		{"bad key", alice, alice.UserID, "Not-A-Key", map[string]any{"Not-A-Key": 1}, 400, "M_INVALID_PARAM"},
		{"long key", alice, alice.UserID, "org.example." + strings.Repeat("k", 250), map[string]any{}, 400, "M_KEY_TOO_LARGE"},
		{"profile over 64 KiB", alice, alice.UserID, "org.example.big", map[string]any{"org.example.big": strings.Repeat("b", 70*1024)}, 400, "M_PROFILE_TOO_LARGE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, body := put(tc.c, tc.user, tc.key, tc.body)
			udWantStatus(t, st, body, tc.status, tc.code)
		})
	}
	// A non-mxc avatar is stored and reaches the member events, as Synapse
	// does (the spec asks clients for mxc:// but gives servers no error).
	room, err := alice.CreateRoom(ctxT(t), &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	st, body := put(alice, alice.UserID, "avatar_url", map[string]any{"avatar_url": "LemurLover"})
	udWantStatus(t, st, body, 200, "")
	var member map[string]any
	if err := alice.StateEvent(ctxT(t), room.RoomID, event.StateMember, alice.UserID.String(), &member); err != nil || member["avatar_url"] != "LemurLover" {
		t.Fatalf("member after non-mxc avatar = %v, %v", member, err)
	}
	// A 256-character name is the longest allowed.
	st, body = put(alice, alice.UserID, "displayname", map[string]any{"displayname": strings.Repeat("é", 256)})
	udWantStatus(t, st, body, 200, "")
	// None of the refused writes touched bob's profile.
	prof, err := alice.GetProfile(ctxT(t), bob.UserID)
	if err != nil || prof.DisplayName != bob.UserID.Localpart() || !prof.AvatarURL.IsEmpty() {
		t.Fatalf("bob's profile after refused writes = %+v, %v", prof, err)
	}
}

// TestProfilePropagatesToRooms checks that a profile change sends a new
// join event into each joined room, seen by other members' /sync.
func TestProfilePropagatesToRooms(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	ctx := ctxT(t)
	shared := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	left := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, r := range []id.RoomID{shared, left} {
		if _, err := alice.JoinRoomByID(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.LeaveRoom(ctx, left); err != nil {
		t.Fatal(err)
	}
	first, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}

	// Bob's waiting sync wakes with alice's new member event.
	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := bob.SyncRequest(ctx, 20000, first.NextBatch, "", false, "")
		done <- result{resp, err}
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := alice.SetDisplayName(ctx, "Alice in Wonderland"); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("bob's sync was not woken by the profile change")
	}
	member := func(resp *mautrix.RespSync, roomID id.RoomID) *event.Event {
		jr := resp.Rooms.Join[roomID]
		if jr == nil {
			return nil
		}
		var found *event.Event
		for _, ev := range jr.Timeline.Events {
			if ev.Type == event.StateMember && ev.GetStateKey() == alice.UserID.String() {
				found = ev
			}
		}
		return found
	}
	ev := member(res.resp, shared)
	if ev == nil {
		t.Fatalf("no member event for alice in bob's sync: %+v", res.resp.Rooms.Join)
	}
	if ev.Content.Raw["membership"] != "join" || ev.Content.Raw["displayname"] != "Alice in Wonderland" {
		t.Fatalf("member content = %v", ev.Content.Raw)
	}
	if ev.Sender != alice.UserID {
		t.Fatalf("member event sent by %s", ev.Sender)
	}
	if member(res.resp, left) != nil {
		t.Fatal("profile change sent into a room alice had left")
	}

	// The avatar goes the same way and keeps the displayname.
	avatar := id.ContentURI{Homeserver: "localhost", FileID: "avatar1"}
	if err := alice.SetAvatarURL(ctx, avatar); err != nil {
		t.Fatal(err)
	}
	inc, err := bob.SyncRequest(ctx, 0, res.resp.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	ev = member(inc, shared)
	if ev == nil || ev.Content.Raw["avatar_url"] != avatar.String() || ev.Content.Raw["displayname"] != "Alice in Wonderland" {
		t.Fatalf("member after avatar change = %+v", ev)
	}

	// Setting the same name again sends nothing.
	if err := alice.SetDisplayName(ctx, "Alice in Wonderland"); err != nil {
		t.Fatal(err)
	}
	again, err := bob.SyncRequest(ctx, 0, inc.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if member(again, shared) != nil {
		t.Fatal("an unchanged profile produced a new member event")
	}

	// Removing the displayname drops it from the member event.
	if err := alice.DeleteProfileField(ctx, "displayname"); err != nil {
		t.Fatal(err)
	}
	gone, err := bob.SyncRequest(ctx, 0, again.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	ev = member(gone, shared)
	if ev == nil || ev.Content.Raw["displayname"] != nil || ev.Content.Raw["avatar_url"] != avatar.String() {
		t.Fatalf("member after displayname removal = %+v", ev)
	}
}
