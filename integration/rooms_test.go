package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// createRoomRaw creates a room from a hand-written request body, for the
// fields mautrix's request type would fill in on its own.
func createRoomRaw(t testing.TB, c *mautrix.Client, body map[string]any) id.RoomID {
	t.Helper()
	var resp mautrix.RespCreateRoom
	if _, err := c.MakeRequest(ctxT(t), "POST", c.BuildClientURL("v3", "createRoom"), body, &resp); err != nil {
		t.Fatalf("createRoom %v: %v", body, err)
	}
	return resp.RoomID
}

// stateOf reads one state event's content.
func stateOf(t testing.TB, c *mautrix.Client, roomID id.RoomID, evType, stateKey string) map[string]any {
	t.Helper()
	var content map[string]any
	if _, err := c.MakeRequest(ctxT(t), "GET", c.BuildClientURL("v3", "rooms", roomID, "state", evType, stateKey), nil, &content); err != nil {
		t.Fatalf("GET state %s/%s in %s: %v", evType, stateKey, roomID, err)
	}
	return content
}

// stateEventOf reads one state event in event format.
func stateEventOf(t testing.TB, c *mautrix.Client, roomID id.RoomID, evType, stateKey string) *event.Event {
	t.Helper()
	var ev event.Event
	url := c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "state", evType, stateKey}, map[string]string{"format": "event"})
	if _, err := c.MakeRequest(ctxT(t), "GET", url, nil, &ev); err != nil {
		t.Fatalf("GET state %s/%s in %s: %v", evType, stateKey, roomID, err)
	}
	return &ev
}

func bodyOf(ev *event.Event) string {
	b, _ := ev.Content.Raw["body"].(string)
	return b
}

func bodiesOf(evs []*event.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type == event.EventMessage {
			out = append(out, bodyOf(ev))
		}
	}
	return out
}

func sendText(t testing.TB, c *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	resp, err := c.SendText(ctxT(t), roomID, body)
	if err != nil {
		t.Fatalf("send %q: %v", body, err)
	}
	return resp.EventID
}

func membershipOf(t testing.TB, c *mautrix.Client, roomID id.RoomID, userID id.UserID) string {
	t.Helper()
	m, _ := stateOf(t, c, roomID, "m.room.member", userID.String())["membership"].(string)
	return m
}

func TestRoomCreatePresets(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)

	for _, tc := range []struct {
		preset, version, joinRule, guest string
	}{
		{"private_chat", "11", "invite", "can_join"},
		{"trusted_private_chat", "11", "invite", "can_join"},
		{"public_chat", "11", "public", ""},
		{"private_chat", "12", "invite", "can_join"},
		{"trusted_private_chat", "12", "invite", "can_join"},
		{"public_chat", "12", "public", ""},
	} {
		t.Run(tc.preset+"/v"+tc.version, func(t *testing.T) {
			roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: tc.preset, RoomVersion: id.RoomVersion(tc.version), Invite: []id.UserID{bob.UserID}})
			if got := stateOf(t, alice, roomID, "m.room.join_rules", "")["join_rule"]; got != tc.joinRule {
				t.Errorf("join_rule = %v, want %s", got, tc.joinRule)
			}
			if got := stateOf(t, alice, roomID, "m.room.history_visibility", "")["history_visibility"]; got != "shared" {
				t.Errorf("history_visibility = %v", got)
			}
			var ga map[string]any
			_, err := alice.MakeRequest(ctx, "GET", alice.BuildClientURL("v3", "rooms", roomID, "state", "m.room.guest_access", ""), nil, &ga)
			if tc.guest == "" {
				wantMatrixErr(t, err, 404, "M_NOT_FOUND")
			} else if err != nil || ga["guest_access"] != tc.guest {
				t.Errorf("guest_access = %v, %v", ga, err)
			}
			if m := membershipOf(t, alice, roomID, bob.UserID); m != "invite" {
				t.Errorf("bob's membership = %q", m)
			}
			pl := stateOf(t, alice, roomID, "m.room.power_levels", "")
			users, _ := pl["users"].(map[string]any)
			create := stateOf(t, alice, roomID, "m.room.create", "")
			trusted := tc.preset == "trusted_private_chat"
			if tc.version == "12" {
				// v12 creators are all-powerful without a power level entry.
				if _, listed := users[alice.UserID.String()]; listed {
					t.Errorf("v12 creator listed in power levels: %v", users)
				}
				extra, _ := create["additional_creators"].([]any)
				if trusted != slices.Contains(extra, any(bob.UserID.String())) {
					t.Errorf("additional_creators = %v for %s", extra, tc.preset)
				}
			} else {
				if users[alice.UserID.String()] != float64(100) {
					t.Errorf("creator's power = %v", users[alice.UserID.String()])
				}
				if got := users[bob.UserID.String()]; trusted != (got == float64(100)) {
					t.Errorf("invitee's power = %v for %s", got, tc.preset)
				}
			}
		})
	}
	_, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "secret_chat"})
	wantMatrixErr(t, err, 400, "M_INVALID_PARAM")
}

func TestRoomCreateOptions(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)

	roomID := createRoomRaw(t, alice, map[string]any{
		"visibility":       "public",
		"name":             "The Lobby",
		"topic":            "Say hi",
		"invite":           []string{bob.UserID.String()},
		"is_direct":        true,
		"room_alias_name":  "lobby",
		"creation_content": map[string]any{"m.federate": false, "type": "org.example.lobby"},
		"initial_state": []map[string]any{
			{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}},
			{"type": "org.example.config", "state_key": "a/b", "content": map[string]any{"x": 1}},
		},
		"power_level_content_override": map[string]any{"events_default": 10, "users": map[string]any{"@carol:localhost": 60}},
	})
	if got := stateOf(t, alice, roomID, "m.room.name", "")["name"]; got != "The Lobby" {
		t.Errorf("name = %v", got)
	}
	if got := stateOf(t, alice, roomID, "m.room.topic", "")["topic"]; got != "Say hi" {
		t.Errorf("topic = %v", got)
	}
	if got := stateOf(t, alice, roomID, "m.room.canonical_alias", "")["alias"]; got != "#lobby:localhost" {
		t.Errorf("canonical alias = %v", got)
	}
	create := stateOf(t, alice, roomID, "m.room.create", "")
	if create["m.federate"] != false || create["type"] != "org.example.lobby" || create["room_version"] != "12" {
		t.Errorf("create content = %v", create)
	}
	// v12: upgrading (a tombstone) needs more than state_default and than
	// any listed user; 150, as in the spec's example and Synapse.
	if events, _ := stateOf(t, alice, roomID, "m.room.power_levels", "")["events"].(map[string]any); events["m.room.tombstone"] != float64(150) {
		t.Errorf("v12 tombstone level = %v, want 150", events["m.room.tombstone"])
	}
	// initial_state replaces the preset's history visibility and is applied as given.
	if got := stateOf(t, alice, roomID, "m.room.history_visibility", "")["history_visibility"]; got != "joined" {
		t.Errorf("history_visibility = %v", got)
	}
	if got := stateOf(t, alice, roomID, "org.example.config", "a/b")["x"]; got != float64(1) {
		t.Errorf("custom initial state = %v", got)
	}
	pl := stateOf(t, alice, roomID, "m.room.power_levels", "")
	if pl["events_default"] != float64(10) || pl["users"].(map[string]any)["@carol:localhost"] != float64(60) || pl["ban"] != float64(50) {
		t.Errorf("power levels = %v", pl)
	}
	if got := stateOf(t, alice, roomID, "m.room.member", bob.UserID.String()); got["membership"] != "invite" || got["is_direct"] != true {
		t.Errorf("invite = %v", got)
	}
	var published bool
	_ = n.Store.View(func(tx *store.Tx) error { published = tx.Published(roomID.String()); return nil })
	if !published {
		t.Error("visibility=public room is not in the directory")
	}
	private := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	_ = n.Store.View(func(tx *store.Tx) error { published = tx.Published(private.String()); return nil })
	if published {
		t.Error("a private room was published")
	}

	// The alias is taken now; it resolves for joining.
	_, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: "lobby"})
	wantMatrixErr(t, err, 400, "M_ROOM_IN_USE")
	joined, err := bob.JoinRoom(ctx, "#lobby:localhost", nil)
	if err != nil || joined.RoomID != roomID {
		t.Fatalf("join by alias: %v %v", joined, err)
	}

	// v12 creators must not appear in power levels: a bad request (400, as
	// Synapse and Complement's MSC4289 tests have it), and no room is made.
	before, err := alice.JoinedRooms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var created mautrix.RespCreateRoom
	_, err = alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "createRoom"), map[string]any{
		"power_level_content_override": map[string]any{"users": map[string]any{alice.UserID.String(): 100}}}, &created)
	wantMatrixErr(t, err, 400, "M_BAD_JSON")
	if after, _ := alice.JoinedRooms(ctx); len(after.JoinedRooms) != len(before.JoinedRooms) {
		t.Errorf("refused createRoom left a room behind: %v → %v", before.JoinedRooms, after.JoinedRooms)
	}
	// Before v12 the override replaces the users map wholesale.
	v11 := createRoomRaw(t, alice, map[string]any{"room_version": "11",
		"power_level_content_override": map[string]any{"users": map[string]any{alice.UserID.String(): 100, "@carol:localhost": 60}}})
	if users := stateOf(t, alice, v11, "m.room.power_levels", "")["users"].(map[string]any); len(users) != 2 || users["@carol:localhost"] != float64(60) {
		t.Errorf("v11 override users = %v", users)
	}

	for _, bad := range []map[string]any{
		{"visibility": "secret"},
		{"invite": []string{"bob"}},
		{"room_alias_name": "a:b"},
		{"creation_content": []int{1}},
	} {
		var resp map[string]any
		_, err := alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "createRoom"), bad, &resp)
		if s, _ := matrixErr(err); s != 400 {
			t.Errorf("createRoom %v: %v, want 400", bad, err)
		}
	}
}

func TestRoomVersions(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)

	caps, err := alice.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if caps.RoomVersions == nil || caps.RoomVersions.Default != "12" {
		t.Fatalf("capabilities room versions = %+v", caps.RoomVersions)
	}
	for v := 1; v <= 12; v++ {
		if caps.RoomVersions.Available[fmt.Sprint(v)] != "stable" {
			t.Errorf("room version %d not available as stable: %v", v, caps.RoomVersions.Available)
		}
	}

	for v := 1; v <= 12; v++ {
		version := fmt.Sprint(v)
		t.Run("v"+version, func(t *testing.T) {
			roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(version), Preset: "public_chat", Name: "v" + version})
			create := stateEventOf(t, alice, roomID, "m.room.create", "")
			if create.Content.Raw["room_version"] != version {
				t.Errorf("create content %v", create.Content.Raw)
			}
			if v == 12 {
				if want := "!" + strings.TrimPrefix(create.ID.String(), "$"); roomID.String() != want {
					t.Errorf("v12 room ID %s, want %s (the create event's reference hash)", roomID, want)
				}
				if strings.Contains(roomID.String(), ":") {
					t.Errorf("v12 room ID %s has a server part", roomID)
				}
			} else if !strings.HasSuffix(roomID.String(), ":localhost") {
				t.Errorf("room ID %s lacks the server name", roomID)
			}
			if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
				t.Fatalf("join: %v", err)
			}
			msg := sendText(t, alice, roomID, "hello v"+version)
			reply := sendText(t, bob, roomID, "hi back")
			if v <= 2 && !strings.HasSuffix(msg.String(), ":localhost") {
				t.Errorf("v%d event ID %s lacks the server name", v, msg)
			}
			if _, err := alice.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "topic " + version}); err != nil {
				t.Fatalf("state: %v", err)
			}
			if got := stateOf(t, bob, roomID, "m.room.topic", "")["topic"]; got != "topic "+version {
				t.Errorf("topic = %v", got)
			}
			_, err := bob.SendStateEvent(ctx, roomID, event.StateRoomName, "", map[string]string{"name": "bob's"})
			wantMatrixErr(t, err, 403, "M_FORBIDDEN")
			red, err := alice.RedactEvent(ctx, roomID, reply, mautrix.ReqRedact{Reason: "moderated"})
			if err != nil {
				t.Fatalf("redact: %v", err)
			}
			got, err := bob.GetEvent(ctx, roomID, reply)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Content.Raw) != 0 || got.Unsigned.RedactedBecause == nil || got.Unsigned.RedactedBecause.ID != red.EventID {
				t.Errorf("redacted event: content %v, redacted_because %v", got.Content.Raw, got.Unsigned.RedactedBecause)
			}
			sync, err := bob.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			jr := sync.Rooms.Join[roomID]
			if jr == nil {
				t.Fatal("room missing from sync")
			}
			var ids []id.EventID
			for _, ev := range jr.Timeline.Events {
				ids = append(ids, ev.ID)
			}
			for _, want := range []id.EventID{msg, reply, red.EventID} {
				if !slices.Contains(ids, want) {
					t.Errorf("sync timeline %v lacks %s", ids, want)
				}
			}
		})
	}

	for _, bad := range []string{"13", "0", "banana", "9.5"} {
		_, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(bad)})
		wantMatrixErr(t, err, 400, "M_UNSUPPORTED_ROOM_VERSION")
	}
}

func TestRoomMembership(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Members only", Topic: "shh"})

	// Invite-only: joining uninvited is forbidden.
	_, err := bob.JoinRoomByID(ctx, roomID)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.SendText(ctx, roomID, "let me in")
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")

	before, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID, Reason: "join us"}); err != nil {
		t.Fatal(err)
	}
	_, err = alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: alice.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	sync, err := bob.SyncRequest(ctx, 0, before.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	inv := sync.Rooms.Invite[roomID]
	if inv == nil {
		t.Fatalf("invite missing from bob's sync: %+v", sync.Rooms)
	}
	seen := map[string]*event.Event{}
	for _, ev := range inv.State.Events {
		seen[ev.Type.Type+"|"+ev.GetStateKey()] = ev
	}
	for _, want := range []string{"m.room.create|", "m.room.join_rules|", "m.room.name|", "m.room.member|" + bob.UserID.String()} {
		if seen[want] == nil {
			t.Errorf("invite_state lacks %s (has %v)", want, keysOf(seen))
		}
	}
	if me := seen["m.room.member|"+bob.UserID.String()]; me != nil && (me.Content.Raw["membership"] != "invite" || me.Sender != alice.UserID) {
		t.Errorf("invite event in invite_state: %v from %s", me.Content.Raw, me.Sender)
	}
	if name := seen["m.room.name|"]; name != nil && name.Content.Raw["name"] != "Members only" {
		t.Errorf("stripped name %v", name.Content.Raw)
	}
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("join after invite: %v", err)
	}
	rooms, err := bob.JoinedRooms(ctx)
	if err != nil || !slices.Contains(rooms.JoinedRooms, roomID) {
		t.Fatalf("joined_rooms = %v, %v", rooms, err)
	}

	// Bob has no power to kick or ban.
	_, err = bob.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: alice.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: alice.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")

	// Kick: out, and the invite-only rule keeps him out.
	if _, err := alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "bye"}); err != nil {
		t.Fatal(err)
	}
	if m := stateOf(t, alice, roomID, "m.room.member", bob.UserID.String()); m["membership"] != "leave" || m["reason"] != "bye" {
		t.Errorf("after kick: %v", m)
	}
	_, err = bob.JoinRoomByID(ctx, roomID)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")

	// Ban: a banned user cannot come back even when invited.
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: bob.UserID, Reason: "spam"}); err != nil {
		t.Fatal(err)
	}
	if m := membershipOf(t, alice, roomID, bob.UserID); m != "ban" {
		t.Errorf("after ban: %q", m)
	}
	_, err = bob.JoinRoomByID(ctx, roomID)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: alice.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	if _, err := alice.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if m := membershipOf(t, alice, roomID, bob.UserID); m != "leave" {
		t.Errorf("after unban: %q", m)
	}
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("join after unban and invite: %v", err)
	}

	// Leave and forget: forgetting needs leaving first.
	_, err = bob.ForgetRoom(ctx, roomID)
	wantMatrixErr(t, err, 400, "M_UNKNOWN")
	beforeLeave, err := bob.FullSyncRequest(ctx, mautrix.ReqSync{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	if m := membershipOf(t, alice, roomID, bob.UserID); m != "leave" {
		t.Errorf("after leave: %q", m)
	}
	rooms, _ = bob.JoinedRooms(ctx)
	if slices.Contains(rooms.JoinedRooms, roomID) {
		t.Error("left room still in joined_rooms")
	}
	if _, err := bob.ForgetRoom(ctx, roomID); err != nil {
		t.Fatalf("forget: %v", err)
	}
	full, err := bob.FullSyncRequest(ctx, mautrix.ReqSync{FilterID: `{"room":{"include_leave":true}}`})
	if err != nil {
		t.Fatal(err)
	}
	if _, there := full.Rooms.Leave[roomID]; there {
		t.Error("forgotten room still in sync's leave section")
	}
	// A sync from before the leave still gets it, so another device of
	// bob's learns he left (as Synapse; Complement's TestRoomForget); one
	// from after it does not.
	inc, err := bob.FullSyncRequest(ctx, mautrix.ReqSync{Since: beforeLeave.NextBatch, FilterID: `{"room":{"include_leave":true}}`})
	if err != nil {
		t.Fatal(err)
	}
	if _, there := inc.Rooms.Leave[roomID]; !there {
		t.Error("a sync from before the leave misses the forgotten room's leave")
	}
	if inc2, err := bob.FullSyncRequest(ctx, mautrix.ReqSync{Since: inc.NextBatch, FilterID: `{"room":{"include_leave":true}}`}); err != nil {
		t.Fatal(err)
	} else if _, there := inc2.Rooms.Leave[roomID]; there {
		t.Error("a sync from after the leave shows the forgotten room")
	}
	_, err = bob.ForgetRoom(ctx, "!unknown:localhost")
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestRoomMembers(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	carol := n.register(t, "carol")
	ctx := ctxT(t)
	if err := carol.SetDisplayName(ctx, "Carol C"); err != nil {
		t.Fatal(err)
	}
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	early, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := carol.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: "@dave:localhost"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}

	members := func(req mautrix.ReqMembers) map[string]string {
		t.Helper()
		resp, err := alice.Members(ctx, roomID, req)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, ev := range resp.Chunk {
			if ev.Type != event.StateMember {
				t.Errorf("members returned a %s event", ev.Type)
			}
			out[ev.GetStateKey()] = string(ev.Content.AsMember().Membership)
		}
		return out
	}
	all := members(mautrix.ReqMembers{})
	want := map[string]string{"@alice:localhost": "join", "@bob:localhost": "leave", "@carol:localhost": "join", "@dave:localhost": "invite"}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Errorf("members = %v, want %v", all, want)
	}
	if got := members(mautrix.ReqMembers{Membership: "join"}); fmt.Sprint(got) != fmt.Sprint(map[string]string{"@alice:localhost": "join", "@carol:localhost": "join"}) {
		t.Errorf("membership=join: %v", got)
	}
	if got := members(mautrix.ReqMembers{NotMembership: "leave"}); len(got) != 3 || got["@bob:localhost"] != "" {
		t.Errorf("not_membership=leave: %v", got)
	}
	if got := members(mautrix.ReqMembers{At: early.NextBatch}); fmt.Sprint(got) != fmt.Sprint(map[string]string{"@alice:localhost": "join", "@bob:localhost": "join"}) {
		t.Errorf("at=%s: %v", early.NextBatch, got)
	}

	jm, err := alice.JoinedMembers(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	_, hasAlice := jm.Joined[alice.UserID]
	_, hasCarol := jm.Joined[carol.UserID]
	if len(jm.Joined) != 2 || !hasAlice || !hasCarol {
		t.Errorf("joined_members = %v", jm.Joined)
	}
	if dn := jm.Joined[carol.UserID].DisplayName; dn != "Carol C" {
		t.Errorf("carol's display name in joined_members = %v", dn)
	}
	// A non-member may not list the members of a non-world-readable room.
	eve := n.register(t, "eve")
	_, err = eve.Members(ctx, roomID)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = eve.JoinedMembers(ctx, roomID)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
}

func TestRoomState(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "stateful"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}

	all, err := bob.StateAsArray(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, ev := range all {
		kinds[ev.Type.Type+"|"+ev.GetStateKey()] = true
	}
	for _, want := range []string{"m.room.create|", "m.room.power_levels|", "m.room.join_rules|", "m.room.name|", "m.room.member|" + alice.UserID.String(), "m.room.member|" + bob.UserID.String()} {
		if !kinds[want] {
			t.Errorf("GET /state lacks %s", want)
		}
	}

	var c map[string]any
	_, err = bob.MakeRequest(ctx, "GET", bob.BuildClientURL("v3", "rooms", roomID, "state", "m.room.topic", ""), nil, &c)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	_, err = bob.MakeRequest(ctx, "GET", bob.BuildClientURL("v3", "rooms", roomID, "state", "m.room.member", "@nobody:localhost"), nil, &c)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")

	put, err := alice.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "new topic"})
	if err != nil {
		t.Fatal(err)
	}
	if got := stateEventOf(t, bob, roomID, "m.room.topic", ""); got.ID != put.EventID || got.Content.Raw["topic"] != "new topic" {
		t.Errorf("topic event %s %v, want %s", got.ID, got.Content.Raw, put.EventID)
	}
	// The path form without a trailing slash works for the empty state key.
	var resp map[string]string
	if _, err := alice.MakeRequest(ctx, "PUT", alice.BuildClientURL("v3", "rooms", roomID, "state", "m.room.topic"), map[string]string{"topic": "no slash"}, &resp); err != nil || resp["event_id"] == "" {
		t.Fatalf("PUT state without state key segment: %v %v", resp, err)
	}
	if got := stateOf(t, bob, roomID, "m.room.topic", "")["topic"]; got != "no slash" {
		t.Errorf("topic = %v", got)
	}

	// Power-checked: bob (0) may not set the name (50) or power levels.
	_, err = bob.SendStateEvent(ctx, roomID, event.StateRoomName, "", map[string]string{"name": "bob's room"})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.SendStateEvent(ctx, roomID, event.StatePowerLevels, "", map[string]any{"users": map[string]int{bob.UserID.String(): 100}})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	// Nor someone else's member event.
	_, err = bob.SendStateEvent(ctx, roomID, event.StateMember, alice.UserID.String(), map[string]string{"membership": "leave"})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	if got := stateOf(t, alice, roomID, "m.room.name", "")["name"]; got != "stateful" {
		t.Errorf("name changed to %v by a powerless user", got)
	}
	// State keys with slashes, and state keys naming oneself.
	if _, err := alice.SendStateEvent(ctx, roomID, event.NewEventType("org.example.widget"), "a/b/c", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	if got := stateOf(t, bob, roomID, "org.example.widget", "a/b/c")["n"]; got != float64(1) {
		t.Errorf("slashed state key: %v", got)
	}
	// Outsiders see nothing.
	eve := n.register(t, "eve")
	_, err = eve.State(ctx, roomID)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = eve.MakeRequest(ctx, "GET", eve.BuildClientURL("v3", "rooms", roomID, "state", "m.room.name", ""), nil, &c)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = eve.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "eve was here"})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
}

func TestRoomSendIdempotent(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	phone := loginPassword(t, n, "alice", testPassword)
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	send := func(c *mautrix.Client, txn, body string) id.EventID {
		t.Helper()
		resp, err := c.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]string{"msgtype": "m.text", "body": body}, mautrix.ReqSendEvent{TransactionID: txn})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID
	}
	first := send(alice, "txn1", "once")
	if again := send(alice, "txn1", "once"); again != first {
		t.Errorf("same txnId twice: %s then %s", first, again)
	}
	other := send(phone, "txn1", "once")
	if other == first {
		t.Error("another device's txnId collided with the first device's")
	}
	// The same txnId in another room is another transaction.
	room2 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	r2, err := alice.SendMessageEvent(ctx, room2, event.EventMessage, map[string]string{"msgtype": "m.text", "body": "once"}, mautrix.ReqSendEvent{TransactionID: "txn1"})
	if err != nil || r2.EventID == first {
		t.Errorf("txnId in another room: %v %v", r2, err)
	}
	msgs, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	if got := bodiesOf(msgs.Chunk); len(got) != 2 {
		t.Errorf("room holds %v, want two messages", got)
	}
	// transaction_id is shown only to the device that sent it.
	for _, tc := range []struct {
		c    *mautrix.Client
		ev   id.EventID
		want string
	}{{alice, first, "txn1"}, {phone, first, ""}, {phone, other, "txn1"}} {
		ev, err := tc.c.GetEvent(ctx, roomID, tc.ev)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Unsigned.TransactionID != tc.want {
			t.Errorf("device %s sees transaction_id %q on %s, want %q", tc.c.DeviceID, ev.Unsigned.TransactionID, tc.ev, tc.want)
		}
	}
}

func TestRoomRedact(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	aliceMsg := sendText(t, alice, roomID, "alice's secret")
	bobMsg := sendText(t, bob, roomID, "bob's secret")
	bobOther := sendText(t, bob, roomID, "bob's regret")

	// Bob may not redact alice's event.
	_, err := bob.RedactEvent(ctx, roomID, aliceMsg)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	if ev, _ := alice.GetEvent(ctx, roomID, aliceMsg); ev == nil || bodyOf(ev) != "alice's secret" {
		t.Fatalf("refused redaction changed the event: %v", ev)
	}
	// His own, yes; and alice (a moderator) may redact his.
	own, err := bob.RedactEvent(ctx, roomID, bobOther, mautrix.ReqRedact{Reason: "oops", TxnID: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := bob.RedactEvent(ctx, roomID, bobOther, mautrix.ReqRedact{Reason: "oops", TxnID: "r1"}); err != nil || again.EventID != own.EventID {
		t.Errorf("redaction txn retried: %v %v", again, err)
	}
	mod, err := alice.RedactEvent(ctx, roomID, bobMsg, mautrix.ReqRedact{Reason: "spam"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		target, by id.EventID
		reason     string
	}{{bobOther, own.EventID, "oops"}, {bobMsg, mod.EventID, "spam"}} {
		ev, err := alice.GetEvent(ctx, roomID, tc.target)
		if err != nil {
			t.Fatal(err)
		}
		if len(ev.Content.Raw) != 0 {
			t.Errorf("redacted event keeps content %v", ev.Content.Raw)
		}
		rb := ev.Unsigned.RedactedBecause
		if rb == nil || rb.ID != tc.by || rb.Content.Raw["reason"] != tc.reason {
			t.Errorf("redacted_because = %+v, want %s", rb, tc.by)
		}
		if rb != nil && rb.Redacts != tc.target && rb.Content.Raw["redacts"] != tc.target.String() {
			t.Errorf("redacted_because does not name the target: %+v", rb)
		}
	}
	// Redacted everywhere: /messages too.
	msgs, err := bob.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 20)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range msgs.Chunk {
		if ev.ID == bobMsg && len(ev.Content.Raw) != 0 {
			t.Errorf("/messages shows redacted content %v", ev.Content.Raw)
		}
	}
	_, err = bob.RedactEvent(ctx, roomID, "$nonexistent")
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
}

func TestRoomEventAndContext(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	var ids []id.EventID
	for i := range 9 {
		ids = append(ids, sendText(t, alice, roomID, fmt.Sprint("m", i)))
	}
	ev, err := alice.GetEvent(ctx, roomID, ids[4])
	if err != nil || ev.ID != ids[4] || bodyOf(ev) != "m4" || ev.RoomID != roomID || ev.Sender != alice.UserID {
		t.Fatalf("GET /event: %+v %v", ev, err)
	}
	_, err = alice.GetEvent(ctx, roomID, "$missing")
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	other := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	_, err = alice.GetEvent(ctx, other, ids[4])
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")

	c, err := alice.Context(ctx, roomID, ids[4], nil, 4)
	if err != nil {
		t.Fatal(err)
	}
	if c.Event.ID != ids[4] {
		t.Errorf("context event %s", c.Event.ID)
	}
	// events_before is in reverse chronological order, events_after in chronological.
	if got := bodiesOf(c.EventsBefore); fmt.Sprint(got) != "[m3 m2]" {
		t.Errorf("events_before = %v", got)
	}
	if got := bodiesOf(c.EventsAfter); fmt.Sprint(got) != "[m5 m6]" {
		t.Errorf("events_after = %v", got)
	}
	hasCreate := false
	for _, s := range c.State {
		hasCreate = hasCreate || s.Type == event.StateCreate
	}
	if !hasCreate {
		t.Error("context state lacks m.room.create")
	}
	// start and end continue the timeline in each direction.
	back, err := alice.Messages(ctx, roomID, c.Start, "", mautrix.DirectionBackward, nil, 2)
	if err != nil || fmt.Sprint(bodiesOf(back.Chunk)) != "[m1 m0]" {
		t.Errorf("/messages back from context start: %v %v", bodiesOf(back.Chunk), err)
	}
	fwd, err := alice.Messages(ctx, roomID, c.End, "", mautrix.DirectionForward, nil, 2)
	if err != nil || fmt.Sprint(bodiesOf(fwd.Chunk)) != "[m7 m8]" {
		t.Errorf("/messages forward from context end: %v %v", bodiesOf(fwd.Chunk), err)
	}
	_, err = alice.Context(ctx, roomID, "$missing", nil, 4)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")

	// Small limits keep the tokens exact: nothing is skipped at either end.
	for _, limit := range []string{"0", "1"} {
		var rc mautrix.RespContext
		url := alice.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "context", ids[4]}, map[string]string{"limit": limit})
		if _, err := alice.MakeRequest(ctx, "GET", url, nil, &rc); err != nil {
			t.Fatal(err)
		}
		if len(rc.EventsBefore) != 0 || len(rc.EventsAfter) > 1 {
			t.Errorf("limit %s: %d before, %d after", limit, len(rc.EventsBefore), len(rc.EventsAfter))
		}
		back, err := alice.Messages(ctx, roomID, rc.Start, "", mautrix.DirectionBackward, nil, 1)
		if err != nil || fmt.Sprint(bodiesOf(back.Chunk)) != "[m3]" {
			t.Errorf("limit %s: back from start gives %v %v", limit, bodiesOf(back.Chunk), err)
		}
		wantNext := "[m5]"
		if limit == "1" {
			wantNext = "[m6]"
		}
		fwd, err := alice.Messages(ctx, roomID, rc.End, "", mautrix.DirectionForward, nil, 1)
		if err != nil || fmt.Sprint(bodiesOf(fwd.Chunk)) != wantNext {
			t.Errorf("limit %s: forward from end gives %v %v, want %s", limit, bodiesOf(fwd.Chunk), err, wantNext)
		}
	}
	// /messages with limit 0 returns nothing and a token that loses nothing.
	var zero mautrix.RespMessages
	if _, err := alice.MakeRequest(ctx, "GET", alice.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "messages"}, map[string]string{"dir": "b", "limit": "0"}), nil, &zero); err != nil {
		t.Fatal(err)
	}
	if len(zero.Chunk) != 0 {
		t.Errorf("limit 0 gave %d events", len(zero.Chunk))
	}
	if zero.End != "" {
		next, err := alice.Messages(ctx, roomID, zero.End, "", mautrix.DirectionBackward, nil, 1)
		if err != nil || fmt.Sprint(bodiesOf(next.Chunk)) != "[m8]" {
			t.Errorf("after a limit 0 page: %v %v", bodiesOf(next.Chunk), err)
		}
	}
}

func TestRoomMessages(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 50 {
		c := alice
		if i%5 == 4 {
			c = bob
		}
		body := fmt.Sprintf("msg %02d", i)
		want = append(want, body)
		sendText(t, c, roomID, body)
		if i == 20 {
			if _, err := alice.SendMessageEvent(ctx, roomID, event.NewEventType("org.example.ping"), map[string]int{"n": i}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Backwards in pages of 7 from the newest: every message once, in order.
	var got []string
	from, pages := "", 0
	for {
		resp, err := alice.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, &mautrix.FilterPart{Types: []event.Type{event.EventMessage}}, 7)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(resp.Chunk) > 7 {
			t.Fatalf("page of %d events with limit 7", len(resp.Chunk))
		}
		if from != "" && resp.Start != from {
			t.Errorf("start %q, want the from token %q", resp.Start, from)
		}
		got = append(got, bodiesOf(resp.Chunk)...)
		if resp.End == "" || pages > 20 {
			break
		}
		from = resp.End
	}
	slices.Reverse(got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("paging backwards gave %d messages:\n%v\nwant\n%v", len(got), got, want)
	}

	// Forwards from the beginning in pages of 9.
	got, from, pages = nil, "", 0
	first, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionForward, nil, 1)
	if err != nil || len(first.Chunk) != 1 || first.Chunk[0].Type != event.StateCreate {
		t.Fatalf("first event forwards: %v %v", first, err)
	}
	from = first.End
	for {
		resp, err := alice.Messages(ctx, roomID, from, "", mautrix.DirectionForward, &mautrix.FilterPart{Types: []event.Type{event.EventMessage}}, 9)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		got = append(got, bodiesOf(resp.Chunk)...)
		if resp.End == "" || pages > 20 {
			break
		}
		from = resp.End
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("paging forwards gave %d messages: %v", len(got), got)
	}

	// from/to bound a range.
	mid, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	bounded, err := alice.Messages(ctx, roomID, "", mid.End, mautrix.DirectionBackward, nil, 100)
	if err != nil || fmt.Sprint(bodiesOf(bounded.Chunk)) != fmt.Sprint(bodiesOf(mid.Chunk)) {
		t.Errorf("to token: %v, want %v (%v)", bodiesOf(bounded.Chunk), bodiesOf(mid.Chunk), err)
	}

	// Filters.
	filtered := func(f *mautrix.FilterPart) []*event.Event {
		t.Helper()
		resp, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, f, 100)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Chunk
	}
	for _, ev := range filtered(&mautrix.FilterPart{Senders: []id.UserID{bob.UserID}, Types: []event.Type{event.EventMessage}}) {
		if ev.Sender != bob.UserID || ev.Type != event.EventMessage {
			t.Errorf("senders filter let through %s from %s", ev.Type, ev.Sender)
		}
	}
	if got := len(filtered(&mautrix.FilterPart{Senders: []id.UserID{bob.UserID}, Types: []event.Type{event.EventMessage}})); got != 10 {
		t.Errorf("bob's messages: %d, want 10", got)
	}
	pings := filtered(&mautrix.FilterPart{Types: []event.Type{event.NewEventType("org.example.*")}})
	if len(pings) != 1 || pings[0].Content.Raw["n"] != float64(20) {
		t.Errorf("wildcard types filter: %v", pings)
	}
	for _, ev := range filtered(&mautrix.FilterPart{NotTypes: []event.Type{event.EventMessage, event.StateMember}}) {
		if ev.Type == event.EventMessage || ev.Type == event.StateMember {
			t.Errorf("not_types let through %s", ev.Type)
		}
	}
	if got := filtered(&mautrix.FilterPart{Limit: 3}); len(got) != 3 {
		t.Errorf("filter limit 3 gave %d events", len(got))
	}
	lazy, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, &mautrix.FilterPart{LazyLoadMembers: true, Senders: []id.UserID{bob.UserID}}, 5)
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	for _, ev := range lazy.State {
		if ev.Type == event.StateMember {
			members = append(members, ev.GetStateKey())
		}
	}
	if fmt.Sprint(members) != fmt.Sprint([]string{bob.UserID.String()}) {
		t.Errorf("lazy-loaded members = %v, want bob only", members)
	}
	for _, bad := range []map[string]string{{"dir": "x"}, {"dir": "b", "limit": "-1"}, {"dir": "b", "from": "garbage"}, {"dir": "b", "filter": "{nope"}} {
		var resp map[string]any
		_, err := alice.MakeRequest(ctx, "GET", alice.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "messages"}, bad), nil, &resp)
		if s, _ := matrixErr(err); s != 400 {
			t.Errorf("/messages %v: %v, want 400", bad, err)
		}
	}
}

func TestRoomUpgrade(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)

	for _, tc := range []struct{ from, to string }{{"10", "11"}, {"11", "12"}, {"12", "12"}} {
		t.Run(tc.from+"→"+tc.to, func(t *testing.T) {
			alias := "up" + tc.from + "to" + tc.to
			oldID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(tc.from), Preset: "public_chat",
				Name: "Upgradable", Topic: "old topic", RoomAliasName: alias})
			if _, err := bob.JoinRoomByID(ctx, oldID); err != nil {
				t.Fatal(err)
			}
			last := sendText(t, alice, oldID, "last words")

			var resp struct {
				ReplacementRoom id.RoomID `json:"replacement_room"`
			}
			_, err := bob.MakeRequest(ctx, "POST", bob.BuildClientURL("v3", "rooms", oldID, "upgrade"), map[string]string{"new_version": tc.to}, &resp)
			wantMatrixErr(t, err, 403, "M_FORBIDDEN")
			_, err = alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "rooms", oldID, "upgrade"), map[string]string{"new_version": "99"}, &resp)
			wantMatrixErr(t, err, 400, "M_UNSUPPORTED_ROOM_VERSION")
			if _, err := alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "rooms", oldID, "upgrade"), map[string]string{"new_version": tc.to}, &resp); err != nil {
				t.Fatal(err)
			}
			newID := resp.ReplacementRoom
			if newID == "" || newID == oldID {
				t.Fatalf("replacement_room %q", newID)
			}

			tomb := stateOf(t, bob, oldID, "m.room.tombstone", "")
			if tomb["replacement_room"] != newID.String() {
				t.Errorf("tombstone = %v", tomb)
			}
			create := stateOf(t, alice, newID, "m.room.create", "")
			pred, _ := create["predecessor"].(map[string]any)
			if create["room_version"] != tc.to || pred["room_id"] != oldID.String() {
				t.Errorf("new create = %v", create)
			}
			if tc.to != "12" && pred["event_id"] == nil {
				t.Errorf("predecessor lacks event_id for a v%s room: %v", tc.to, pred)
			}
			if eid, ok := pred["event_id"].(string); ok && eid != last.String() {
				// The last event before the upgrade began.
				t.Errorf("predecessor event_id = %s, want %s", eid, last)
			}
			for _, st := range []struct{ typ, field, want string }{
				{"m.room.name", "name", "Upgradable"}, {"m.room.topic", "topic", "old topic"},
				{"m.room.join_rules", "join_rule", "public"}, {"m.room.history_visibility", "history_visibility", "shared"},
			} {
				if got := stateOf(t, alice, newID, st.typ, "")[st.field]; got != st.want {
					t.Errorf("new room %s = %v, want %s", st.typ, got, st.want)
				}
			}
			// The old room is restricted: ordinary users may no longer speak or invite.
			pl := stateOf(t, alice, oldID, "m.room.power_levels", "")
			if ed, _ := pl["events_default"].(float64); ed < 50 {
				t.Errorf("old room events_default = %v", pl["events_default"])
			}
			if inv, _ := pl["invite"].(float64); inv < 50 {
				t.Errorf("old room invite = %v", pl["invite"])
			}
			_, err = bob.SendText(ctx, oldID, "still here?")
			wantMatrixErr(t, err, 403, "M_FORBIDDEN")
			// The alias moved, canonical alias with it.
			fullAlias := "#" + alias + ":localhost"
			var resolved mautrix.RespAliasResolve
			if err := n.Store.View(func(tx *store.Tx) error {
				rid, err := tx.Alias(fullAlias)
				resolved.RoomID = id.RoomID(rid)
				return err
			}); err != nil || resolved.RoomID != newID {
				t.Errorf("alias %s → %s, want %s (%v)", fullAlias, resolved.RoomID, newID, err)
			}
			if got := stateOf(t, alice, newID, "m.room.canonical_alias", "")["alias"]; got != fullAlias {
				t.Errorf("new room canonical alias = %v", got)
			}
			if got := stateOf(t, alice, oldID, "m.room.canonical_alias", "")["alias"]; got == fullAlias {
				t.Errorf("old room still claims canonical alias %v", got)
			}
			joined, err := bob.JoinRoom(ctx, fullAlias, nil)
			if err != nil || joined.RoomID != newID {
				t.Errorf("join by moved alias: %v %v", joined, err)
			}
			sendText(t, bob, newID, "made it")
		})
	}
}

func TestRoomHistoryVisibility(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)

	newRoom := func(visibility string) id.RoomID {
		return createRoomRaw(t, alice, map[string]any{"preset": "public_chat", "initial_state": []map[string]any{
			{"type": "m.room.history_visibility", "content": map[string]string{"history_visibility": visibility}},
		}})
	}
	visible := func(c *mautrix.Client, roomID id.RoomID) []string {
		t.Helper()
		resp, err := c.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatal(err)
		}
		return bodiesOf(resp.Chunk)
	}

	// joined: nothing from before the join.
	joinedRoom := newRoom("joined")
	early := sendText(t, alice, joinedRoom, "before bob")
	if _, err := bob.JoinRoomByID(ctx, joinedRoom); err != nil {
		t.Fatal(err)
	}
	sendText(t, alice, joinedRoom, "after bob")
	if got := visible(bob, joinedRoom); fmt.Sprint(got) != "[after bob]" {
		t.Errorf("joined visibility: bob sees %v", got)
	}
	_, err := bob.GetEvent(ctx, joinedRoom, early)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	_, err = bob.Context(ctx, joinedRoom, early, nil, 4)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	sync, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := bodiesOf(sync.Rooms.Join[joinedRoom].Timeline.Events); slices.Contains(got, "before bob") {
		t.Errorf("sync leaks pre-join history: %v", got)
	}

	// shared: everything, once joined.
	sharedRoom := newRoom("shared")
	early = sendText(t, alice, sharedRoom, "before bob")
	if _, err := bob.JoinRoomByID(ctx, sharedRoom); err != nil {
		t.Fatal(err)
	}
	if got := visible(bob, sharedRoom); fmt.Sprint(got) != "[before bob]" {
		t.Errorf("shared visibility: bob sees %v", got)
	}
	if ev, err := bob.GetEvent(ctx, sharedRoom, early); err != nil || bodyOf(ev) != "before bob" {
		t.Errorf("shared /event: %v %v", ev, err)
	}

	// After leaving: what was visible while joined, nothing after.
	sendText(t, alice, sharedRoom, "while bob")
	if _, err := bob.LeaveRoom(ctx, sharedRoom); err != nil {
		t.Fatal(err)
	}
	late := sendText(t, alice, sharedRoom, "after bob left")
	if got := visible(bob, sharedRoom); fmt.Sprint(got) != "[while bob before bob]" {
		t.Errorf("left user sees %v", got)
	}
	_, err = bob.GetEvent(ctx, sharedRoom, late)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	// Membership after the leave stays hidden, whatever point he asks about.
	if _, err := alice.InviteUser(ctx, sharedRoom, &mautrix.ReqInviteUser{UserID: "@zed:localhost"}); err != nil {
		t.Fatal(err)
	}
	now, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []string{"", now.NextBatch} {
		ms, err := bob.Members(ctx, sharedRoom, mautrix.ReqMembers{At: at})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms.Chunk {
			if m.GetStateKey() == "@zed:localhost" {
				t.Errorf("left user sees a later invite in /members (at=%q)", at)
			}
		}
	}
	_, err = bob.JoinedMembers(ctx, sharedRoom)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	fwd, err := bob.Messages(ctx, sharedRoom, "t0", "", mautrix.DirectionForward, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(bodiesOf(fwd.Chunk), "after bob left") {
		t.Errorf("left user pages forward into %v", bodiesOf(fwd.Chunk))
	}
	if st, err := bob.State(ctx, sharedRoom); err == nil {
		if m := st[event.StateMember][bob.UserID.String()]; m == nil || m.Content.AsMember().Membership != event.MembershipLeave {
			t.Errorf("left user's /state shows his membership as %v", m)
		}
	}

	// Never joined: nothing at all unless world_readable.
	carol := n.register(t, "carol")
	_, err = carol.Messages(ctx, sharedRoom, "", "", mautrix.DirectionBackward, nil, 10)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = carol.GetEvent(ctx, sharedRoom, early)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	readable := newRoom("world_readable")
	open := sendText(t, alice, readable, "for everyone")
	if got := visible(carol, readable); fmt.Sprint(got) != "[for everyone]" {
		t.Errorf("world_readable: carol sees %v", got)
	}
	if ev, err := carol.GetEvent(ctx, readable, open); err != nil || bodyOf(ev) != "for everyone" {
		t.Errorf("world_readable /event: %v %v", ev, err)
	}

	// invited: visible from the invite on.
	invited := newRoom("invited")
	sendText(t, alice, invited, "before invite")
	if _, err := alice.InviteUser(ctx, invited, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	sendText(t, alice, invited, "after invite")
	if _, err := carol.JoinRoomByID(ctx, invited); err != nil {
		t.Fatal(err)
	}
	if got := visible(carol, invited); fmt.Sprint(got) != "[after invite]" {
		t.Errorf("invited visibility: carol sees %v", got)
	}
}
