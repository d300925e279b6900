package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// rfRoomsSync syncs c from since until ok holds for one /sync answer's
// rooms and returns that answer.
func rfRoomsSync(t *testing.T, c *mautrix.Client, since, what string, ok func(*mautrix.RespSync) bool) *mautrix.RespSync {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := c.SyncRequest(ctxT(t), 2000, since, "", false, "")
		if err != nil {
			t.Fatalf("%s sync: %v", c.UserID, err)
		}
		if ok(resp) {
			return resp
		}
		since = resp.NextBatch
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s", c.UserID, what)
		}
	}
}

// rfStripped finds an event of type and state key in an invite_state.
func rfStripped(evs []*event.Event, evType, stateKey string) *event.Event {
	for _, ev := range evs {
		if ev.Type.Type == evType && ev.GetStateKey() == stateKey {
			return ev
		}
	}
	return nil
}

// rfMembership is userID's membership in roomID as c's server sees it.
func rfMembership(t *testing.T, c *mautrix.Client, roomID id.RoomID, userID id.UserID) string {
	t.Helper()
	var m struct {
		Membership string `json:"membership"`
	}
	if err := c.StateEvent(ctxT(t), roomID, event.StateMember, userID.String(), &m); err != nil {
		return ""
	}
	return m.Membership
}

// TestRoomFedInviteJoinAndChat: alice@A invites bob@B; B countersigns the
// invite, bob's /sync shows the room under invite with its name in the
// invite_state, A stores the invite with B's signature; bob joins through
// the inviter's server (room version 12 IDs name no server) and they chat.
func TestRoomFedInviteJoinAndChat(t *testing.T) {
	for _, v := range []string{"10", "12"} {
		t.Run("v"+v, func(t *testing.T) { testInviteJoinAndChat(t, v) })
	}
}

func testInviteJoinAndChat(t *testing.T, version string) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	bob := &rfSyncer{c: b.register(t, "bob")}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "invited room", RoomVersion: id.RoomVersion(version)})
	first := rfRoomsSync(t, bob.c, "", "an initial sync", func(*mautrix.RespSync) bool { return true })

	if _, err := alice.c.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: bob.c.UserID}); err != nil {
		t.Fatalf("alice invites bob@B: %v", err)
	}
	resp := rfRoomsSync(t, bob.c, first.NextBatch, "the invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })
	inv := resp.Rooms.Invite[roomID].State.Events
	name := rfStripped(inv, "m.room.name", "")
	if name == nil || name.Content.Raw["name"] != "invited room" {
		t.Fatalf("invite_state has no room name: %+v", inv)
	}
	self := rfStripped(inv, "m.room.member", bob.c.UserID.String())
	if self == nil || self.Content.Raw["membership"] != "invite" || self.Sender != alice.c.UserID {
		t.Fatalf("invite_state lacks bob's invite from alice: %+v", inv)
	}
	if rfStripped(inv, "m.room.create", "") == nil {
		t.Fatalf("invite_state lacks the create event: %+v", inv)
	}
	// An initial sync shows the invite too.
	if r := rfRoomsSync(t, bob.c, "", "an initial sync", func(*mautrix.RespSync) bool { return true }); r.Rooms.Invite[roomID] == nil {
		t.Fatal("an initial sync does not show the invite")
	}

	// A stored the invite in the room, with B's signature on it.
	isInvite := func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == bob.c.UserID.String() && ev.Content.Raw["membership"] == "invite"
	}
	alice.until(t, "bob's invite", rfHasEvent("m.room.member", isInvite))
	var inviteID id.EventID
	for _, ev := range alice.seen {
		if ev.Type == event.StateMember && isInvite(ev) {
			inviteID = ev.ID
		}
	}
	var sigs map[string]json.RawMessage
	_ = a.Store.View(func(tx *store.Tx) error {
		ev, err := a.Rooms.EventByID(tx, inviteID.String())
		if err != nil {
			t.Errorf("the invite %s is not stored on A: %v", inviteID, err)
			return nil
		}
		var p struct {
			Signatures map[string]json.RawMessage `json:"signatures"`
		}
		_ = json.Unmarshal(ev.Raw, &p)
		sigs = p.Signatures
		return nil
	})
	if sigs[b.Name] == nil || sigs[a.Name] == nil {
		t.Fatalf("A's invite is signed by %v, want both %s and %s", sigs, a.Name, b.Name)
	}

	// bob accepts: no via, so the join goes through the inviter's server.
	if _, err := bob.c.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatalf("bob accepts the invite: %v", err)
	}
	isBobJoin := func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == bob.c.UserID.String() && ev.Content.Raw["membership"] == "join"
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", isBobJoin))
	bob.until(t, "his own join", rfHasEvent("m.room.member", isBobJoin))
	if r := rfRoomsSync(t, bob.c, "", "an initial sync", func(*mautrix.RespSync) bool { return true }); r.Rooms.Invite[roomID] != nil || r.Rooms.Join[roomID] == nil {
		t.Fatalf("after joining, bob's sync has the room under invite: %v, under join: %v", r.Rooms.Invite[roomID] != nil, r.Rooms.Join[roomID] != nil)
	}

	if _, err := bob.c.SendText(ctxT(t), roomID, "hi alice"); err != nil {
		t.Fatalf("bob sends: %v", err)
	}
	if _, err := alice.c.SendText(ctxT(t), roomID, "hi bob"); err != nil {
		t.Fatalf("alice sends: %v", err)
	}
	both := func(evs []*event.Event) bool {
		got := strings.Join(rfBodies(evs, roomID), "|")
		return strings.Contains(got, "hi alice") && strings.Contains(got, "hi bob")
	}
	alice.until(t, "both messages", both)
	bob.until(t, "both messages", both)
}

// TestRoomFedLeaveRejectsInvite: carol@B rejects alice's invite to a room
// B is not in; B leaves through A with make_leave/send_leave, A's state
// shows carol's leave, and carol's /sync moves the room from invite to
// leave.
func TestRoomFedLeaveRejectsInvite(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	carol := b.register(t, "carol")
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "rejected", RoomVersion: "12"})
	if _, err := alice.c.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
		t.Fatalf("alice invites carol@B: %v", err)
	}
	resp := rfRoomsSync(t, carol, "", "the invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })

	if _, err := carol.LeaveRoom(ctxT(t), roomID, &mautrix.ReqLeave{Reason: "no thanks"}); err != nil {
		t.Fatalf("carol rejects the invite: %v", err)
	}
	isLeave := func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == carol.UserID.String() && ev.Content.Raw["membership"] == "leave"
	}
	alice.until(t, "carol's leave", rfHasEvent("m.room.member", isLeave))
	if m := rfMembership(t, alice.c, roomID, carol.UserID); m != "leave" {
		t.Fatalf("A's state has carol %q, want leave", m)
	}
	left := rfRoomsSync(t, carol, resp.NextBatch, "the rejection", func(r *mautrix.RespSync) bool { return r.Rooms.Leave[roomID] != nil })
	if left.Rooms.Invite[roomID] != nil {
		t.Fatal("the rejected room is still under invite")
	}
	tl := left.Rooms.Leave[roomID].Timeline.Events
	if len(tl) != 1 || tl[0].Content.Raw["membership"] != "leave" || tl[0].Content.Raw["reason"] != "no thanks" {
		t.Fatalf("left room timeline %+v, want carol's leave", tl)
	}
	if r := rfRoomsSync(t, carol, "", "an initial sync", func(*mautrix.RespSync) bool { return true }); r.Rooms.Invite[roomID] != nil {
		t.Fatal("an initial sync still shows the rejected invite")
	}
	// Leaving again is refused like any room the user is not in.
	_, err := carol.LeaveRoom(ctxT(t), roomID)
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusNotFound {
		t.Fatalf("leaving a rejected room again: %v, want 404", err)
	}
}

// TestRoomFedInviteRefused: B refuses an invite for a user it does not
// have (alice's client gets 403 and A stores nothing) and an invite whose
// inviter's signature does not verify; the same invite correctly signed
// is accepted, as a control.
func TestRoomFedInviteRefused(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "12"})

	nobody := id.UserID("@nobody:" + b.Name)
	_, err := alice.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: nobody})
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusForbidden || he.RespError == nil || he.RespError.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("inviting a user B does not have: %v, want 403 M_FORBIDDEN", err)
	}
	if m := rfMembership(t, alice, roomID, nobody); m != "" {
		t.Fatalf("A stored a refused invite: membership %q", m)
	}

	// An invite of bob built and signed on A, sent by hand.
	build := func() map[string]any {
		var tmpl json.RawMessage
		sk := bob.UserID.String()
		err := a.Store.View(func(tx *store.Tx) error {
			var err error
			_, tmpl, err = a.Rooms.Template(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &sk, Sender: alice.UserID.String(), Content: json.RawMessage(`{"membership":"invite"}`)})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		signed, _, err := a.Rooms.SignPDU("12", tmpl)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(signed, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	send := func(pdu map[string]any) error {
		raw, _ := json.Marshal(pdu)
		ev, err := room.ParseEvent("12", raw, "")
		if err != nil {
			t.Fatal(err)
		}
		body := map[string]any{"room_version": "12", "event": json.RawMessage(raw), "invite_room_state": []any{}}
		path := "/_matrix/federation/v2/invite/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape(ev.ID)
		var resp json.RawMessage
		return a.Fed.Client.Put(ctxT(t), b.Name, path, body, &resp)
	}
	forged := build()
	sigs := forged["signatures"].(map[string]any)[a.Name].(map[string]any)
	for k, v := range sigs {
		s := v.(string)
		sigs[k] = strings.Repeat("A", len(s)-1) + s[len(s)-1:]
	}
	err = send(forged)
	var re *federation.RemoteError
	if !errors.As(err, &re) || re.Status != http.StatusForbidden || re.Code != "M_FORBIDDEN" {
		t.Fatalf("an invite with a bad signature: %v, want 403 M_FORBIDDEN", err)
	}
	if r := rfRoomsSync(t, bob, "", "an initial sync", func(*mautrix.RespSync) bool { return true }); r.Rooms.Invite[roomID] != nil {
		t.Fatal("B stored an invite whose signature failed")
	}

	// Unsupported room version: 400 M_INCOMPATIBLE_ROOM_VERSION.
	raw, _ := json.Marshal(build())
	ev, _ := room.ParseEvent("12", raw, "")
	path := "/_matrix/federation/v2/invite/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape(ev.ID)
	err = a.Fed.Client.Put(ctxT(t), b.Name, path, map[string]any{"room_version": "999", "event": json.RawMessage(raw)}, nil)
	if !errors.As(err, &re) || re.Status != http.StatusBadRequest || re.Code != "M_INCOMPATIBLE_ROOM_VERSION" {
		t.Fatalf("an invite in an unknown room version: %v, want 400 M_INCOMPATIBLE_ROOM_VERSION", err)
	}
	if re.RoomVersion != "999" {
		t.Fatalf("the invite's M_INCOMPATIBLE_ROOM_VERSION names room_version %q, want 999", re.RoomVersion)
	}

	if err := send(build()); err != nil {
		t.Fatalf("the same invite correctly signed: %v", err)
	}
	rfRoomsSync(t, bob, "", "the control invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })
}
