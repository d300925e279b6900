package integration

import (
	"maps"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"edge/edge/config"
)

// TestRoomFedJoinStreamedChunks: a full join of a room whose send_join
// answer spans several storage chunks (the answer is read as a stream,
// its events checked as they arrive and stored a chunk per transaction)
// leaves the joiner with exactly the resident's state,, and the
// room works afterwards.
func TestRoomFedJoinStreamedChunks(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca)
	b := startRFNode(t, ca, func(c *config.Config) { c.Federation.FasterJoins = false })
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	fillState(t, a, roomID, 4500) // over two chunks of 2,000
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("join: %v", err)
	}
	waitFor(t, 30*time.Second, "both servers to hold the same state", func() bool {
		sa, _ := rfRoomSnapshot(t, a, roomID)
		sb, _ := rfRoomSnapshot(t, b, roomID)
		return len(sa) == 4500+6 && maps.Equal(sa, sb)
	})
	members, err := bob.JoinedMembers(ctxT(t), roomID)
	if err != nil || len(members.Joined) != 4502 {
		t.Fatalf("bob sees %d joined members (%v), want 4502", len(members.Joined), err)
	}
	if _, err := bob.SendText(ctxT(t), roomID, "hello from the streamed join"); err != nil {
		t.Fatal(err)
	}
	as := &rfSyncer{c: alice}
	as.until(t, "bob's message", rfHasEvent("m.room.message", func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.Content.Raw["body"] == "hello from the streamed join"
	}))
}
