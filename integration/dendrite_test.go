package integration

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/federation"
)

// TestDendrite: interop with a real peer, Dendrite v0.13.8, beside an
// edge node, both on loopback, federating over TLS, in room version 10
// (joins and chat in 11 too). One Dendrite serves every subtest (it takes
// seconds to start); each subtest has its own users and rooms.
func TestDendrite(t *testing.T) {
	ca := newRFCA(t)
	d := startDendrite(t, ca)
	e := startRFNode(t, ca)

	t.Run("DendriteJoinsEdgeRoom", func(t *testing.T) { testDendriteJoinsEdge(t, e, d, "10") })
	t.Run("EdgeJoinsDendriteRoom", func(t *testing.T) { testEdgeJoinsDendrite(t, e, d, "10") })
	// Version 11 (new redaction and auth rules), which both also speak.
	t.Run("DendriteJoinsEdgeRoomV11", func(t *testing.T) { testDendriteJoinsEdge(t, e, d, "11") })
	t.Run("EdgeJoinsDendriteRoomV11", func(t *testing.T) { testEdgeJoinsDendrite(t, e, d, "11") })
	t.Run("InviteEdgeToDendrite", func(t *testing.T) { testInviteEdgeToDendrite(t, e, d) })
	t.Run("InviteDendriteToEdge", func(t *testing.T) { testInviteDendriteToEdge(t, e, d) })
	t.Run("E2EEInEdgeRoom", func(t *testing.T) { testDendriteE2EE(t, e, d, true) })
	t.Run("E2EEInDendriteRoom", func(t *testing.T) { testDendriteE2EE(t, e, d, false) })
	t.Run("EDUsAndQueries", func(t *testing.T) { testDendriteEDUsAndQueries(t, e, d) })
	t.Run("MediaDirectoryBan", func(t *testing.T) { testDendriteMediaDirectoryBan(t, e, d) })
	t.Run("Concurrent", func(t *testing.T) { testDendriteConcurrent(t, e, d) })
	t.Run("Restricted", func(t *testing.T) { testDendriteRestricted(t, ca, e, d) })
	t.Run("PresenceToDeviceKick", func(t *testing.T) { testDendritePresenceToDeviceKick(t, e, d) })
	t.Run("CrossSigning", func(t *testing.T) { testDendriteCrossSigning(t, e, d) })
}

// dendriteIsMember matches roomID's member event of user with membership.
func dendriteIsMember(roomID id.RoomID, user id.UserID, membership string) func(*event.Event) bool {
	return func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == user.String() && ev.Content.Raw["membership"] == membership
	}
}

// dendriteChat sends texts alternately from a and b and checks that both
// see all of them, in order (among whatever else their syncs held).
func dendriteChat(t *testing.T, a, b *rfSyncer, roomID id.RoomID, texts []string) {
	t.Helper()
	for i, text := range texts {
		sender, other := a, b
		if i%2 == 1 {
			sender, other = b, a
		}
		if _, err := sender.c.SendText(ctxT(t), roomID, text); err != nil {
			t.Fatalf("%s sends %q: %v", sender.c.UserID, text, err)
		}
		other.until(t, text, func(evs []*event.Event) bool { return slices.Contains(rfBodies(evs, roomID), text) })
	}
	for _, s := range []*rfSyncer{a, b} {
		ours := func(evs []*event.Event) []string {
			return slices.DeleteFunc(rfBodies(evs, roomID), func(b string) bool { return !slices.Contains(texts, b) })
		}
		s.until(t, "every message", func(evs []*event.Event) bool { return len(ours(evs)) >= len(texts) })
		if got := ours(s.seen); !slices.Equal(got, texts) {
			t.Fatalf("%s saw %q, want %q", s.c.UserID, got, texts)
		}
	}
}

// dendriteMessages reads the room's message bodies through /messages,
// oldest first.
func dendriteMessages(t *testing.T, c *mautrix.Client, roomID id.RoomID) []string {
	t.Helper()
	resp, err := c.Messages(ctxT(t), roomID, "", "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		t.Fatalf("%s: /messages: %v", c.UserID, err)
	}
	var evs []*event.Event
	for _, ev := range slices.Backward(resp.Chunk) {
		ev.RoomID = roomID
		evs = append(evs, ev)
	}
	return rfBodies(evs, roomID)
}

// testDendriteJoinsEdge: a Dendrite user joins a public edge room through
// edge, they chat both ways, the history reads the same on both servers,
// and the Dendrite user's leave reaches edge.
func testDendriteJoinsEdge(t *testing.T, e *rfNode, d *dendriteNode, version string) {
	alice := &rfSyncer{c: e.register(t, "")}
	bob := &rfSyncer{c: d.register(t, "bob1v"+version)}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "edge room", RoomVersion: id.RoomVersion(version)})
	// History from before bob's join: Dendrite pages back to it with
	// /backfill from edge.
	if _, err := alice.c.SendText(ctxT(t), roomID, "before dendrite came"); err != nil {
		t.Fatal(err)
	}

	resp, err := bob.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{e.Name}})
	if err != nil {
		t.Fatalf("bob@dendrite joins through edge: %v", err)
	}
	if resp.RoomID != roomID {
		t.Fatalf("join answered %s, want %s", resp.RoomID, roomID)
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", dendriteIsMember(roomID, bob.c.UserID, "join")))
	bob.until(t, "his own join", rfHasEvent("m.room.member", dendriteIsMember(roomID, bob.c.UserID, "join")))

	// Dendrite built the room's state from edge's send_join answer.
	var name struct {
		Name string `json:"name"`
	}
	if err := bob.c.StateEvent(ctxT(t), roomID, event.StateRoomName, "", &name); err != nil || name.Name != "edge room" {
		t.Fatalf("bob reads the room name on dendrite: %q, %v", name.Name, err)
	}

	texts := []string{"hello from edge", "hello from dendrite", "second from edge", "second from dendrite"}
	dendriteChat(t, alice, bob, roomID, texts)
	texts = append([]string{"before dendrite came"}, texts...)
	for _, c := range []*mautrix.Client{alice.c, bob.c} {
		if got := dendriteMessages(t, c, roomID); !slices.Equal(got, texts) {
			t.Fatalf("%s: /messages has %q, want %q", c.UserID, got, texts)
		}
	}

	if _, err := bob.c.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("bob leaves on dendrite: %v", err)
	}
	alice.until(t, "bob's leave", rfHasEvent("m.room.member", dendriteIsMember(roomID, bob.c.UserID, "leave")))
}

// testEdgeJoinsDendrite: an edge user joins a public Dendrite room through
// Dendrite, they chat both ways, and the edge user's leave reaches
// Dendrite.
func testEdgeJoinsDendrite(t *testing.T, e *rfNode, d *dendriteNode, version string) {
	carol := &rfSyncer{c: d.register(t, "carol2v"+version)}
	dave := &rfSyncer{c: e.register(t, "")}
	roomID := mustCreateRoom(t, carol.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "dendrite room", RoomVersion: id.RoomVersion(version)})
	if _, err := carol.c.SendText(ctxT(t), roomID, "before edge came"); err != nil {
		t.Fatal(err)
	}

	resp, err := dave.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{d.Name}})
	if err != nil {
		t.Fatalf("dave@edge joins through dendrite: %v", err)
	}
	if resp.RoomID != roomID {
		t.Fatalf("join answered %s, want %s", resp.RoomID, roomID)
	}
	carol.until(t, "dave's join", rfHasEvent("m.room.member", dendriteIsMember(roomID, dave.c.UserID, "join")))
	dave.until(t, "his own join", rfHasEvent("m.room.member", dendriteIsMember(roomID, dave.c.UserID, "join")))

	var name struct {
		Name string `json:"name"`
	}
	if err := dave.c.StateEvent(ctxT(t), roomID, event.StateRoomName, "", &name); err != nil || name.Name != "dendrite room" {
		t.Fatalf("dave reads the room name on edge: %q, %v", name.Name, err)
	}

	texts := []string{"hello from dendrite", "hello from edge", "second from dendrite", "second from edge"}
	dendriteChat(t, carol, dave, roomID, texts)
	// History from before dave's join: edge pages back to it with
	// /backfill from Dendrite.
	texts = append([]string{"before edge came"}, texts...)
	for _, c := range []*mautrix.Client{carol.c, dave.c} {
		if got := dendriteMessages(t, c, roomID); !slices.Equal(got, texts) {
			t.Fatalf("%s: /messages has %q, want %q", c.UserID, got, texts)
		}
	}

	if _, err := dave.c.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("dave leaves on edge: %v", err)
	}
	carol.until(t, "dave's leave", rfHasEvent("m.room.member", dendriteIsMember(roomID, dave.c.UserID, "leave")))
}

// dendriteAwaitInvite syncs c until it is invited to roomID and returns
// the stripped state the invite carried.
func dendriteAwaitInvite(t *testing.T, c *mautrix.Client, roomID id.RoomID) []*event.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	since := ""
	for {
		resp, err := c.SyncRequest(ctxT(t), 2000, since, "", false, "")
		if err != nil {
			t.Fatalf("%s: sync: %v", c.UserID, err)
		}
		since = resp.NextBatch
		if inv, ok := resp.Rooms.Invite[roomID]; ok {
			return inv.State.Events
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no invite to %s within 20s", c.UserID, roomID)
		}
	}
}

// dendriteHasStripped reports whether an invite's stripped state holds an event
// of evType.
func dendriteHasStripped(evs []*event.Event, evType string) bool {
	return slices.ContainsFunc(evs, func(ev *event.Event) bool { return ev.Type.Type == evType })
}

// testInviteEdgeToDendrite: an edge user invites a Dendrite user to a
// private room; the invite reaches Dendrite with the room's stripped
// state, the Dendrite user joins and they chat.
func testInviteEdgeToDendrite(t *testing.T, e *rfNode, d *dendriteNode) {
	alice := &rfSyncer{c: e.register(t, "alice3")}
	bob := &rfSyncer{c: d.register(t, "bob3")}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "edge invite", RoomVersion: "10"})
	if _, err := alice.c.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: bob.c.UserID}); err != nil {
		t.Fatalf("alice@edge invites bob@dendrite: %v", err)
	}
	stripped := dendriteAwaitInvite(t, bob.c, roomID)
	if !dendriteHasStripped(stripped, "m.room.name") || !dendriteHasStripped(stripped, "m.room.member") {
		t.Fatalf("bob's invite carries stripped state %v, want the room name and his invite", stripped)
	}
	if _, err := bob.c.JoinRoom(ctxT(t), roomID.String(), nil); err != nil {
		t.Fatalf("bob accepts the invite: %v", err)
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", dendriteIsMember(roomID, bob.c.UserID, "join")))
	dendriteChat(t, alice, bob, roomID, []string{"welcome, dendrite", "thanks, edge"})
}

// testInviteDendriteToEdge: a Dendrite user invites an edge user to a
// private room; edge shows the invite, the edge user joins and they chat.
func testInviteDendriteToEdge(t *testing.T, e *rfNode, d *dendriteNode) {
	carol := &rfSyncer{c: d.register(t, "carol4")}
	dave := &rfSyncer{c: e.register(t, "dave4")}
	roomID := mustCreateRoom(t, carol.c, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "dendrite invite", RoomVersion: "10"})
	if _, err := carol.c.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: dave.c.UserID}); err != nil {
		t.Fatalf("carol@dendrite invites dave@edge: %v", err)
	}
	stripped := dendriteAwaitInvite(t, dave.c, roomID)
	if !dendriteHasStripped(stripped, "m.room.name") || !dendriteHasStripped(stripped, "m.room.member") {
		t.Fatalf("dave's invite carries stripped state %v, want the room name and his invite", stripped)
	}
	if _, err := dave.c.JoinRoom(ctxT(t), roomID.String(), nil); err != nil {
		t.Fatalf("dave accepts the invite: %v", err)
	}
	carol.until(t, "dave's join", rfHasEvent("m.room.member", dendriteIsMember(roomID, dave.c.UserID, "join")))
	dendriteChat(t, carol, dave, roomID, []string{"welcome, edge", "thanks, dendrite"})
}

// testDendriteE2EE: an edge user and a Dendrite user, each with an
// OlmMachine, in an encrypted room (created on edge when onEdge, else on
// Dendrite): each decrypts the other's message, which takes /keys/query
// and /keys/claim across the servers and the megolm room key as a
// to-device message over federation; new devices on either side reach
// the other as device-list updates and decrypt the next message.
func testDendriteE2EE(t *testing.T, e *rfNode, d *dendriteNode, onEdge bool) {
	as := &rfSyncer{c: e.register(t, "")}
	bs := &rfSyncer{c: d.register(t, fmt.Sprintf("bob5%v", onEdge))}
	creator, joiner, via := as, bs, e.Name
	if !onEdge {
		creator, joiner, via = bs, as, d.Name
	}
	roomID := mustCreateRoom(t, creator.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "secret", RoomVersion: "10",
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}})
	if _, err := joiner.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{via}}); err != nil {
		t.Fatalf("%s joins: %v", joiner.c.UserID, err)
	}
	creator.until(t, "the join", rfHasEvent("m.room.member", dendriteIsMember(roomID, joiner.c.UserID, "join")))

	alice, bob := newE2EEDevice(t, as.c), newE2EEDevice(t, bs.c)
	alice.sync(t)
	bob.sync(t)
	users := []id.UserID{alice.UserID, bob.UserID}

	decrypts := func(dev *e2eeDevice, evID id.EventID, want string) {
		t.Helper()
		var text string
		derr := errors.New("the event did not arrive")
		deadline := time.Now().Add(20 * time.Second)
		for derr != nil {
			if time.Now().After(deadline) {
				t.Fatalf("%s (%s) did not decrypt %s within 20s: %v", dev.UserID, dev.DeviceID, evID, derr)
			}
			time.Sleep(100 * time.Millisecond)
			if dev.sync(t); dev.events[evID] != nil {
				text, derr = dev.decrypt(t, evID)
			}
		}
		if text != want {
			t.Fatalf("%s decrypts %q, want %q", dev.UserID, text, want)
		}
	}
	first := alice.sendEncrypted(t, roomID, users, "hello dendrite, encrypted")
	decrypts(bob, first, "hello dendrite, encrypted")
	reply := bob.sendEncrypted(t, roomID, users, "hello edge, encrypted")
	decrypts(alice, reply, "hello edge, encrypted")

	// A new device on each side reaches the other as an
	// m.device_list_update EDU: the user shows in device_lists.changed,
	// a fresh /keys/query lists the device, and it decrypts the next
	// message.
	bob2 := newE2EEDevice(t, d.login(t, bob.UserID, "bob's laptop"))
	alice.lists = mautrix.DeviceLists{}
	keysFedEventually(t, "bob in alice's device_lists.changed", func() bool {
		alice.sync(t)
		return slices.Contains(alice.lists.Changed, bob.UserID)
	})
	second := alice.sendEncrypted(t, roomID, users, "to both of bob's devices")
	decrypts(bob, second, "to both of bob's devices")
	decrypts(bob2, second, "to both of bob's devices")

	alice2 := newE2EEDevice(t, e2eeLogin(t, e.testNode, alice.UserID, "alice's laptop"))
	bob.lists = mautrix.DeviceLists{}
	keysFedEventually(t, "alice in bob's device_lists.changed", func() bool {
		bob.sync(t)
		return slices.Contains(bob.lists.Changed, alice.UserID)
	})
	third := bob.sendEncrypted(t, roomID, users, "to both of alice's devices")
	decrypts(alice, third, "to both of alice's devices")
	decrypts(alice2, third, "to both of alice's devices")
}

// dendriteEphemeral syncs c until an ephemeral event of evType in roomID
// satisfies ok.
func dendriteEphemeral(t *testing.T, c *mautrix.Client, roomID id.RoomID, evType string, ok func(*event.Event) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	since := ""
	for {
		resp, err := c.SyncRequest(ctxT(t), 1000, since, "", false, "")
		if err != nil {
			t.Fatalf("%s: sync: %v", c.UserID, err)
		}
		since = resp.NextBatch
		if jr, found := resp.Rooms.Join[roomID]; found {
			for _, ev := range jr.Ephemeral.Events {
				if ev.Type.Type == evType && ok(ev) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no matching %s in %s within 20s", c.UserID, evType, roomID)
		}
	}
}

// testDendriteEDUsAndQueries: typing notices and read receipts cross both
// ways; each server answers the other's profile query and resolves an
// alias on it for a join; a renamed Dendrite user's member event and a
// redaction cross; an invite is rejected both ways.
func testDendriteEDUsAndQueries(t *testing.T, e *rfNode, d *dendriteNode) {
	alice := &rfSyncer{c: e.register(t, "alice6")}
	bob := &rfSyncer{c: d.register(t, "bob6")}
	if err := alice.c.SetDisplayName(ctxT(t), "Alice on edge"); err != nil {
		t.Fatal(err)
	}
	if err := bob.c.SetDisplayName(ctxT(t), "Bob on dendrite"); err != nil {
		t.Fatal(err)
	}
	// Profiles over federation (/query/profile).
	if p, err := alice.c.GetProfile(ctxT(t), bob.c.UserID); err != nil || p.DisplayName != "Bob on dendrite" {
		t.Fatalf("alice@edge reads bob's profile: %+v, %v", p, err)
	}
	if p, err := bob.c.GetProfile(ctxT(t), alice.c.UserID); err != nil || p.DisplayName != "Alice on edge" {
		t.Fatalf("bob@dendrite reads alice's profile: %+v, %v", p, err)
	}

	// Joins by alias (/query/directory), each way.
	edgeRoom := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "edgeroom6", RoomVersion: "10"})
	edgeAlias := id.RoomAlias("#edgeroom6:" + e.Name)
	if resp, err := bob.c.JoinRoom(ctxT(t), edgeAlias.String(), nil); err != nil || resp.RoomID != edgeRoom {
		t.Fatalf("bob joins %s: %v, %v", edgeAlias, resp, err)
	}
	dRoom := mustCreateRoom(t, bob.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "droom6", RoomVersion: "10"})
	dAlias := id.RoomAlias("#droom6:" + d.Name)
	if resp, err := alice.c.JoinRoom(ctxT(t), dAlias.String(), nil); err != nil || resp.RoomID != dRoom {
		t.Fatalf("alice joins %s: %v, %v", dAlias, resp, err)
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", dendriteIsMember(edgeRoom, bob.c.UserID, "join")))
	bob.until(t, "alice's join", rfHasEvent("m.room.member", dendriteIsMember(dRoom, alice.c.UserID, "join")))

	// Typing, each way.
	for _, c := range []struct {
		from, to *mautrix.Client
		room     id.RoomID
	}{{alice.c, bob.c, edgeRoom}, {bob.c, alice.c, dRoom}} {
		if _, err := c.from.UserTyping(ctxT(t), c.room, true, 20*time.Second); err != nil {
			t.Fatalf("%s types: %v", c.from.UserID, err)
		}
		dendriteEphemeral(t, c.to, c.room, "m.typing", func(ev *event.Event) bool {
			ids, _ := ev.Content.Raw["user_ids"].([]any)
			return slices.Contains(ids, any(c.from.UserID.String()))
		})
	}

	// Read receipts, each way, on a message of the other side.
	for _, c := range []struct {
		from, to *mautrix.Client
		room     id.RoomID
	}{{bob.c, alice.c, edgeRoom}, {alice.c, bob.c, dRoom}} {
		msg, err := c.to.SendText(ctxT(t), c.room, "read me")
		if err != nil {
			t.Fatal(err)
		}
		var synced bool
		s := &rfSyncer{c: c.from}
		s.until(t, "the message to read", func(evs []*event.Event) bool {
			synced = slices.ContainsFunc(evs, func(ev *event.Event) bool { return ev.ID == msg.EventID })
			return synced
		})
		if err := c.from.SendReceipt(ctxT(t), c.room, msg.EventID, event.ReceiptTypeRead, nil); err != nil {
			t.Fatalf("%s sends a receipt: %v", c.from.UserID, err)
		}
		dendriteEphemeral(t, c.to, c.room, "m.receipt", func(ev *event.Event) bool {
			r, _ := ev.Content.Raw[msg.EventID.String()].(map[string]any)
			read, _ := r["m.read"].(map[string]any)
			_, ok := read[c.from.UserID.String()]
			return ok
		})
	}

	// A profile change reaches the rooms: bob's new name comes to edge
	// as a member event of alice's room.
	if err := bob.c.SetDisplayName(ctxT(t), "Bob renamed"); err != nil {
		t.Fatal(err)
	}
	alice.until(t, "bob's renamed member event", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return dendriteIsMember(edgeRoom, bob.c.UserID, "join")(ev) && ev.Content.Raw["displayname"] == "Bob renamed"
	}))

	// A redaction crosses: bob redacts his own message in alice's room.
	msg, err := bob.c.SendText(ctxT(t), edgeRoom, "regrettable")
	if err != nil {
		t.Fatal(err)
	}
	alice.until(t, "the regrettable message", func(evs []*event.Event) bool { return slices.Contains(rfBodies(evs, edgeRoom), "regrettable") })
	red, err := bob.c.RedactEvent(ctxT(t), edgeRoom, msg.EventID)
	if err != nil {
		t.Fatalf("bob redacts: %v", err)
	}
	alice.until(t, "the redaction", rfHasEvent("m.room.redaction", func(ev *event.Event) bool { return ev.ID == red.EventID }))
	var redacted map[string]any
	if _, err := alice.c.MakeRequest(ctxT(t), http.MethodGet, alice.c.BuildClientURL("v3", "rooms", edgeRoom, "event", msg.EventID), nil, &redacted); err != nil {
		t.Fatal(err)
	}
	if c, _ := redacted["content"].(map[string]any); len(c) != 0 {
		t.Fatalf("the redacted message on edge still has content %v", c)
	}

	// Invites rejected, each way.
	for _, c := range []struct {
		inviter, invitee *mautrix.Client
		inviterSync      *rfSyncer
	}{{alice.c, bob.c, alice}, {bob.c, alice.c, bob}} {
		roomID := mustCreateRoom(t, c.inviter, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10"})
		if _, err := c.inviter.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: c.invitee.UserID}); err != nil {
			t.Fatalf("%s invites %s: %v", c.inviter.UserID, c.invitee.UserID, err)
		}
		dendriteAwaitInvite(t, c.invitee, roomID)
		if _, err := c.invitee.LeaveRoom(ctxT(t), roomID); err != nil {
			t.Fatalf("%s rejects the invite: %v", c.invitee.UserID, err)
		}
		c.inviterSync.until(t, "the rejection", rfHasEvent("m.room.member", dendriteIsMember(roomID, c.invitee.UserID, "leave")))
	}
}

// testDendriteMediaDirectoryBan: media uploaded on each server downloads
// through the other (authenticated media over federation); each server
// lists the other's public rooms over federation; a user banned on one
// server is refused a join from the other with 403 M_FORBIDDEN.
func testDendriteMediaDirectoryBan(t *testing.T, e *rfNode, d *dendriteNode) {
	alice := &rfSyncer{c: e.register(t, "alice7")}
	bob := &rfSyncer{c: d.register(t, "bob7")}

	for _, c := range []struct{ up, down *mautrix.Client }{{alice.c, bob.c}, {bob.c, alice.c}} {
		data := []byte("media from " + c.up.UserID.String())
		up, err := c.up.UploadBytes(ctxT(t), data, "text/plain")
		if err != nil {
			t.Fatalf("%s uploads: %v", c.up.UserID, err)
		}
		resp, err := c.down.Download(ctxT(t), up.ContentURI)
		if err != nil {
			t.Fatalf("%s downloads %s: %v", c.down.UserID, up.ContentURI, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != string(data) || resp.Header.Get("Content-Type") != "text/plain" {
			t.Fatalf("%s downloads %s: %q (%s), %v; want %q", c.down.UserID, up.ContentURI, got, resp.Header.Get("Content-Type"), err, data)
		}
	}

	// The room directory over federation (/publicRooms), each way.
	for _, c := range []struct {
		owner, reader *mautrix.Client
		server        string
	}{{alice.c, bob.c, e.Name}, {bob.c, alice.c, d.Name}} {
		name := "listed by " + c.owner.UserID.String()
		roomID := mustCreateRoom(t, c.owner, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: name, RoomVersion: "10"})
		pr, err := c.reader.PublicRooms(ctxT(t), &mautrix.ReqPublicRooms{Server: c.server, Limit: 50})
		if err != nil {
			t.Fatalf("%s lists %s's public rooms: %v", c.reader.UserID, c.server, err)
		}
		if !slices.ContainsFunc(pr.Chunk, func(r *mautrix.PublicRoomInfo) bool { return r.RoomID == roomID && r.Name == name }) {
			t.Fatalf("%s's public rooms as seen from the other server lack %s: %+v", c.server, roomID, pr.Chunk)
		}
	}

	// Bans, each way: the banned user's join through the room's server is
	// refused (make_join answers 403, which the joining server passes on).
	for _, c := range []struct {
		owner, banned *mautrix.Client
		via           string
	}{{alice.c, bob.c, e.Name}, {bob.c, alice.c, d.Name}} {
		roomID := mustCreateRoom(t, c.owner, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
		if _, err := c.owner.BanUser(ctxT(t), roomID, &mautrix.ReqBanUser{UserID: c.banned.UserID, Reason: "test"}); err != nil {
			t.Fatalf("%s bans %s: %v", c.owner.UserID, c.banned.UserID, err)
		}
		_, err := c.banned.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{c.via}})
		var he mautrix.HTTPError
		if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusForbidden || he.RespError == nil || he.RespError.ErrCode != "M_FORBIDDEN" {
			t.Fatalf("%s, banned, joins through %s: %v; want 403 M_FORBIDDEN", c.banned.UserID, c.via, err)
		}
	}
}

// testDendriteConcurrent: both sides send at once, so the room's DAG
// forks (events with several prev_events, the topic changed on both
// branches); both servers end with every message and agree on the topic,
// which state resolution picks among the concurrent changes.
func testDendriteConcurrent(t *testing.T, e *rfNode, d *dendriteNode) {
	alice := &rfSyncer{c: e.register(t, "")}
	bob := &rfSyncer{c: d.register(t, "bob8")}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10",
		PowerLevelOverride: &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice.c.UserID: 100, bob.c.UserID: 100}}})
	if _, err := bob.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{e.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", dendriteIsMember(roomID, bob.c.UserID, "join")))

	const n = 15
	var want []string
	errs := make(chan error, 2)
	for _, c := range []*mautrix.Client{alice.c, bob.c} {
		for i := range n {
			want = append(want, fmt.Sprintf("%s #%d", c.UserID, i))
		}
		go func() {
			for i := range n {
				if i == n/2 {
					if _, err := c.SendStateEvent(ctxT(t), roomID, event.StateTopic, "", &event.TopicEventContent{Topic: "by " + c.UserID.String()}); err != nil {
						errs <- err
						return
					}
				}
				if _, err := c.SendText(ctxT(t), roomID, fmt.Sprintf("%s #%d", c.UserID, i)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent send: %v", err)
		}
	}
	// Read through /messages: a sync this far behind is limited (gappy).
	slices.Sort(want)
	for _, c := range []*mautrix.Client{alice.c, bob.c} {
		var got []string
		keysFedEventually(t, string(c.UserID)+" having every message", func() bool {
			got = dendriteMessages(t, c, roomID)
			slices.Sort(got)
			return len(got) >= len(want)
		})
		if !slices.Equal(got, want) {
			t.Fatalf("%s has %q, want %q", c.UserID, got, want)
		}
	}
	// Both servers converge on one topic.
	topic := func(c *mautrix.Client) string {
		var tc event.TopicEventContent
		if err := c.StateEvent(ctxT(t), roomID, event.StateTopic, "", &tc); err != nil {
			t.Fatalf("%s reads the topic: %v", c.UserID, err)
		}
		return tc.Topic
	}
	var ta, tb string
	deadline := time.Now().Add(20 * time.Second)
	for {
		ta, tb = topic(alice.c), topic(bob.c)
		if ta == tb && ta != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the servers disagree on the topic: edge %q, dendrite %q", ta, tb)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// testDendriteRestricted: restricted join rules (room version 10), each
// way: a user who is a member of the allowed room joins the restricted
// room through the other server, which authorises the join
// (join_authorised_via_users_server, signed by the resident server);
// a user outside the allowed room is refused. Edge's make_join answers
// the spec's errors when it cannot authorise the join.
func testDendriteRestricted(t *testing.T, ca *rfCA, e *rfNode, d *dendriteNode) {
	alice := &rfSyncer{c: e.register(t, "")}
	bob := &rfSyncer{c: d.register(t, "bob9")}
	outsiderE, outsiderD := e.register(t, ""), d.register(t, "outsider9")
	for _, c := range []struct {
		owner, joiner, outsider *rfSyncer
		via                     string
	}{{alice, bob, &rfSyncer{c: outsiderD}, e.Name}, {bob, alice, &rfSyncer{c: outsiderE}, d.Name}} {
		space := mustCreateRoom(t, c.owner.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
		restricted := mustCreateRoom(t, c.owner.c, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
			InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Parsed: &event.JoinRulesEventContent{
				JoinRule: event.JoinRuleRestricted,
				Allow:    []event.JoinRuleAllow{{RoomID: space, Type: event.JoinRuleAllowRoomMembership}},
			}}}}})

		// Not in the allowed room: refused.
		_, err := c.outsider.c.JoinRoom(ctxT(t), restricted.String(), &mautrix.ReqJoinRoom{Via: []string{c.via}})
		var he mautrix.HTTPError
		if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusForbidden {
			t.Fatalf("%s, outside the allowed room, joins the restricted room: %v; want 403", c.outsider.c.UserID, err)
		}

		if _, err := c.joiner.c.JoinRoom(ctxT(t), space.String(), &mautrix.ReqJoinRoom{Via: []string{c.via}}); err != nil {
			t.Fatalf("%s joins the allowed room: %v", c.joiner.c.UserID, err)
		}
		if _, err := c.joiner.c.JoinRoom(ctxT(t), restricted.String(), &mautrix.ReqJoinRoom{Via: []string{c.via}}); err != nil {
			t.Fatalf("%s joins the restricted room: %v", c.joiner.c.UserID, err)
		}
		c.owner.until(t, "the restricted join", rfHasEvent("m.room.member", func(ev *event.Event) bool {
			return dendriteIsMember(restricted, c.joiner.c.UserID, "join")(ev) &&
				ev.Content.Raw["join_authorised_via_users_server"] == c.owner.c.UserID.String()
		}))
		dendriteChat(t, c.owner, c.joiner, restricted, []string{"restricted hello", "restricted reply"})
	}

	// make_join on edge as a third server asks it.
	third := startRFNode(t, ca)
	makeJoin := func(roomID id.RoomID) error {
		path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape("@x:"+third.Name) + "?ver=10"
		return third.Fed.Client.Get(ctxT(t), e.Name, path, nil)
	}
	restrictedTo := func(allowed id.RoomID, pl *event.PowerLevelsEventContent) id.RoomID {
		return mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10", PowerLevelOverride: pl,
			InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Parsed: &event.JoinRulesEventContent{
				JoinRule: event.JoinRuleRestricted,
				Allow:    []event.JoinRuleAllow{{RoomID: allowed, Type: event.JoinRuleAllowRoomMembership}},
			}}}}})
	}
	wantFedErr := func(what string, err error, status int, code string) {
		t.Helper()
		var re *federation.RemoteError
		if !errors.As(err, &re) || re.Status != status || re.Code != code {
			t.Fatalf("make_join %s: %v, want %d %s", what, err, status, code)
		}
	}
	// The allowed room is one edge is not in.
	wantFedErr("allowing only an unknown room", makeJoin(restrictedTo("!unknown:"+id.RoomID(d.Name), nil)), http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN")
	// The user is not in the allowed room, which edge is in.
	space := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	wantFedErr("for a user outside the allowed room", makeJoin(restrictedTo(space, nil)), http.StatusForbidden, "M_FORBIDDEN")
	// No member on edge may invite: another server must authorise.
	x := third.register(t, "x")
	if _, err := x.JoinRoom(ctxT(t), space.String(), &mautrix.ReqJoinRoom{Via: []string{e.Name}}); err != nil {
		t.Fatal(err)
	}
	noInviter := restrictedTo(space, &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice.c.UserID: 100}, InvitePtr: dendritePtr(101)})
	wantFedErr("when no member may invite", makeJoin(noInviter), http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN")
	// Control: in the allowed room, with an inviter, the template names alice.
	var tmpl struct {
		Event struct {
			Content map[string]string `json:"content"`
		} `json:"event"`
	}
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(restrictedTo(space, nil).String()) + "/" + url.PathEscape(x.UserID.String()) + "?ver=10"
	if err := third.Fed.Client.Get(ctxT(t), e.Name, path, &tmpl); err != nil || tmpl.Event.Content["join_authorised_via_users_server"] != alice.c.UserID.String() {
		t.Fatalf("make_join for a member of the allowed room: %+v, %v; want alice authorising", tmpl.Event.Content, err)
	}
}

func dendritePtr[T any](v T) *T { return &v }

// testDendritePresenceToDeviceKick: presence with a status message crosses
// both ways (m.presence EDUs); a to-device message to every device ("*")
// of a user on the other server arrives once, both ways; a Dendrite user
// kicked from an edge room sees the room among his left rooms and may no
// longer send to it.
func testDendritePresenceToDeviceKick(t *testing.T, e *rfNode, d *dendriteNode) {
	alice := &rfSyncer{c: e.register(t, "")}
	bob := &rfSyncer{c: d.register(t, "bob10")}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if _, err := bob.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{e.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", dendriteIsMember(roomID, bob.c.UserID, "join")))

	for _, c := range []struct{ from, to *mautrix.Client }{{alice.c, bob.c}, {bob.c, alice.c}} {
		status := "status of " + c.from.UserID.String()
		if err := c.from.SetPresence(ctxT(t), mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: status}); err != nil {
			t.Fatalf("%s sets presence: %v", c.from.UserID, err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for since, seen := "", false; !seen; {
			resp, err := c.to.SyncRequest(ctxT(t), 1000, since, "", false, "")
			if err != nil {
				t.Fatalf("%s: sync: %v", c.to.UserID, err)
			}
			since = resp.NextBatch
			seen = slices.ContainsFunc(resp.Presence.Events, func(ev *event.Event) bool {
				return ev.Sender == c.from.UserID && ev.Content.Raw["presence"] == "online" && ev.Content.Raw["status_msg"] == status
			})
			if !seen && time.Now().After(deadline) {
				t.Fatalf("%s did not see %s online with %q within 20s", c.to.UserID, c.from.UserID, status)
			}
		}
	}

	for i, c := range []struct{ from, to *mautrix.Client }{{alice.c, bob.c}, {bob.c, alice.c}} {
		_, since := toDeviceSync(t, c.to, "", 0)
		msg := map[string]any{c.to.UserID.String(): map[string]any{"*": map[string]any{"n": i}}}
		if err := sendToDevice(t, c.from, "org.example.dendrite", fmt.Sprint("dt", i), msg); err != nil {
			t.Fatalf("%s sends to-device: %v", c.from.UserID, err)
		}
		var got []toDeviceEvent
		keysFedEventually(t, string(c.to.UserID)+" receiving the to-device message", func() bool {
			evs, next := toDeviceSync(t, c.to, since, 1000)
			got, since = append(got, evs...), next
			return len(got) > 0
		})
		time.Sleep(300 * time.Millisecond)
		evs, _ := toDeviceSync(t, c.to, since, 0)
		got = append(got, evs...)
		if len(got) != 1 || got[0].Sender != c.from.UserID.String() || got[0].Type != "org.example.dendrite" || string(got[0].Content) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("%s's to-device events = %+v, want one from %s", c.to.UserID, got, c.from.UserID)
		}
	}

	// bob's sync position before the kick, so the kick shows as a change.
	first, err := bob.c.SyncRequest(ctxT(t), 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.KickUser(ctxT(t), roomID, &mautrix.ReqKickUser{UserID: bob.c.UserID, Reason: "test"}); err != nil {
		t.Fatalf("alice kicks bob: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for since := first.NextBatch; ; {
		resp, err := bob.c.SyncRequest(ctxT(t), 1000, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		if lr, ok := resp.Rooms.Leave[roomID]; ok && slices.ContainsFunc(lr.Timeline.Events, func(ev *event.Event) bool {
			return ev.GetStateKey() == bob.c.UserID.String() && ev.Content.Raw["membership"] == "leave" && ev.Sender == alice.c.UserID
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bob's sync on dendrite did not show alice's kick within 20s")
		}
	}
	_, err = bob.c.SendText(ctxT(t), roomID, "still here?")
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusForbidden {
		t.Fatalf("bob sends after the kick: %v, want 403", err)
	}
}

// testDendriteCrossSigning: users who share a room and have already
// queried each other's keys publish cross-signing keys and sign their own
// device; the other side's /keys/query soon shows the new master and
// self-signing keys (m.signing_key_update over federation, or a fresh
// query) and the self-signature on the device.
func testDendriteCrossSigning(t *testing.T, e *rfNode, d *dendriteNode) {
	as := &rfSyncer{c: e.register(t, "")}
	bs := &rfSyncer{c: d.register(t, "bob11")}
	roomID := mustCreateRoom(t, as.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if _, err := bs.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{e.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	as.until(t, "bob's join", rfHasEvent("m.room.member", dendriteIsMember(roomID, bs.c.UserID, "join")))
	alice, bob := newE2EEDevice(t, as.c), newE2EEDevice(t, bs.c)
	// Each server learns the other's device list now, before the upload.
	e2eeQuery(t, alice.Client, bob.UserID)
	e2eeQuery(t, bob.Client, alice.UserID)

	for _, c := range []struct{ owner, other *e2eeDevice }{{alice, bob}, {bob, alice}} {
		keys, err := c.owner.mach.GenerateCrossSigningKeys()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.owner.mach.PublishCrossSigningKeys(ctxT(t), keys, passwordUIA(c.owner.UserID)); err != nil {
			t.Fatalf("%s publishes cross-signing keys: %v", c.owner.UserID, err)
		}
		if err := c.owner.mach.SignOwnDevice(ctxT(t), c.owner.mach.OwnIdentity()); err != nil {
			t.Fatalf("%s signs own device: %v", c.owner.UserID, err)
		}
		master, ssk := keys.MasterKey.PublicKey(), keys.SelfSigningKey.PublicKey()
		var q *mautrix.RespQueryKeys
		deadline := time.Now().Add(20 * time.Second)
		for {
			q = e2eeQuery(t, c.other.Client, c.owner.UserID)
			dk := q.DeviceKeys[c.owner.UserID][c.owner.DeviceID]
			if csFirstKey(q.MasterKeys[c.owner.UserID]) == master && csFirstKey(q.SelfSigningKeys[c.owner.UserID]) == ssk &&
				dk.Signatures[c.owner.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, ssk.String())] != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not see %s's cross-signing keys (master %s, self-signing %s) within 20s; /keys/query: master %+v, self-signing %+v, device %+v",
					c.other.UserID, c.owner.UserID, master, ssk, q.MasterKeys, q.SelfSigningKeys, dk)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, ok := q.UserSigningKeys[c.owner.UserID]; ok {
			t.Errorf("%s sees %s's user-signing key", c.other.UserID, c.owner.UserID)
		}
	}
}
