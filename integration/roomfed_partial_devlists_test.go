package integration

import (
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"edge/edge/roomfed"
	"edge/edge/store"
)

// TestRoomFedPartialMissedDeviceListsLeft: bob on B joins a room of A
// that carol on C is in, with partial state, B taking A for the only
// server in the room. bob renames his device: C misses the update. carol
// then joins a room of bob's and leaves A's room, all before B's resync
// ends: the full state no longer has C in the room, but C was in it when
// bob renamed his device, so B still sends C the missed update, and
// carol's sync lists bob (Complement's MSC3902 "Device list updates reach
// incorrectly absent servers once partial state join completes even though
// remote server left room").
func TestRoomFedPartialMissedDeviceListsLeft(t *testing.T) {
	roomfed.PartialResyncDelay = 10 * time.Second
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	a, b, c := startRFNode(t, ca), startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "devices", RoomVersion: "12"})
	carol := c.register(t, "carol")
	if _, err := carol.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("carol joins: %v", err)
	}
	bob := b.register(t, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if err := b.Store.Write(func(tx *store.Tx) error {
		ps, err := tx.PartialState(roomID.String())
		if err != nil {
			return err
		}
		ps.Servers = []string{a.Name}
		tx.SetPartialState(ps)
		return nil
	}); err != nil {
		t.Fatalf("B's room is not partial after the join: %v", err)
	}
	waitFor(t, 10*time.Second, "bob's join on C", func() bool {
		ev, _ := rfStateEvent(t, c, roomID, "m.room.member", bob.UserID.String())
		return ev != nil && ev.Membership() == "join"
	})

	body := map[string]string{"display_name": "bob's renamed device"}
	if _, err := bob.MakeRequest(ctxT(t), "PUT", bob.BuildClientURL("v3", "devices", bob.DeviceID), body, nil); err != nil {
		t.Fatalf("bob renames his device: %v", err)
	}

	// carol shares a room of bob's (so that she may hear of his devices)
	// and leaves the partial-state room.
	other := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "other"})
	if _, err := carol.JoinRoom(ctxT(t), other.String(), &mautrix.ReqJoinRoom{Via: []string{b.Name}}); err != nil {
		t.Fatalf("carol joins bob's room: %v", err)
	}
	if _, err := carol.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("carol leaves: %v", err)
	}
	waitFor(t, 10*time.Second, "carol's leave on B", func() bool {
		ev, _ := rfStateEvent(t, b, roomID, "m.room.member", carol.UserID.String())
		return ev != nil && ev.Membership() == "leave"
	})
	// carol's sync past what her joining bob's room told her of bob.
	since := partialSync(t, carol, "", "", 0).NextBatch
	for quiet := false; !quiet; {
		r := partialSync(t, carol, since, "", 1500)
		quiet = !slices.Contains(r.DeviceLists.Changed, bob.UserID.String())
		since = r.NextBatch
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's resync ended before the test was set up")
	}

	waitFor(t, 30*time.Second, "B's full state", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	waitFor(t, 15*time.Second, "bob in carol's device_lists.changed after the resync", func() bool {
		r := partialSync(t, carol, since, "", 500)
		since = r.NextBatch
		return slices.Contains(r.DeviceLists.Changed, bob.UserID.String())
	})
}
