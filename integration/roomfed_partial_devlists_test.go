package integration

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"edge/edge/room"
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
	_, b, c, _, carol, bob, roomID := rfPartialCHidden(t, 10*time.Second)
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

// TestRoomFedPartialLeaveAfterWrongKick: derek (on C) is made a moderator
// of A's room and leaves; carol (on C) stays. bob on B joins with partial
// state, and B accepts a kick of carol forged as derek (citing his join:
// the partial state lacks his leave). carol's own leave after the kick,
// citing her join, is accepted too: B resolves the partial state's entries
// against the event's auth events, as Synapse does, so the wrong kick does
// not reject it (Complement's MSC3902 "Device list updates reach
// incorrectly kicked servers once partial state join completes even though
// remote server left room" sends such a leave). Once the resync ends the
// kick is rejected and carol's leave stands.
func TestRoomFedPartialLeaveAfterWrongKick(t *testing.T) {
	mr := newRFModRoom(t, "kick")
	a, b, c, derek, carol, roomID := mr.a, mr.b, mr.c, mr.derek, mr.carol, mr.roomID
	derekID, carolID := derek.c.UserID.String(), carol.c.UserID.String()
	var version string
	var kickTmpl, leaveTmpl json.RawMessage
	leave, _ := json.Marshal(map[string]string{"membership": "leave"})
	if err := c.Store.View(func(tx *store.Tx) error {
		var err error
		if version, kickTmpl, err = c.Rooms.Template(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &carolID, Sender: derekID, Content: leave}); err != nil {
			return err
		}
		_, leaveTmpl, err = c.Rooms.Template(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &carolID, Sender: carolID, Content: leave})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := derek.c.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("derek leaves: %v", err)
	}
	waitFor(t, 10*time.Second, "derek's leave on A", func() bool {
		ev, _ := rfStateEvent(t, a, roomID, "m.room.member", derekID)
		return ev != nil && ev.Membership() == "leave"
	})

	bob := b.register(t, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's room is not partial after the join")
	}
	bobJoin, _ := rfStateEvent(t, b, roomID, "m.room.member", bob.UserID.String())
	forge := func(tmpl json.RawMessage, prev string, depth int64) (json.RawMessage, string) {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(string(tmpl)))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		m["prev_events"], m["depth"] = []string{prev}, depth
		raw, _ := json.Marshal(m)
		pdu, evID, err := c.Rooms.SignPDU(version, raw)
		if err != nil {
			t.Fatal(err)
		}
		return pdu, evID
	}
	// The kick cites derek's join but not carol's (as Complement's does):
	// her join is then no auth event of the kick, and resolving carol's
	// leave against her join keeps her join after the kick.
	carolJoin, _ := rfStateEvent(t, c, roomID, "m.room.member", carolID)
	var km map[string]any
	if err := json.Unmarshal(kickTmpl, &km); err != nil {
		t.Fatal(err)
	}
	var auth []string
	for _, id := range km["auth_events"].([]any) {
		if id.(string) != carolJoin.ID {
			auth = append(auth, id.(string))
		}
	}
	if len(auth) != len(km["auth_events"].([]any))-1 {
		t.Fatalf("the kick's auth events %v do not cite carol's join %s", km["auth_events"], carolJoin.ID)
	}
	km["auth_events"] = auth
	kickTmpl, _ = json.Marshal(km)
	kick, kickID := forge(kickTmpl, bobJoin.ID, bobJoin.Depth+1)
	left, leftID := forge(leaveTmpl, kickID, bobJoin.Depth+2)
	h := &hostile{t: t, a: b, b: c, roomID: roomID}
	if verdict := h.send(kick, kickID); verdict != "" {
		t.Fatalf("B refused derek's kick while partial: %q", verdict)
	}
	if flags, ok := rfStoredFlags(b, kickID); !ok || flags&store.FlagRejected != 0 {
		t.Fatalf("while partial, derek's kick: stored %v, flags %v; want accepted", ok, flags)
	}
	if verdict := h.send(left, leftID); verdict != "" {
		t.Fatalf("B refused carol's leave while partial: %q", verdict)
	}
	if flags, ok := rfStoredFlags(b, leftID); !ok || flags&(store.FlagRejected|store.FlagSoftFailed) != 0 || !roomIsPartial(t, b.Store, roomID) {
		t.Fatalf("while partial, carol's leave after the kick: stored %v, flags %v; want accepted", ok, flags)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", carolID); ev == nil || ev.ID != leftID {
		t.Fatalf("while partial B's state has carol as %v; want her own leave", ev)
	}

	waitFor(t, 30*time.Second, "B's full state", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	if flags, _ := rfStoredFlags(b, kickID); flags&store.FlagRejected == 0 {
		t.Errorf("after the resync derek's kick has flags %v; want rejected", flags)
	}
	if flags, _ := rfStoredFlags(b, leftID); flags&store.FlagRejected != 0 {
		t.Errorf("after the resync carol's leave has flags %v; want accepted", flags)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", carolID); ev == nil || ev.ID != leftID {
		t.Errorf("after the resync B's state has carol as %v; want her own leave", ev)
	}
}
