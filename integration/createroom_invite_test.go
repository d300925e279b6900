package integration

import (
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestCreateRoomInvitesRemoteUser: createRoom's invite list reaches a user
// of another server (federation /invite), whose sync shows the invite.
// Once he joins, his device_lists.changed lists the room's members and
// himself, as Synapse's does (Complement's
// TestDeviceListsUpdateOverFederation).
func TestCreateRoomInvitesRemoteUser(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice, bob := a.register(t, "alice"), b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	since := ""
	waitFor(t, 20*time.Second, "bob's invite", func() bool {
		r, err := bob.SyncRequest(ctxT(t), 500, since, "", false, "")
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		since = r.NextBatch
		_, ok := r.Rooms.Invite[roomID]
		return ok
	})
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob accepts: %v", err)
	}
	r, err := bob.SyncRequest(ctxT(t), 0, since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	changed := slices.Clone(r.DeviceLists.Changed)
	slices.Sort(changed)
	want := []id.UserID{alice.UserID, bob.UserID}
	slices.Sort(want)
	if !slices.Equal(changed, want) {
		t.Fatalf("bob's device_lists.changed after joining = %v, want %v", changed, want)
	}
}

// TestCreateRoomInvitePowerByPreset: as in Synapse, inviting needs power
// 50 in a public_chat room (a plain member may not), and 0 in a
// private_chat one (any member may).
func TestCreateRoomInvitePowerByPreset(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, "alice"), n.register(t, "bob"), n.register(t, "carol")
	ctx := ctxT(t)
	for _, tc := range []struct {
		preset string
		want   float64
	}{{"public_chat", 50}, {"private_chat", 0}} {
		roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: tc.preset, Invite: []id.UserID{bob.UserID}})
		if got := stateOf(t, alice, roomID, "m.room.power_levels", "")["invite"]; got != tc.want {
			t.Fatalf("%s: invite power %v, want %v", tc.preset, got, tc.want)
		}
		if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		_, err := bob.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: carol.UserID})
		if tc.want > 0 {
			wantMatrixErr(t, err, 403, "M_FORBIDDEN")
		} else if err != nil {
			t.Fatalf("%s: a member's invite: %v", tc.preset, err)
		}
	}
}

// TestRejoinRoomServerLeft: alice on B is banned from bob's room on A (B
// then has no member in it), unbanned and invited again: her join goes
// through A, not against B's stale copy of the room, where she is still
// banned (Complement's TestUnbanViaInvite).
func TestRejoinRoomServerLeft(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	bob := &rfSyncer{c: a.register(t, "bob")}
	alice := b.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, bob.c, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := alice.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	member := func(m string) func(*mautrix.RespSync) bool {
		return func(r *mautrix.RespSync) bool {
			for _, rooms := range []map[id.RoomID]*mautrix.SyncLeftRoom{r.Rooms.Leave} {
				if lr, ok := rooms[roomID]; ok {
					for _, ev := range lr.Timeline.Events {
						if ev.GetStateKey() == alice.UserID.String() && ev.Content.Raw["membership"] == m {
							return true
						}
					}
				}
			}
			_, invited := r.Rooms.Invite[roomID]
			return m == "invite" && invited
		}
	}
	if _, err := bob.c.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: alice.UserID}); err != nil {
		t.Fatal(err)
	}
	syncUntil(t, alice, "her ban", member("ban"))
	if _, err := bob.c.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: alice.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: alice.UserID}); err != nil {
		t.Fatal(err)
	}
	syncUntil(t, alice, "the new invite", member("invite"))
	bob.until(t, "alice's invite", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.GetStateKey() == alice.UserID.String() && ev.Content.Raw["membership"] == "invite"
	}))
	bob.seen = nil
	if _, err := alice.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("alice's join after the unban and invite: %v", err)
	}
	bob.until(t, "alice's join", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.GetStateKey() == alice.UserID.String() && ev.Content.Raw["membership"] == "join"
	}))
}
