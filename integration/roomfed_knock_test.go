package integration

import (
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/federation"
)

// knockRoom has alice create a room with the given join rule and version.
func knockRoom(t *testing.T, alice *mautrix.Client, version, joinRule, alias string) id.RoomID {
	t.Helper()
	return mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{
		Preset: "private_chat", Name: "knock here", RoomVersion: id.RoomVersion(version), RoomAliasName: alias,
		InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": joinRule}}}},
	})
}

// syncUntil syncs c until ok holds for one response.
func syncUntil(t *testing.T, c *mautrix.Client, what string, ok func(*mautrix.RespSync) bool) {
	t.Helper()
	since := ""
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := c.SyncRequest(ctxT(t), 1000, since, "", false, "")
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		if ok(resp) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s", c.UserID, what)
		}
		since = resp.NextBatch
	}
}

// TestRoomFedKnock: bob on B knocks on alice's room on A by room ID (with
// A as via) and carol on B by alias; each sees the room under rooms.knock
// with its stripped state, alice sees the knocks, carol retracts hers
// (a remote leave), alice invites bob (accepting the knock), and bob
// joins.
func TestRoomFedKnock(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	bob := b.register(t, "bob")
	carol := b.register(t, "carol")
	roomID := knockRoom(t, alice.c, "10", "knock", "knockme")

	if _, err := bob.KnockRoom(ctxT(t), roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}, Reason: "let me in"}); err != nil {
		t.Fatalf("bob knocks by room ID: %v", err)
	}
	resp, err := carol.KnockRoom(ctxT(t), "#knockme:"+a.Name, nil)
	if err != nil {
		t.Fatalf("carol knocks by alias: %v", err)
	}
	if resp.RoomID != roomID {
		t.Fatalf("knock by alias answered room %s, want %s", resp.RoomID, roomID)
	}

	for _, c := range []*mautrix.Client{bob, carol} {
		syncUntil(t, c, "the knocked room", func(r *mautrix.RespSync) bool {
			kr := r.Rooms.Knock[roomID]
			if kr == nil {
				return false
			}
			var create, rules, own bool
			for _, ev := range kr.State.Events {
				switch ev.Type.Type {
				case "m.room.create":
					create = true
				case "m.room.join_rules":
					rules = ev.Content.Raw["join_rule"] == "knock"
				case "m.room.member":
					own = ev.GetStateKey() == c.UserID.String() && ev.Content.Raw["membership"] == "knock"
				}
			}
			if !create || !rules || !own {
				t.Fatalf("knock_state lacks create/join_rules/own knock: %+v", kr.State.Events)
			}
			return true
		})
	}

	isKnock := func(u id.UserID) func(*event.Event) bool {
		return func(ev *event.Event) bool {
			return ev.RoomID == roomID && ev.GetStateKey() == u.String() && ev.Content.Raw["membership"] == "knock"
		}
	}
	alice.until(t, "bob's knock", rfHasEvent("m.room.member", isKnock(bob.UserID)))
	alice.until(t, "carol's knock", rfHasEvent("m.room.member", isKnock(carol.UserID)))

	// carol retracts her knock: a leave through A; her sync moves the
	// room from knock to leave, and alice sees the leave.
	since := ""
	syncUntil(t, carol, "a sync token", func(r *mautrix.RespSync) bool { since = r.NextBatch; return true })
	if _, err := carol.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("carol retracts her knock: %v", err)
	}
	alice.until(t, "carol's leave", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == carol.UserID.String() && ev.Content.Raw["membership"] == "leave"
	}))
	resp2, err := carol.SyncRequest(ctxT(t), 0, since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	lr := resp2.Rooms.Leave[roomID]
	if lr == nil || len(lr.Timeline.Events) != 1 || lr.Timeline.Events[0].Content.Raw["membership"] != "leave" || resp2.Rooms.Knock[roomID] != nil {
		t.Fatalf("carol's sync after retracting: leave %+v, knock %+v", lr, resp2.Rooms.Knock[roomID])
	}
	if full, err := carol.SyncRequest(ctxT(t), 0, "", "", false, ""); err != nil || full.Rooms.Knock[roomID] != nil {
		t.Fatalf("carol's initial sync still shows the retracted knock (%v)", err)
	}

	// Accepting the knock is inviting: bob sees an invite instead of the knock.
	if _, err := alice.c.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatalf("alice invites bob: %v", err)
	}
	syncUntil(t, bob, "the invite", func(r *mautrix.RespSync) bool {
		return r.Rooms.Invite[roomID] != nil && r.Rooms.Knock[roomID] == nil
	})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatalf("bob joins after the invite: %v", err)
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == bob.UserID.String() && ev.Content.Raw["membership"] == "join"
	}))
}

// TestRoomFedKnockRefused: knocking on a room whose join rule is not knock
// is M_FORBIDDEN, as is knocking on a room version without knocks (v6);
// a make_knock whose ver= list lacks the room's version is
// M_INCOMPATIBLE_ROOM_VERSION.
func TestRoomFedKnockRefused(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	invite := knockRoom(t, alice, "10", "invite", "")
	old := knockRoom(t, alice, "6", "knock", "")

	for name, roomID := range map[string]id.RoomID{"invite-only room": invite, "v6 room": old} {
		_, err := bob.KnockRoom(ctxT(t), roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}})
		var he mautrix.HTTPError
		if !errors.As(err, &he) || he.RespError == nil || he.RespError.ErrCode != "M_FORBIDDEN" || he.Response.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: knock answered %v, want 403 M_FORBIDDEN", name, err)
		}
	}
	syncUntil(t, bob, "an empty knock list", func(r *mautrix.RespSync) bool {
		if len(r.Rooms.Knock) != 0 {
			t.Fatalf("refused knocks show in /sync: %v", r.Rooms.Knock)
		}
		return true
	})

	knockable := knockRoom(t, alice, "10", "knock", "")
	var out map[string]any
	path := "/_matrix/federation/v1/make_knock/" + url.PathEscape(knockable.String()) + "/" + url.PathEscape(bob.UserID.String()) + "?ver=6&ver=7"
	err := b.Fed.Client.Get(ctxT(t), a.Name, path, &out)
	var re *federation.RemoteError
	if !errors.As(err, &re) || re.Status != http.StatusBadRequest || re.Code != "M_INCOMPATIBLE_ROOM_VERSION" {
		t.Fatalf("make_knock without the room's version: %v, want 400 M_INCOMPATIBLE_ROOM_VERSION", err)
	}
	if re.RoomVersion != "10" {
		t.Fatalf("make_knock's M_INCOMPATIBLE_ROOM_VERSION names room_version %q, want 10", re.RoomVersion)
	}
	// make_join likewise names the room's version.
	path = "/_matrix/federation/v1/make_join/" + url.PathEscape(knockable.String()) + "/" + url.PathEscape(bob.UserID.String()) + "?ver=6"
	err = b.Fed.Client.Get(ctxT(t), a.Name, path, &out)
	if !errors.As(err, &re) || re.Code != "M_INCOMPATIBLE_ROOM_VERSION" || re.RoomVersion != "10" {
		t.Fatalf("make_join without the room's version: %v (room_version %q), want M_INCOMPATIBLE_ROOM_VERSION naming 10", err, re.RoomVersion)
	}
	path = "/_matrix/federation/v1/make_knock/" + url.PathEscape(knockable.String()) + "/" + url.PathEscape(bob.UserID.String()) + "?ver=10"
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &out); err != nil {
		t.Fatalf("make_knock: %v", err)
	}
	if out["room_version"] != "10" {
		t.Fatalf("make_knock room_version = %v", out["room_version"])
	}
	// A user of another server may not be knocked for.
	path = "/_matrix/federation/v1/make_knock/" + url.PathEscape(knockable.String()) + "/" + url.PathEscape(alice.UserID.String()) + "?ver=10"
	err = b.Fed.Client.Get(ctxT(t), a.Name, path, &out)
	if !errors.As(err, &re) || re.Status != http.StatusForbidden {
		t.Fatalf("make_knock for another server's user: %v, want 403", err)
	}
}

// TestRoomFedRestrictedRefusedIs403: a remote join refused by the resident
// server of a restricted room (400 M_UNABLE_TO_AUTHORISE_JOIN there) is a
// 403 M_FORBIDDEN for the client, not a 502 as if A were unreachable.
func TestRoomFedRestrictedRefusedIs403(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	// The allowed room is one A is not in: A cannot authorise the join.
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10",
		InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: new(string), Content: event.Content{Raw: map[string]any{
			"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": "!elsewhere:example.org"}},
		}}}}})
	_, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
}
