package integration

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
	"edge/edge/store"
)

// TestRoomFedCreateRoomInvitesRemote: a remote user named in createRoom's
// invite list is invited through their server (which must sign the
// invite), so the invite reaches their /sync with the room's name in its
// invite_state and is_direct kept (Complement's TestFederationRoomsInvite).
func TestRoomFedCreateRoomInvitesRemote(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{
		Preset: "private_chat", Name: "invites room", Invite: []id.UserID{bob.UserID}, IsDirect: true,
	})
	resp := rfRoomsSync(t, bob, "", "the createRoom invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })
	inv := resp.Rooms.Invite[roomID].State.Events
	if name := rfStripped(inv, "m.room.name", ""); name == nil || name.Content.Raw["name"] != "invites room" {
		t.Fatalf("invite_state lacks the room's name: %v", name)
	}
	self := rfStripped(inv, "m.room.member", bob.UserID.String())
	if self == nil || self.Content.Raw["membership"] != "invite" || self.Content.Raw["is_direct"] != true {
		t.Fatalf("bob's own member event in invite_state: %+v, want an invite with is_direct", self)
	}
	// The invite is a real one: bob can join with it.
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins with the createRoom invite: %v", err)
	}
	if m := rfMembership(t, alice, roomID, bob.UserID); m != "join" {
		t.Fatalf("bob's membership on A after joining: %q", m)
	}
}

// TestRoomFedBanInInitialSync: an initial /sync without include_leave
// still lists a room the user was banned or kicked from over federation
// under leave (Synapse does; Complement's TestUnbanViaInvite waits for the
// ban so), but not a room the user left of their own accord.
func TestRoomFedBanInInitialSync(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	ctx := ctxT(t)
	left := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.c.JoinRoom(ctx, left.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.LeaveRoom(ctx, left); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: bob.c.UserID, Reason: "out"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10e9, "B applies the ban", func() bool {
		var m *store.Membership
		_ = b.Store.View(func(tx *store.Tx) error { m, _ = tx.Membership(bob.c.UserID.String(), roomID.String()); return nil })
		return m != nil && m.Membership == "ban"
	})
	r := rfRoomsSync(t, bob.c, "", "an initial sync", func(*mautrix.RespSync) bool { return true })
	lr := r.Rooms.Leave[roomID]
	if lr == nil {
		t.Fatalf("the room bob was banned from is not under leave in his initial sync: %v", r.Rooms.Leave)
	}
	found := false
	for _, ev := range lr.Timeline.Events {
		found = found || (ev.Type == event.StateMember && ev.GetStateKey() == bob.c.UserID.String() && ev.Content.Raw["membership"] == "ban")
	}
	if !found {
		t.Fatal("the ban is not in the left room's timeline")
	}
	if r.Rooms.Leave[left] != nil {
		t.Fatal("a room bob left himself shows under leave without include_leave")
	}
	if r.Rooms.Join[roomID] != nil {
		t.Fatal("the room bob was banned from is still under join")
	}
}

// TestRoomFedFloatRefused: in room versions whose canonical JSON forbids
// floats (v6+), an event holding one, hashed and signed as an older room
// version would, is refused outright when get_missing_events brings it:
// not stored (nor kept redacted, as a content-hash failure would be), so
// the event built on it has a missing prev event and is refused too
// (Complement's TestOutboundFederationIgnoresMissingEventWithBadJSONForRoomVersion6).
// An integer up to 2^53-1 is fine.
func TestRoomFedFloatRefused(t *testing.T) {
	ca := newRFCA(t)
	// B answers get_missing_events with the bad event once it is made.
	var bad atomic.Value
	b := startRFNodeWrapped(t, ca, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if pdu, ok := bad.Load().(json.RawMessage); ok && strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/get_missing_events/") {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"events":[` + string(pdu) + `]}`))
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	a := startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "A has bob's join", func() bool { return rfMembership(t, alice, roomID, bob.UserID) == "join" })
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	bobID := bob.UserID.String()

	for _, c := range []struct {
		name string
		val  json.Number
	}{{"a float", "1.1"}, {"an integer past 2^53", "9007199254740993"}} {
		// F carries the value; G, a valid message, follows F, which A lacks.
		var m map[string]any
		tmpl, _ := h.forge(hostileMessage(bobID, "x"), nil)
		dec := json.NewDecoder(bytes.NewReader(tmpl))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		depth, _ := m["depth"].(json.Number).Int64()
		m["content"] = map[string]any{"msgtype": "m.text", "body": "bad", "bad_val": c.val}
		f, fID := rfSignLoose(t, m, b.Name, b.Keys[0])
		bad.Store(f)
		g, gID := h.forge(hostileMessage(bobID, "after "+c.name), func(m map[string]any) {
			m["prev_events"], m["depth"] = []string{fID}, depth+1
		})
		if verdict := h.send(g, gID); verdict == "" {
			t.Errorf("%s: the event after one A cannot have was accepted", c.name)
		}
		if _, ok := rfStoredFlags(a, fID); ok {
			t.Errorf("%s: A stored the event holding %s", c.name, c.val)
		}
	}
	pdu, evID := h.forge(hostileMessage(bobID, "x"), func(m map[string]any) {
		m["content"] = map[string]any{"msgtype": "m.text", "body": "ok", "val": json.Number("9007199254740991")}
	})
	if verdict := h.send(pdu, evID); verdict != "" {
		t.Fatalf("a PDU with 2^53-1 was refused: %q", verdict)
	}
}

// rfSignLoose hashes and signs a v3+ PDU with key as server, with a JSON
// encoding that lets floats through (keys sorted, numbers as written; the
// test's strings need no escaping), and returns it with its event ID.
func rfSignLoose(t *testing.T, m map[string]any, server string, key config.SigningKey) (json.RawMessage, string) {
	t.Helper()
	enc := func(v any) []byte { return rfLooseJSON(t, v) }
	delete(m, "signatures")
	delete(m, "unsigned")
	delete(m, "hashes")
	sum := sha256.Sum256(enc(m))
	m["hashes"] = map[string]any{"sha256": base64.RawStdEncoding.EncodeToString(sum[:])}
	// The redacted form (a message keeps no content) is what is signed
	// and what the event ID hashes.
	red := map[string]any{}
	for _, k := range []string{"auth_events", "depth", "hashes", "origin", "origin_server_ts", "prev_events", "room_id", "sender", "type"} {
		if v, ok := m[k]; ok {
			red[k] = v
		}
	}
	red["content"] = map[string]any{}
	sig := ed25519.Sign(key.Priv, enc(red))
	m["signatures"] = map[string]any{server: map[string]any{key.ID: base64.RawStdEncoding.EncodeToString(sig)}}
	ref := sha256.Sum256(enc(red))
	return enc(m), "$" + base64.RawURLEncoding.EncodeToString(ref[:])
}

// rfLooseJSON encodes v with sorted keys and numbers as written.
func rfLooseJSON(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	e := json.NewEncoder(&buf)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// TestRoomFedUnbanInviteJoin: bob@B is banned from alice's room, so B has
// no user left in it; the unban reaches B only after the invite does (B's
// transactions are held meanwhile), and bob's join goes through A (B's
// copy of the room may still have the ban) (Complement's TestUnbanViaInvite).
func TestRoomFedUnbanInviteJoin(t *testing.T) {
	ca := newRFCA(t)
	gate := newSendGate()
	defer gate.release() // before the nodes stop: none may wait on the gate
	b := startRFNodeWrapped(t, ca, gate.wrap)
	a := startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	bob := &rfSyncer{c: b.register(t, "bob")}
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if _, err := bob.c.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "A sees bob joined", func() bool { return rfMembership(t, alice.c, roomID, bob.c.UserID) == "join" })
	if _, err := alice.c.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: bob.c.UserID}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "B applies the ban", func() bool {
		var m *store.Membership
		_ = b.Store.View(func(tx *store.Tx) error { m, _ = tx.Membership(bob.c.UserID.String(), roomID.String()); return nil })
		return m != nil && m.Membership == "ban"
	})
	gate.hold()
	if _, err := alice.c.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: bob.c.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.c.UserID}); err != nil {
		t.Fatal(err)
	}
	gate.release() // the unban now arrives, after the invite
	waitFor(t, 10*time.Second, "B applies the unban", func() bool {
		var m *store.Membership
		_ = b.Store.View(func(tx *store.Tx) error { m, _ = tx.Membership(bob.c.UserID.String(), roomID.String()); return nil })
		return m != nil && m.Membership == "leave"
	})
	rfRoomsSync(t, bob.c, "", "the invite after the unban", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })
	if _, err := bob.c.JoinRoom(ctx, roomID.String(), nil); err != nil {
		t.Fatalf("bob joins with the invite after the unban: %v", err)
	}
	waitFor(t, 10*time.Second, "A sees bob joined again", func() bool { return rfMembership(t, alice.c, roomID, bob.c.UserID) == "join" })
	// The room goes on for both.
	if _, err := alice.c.SendText(ctx, roomID, "welcome back"); err != nil {
		t.Fatal(err)
	}
	bob.until(t, "alice's message after the rejoin", func(evs []*event.Event) bool {
		return slices.Contains(rfBodies(evs, roomID), "welcome back")
	})
}

// TestRoomFedRejoinMessages: bob@B leaves alice's room and rejoins after
// alice sent messages B never received; /messages then pages bob back
// through them (the gap before his rejoin, backfilled from A) and on to
// what came before (Complement's TestMessagesOverFederation, re-joining).
func TestRoomFedRejoinMessages(t *testing.T) {
	ca := newRFCA(t)
	a, _, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	ctx := ctxT(t)
	if _, err := alice.c.SendText(ctx, roomID, "while bob is here"); err != nil {
		t.Fatal(err)
	}
	bob.until(t, "alice's first message", func(evs []*event.Event) bool {
		return slices.Contains(rfBodies(evs, roomID), "while bob is here")
	})
	if _, err := bob.c.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "A sees bob leave", func() bool { return rfMembership(t, alice.c, roomID, bob.c.UserID) == "leave" })
	const n = 15
	for i := range n {
		if _, err := alice.c.SendText(ctx, roomID, fmt.Sprint("away ", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.c.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	bodies := bodiesOf(paginateBack(t, bob.c, roomID, 5))
	var want []string
	for i := n - 1; i >= 0; i-- {
		want = append(want, fmt.Sprint("away ", i))
	}
	want = append(want, "while bob is here")
	if fmt.Sprint(bodies) != fmt.Sprint(want) {
		t.Fatalf("bob's /messages after rejoining:\n got %q\nwant %q", bodies, want)
	}
}

// TestRoomFedInviteRescinded: alice@A invites bob@B, whose server is not
// in the room, then kicks him: the kick reaches B, and bob's invite turns
// into a left room. A kick by someone other than the inviter is not taken
// as a withdrawal (Complement's TestFederationRoomsInvite, rescinding).
func TestRoomFedInviteRescinded(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	alice2 := a.register(t, "alice2")
	bob := b.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	first := rfRoomsSync(t, bob, "", "the invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })
	if _, err := alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "changed my mind"}); err != nil {
		t.Fatal(err)
	}
	r := rfRoomsSync(t, bob, first.NextBatch, "the rescinded invite", func(r *mautrix.RespSync) bool { return r.Rooms.Leave[roomID] != nil })
	found := false
	for _, ev := range r.Rooms.Leave[roomID].Timeline.Events {
		found = found || (ev.Sender == alice.UserID && ev.Content.Raw["membership"] == "leave")
	}
	if !found {
		t.Fatal("the left room lacks alice's kick")
	}
	// An initial sync shows the withdrawn invite too (a kick, not the
	// user's own rejection).
	if r := rfRoomsSync(t, bob, "", "an initial sync", func(*mautrix.RespSync) bool { return true }); r.Rooms.Leave[roomID] == nil || r.Rooms.Invite[roomID] != nil {
		t.Fatalf("bob's initial sync after the withdrawal: under leave %v, under invite %v", r.Rooms.Leave[roomID] != nil, r.Rooms.Invite[roomID] != nil)
	}

	// alice2 invites, alice kicks: bob keeps the invite. (Invite power
	// 0, as private_chat gives; public_chat asks 50, as Synapse's.)
	room2 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	var pl map[string]any
	if err := alice.StateEvent(ctx, room2, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	pl["invite"] = 0
	if _, err := alice.SendStateEvent(ctx, room2, event.StatePowerLevels, "", pl); err != nil {
		t.Fatal(err)
	}
	if _, err := alice2.JoinRoom(ctx, room2.String(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := alice2.InviteUser(ctx, room2, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	rfRoomsSync(t, bob, "", "alice2's invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[room2] != nil })
	if _, err := alice.KickUser(ctx, room2, &mautrix.ReqKickUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	// The kick went out with alice's next event; once that is in A's
	// queue's past, B has judged it.
	waitFor(t, 10*time.Second, "A sees bob kicked", func() bool { return rfMembership(t, alice, room2, bob.UserID) == "leave" })
	time.Sleep(500 * time.Millisecond)
	if r := rfRoomsSync(t, bob, "", "an initial sync", func(*mautrix.RespSync) bool { return true }); r.Rooms.Invite[room2] == nil {
		t.Fatal("a kick by a member other than the inviter withdrew bob's invite")
	}
}

// TestRoomFedRejectInviteBeforeItsEvent: B takes part in alice's room;
// alice invites bob2@B, whose server countersigns the invite (/invite)
// but has not yet received the invite event itself (B's transactions are
// held): bob2 can still reject it, through A.
func TestRoomFedRejectInviteBeforeItsEvent(t *testing.T) {
	ca := newRFCA(t)
	gate := newSendGate()
	defer gate.release() // before the nodes stop: none may wait on the gate
	b := startRFNodeWrapped(t, ca, gate.wrap)
	a := startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	bob2 := b.register(t, "bob2")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	gate.hold()
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob2.UserID}); err != nil {
		t.Fatal(err)
	}
	rfRoomsSync(t, bob2, "", "the invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })
	if _, err := bob2.LeaveRoom(ctx, roomID); err != nil {
		t.Fatalf("bob2 rejects the invite before its event reached B: %v", err)
	}
	gate.release()
	waitFor(t, 10*time.Second, "A sees bob2's rejection", func() bool { return rfMembership(t, alice, roomID, bob2.UserID) == "leave" })
}

// TestRoomFedJoinInviteBeforeItsEvent: as TestRoomFedRejectInviteBeforeItsEvent,
// but bob2 accepts: his join waits for the invite event to reach B rather
// than being refused by B's copy of the room, which lacks it.
func TestRoomFedJoinInviteBeforeItsEvent(t *testing.T) {
	ca := newRFCA(t)
	gate := newSendGate()
	defer gate.release() // before the nodes stop: none may wait on the gate
	b := startRFNodeWrapped(t, ca, gate.wrap)
	a := startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	bob2 := b.register(t, "bob2")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	gate.hold()
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob2.UserID}); err != nil {
		t.Fatal(err)
	}
	rfRoomsSync(t, bob2, "", "the invite", func(r *mautrix.RespSync) bool { return r.Rooms.Invite[roomID] != nil })
	joined := make(chan error, 1)
	go func() {
		_, err := bob2.JoinRoom(ctx, roomID.String(), nil)
		joined <- err
	}()
	// The invite event is released while the join waits (a join made on
	// B's copy without it is refused at once).
	time.Sleep(300 * time.Millisecond)
	gate.release()
	if err := <-joined; err != nil {
		t.Fatalf("bob2 joins before the invite event reached B: %v", err)
	}
	waitFor(t, 10*time.Second, "A sees bob2 joined", func() bool { return rfMembership(t, alice, roomID, bob2.UserID) == "join" })
}

// sendGate holds a node's inbound federation transactions (/send) from
// hold until release, so a test can order what the node learns.
type sendGate struct {
	holding atomic.Bool
	once    sync.Once
	open    chan struct{}
}

func newSendGate() *sendGate { return &sendGate{open: make(chan struct{})} }

func (g *sendGate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.holding.Load() && strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
			<-g.open
		}
		next.ServeHTTP(w, r)
	})
}

func (g *sendGate) hold() { g.holding.Store(true) }

// release lets held and later transactions through; a gate opens once.
func (g *sendGate) release() {
	g.once.Do(func() {
		g.holding.Store(false)
		close(g.open)
	})
}
