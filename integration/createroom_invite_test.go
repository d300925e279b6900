package integration

import (
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestCreateRoomInvitesRemoteUser: createRoom's invite list reaches a user
// of another server (federation /invite), whose sync shows the invite.
func TestCreateRoomInvitesRemoteUser(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice, bob := a.register(t, "alice"), b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	syncUntil(t, bob, "the invite", func(r *mautrix.RespSync) bool {
		_, ok := r.Rooms.Invite[roomID]
		return ok
	})
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob accepts: %v", err)
	}
}
