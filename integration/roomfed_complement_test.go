package integration

import (
	"encoding/json"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
	"edge/edge/room"
	"edge/edge/store"
)

// Room-federation cases Complement found failing, each redone with two
// real edge nodes.

// rfInjectBadlySigned builds p on n's current state, signs it with n's key,
// lets resign rewrite the signatures block (given n's key ID), and stores
// the result on n as the room's new state, unchecked: n then serves the
// event to other servers as if it were sound, the way a careless or
// hostile resident server would.
func rfInjectBadlySigned(t *testing.T, n *rfNode, roomID id.RoomID, p room.Proto, resign func(keyID string) map[string]any) string {
	t.Helper()
	var eventID string
	err := n.Store.Write(func(tx *store.Tx) error {
		version, tmpl, err := n.Rooms.Template(tx, roomID.String(), p)
		if err != nil {
			return err
		}
		signed, evID, err := n.Rooms.SignPDU(version, tmpl)
		if err != nil {
			return err
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(signed, &m); err != nil {
			return err
		}
		var sigs map[string]map[string]string
		if err := json.Unmarshal(m["signatures"], &sigs); err != nil {
			return err
		}
		var keyID string
		for k := range sigs[n.Name] {
			keyID = k
		}
		m["signatures"], _ = json.Marshal(resign(keyID))
		raw, _ := json.Marshal(m)
		ev, err := room.ParseEvent(version, raw, evID)
		if err != nil {
			return err
		}
		r, err := tx.Room(roomID.String())
		if err != nil {
			return err
		}
		before, err := n.Rooms.State(tx, r.State)
		if err != nil {
			return err
		}
		eventID = evID
		return n.Rooms.PersistRemote(tx, ev, before, 0)
	})
	if err != nil {
		t.Fatalf("injecting a badly signed %s: %v", p.Type, err)
	}
	return eventID
}

// rfStateProto is the Proto of a state event.
func rfStateProto(sender, evType, key string, content map[string]any) room.Proto {
	raw, _ := json.Marshal(content)
	return room.Proto{Type: evType, StateKey: &key, Sender: sender, Content: raw}
}

// A valid-looking ed25519 signature that signs nothing.
const rfBogusSig = "/3z+pJjiJXWhwfqIEzmNksvBHCoXTktK/y0rRuWJXw6i1+ygRG/suDCKhFuuz6gPapRmEMPVILi2mJqHHXPKAg"

// TestRoomFedComplementJoinUnverifiableEvents: a send_join answer holding
// state events with no signature, a wrong one, or one by a key nobody can
// fetch, and an event authorised by such an event, still lets the join
// succeed; those events are left out of the joiner's state. An invalid
// auth event of the join itself still fails the join.
func TestRoomFedComplementJoinUnverifiableEvents(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca)
	// The full state in the answer: member events included.
	b := startRFNode(t, ca, func(c *config.Config) { c.Federation.FasterJoins = false })
	alice := a.register(t, "alice")
	carol := a.register(t, "carol")
	bob := b.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := carol.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	as, cs := alice.UserID.String(), carol.UserID.String()
	unsigned := rfInjectBadlySigned(t, a, roomID, rfStateProto(as, "m.room.name", "", map[string]any{"name": "no signature"}),
		func(string) map[string]any { return map[string]any{} })
	badSig := rfInjectBadlySigned(t, a, roomID, rfStateProto(as, "m.room.topic", "", map[string]any{"topic": "bad signature"}),
		func(k string) map[string]any { return map[string]any{a.Name: map[string]string{k: rfBogusSig}} })
	noKey := rfInjectBadlySigned(t, a, roomID, rfStateProto(as, "m.room.avatar", "", map[string]any{"url": "mxc://x/unobtainable"}),
		func(k string) map[string]any {
			return map[string]any{a.Name: map[string]string{k + "bogus": rfBogusSig}}
		})
	badJoin := rfInjectBadlySigned(t, a, roomID, rfStateProto(cs, "m.room.member", cs, map[string]any{"membership": "join", "displayname": "bad signature"}),
		func(k string) map[string]any { return map[string]any{a.Name: map[string]string{k: rfBogusSig}} })
	// Carol's leave is soundly signed, but authorised by the bad join.
	if _, err := carol.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	leave, _ := rfStateEvent(t, a, roomID, "m.room.member", cs)
	if leave == nil || leave.Membership() != "leave" || !strings.Contains(strings.Join(leave.AuthEvents, " "), badJoin) {
		t.Fatalf("carol's leave on A is %+v; want one authorised by %s", leave, badJoin)
	}

	if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("join with unverifiable side events in the state: %v", err)
	}
	for _, k := range [][2]string{{"m.room.name", ""}, {"m.room.topic", ""}, {"m.room.avatar", ""}, {"m.room.member", cs}} {
		if ev, _ := rfStateEvent(t, b, roomID, k[0], k[1]); ev != nil {
			t.Errorf("B's state holds %s %q (%s), from an unverifiable event or one it authorised", k[0], k[1], ev.ID)
		}
	}
	for _, eid := range []string{unsigned, badSig, noKey, badJoin} {
		if _, ok := rfStoredFlags(b, eid); ok {
			t.Errorf("B stored %s, which it could not verify", eid)
		}
	}
	// The leave passed its own checks and is kept (the answer is stored
	// as it arrives), but rejected: its auth event is not valid.
	if flags, ok := rfStoredFlags(b, leave.ID); ok && flags&store.FlagRejected == 0 {
		t.Errorf("B stored %s, authorised by an unverifiable event, without marking it rejected (flags %b)", leave.ID, flags)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", as); ev == nil || ev.Membership() != "join" {
		t.Errorf("B's state lacks alice's join: %+v", ev)
	}
	// The room works: alice hears bob.
	sendText(t, bob, roomID, "hello from B")
	as1 := &rfSyncer{c: alice}
	as1.until(t, "bob's message", func(evs []*event.Event) bool {
		return strings.Contains(strings.Join(rfBodies(evs, roomID), "\n"), "hello from B")
	})

	// The join's own auth events may not be dropped: a badly signed join
	// rule makes the join fail.
	room2 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	rfInjectBadlySigned(t, a, room2, rfStateProto(as, "m.room.join_rules", "", map[string]any{"join_rule": "public"}),
		func(k string) map[string]any { return map[string]any{a.Name: map[string]string{k: rfBogusSig}} })
	if _, err := bob.JoinRoom(ctx, room2.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err == nil {
		t.Fatal("join succeeded though its join rule was badly signed")
	}
	var known bool
	_ = b.Store.View(func(tx *store.Tx) error {
		_, err := tx.Room(room2.String())
		known = err == nil
		return nil
	})
	if known {
		t.Error("B created the room of a failed join")
	}
}

// TestRoomFedComplementRedactUnseen: a moderator may redact an event
// this server never received; the redaction goes out over federation. A
// member without the redact level is told the event is not found.
func TestRoomFedComplementRedactUnseen(t *testing.T) {
	ca := newRFCA(t)
	_, _, alice, bob, roomID := rfJoinedPair(t, ca, "")
	ctx := ctxT(t)
	unseen := id.EventID("$" + strings.Repeat("A", 43))
	resp, err := alice.c.RedactEvent(ctx, roomID, unseen, mautrix.ReqRedact{Reason: "reasons"})
	if err != nil {
		t.Fatalf("alice (PL 100) redacts an event A never saw: %v", err)
	}
	bob.until(t, "alice's redaction", rfHasEvent("m.room.redaction", func(ev *event.Event) bool {
		return ev.ID == resp.EventID && (ev.Redacts == unseen || ev.Content.Raw["redacts"] == unseen.String())
	}))
	_, err = bob.c.RedactEvent(ctx, roomID, id.EventID("$"+strings.Repeat("B", 43)))
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
}

// TestRoomFedComplementMissingEventsVisibility: /get_missing_events
// between the create event and a newly joined server's join returns the
// history in order; under "joined" and "invited" visibility the message
// sent before the join comes redacted, and setting "shared" again (the
// preset's value) adds no event.
func TestRoomFedComplementMissingEventsVisibility(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice, bob := a.register(t, "alice"), b.register(t, "bob")
	ctx := ctxT(t)
	for _, vis := range []string{"world_readable", "shared", "invited", "joined"} {
		t.Run(vis, func(t *testing.T) {
			roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if _, err := alice.SendStateEvent(ctx, roomID, event.StateHistoryVisibility, "", map[string]string{"history_visibility": vis}); err != nil {
				t.Fatal(err)
			}
			sendText(t, alice, roomID, "1")
			if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
				t.Fatal(err)
			}
			create, _ := rfStateEvent(t, a, roomID, "m.room.create", "")
			join, _ := rfStateEvent(t, a, roomID, "m.room.member", bob.UserID.String())
			if create == nil || join == nil {
				t.Fatal("A lacks the create event or bob's join")
			}
			var resp struct {
				Events []json.RawMessage `json:"events"`
			}
			body := map[string]any{"earliest_events": []string{create.ID}, "latest_events": []string{join.ID}, "limit": 10, "min_depth": 1}
			if err := b.Fed.Client.Post(ctx, a.Name, "/_matrix/federation/v1/get_missing_events/"+roomID.String(), body, &resp); err != nil {
				t.Fatal(err)
			}
			want := []string{"m.room.member", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility"}
			if vis != "shared" {
				want = append(want, "m.room.history_visibility")
			}
			want = append(want, "m.room.message")
			var got []string
			for _, raw := range resp.Events {
				var ev struct {
					Type    string         `json:"type"`
					RoomID  string         `json:"room_id"`
					Content map[string]any `json:"content"`
				}
				if err := json.Unmarshal(raw, &ev); err != nil || ev.RoomID != roomID.String() {
					t.Fatalf("bad event %s: %v", raw, err)
				}
				got = append(got, ev.Type)
				if ev.Type == "m.room.message" {
					_, hasBody := ev.Content["body"]
					if redacted := vis == "joined" || vis == "invited"; redacted == hasBody {
						t.Errorf("message before the join: content %v, want redacted %v", ev.Content, redacted)
					}
				}
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("get_missing_events types = %v, want %v", got, want)
			}
		})
	}
}
