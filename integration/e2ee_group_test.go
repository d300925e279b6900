package integration

import (
	"fmt"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// e2eeGroupRoom makes an encrypted private room of owner's that every
// member joined.
func e2eeGroupRoom(t testing.TB, owner *mautrix.Client, members ...*mautrix.Client) id.RoomID {
	t.Helper()
	var invite []id.UserID
	for _, m := range members {
		invite = append(invite, m.UserID)
	}
	roomID := mustCreateRoom(t, owner, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		Invite: invite,
		InitialState: []*event.Event{{
			Type:    event.StateEncryption,
			Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
		}},
	})
	for _, m := range members {
		if _, err := m.JoinRoomByID(ctxT(t), roomID); err != nil {
			t.Fatalf("%s joins: %v", m.UserID, err)
		}
	}
	return roomID
}

// sessionOf is the megolm session ID of an encrypted event d has seen.
func (d *e2eeDevice) sessionOf(t testing.TB, eventID id.EventID) id.SessionID {
	t.Helper()
	ev := d.events[eventID]
	if ev == nil {
		t.Fatalf("%s has not seen %s", d.DeviceID, eventID)
	}
	_ = ev.Content.ParseRaw(ev.Type)
	return ev.Content.AsEncrypted().SessionID
}

// TestE2EEThreeUsers: alice, bob and carol share an encrypted room, each
// on mautrix's OlmMachine. A message from each decrypts on the other two
// (and on the sender); a second round reuses the megolm sessions without
// any to-device traffic. When carol leaves, alice and bob find her in
// device_lists.left, alice's next message is under a new session, bob
// decrypts it, and carol is sent no key for it.
func TestE2EEThreeUsers(t *testing.T) {
	n := startNode(t)
	aliceC, bobC, carolC := n.register(t, "alice"), n.register(t, "bob"), n.register(t, "carol")
	devs := []*e2eeDevice{newE2EEDevice(t, aliceC), newE2EEDevice(t, bobC), newE2EEDevice(t, carolC)}
	alice, bob, carol := devs[0], devs[1], devs[2]
	roomID := e2eeGroupRoom(t, aliceC, bobC, carolC)
	for _, d := range devs {
		d.sync(t)
	}
	users := []id.UserID{alice.UserID, bob.UserID, carol.UserID}

	firstSession := map[id.UserID]id.SessionID{}
	for round := 1; round <= 2; round++ {
		for _, sender := range devs {
			body := fmt.Sprintf("round %d from %s", round, sender.UserID.Localpart())
			evID := sender.sendEncrypted(t, roomID, users, body)
			for _, d := range devs {
				resp := d.sync(t)
				if round == 2 && d != sender && len(resp.ToDevice.Events) != 0 {
					t.Errorf("round 2: %s got %d to-device events; the sessions were already shared", d.UserID, len(resp.ToDevice.Events))
				}
				if got, err := d.decrypt(t, evID); err != nil || got != body {
					t.Fatalf("%s decrypts %s's round %d message: %q, %v", d.UserID, sender.UserID, round, got, err)
				}
			}
			sess := bob.sessionOf(t, evID)
			if round == 1 {
				firstSession[sender.UserID] = sess
			} else if sess != firstSession[sender.UserID] {
				t.Errorf("%s started a new session in round 2 with nobody leaving", sender.UserID)
			}
		}
	}
	// Each room key was claimed through one of the recipient's one-time keys.
	for _, d := range devs {
		if got := d.sync(t).DeviceOTKCount.SignedCurve25519; got < 48 {
			t.Errorf("%s has %d one-time keys left after two claims (its client tops up to 50)", d.UserID, got)
		}
	}

	// Carol leaves.
	alice.lists, bob.lists = mautrix.DeviceLists{}, mautrix.DeviceLists{}
	if _, err := carolC.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	carol.sync(t)
	for _, d := range []*e2eeDevice{alice, bob} {
		d.sync(t)
		if !slices.Contains(d.lists.Left, carol.UserID) || slices.Contains(d.lists.Changed, carol.UserID) {
			t.Errorf("%s after carol left: left %v, changed %v", d.UserID, d.lists.Left, d.lists.Changed)
		}
	}
	after := alice.sendEncrypted(t, roomID, []id.UserID{alice.UserID, bob.UserID}, "carol has gone")
	if resp := carol.sync(t); len(resp.ToDevice.Events) != 0 {
		t.Errorf("carol was sent %d to-device events after leaving", len(resp.ToDevice.Events))
	}
	bob.sync(t)
	if got, err := bob.decrypt(t, after); err != nil || got != "carol has gone" {
		t.Fatalf("bob decrypts after carol left: %q, %v", got, err)
	}
	if bob.sessionOf(t, after) == firstSession[alice.UserID] {
		t.Error("alice kept her megolm session after carol left")
	}
	// Carol cannot read the room any more, so cannot even try.
	if _, err := carolC.GetEvent(ctxT(t), roomID, after); err == nil {
		t.Error("carol fetched an event sent after she left")
	}
}
