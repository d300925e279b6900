package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// edSyncUntil syncs c (from *since) until ok holds for a response.
func edSyncUntil(t *testing.T, c *mautrix.Client, since *string, what string, ok func(*mautrix.RespSync) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := c.SyncRequest(ctxT(t), 1000, *since, "", false, "")
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		*since = resp.NextBatch
		if ok(resp) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s", c.UserID, what)
		}
	}
}

// edEphemeral returns the ephemeral events of type evType in a room.
func edEphemeral(resp *mautrix.RespSync, roomID id.RoomID, evType string) []json.RawMessage {
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		return nil
	}
	var out []json.RawMessage
	for _, ev := range jr.Ephemeral.Events {
		if ev.Type.Type == evType {
			out = append(out, ev.Content.VeryRaw)
		}
	}
	return out
}

func edTyping(resp *mautrix.RespSync, roomID id.RoomID) (users []string, seen bool) {
	for _, raw := range edEphemeral(resp, roomID, "m.typing") {
		var c struct {
			UserIDs []string `json:"user_ids"`
		}
		_ = json.Unmarshal(raw, &c)
		return c.UserIDs, true
	}
	return nil, false
}

// TestEDUFedTyping: bob on B types in alice's room on A; alice's /sync
// shows him typing, then not typing once he stops — and the other way round.
func TestEDUFedTyping(t *testing.T) {
	ca := newRFCA(t)
	_, _, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	since := alice.since

	if _, err := bob.c.UserTyping(ctxT(t), roomID, true, 20*time.Second); err != nil {
		t.Fatalf("bob types: %v", err)
	}
	edSyncUntil(t, alice.c, &since, "bob typing", func(r *mautrix.RespSync) bool {
		users, _ := edTyping(r, roomID)
		return len(users) == 1 && users[0] == bob.c.UserID.String()
	})
	if _, err := bob.c.UserTyping(ctxT(t), roomID, false, 0); err != nil {
		t.Fatalf("bob stops typing: %v", err)
	}
	edSyncUntil(t, alice.c, &since, "bob no longer typing", func(r *mautrix.RespSync) bool {
		users, seen := edTyping(r, roomID)
		return seen && len(users) == 0
	})

	bobSince := bob.since
	if _, err := alice.c.UserTyping(ctxT(t), roomID, true, 20*time.Second); err != nil {
		t.Fatalf("alice types: %v", err)
	}
	edSyncUntil(t, bob.c, &bobSince, "alice typing", func(r *mautrix.RespSync) bool {
		users, _ := edTyping(r, roomID)
		return len(users) == 1 && users[0] == alice.c.UserID.String()
	})
}

// TestEDUFedReceipts: bob on B reads alice's message, once on the main
// timeline and once in a thread; alice on A sees both receipts (with
// thread_id) in /sync. A private receipt stays on B.
func TestEDUFedReceipts(t *testing.T) {
	ca := newRFCA(t)
	_, b, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	root, err := alice.c.SendText(ctxT(t), roomID, "read me")
	if err != nil {
		t.Fatal(err)
	}
	reply, err := alice.c.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{
		"msgtype": "m.text", "body": "in a thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root.EventID},
	})
	if err != nil {
		t.Fatal(err)
	}
	bob.until(t, "the thread reply", rfHasEvent("m.room.message", func(ev *event.Event) bool { return ev.ID == reply.EventID }))
	since := alice.since

	// The private receipt first: if it leaked, it would arrive before the public ones.
	if err := bob.c.SendReceipt(ctxT(t), roomID, root.EventID, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatalf("private receipt: %v", err)
	}
	if err := bob.c.SendReceipt(ctxT(t), roomID, root.EventID, event.ReceiptTypeRead, map[string]any{"thread_id": "main"}); err != nil {
		t.Fatalf("main receipt: %v", err)
	}
	if err := bob.c.SendReceipt(ctxT(t), roomID, reply.EventID, event.ReceiptTypeRead, map[string]any{"thread_id": root.EventID}); err != nil {
		t.Fatalf("thread receipt: %v", err)
	}

	type receiptContent map[string]map[string]map[string]struct {
		TS       int64  `json:"ts"`
		ThreadID string `json:"thread_id"`
	}
	got := map[string]string{} // event ID → thread ID of bob's m.read
	edSyncUntil(t, alice.c, &since, "bob's receipts", func(r *mautrix.RespSync) bool {
		for _, raw := range edEphemeral(r, roomID, "m.receipt") {
			var c receiptContent
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatalf("receipt content %s: %v", raw, err)
			}
			for evID, byType := range c {
				if _, ok := byType["m.read.private"]; ok {
					t.Fatalf("a private receipt crossed servers: %s", raw)
				}
				if d, ok := byType["m.read"][bob.c.UserID.String()]; ok {
					if d.TS == 0 {
						t.Fatalf("receipt without ts: %s", raw)
					}
					got[evID] = d.ThreadID
				}
			}
		}
		return len(got) == 2
	})
	if got[root.EventID.String()] != "main" || got[reply.EventID.String()] != root.EventID.String() {
		t.Fatalf("alice saw bob's receipts %v", got)
	}

	// The EDU path checks the origin: B may not speak for alice.
	edu := map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{},
		"edus": []any{map[string]any{"edu_type": "m.typing", "content": map[string]any{
			"room_id": roomID, "user_id": alice.c.UserID, "typing": true}}}}
	if err := b.Fed.Client.Put(ctxT(t), hostOf(alice.c.UserID), "/_matrix/federation/v1/send/forged1", edu, nil); err != nil {
		t.Fatalf("forged transaction: %v", err)
	}
	resp, err := alice.c.SyncRequest(ctxT(t), 0, since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if users, _ := edTyping(resp, roomID); len(users) != 0 {
		t.Fatalf("B made alice type: %v", users)
	}
}

func hostOf(u id.UserID) string { return u.Homeserver() }

// TestEDUFedProfile: bob on B reads alice's profile on A (all of it and
// one field); an unknown user of A is 404 through B.
func TestEDUFedProfile(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	if err := alice.SetDisplayName(ctxT(t), "Alice of A"); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetAvatarURL(ctxT(t), id.ContentURI{Homeserver: a.Name, FileID: "avatar1"}); err != nil {
		t.Fatal(err)
	}
	p, err := bob.GetProfile(ctxT(t), alice.UserID)
	if err != nil {
		t.Fatalf("bob reads alice's profile: %v", err)
	}
	if p.DisplayName != "Alice of A" || p.AvatarURL.FileID != "avatar1" {
		t.Fatalf("profile through B: %+v", p)
	}
	var field map[string]string
	if _, err := bob.MakeRequest(ctxT(t), http.MethodGet, bob.BuildClientURL("v3", "profile", alice.UserID, "displayname"), nil, &field); err != nil {
		t.Fatalf("displayname through B: %v", err)
	}
	if len(field) != 1 || field["displayname"] != "Alice of A" {
		t.Fatalf("displayname through B: %v", field)
	}
	_, err = bob.GetProfile(ctxT(t), id.NewUserID("nobody", a.Name))
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusNotFound || he.RespError.ErrCode != "M_NOT_FOUND" {
		t.Fatalf("unknown remote user: %v, want 404 M_NOT_FOUND", err)
	}
	// A's federation endpoint answers B directly too, field by field.
	var direct map[string]string
	if err := b.Fed.Client.Get(ctxT(t), a.Name, "/_matrix/federation/v1/query/profile?user_id="+alice.UserID.String()+"&field=avatar_url", &direct); err != nil {
		t.Fatal(err)
	}
	if len(direct) != 1 || direct["avatar_url"] != "mxc://"+a.Name+"/avatar1" {
		t.Fatalf("query/profile field=avatar_url: %v", direct)
	}
}

// TestEDUFedJoinByAlias: alice on A publishes #chat:A; charlie on B
// resolves it, joins by the alias alone, and the two chat. An unknown
// alias of A is 404 on B.
func TestEDUFedJoinByAlias(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	charlie := &rfSyncer{c: b.register(t, "charlie")}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "aliased"})
	alias := id.NewRoomAlias("chat", a.Name)
	if _, err := alice.c.CreateAlias(ctxT(t), alias, roomID); err != nil {
		t.Fatal(err)
	}
	res, err := charlie.c.ResolveAlias(ctxT(t), alias)
	if err != nil {
		t.Fatalf("charlie resolves %s: %v", alias, err)
	}
	if res.RoomID != roomID || len(res.Servers) == 0 || res.Servers[0] != a.Name {
		t.Fatalf("resolve through B: %+v", res)
	}
	_, err = charlie.c.ResolveAlias(ctxT(t), id.NewRoomAlias("nothing", a.Name))
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusNotFound || he.RespError.ErrCode != "M_NOT_FOUND" {
		t.Fatalf("unknown remote alias: %v, want 404 M_NOT_FOUND", err)
	}
	if _, err := charlie.c.JoinRoom(ctxT(t), "#nothing:"+a.Name, nil); !errors.As(err, &he) || he.Response.StatusCode != http.StatusNotFound {
		t.Fatalf("join by unknown remote alias: %v, want 404", err)
	}

	resp, err := charlie.c.JoinRoom(ctxT(t), alias.String(), nil)
	if err != nil {
		t.Fatalf("charlie joins %s: %v", alias, err)
	}
	if resp.RoomID != roomID {
		t.Fatalf("joined %s, want %s", resp.RoomID, roomID)
	}
	if _, err := charlie.c.SendText(ctxT(t), roomID, "hi from B"); err != nil {
		t.Fatal(err)
	}
	alice.until(t, "charlie's message", func(evs []*event.Event) bool {
		for _, b := range rfBodies(evs, roomID) {
			if b == "hi from B" {
				return true
			}
		}
		return false
	})
	if _, err := alice.c.SendText(ctxT(t), roomID, "hi from A"); err != nil {
		t.Fatal(err)
	}
	charlie.until(t, "alice's message", func(evs []*event.Event) bool {
		for _, b := range rfBodies(evs, roomID) {
			if b == "hi from A" {
				return true
			}
		}
		return false
	})
}

// TestEDUFedPresence: alice on A sets her presence with a status; bob on
// B, who shares a room with her, sees it in /sync and with GET
// /presence, and then sees her go unavailable.
func TestEDUFedPresence(t *testing.T) {
	ca := newRFCA(t)
	_, _, alice, bob, _ := rfJoinedPair(t, ca, "10")
	since := bob.since
	if err := alice.c.SetPresence(ctxT(t), mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "across servers"}); err != nil {
		t.Fatalf("alice sets presence: %v", err)
	}
	presenceOf := func(r *mautrix.RespSync) *event.PresenceEventContent {
		for _, ev := range r.Presence.Events {
			if ev.Sender == alice.c.UserID {
				var c event.PresenceEventContent
				if err := json.Unmarshal(ev.Content.VeryRaw, &c); err != nil {
					t.Fatalf("presence content: %v", err)
				}
				return &c
			}
		}
		return nil
	}
	edSyncUntil(t, bob.c, &since, "alice online", func(r *mautrix.RespSync) bool {
		c := presenceOf(r)
		return c != nil && c.Presence == event.PresenceOnline && c.StatusMessage == "across servers"
	})
	p, err := bob.c.GetPresence(ctxT(t), alice.c.UserID)
	if err != nil {
		t.Fatalf("bob reads alice's presence: %v", err)
	}
	if p.Presence != event.PresenceOnline || p.StatusMsg != "across servers" || !p.CurrentlyActive {
		t.Fatalf("GET presence through B: %+v", p)
	}
	if err := alice.c.SetPresence(ctxT(t), mautrix.ReqPresence{Presence: event.PresenceUnavailable}); err != nil {
		t.Fatal(err)
	}
	edSyncUntil(t, bob.c, &since, "alice unavailable", func(r *mautrix.RespSync) bool {
		c := presenceOf(r)
		return c != nil && c.Presence == event.PresenceUnavailable
	})
}

// TestEDUFedPublicRooms: bob on B lists A's room directory, with and
// without a search filter.
func TestEDUFedPublicRooms(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	listed := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Gardening", Visibility: "public"})
	mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Chess", Visibility: "public"})
	mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret"})

	var all mautrix.RespPublicRooms
	if _, err := bob.MakeRequest(ctxT(t), http.MethodGet, bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "publicRooms"}, map[string]string{"server": a.Name}), nil, &all); err != nil {
		t.Fatalf("bob lists A's directory: %v", err)
	}
	if len(all.Chunk) != 2 {
		t.Fatalf("A's directory through B has %d rooms, want 2: %+v", len(all.Chunk), all.Chunk)
	}
	var filtered mautrix.RespPublicRooms
	body := map[string]any{"filter": map[string]any{"generic_search_term": "garden"}}
	if _, err := bob.MakeRequest(ctxT(t), http.MethodPost, bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "publicRooms"}, map[string]string{"server": a.Name}), body, &filtered); err != nil {
		t.Fatalf("bob searches A's directory: %v", err)
	}
	if len(filtered.Chunk) != 1 || filtered.Chunk[0].RoomID != listed || filtered.Chunk[0].Name != "Gardening" {
		t.Fatalf("search through B: %+v", filtered.Chunk)
	}
}
