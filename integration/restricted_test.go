package integration

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// restrictedRoom has c create a public room (the allowed one) and a room of
// version whose join rule (restricted or knock_restricted) allows that
// room's members, as Complement's restricted-room tests set them up.
func restrictedRoom(t *testing.T, c *mautrix.Client, version, joinRule, via string) (allowed, restricted id.RoomID) {
	t.Helper()
	allowed = mustCreateRoom(t, c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "allowed"})
	restricted = mustCreateRoom(t, c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "restricted", RoomVersion: id.RoomVersion(version),
		InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: new(""), Content: event.Content{Raw: map[string]any{
			"join_rule": joinRule,
			"allow":     []any{map[string]any{"type": "m.room_membership", "room_id": allowed, "via": []string{via}}},
		}}}}})
	return allowed, restricted
}

// memberContent is userID's current m.room.member content in roomID as c
// reads it.
func memberContent(t *testing.T, c *mautrix.Client, roomID id.RoomID, userID id.UserID) map[string]any {
	t.Helper()
	return stateOf(t, c, roomID, "m.room.member", userID.String())
}

// TestRestrictedLocalJoin: in a restricted (v8+) or knock_restricted (v10+)
// room, a user of the same server joins once in the allowed room, the
// server naming a local member able to invite in
// join_authorised_via_users_server; a displayname change (join -> join)
// succeeds whatever the client puts in that key, which the server drops;
// after leaving the allowed room the join is refused again.
func TestRestrictedLocalJoin(t *testing.T) {
	for _, tc := range []struct{ version, rule string }{{"8", "restricted"}, {"10", "knock_restricted"}} {
		t.Run(tc.rule, func(t *testing.T) {
			n := startNode(t)
			alice, bob := n.register(t, "alice"), n.register(t, "bob")
			ctx := ctxT(t)
			allowed, room := restrictedRoom(t, alice, tc.version, tc.rule, "localhost")

			_, err := bob.JoinRoomByID(ctx, room)
			wantMatrixErr(t, err, 403, "M_FORBIDDEN")

			if _, err := bob.JoinRoomByID(ctx, allowed); err != nil {
				t.Fatal(err)
			}
			if _, err := bob.JoinRoomByID(ctx, room); err != nil {
				t.Fatalf("join as a member of the allowed room: %v", err)
			}
			if via := memberContent(t, alice, room, bob.UserID)["join_authorised_via_users_server"]; via != alice.UserID.String() {
				t.Fatalf("join authorised via %v, want %s", via, alice.UserID)
			}

			// join -> join needs no authorisation; the client's key is ignored.
			sk := bob.UserID.String()
			if _, err := bob.SendStateEvent(ctx, room, event.StateMember, sk, map[string]any{
				"membership": "join", "displayname": "Bobby", "join_authorised_via_users_server": "unused",
			}); err != nil {
				t.Fatalf("displayname change in a restricted room: %v", err)
			}
			got := memberContent(t, alice, room, bob.UserID)
			if got["displayname"] != "Bobby" {
				t.Fatalf("member content after the change: %v", got)
			}
			if _, has := got["join_authorised_via_users_server"]; has {
				t.Fatalf("join -> join kept join_authorised_via_users_server: %v", got)
			}

			if _, err := bob.LeaveRoom(ctx, room); err != nil {
				t.Fatal(err)
			}
			if _, err := bob.LeaveRoom(ctx, allowed); err != nil {
				t.Fatal(err)
			}
			_, err = bob.JoinRoomByID(ctx, room)
			wantMatrixErr(t, err, 403, "M_FORBIDDEN")
		})
	}
}

// TestRestrictedJoinUsesLocalInviter: a server already in a restricted
// room authorises its own user's join through a local member with the
// power to invite (not a creator: v11 and v12) rather than joining
// remotely through the room's creator (Complement's
// *LocalJoinNoCreatorsUsesPowerLevels).
func TestRestrictedJoinUsesLocalInviter(t *testing.T) {
	for _, version := range []string{"11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			ca := newRFCA(t)
			a, b := startRFNode(t, ca), startRFNode(t, ca)
			alice := &rfSyncer{c: a.register(t, "alice")}
			bob := &rfSyncer{c: b.register(t, "bob")}
			charlie := b.register(t, "charlie")
			ctx := ctxT(t)
			allowed, room := restrictedRoom(t, alice.c, version, "restricted", a.Name)

			if _, err := bob.c.JoinRoom(ctx, allowed.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
				t.Fatal(err)
			}
			if _, err := bob.c.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
				t.Fatalf("bob's remote restricted join: %v", err)
			}
			if via := memberContent(t, bob.c, room, bob.c.UserID)["join_authorised_via_users_server"]; via != alice.c.UserID.String() {
				t.Fatalf("bob's join authorised via %v, want %s", via, alice.c.UserID)
			}
			users := map[string]any{bob.c.UserID.String(): 50}
			if version != "12" {
				users[alice.c.UserID.String()] = 100
			}
			pl, err := alice.c.SendStateEvent(ctx, room, event.StatePowerLevels, "", map[string]any{"invite": 50, "users": users})
			if err != nil {
				t.Fatal(err)
			}
			bob.until(t, "the power levels", rfHasEvent("m.room.power_levels", func(ev *event.Event) bool { return ev.ID == pl.EventID }))

			if _, err := charlie.JoinRoom(ctx, allowed.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
				t.Fatal(err)
			}
			if _, err := charlie.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err != nil {
				t.Fatalf("charlie's local restricted join: %v", err)
			}
			if via := memberContent(t, bob.c, room, charlie.UserID)["join_authorised_via_users_server"]; via != bob.c.UserID.String() {
				t.Fatalf("charlie's join authorised via %v, want the local %s", via, bob.c.UserID)
			}
		})
	}
}

// TestRestrictedJoinThroughOtherServer: a server in a restricted room with
// no local member able to invite joins its user through a server that has
// one (make_join/send_join for a room it already holds), and the other
// server accepts the join; by default (invite 50) a plain member may not
// invite.
func TestRestrictedJoinThroughOtherServer(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	charlie := &rfSyncer{c: a.register(t, "charlie")}
	alice := &rfSyncer{c: b.register(t, "alice")}
	bob := b.register(t, "bob")
	ctx := ctxT(t)
	allowed, room := restrictedRoom(t, charlie.c, "10", "restricted", a.Name)

	if _, err := charlie.c.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: alice.c.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("alice accepts the invite: %v", err)
	}
	_, err := alice.c.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: bob.UserID})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")

	_, err = bob.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}})
	if err == nil {
		t.Fatal("bob, outside the allowed room, joined")
	}
	if _, err := bob.JoinRoom(ctx, allowed.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err != nil {
		t.Fatalf("bob's join through A: %v", err)
	}
	charlie.until(t, "bob's join", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.RoomID == room && ev.GetStateKey() == bob.UserID.String() && ev.Content.Raw["membership"] == "join" &&
			ev.Content.Raw["join_authorised_via_users_server"] == charlie.c.UserID.String()
	}))
	if m := memberContent(t, alice.c, room, bob.UserID)["membership"]; m != "join" {
		t.Fatalf("B sees bob's membership %v, want join", m)
	}
}

// TestRestrictedJoinFailOver: a server in the room with no member able to
// invite cannot grant a restricted join, and a join naming only it fails
// (not retried through the room ID's server, which the client did not
// name); naming both, the join succeeds through the second, authorised
// by its inviter (Complement's TestRestrictedRoomsRemoteJoinFailOver).
func TestRestrictedJoinFailOver(t *testing.T) {
	ca := newRFCA(t)
	a, b, c := startRFNode(t, ca), startRFNode(t, ca), startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	bob := &rfSyncer{c: b.register(t, "bob")}
	charlie := c.register(t, "charlie")
	ctx := ctxT(t)
	allowed, room := restrictedRoom(t, alice.c, "10", "restricted", a.Name)
	if _, err := alice.c.SendStateEvent(ctx, room, event.StatePowerLevels, "", map[string]any{
		"invite": 100, "users": map[string]any{alice.c.UserID.String(): 100},
	}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []id.RoomID{allowed, room} {
		if _, err := bob.c.JoinRoom(ctx, r.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joins %s: %v", r, err)
		}
	}
	if _, err := charlie.JoinRoom(ctx, allowed.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := charlie.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err == nil {
		t.Fatal("charlie joined through B, which has no member able to invite")
	}
	if _, err := charlie.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name, a.Name}}); err != nil {
		t.Fatalf("charlie's join through B then A: %v", err)
	}
	isJoin := func(ev *event.Event) bool {
		return ev.RoomID == room && ev.GetStateKey() == charlie.UserID.String() && ev.Content.Raw["membership"] == "join" &&
			ev.Content.Raw["join_authorised_via_users_server"] == alice.c.UserID.String()
	}
	bob.until(t, "charlie's join", rfHasEvent("m.room.member", isJoin))

	// Bob may invite now, but leaves the allowed room: B cannot tell
	// whether charlie is in it. C, having left the room, joins as a
	// stranger would, through the servers named only.
	rfPromote(t, alice, bob, room, 100)
	if _, err := charlie.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	isLeave := func(ev *event.Event) bool {
		return ev.RoomID == room && ev.GetStateKey() == charlie.UserID.String() && ev.Content.Raw["membership"] == "leave"
	}
	alice.until(t, "charlie's leave", rfHasEvent("m.room.member", isLeave))
	bob.until(t, "charlie's leave", rfHasEvent("m.room.member", isLeave))
	if _, err := bob.c.LeaveRoom(ctx, allowed); err != nil {
		t.Fatal(err)
	}
	if _, err := charlie.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err == nil {
		t.Fatal("charlie rejoined through B, which cannot see the allowed room")
	}
	bob.seen = nil
	if _, err := charlie.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name, a.Name}}); err != nil {
		t.Fatalf("charlie's rejoin through B then A: %v", err)
	}
	bob.until(t, "charlie's rejoin", rfHasEvent("m.room.member", isJoin))
}

// TestRestrictedJoinNoAllowedRoom: a knock_restricted room that allows no
// room (knocking only) refuses a local join with 403, though another
// server is in the room: no server could authorise it, so none is asked
// (Complement's TestKnockingInMSC3787Room).
func TestRestrictedJoinNoAllowedRoom(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice, carol := a.register(t, "alice"), a.register(t, "carol")
	bob := b.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
		InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: new(""), Content: event.Content{Raw: map[string]any{"join_rule": "knock_restricted"}}}}})
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob accepts the invite: %v", err)
	}
	_, err := carol.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
}

// TestRestrictedJoinWhileEventsInFlight: the power to invite reaches the
// joining user's server, and the user's join of the allowed room the
// resident server, only after a delay (transactions held 400 ms each
// way); a restricted join asked at once, which neither server can
// authorise yet, succeeds once the events have arrived, not refused
// (Complement's *LocalJoinNoCreatorsUsesPowerLevels raced so).
func TestRestrictedJoinWhileEventsInFlight(t *testing.T) {
	ca := newRFCA(t)
	var slow atomic.Bool
	hold := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if slow.Load() && r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
				time.Sleep(400 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}
	a, b := startRFNodeWrapped(t, ca, hold), startRFNodeWrapped(t, ca, hold)
	alice := &rfSyncer{c: a.register(t, "alice")}
	bob := &rfSyncer{c: b.register(t, "bob")}
	charlie := b.register(t, "charlie")
	ctx := ctxT(t)
	allowed, room := restrictedRoom(t, alice.c, "11", "restricted", a.Name)
	for _, r := range []id.RoomID{allowed, room} {
		if _, err := bob.c.JoinRoom(ctx, r.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joins %s: %v", r, err)
		}
	}

	slow.Store(true)
	if _, err := alice.c.SendStateEvent(ctx, room, event.StatePowerLevels, "", map[string]any{
		"invite": 50, "users": map[string]any{alice.c.UserID.String(): 100, bob.c.UserID.String(): 50},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := charlie.JoinRoom(ctx, allowed.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := charlie.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err != nil {
		t.Fatalf("charlie's restricted join while the events travel: %v", err)
	}
	if via := memberContent(t, charlie, room, charlie.UserID)["join_authorised_via_users_server"]; via == nil {
		t.Fatal("charlie's join names no authorising user")
	}
}
