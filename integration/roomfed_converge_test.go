package integration

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/store"
)

// TestRoomFedConverge: two servers share a room through a whole life —
// power-level, name and topic changes from both sides, a remote invite,
// a kick, a ban, a redaction and concurrent sends from both servers that
// fork the graph — and end with the same current state and the same
// timeline, compared entry by entry, in room versions 10, 11 and 12.
func TestRoomFedConverge(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testConverge(t, version) })
	}
}

func testConverge(t *testing.T, version string) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, version)
	ctx := ctxT(t)
	carol := b.register(t, "carol")
	eve := b.register(t, "eve")
	if _, err := carol.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("carol joins: %v", err)
	}

	// Power levels from A: bob may kick, ban, redact and set the topic.
	rfPromote(t, alice, bob, roomID, 50)

	mustSend := func(c *mautrix.Client, what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s (%s): %v", what, c.UserID, err)
		}
	}
	_, err := alice.c.SendStateEvent(ctx, roomID, event.StateRoomName, "", map[string]string{"name": "converging"})
	mustSend(alice.c, "name", err)
	_, err = bob.c.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "from B"})
	mustSend(bob.c, "topic", err)
	// A remote invite, accepted; then a ban of the invitee from A.
	_, err = alice.c.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: eve.UserID})
	mustSend(alice.c, "invite", err)
	// Eve joins once B holds the invite in the room's graph: joining
	// first makes the invite, when it arrives, fail against B's current
	// state (already joined) and soft-fail there — a legitimate
	// difference between the timelines, which this test does not want.
	invite, _ := rfStateEvent(t, a, roomID, "m.room.member", eve.UserID.String())
	waitFor(t, 20*time.Second, "the invite in B's room", func() bool {
		flags, ok := rfStoredFlags(b, invite.ID)
		return ok && flags == 0
	})
	waitFor(t, 20*time.Second, "eve's invite on B", func() bool {
		resp, err := eve.SyncRequest(ctx, 0, "", "", false, "")
		return err == nil && resp.Rooms.Invite[roomID] != nil
	})
	_, err = eve.JoinRoom(ctx, roomID.String(), nil)
	mustSend(eve, "accept", err)
	// A kick from B (bob kicks carol) and a ban from A (alice bans eve).
	_, err = bob.c.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: carol.UserID, Reason: "converge"})
	mustSend(bob.c, "kick", err)
	waitFor(t, 20*time.Second, "eve's join on A", func() bool {
		ev, _ := rfStateEvent(t, a, roomID, "m.room.member", eve.UserID.String())
		return ev != nil && ev.Membership() == "join"
	})
	_, err = alice.c.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: eve.UserID, Reason: "converge"})
	mustSend(alice.c, "ban", err)
	// A redaction from A of a message from B.
	target, err := bob.c.SendText(ctx, roomID, "to be redacted")
	mustSend(bob.c, "message", err)
	alice.until(t, "the message to redact", rfHasEvent("m.room.message", func(ev *event.Event) bool { return ev.ID == target.EventID }))
	_, err = alice.c.RedactEvent(ctx, roomID, target.EventID)
	mustSend(alice.c, "redaction", err)

	// Concurrent sends from both servers: the graph forks where they cross.
	const each = 15
	var wg sync.WaitGroup
	for _, c := range []*mautrix.Client{alice.c, bob.c} {
		wg.Go(func() {
			for i := range each {
				if _, err := c.SendText(ctx, roomID, fmt.Sprintf("%s %02d", c.UserID.Localpart(), i)); err != nil {
					t.Errorf("concurrent send: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	_, err = bob.c.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "settled"})
	mustSend(bob.c, "last topic", err)

	// Both servers end with the same state and the same timeline.
	// Timelines compare from bob's join on: B has no timeline before it
	// (what came earlier is state, or history to backfill).
	var bobJoin string
	_ = b.Store.View(func(tx *store.Tx) error {
		r, _ := tx.Room(roomID.String())
		tx.Timeline(r.NID, 0, false, func(_, nid uint64) bool {
			ev, _ := b.Rooms.Event(tx, nid)
			bobJoin = ev.ID
			return false
		})
		return nil
	})
	since := func(tl []string) []string {
		if i := slices.Index(tl, bobJoin); i >= 0 {
			return tl[i:]
		}
		return tl
	}
	var stateA, stateB map[string]string
	var tlA, tlB []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		stateA, tlA = rfRoomSnapshot(t, a, roomID)
		stateB, tlB = rfRoomSnapshot(t, b, roomID)
		tlA, tlB = since(tlA), since(tlB)
		if maps.Equal(stateA, stateB) && slices.Equal(sortedCopy(tlA), sortedCopy(tlB)) {
			break
		}
		if time.Now().After(deadline) {
			for k, v := range stateA {
				if stateB[k] != v {
					t.Errorf("state %s: A %s, B %s", k, v, stateB[k])
				}
			}
			for k, v := range stateB {
				if _, ok := stateA[k]; !ok {
					t.Errorf("state %s: only B has %s", k, v)
				}
			}
			for _, id := range tlA {
				if !slices.Contains(tlB, id) {
					ev, _ := rfStateEventByID(t, a, id)
					flags, held := rfStoredFlags(b, id)
					t.Errorf("timeline: only A has %s (%s from %s, prev %v); B holds it: %v, flags %v", id, ev.Type, ev.Sender, ev.PrevEvents, held, flags)
				}
			}
			for _, id := range tlB {
				if !slices.Contains(tlA, id) {
					t.Errorf("timeline: only B has %s", id)
				}
			}
			t.Fatal("A and B did not converge in 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, k := range []string{"m.room.topic|", "m.room.name|", "m.room.member|" + eve.UserID.String(), "m.room.member|" + carol.UserID.String()} {
		if stateA[k] == "" {
			t.Errorf("the converged state lacks %s", k)
		}
	}
	forks := 0
	_ = a.Store.View(func(tx *store.Tx) error {
		for _, eid := range tlA {
			if ev, err := a.Rooms.EventByID(tx, eid); err == nil && len(ev.PrevEvents) > 1 {
				forks++
			}
		}
		return nil
	})
	t.Logf("v%s: %d state entries, %d timeline events, %d merge events", version, len(stateA), len(tlA), forks)
	if ev, _ := rfStateEvent(t, a, roomID, "m.room.member", eve.UserID.String()); ev.Membership() != "ban" {
		t.Errorf("eve is %q after the ban", ev.Membership())
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", carol.UserID.String()); ev.Membership() != "leave" {
		t.Errorf("carol is %q after the kick", ev.Membership())
	}
	_ = b.Store.View(func(tx *store.Tx) error {
		ev, err := b.Rooms.EventByID(tx, target.EventID.String())
		if err != nil {
			t.Errorf("B lacks the redacted message: %v", err)
		} else if string(ev.Content) != "{}" {
			t.Errorf("B's copy of the redacted message has content %s", ev.Content)
		}
		return nil
	})
}

// rfRoomSnapshot is a server's current state ("type|state_key" → event
// ID) and its timeline's event IDs, oldest first.
func rfRoomSnapshot(t *testing.T, n *rfNode, roomID id.RoomID) (map[string]string, []string) {
	t.Helper()
	state := map[string]string{}
	var timeline []string
	err := n.Store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID.String())
		if err != nil {
			return err
		}
		st, err := n.Rooms.State(tx, r.State)
		if err != nil {
			return err
		}
		evs, err := n.Rooms.StateEvents(tx, st)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			state[ev.Type+"|"+*ev.StateKey] = ev.ID
		}
		tx.Timeline(r.NID, 0, false, func(_, nid uint64) bool {
			if ev, err := n.Rooms.Event(tx, nid); err == nil {
				timeline = append(timeline, ev.ID)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state, timeline
}

func sortedCopy(s []string) []string { return slices.Sorted(slices.Values(s)) }

// TestRoomFedRedactionBeforeTarget: B's redaction of its own message
// reaches A before the message; when the message arrives, A strips it.
func TestRoomFedRedactionBeforeTarget(t *testing.T) {
	ca := newRFCA(t)
	a, b, _, bob, roomID := rfJoinedPair(t, ca, "10")
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	msg, msgID := h.forge(hostileMessage(bob.c.UserID.String(), "regretted"), nil)
	red, redID := h.forge(room.Proto{Type: "m.room.redaction", Sender: bob.c.UserID.String(), Content: json.RawMessage(`{}`), Redacts: msgID}, nil)
	if verdict := h.send(red, redID); verdict != "" {
		t.Fatalf("the redaction: %q", verdict)
	}
	if verdict := h.send(msg, msgID); verdict != "" {
		t.Fatalf("the message: %q", verdict)
	}
	ev, _ := rfStateEventByID(t, a, msgID)
	if string(ev.Content) != "{}" {
		t.Fatalf("A kept the content %s of a message redacted before it arrived", ev.Content)
	}
}
