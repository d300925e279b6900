package integration

import (
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
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
