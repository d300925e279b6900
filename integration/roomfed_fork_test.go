package integration

import (
	"encoding/json"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"edge/edge/room"
	"edge/edge/store"
)

// TestRoomFedForkResolved: alice on A and bob on B change the topic at the
// same time, each without the other's change (a partition). When the two
// events cross, both servers resolve the fork with state resolution and
// end with the same topic; the next message on each side merges the fork
// (two prev_events).
func TestRoomFedForkResolved(t *testing.T) {
	for _, version := range []string{"10", "12"} {
		t.Run("v"+version, func(t *testing.T) { testForkResolved(t, version) })
	}
}

func testForkResolved(t *testing.T, version string) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, version)
	ctx := ctxT(t)

	// Give bob the power to set the topic, through the normal path.
	rfPromote(t, alice, bob, roomID, 50)

	// The partition: each side writes its topic with its queue hook off.
	writeTopic := func(n *rfNode, sender, topic string) json.RawMessage {
		hook := n.Rooms.InTx
		n.Rooms.InTx = nil
		defer func() { n.Rooms.InTx = hook }()
		var raw json.RawMessage
		sk := ""
		err := n.Store.Write(func(tx *store.Tx) error {
			content, _ := json.Marshal(map[string]string{"topic": topic})
			ev, err := n.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.topic", StateKey: &sk, Sender: sender, Content: content})
			if err == nil {
				raw = ev.Raw
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	fromA := writeTopic(a, alice.c.UserID.String(), "topic from A")
	fromB := writeTopic(b, bob.c.UserID.String(), "topic from B")

	deliver := func(from, to *rfNode, pdu json.RawMessage, txn string) {
		var resp struct {
			PDUs map[string]struct {
				Error string `json:"error"`
			} `json:"pdus"`
		}
		body := map[string]any{"origin": from.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{pdu}}
		if err := from.Fed.Client.Put(ctx, to.Name, "/_matrix/federation/v1/send/"+txn, body, &resp); err != nil {
			t.Fatal(err)
		}
		for id, r := range resp.PDUs {
			if r.Error != "" {
				t.Fatalf("%s refused %s: %s", to.Name, id, r.Error)
			}
		}
	}
	deliver(a, b, fromA, "fork-a")
	deliver(b, a, fromB, "fork-b")

	topicOf := func(n *rfNode) string {
		var topic string
		_ = n.Store.View(func(tx *store.Tx) error {
			r, err := tx.Room(roomID.String())
			if err != nil {
				t.Fatal(err)
			}
			st, err := n.Rooms.State(tx, r.State)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := n.Rooms.StateEvent(tx, st, "m.room.topic", "")
			if err != nil || ev == nil {
				t.Fatalf("%s has no topic: %v", n.Name, err)
			}
			var c struct {
				Topic string `json:"topic"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			topic = c.Topic
			return nil
		})
		return topic
	}
	ta, tb := topicOf(a), topicOf(b)
	if ta != tb {
		t.Fatalf("servers disagree after resolution: A has %q, B has %q", ta, tb)
	}
	if ta != "topic from A" && ta != "topic from B" {
		t.Fatalf("resolved topic %q is neither side's", ta)
	}

	// The next message on A merges the fork: it names both heads.
	if _, err := alice.c.SendText(ctx, roomID, "after the fork"); err != nil {
		t.Fatal(err)
	}
	bob.until(t, "the merging message", func(evs []*event.Event) bool {
		for _, b := range rfBodies(evs, roomID) {
			if b == "after the fork" {
				return true
			}
		}
		return false
	})
	_ = a.Store.View(func(tx *store.Tx) error {
		r, _ := tx.Room(roomID.String())
		if len(r.Extremities) != 1 {
			t.Errorf("A still has %d forward extremities after sending", len(r.Extremities))
		}
		ev, err := a.Rooms.Event(tx, r.Extremities[0])
		if err != nil || len(ev.PrevEvents) != 2 {
			t.Errorf("the message after the fork has prev_events %v (%v), want both heads", ev.PrevEvents, err)
		}
		return nil
	})
	if tb2 := topicOf(b); tb2 != ta {
		t.Fatalf("after the merge B's topic is %q, A's %q", tb2, ta)
	}
}
