package integration

import (
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

func TestRegisterCreateSendSync(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)

	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "hello", Preset: "public_chat"})
	sent, err := alice.SendText(ctx, roomID, "first message")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	jr, ok := resp.Rooms.Join[roomID]
	if !ok {
		t.Fatalf("room %s missing from initial sync", roomID)
	}
	var found bool
	for _, ev := range jr.Timeline.Events {
		if ev.ID == sent.EventID {
			found = true
			_ = ev.Content.ParseRaw(ev.Type)
			if ev.Content.AsMessage().Body != "first message" {
				t.Errorf("body = %q", ev.Content.AsMessage().Body)
			}
			if ev.Unsigned.TransactionID == "" {
				t.Error("sender's own event lacks unsigned.transaction_id")
			}
		}
	}
	if !found {
		t.Fatalf("sent event %s not in timeline", sent.EventID)
	}

	// Bob joins by room ID and sees alice's message in his first sync.
	bob := n.register(t, "bob")
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	bresp, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ev := range bresp.Rooms.Join[roomID].State.Events {
		if ev.Type.Type == event.StateRoomName.Type {
			_ = ev.Content.ParseRaw(event.StateRoomName)
			names = append(names, ev.Content.AsRoomName().Name)
		}
	}
	for _, ev := range bresp.Rooms.Join[roomID].Timeline.Events {
		if ev.Type.Type == event.StateRoomName.Type {
			_ = ev.Content.ParseRaw(event.StateRoomName)
			names = append(names, ev.Content.AsRoomName().Name)
		}
	}
	if len(names) != 1 || names[0] != "hello" {
		t.Errorf("room name seen by bob = %v", names)
	}

	// Unknown room: forbidden, with the right errcode.
	_, err = bob.SendText(ctx, "!nope:localhost", "x")
	var httpErr mautrix.HTTPError
	if !errors.As(err, &httpErr) || httpErr.RespError == nil || httpErr.RespError.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("send to unknown room: %v", err)
	}
}
