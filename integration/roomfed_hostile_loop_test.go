package integration

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"edge/edge/store"
)

// TestRoomFedHostilePrevEventsLoop: in room versions 1 and 2 event IDs
// are names, not hashes, so a hostile server can make two events each
// other's prev_event and serve both. A is sent one of them; fetching the
// missing parent leads back to it. A must end the walk (the events are
// refused or kept aside, never a hang or a panic), its state unharmed,
// and the room goes on working both ways.
func TestRoomFedHostilePrevEventsLoop(t *testing.T) {
	for _, version := range []string{"1", "2"} {
		t.Run("v"+version, func(t *testing.T) {
			ca := newRFCA(t)
			a, b, alice, bob, roomID := rfJoinedPair(t, ca, version)
			h := &hostile{t: t, a: a, b: b, roomID: roomID}
			bobID := bob.c.UserID.String()
			plBefore, _ := rfStateEvent(t, a, roomID, "m.room.power_levels", "")
			x, y := "$loopx"+version+":"+b.Name, "$loopy"+version+":"+b.Name
			ref := func(id string) []any { return []any{[]any{id, map[string]string{"sha256": "AAAA"}}} }
			pduX, _ := h.forge(hostileMessage(bobID, "loop x"), func(m map[string]any) { m["event_id"], m["prev_events"] = x, ref(y) })
			pduY, _ := h.forge(hostileMessage(bobID, "loop y"), func(m map[string]any) { m["event_id"], m["prev_events"] = y, ref(x) })
			// B serves both (get_missing_events, /event) as if they were history.
			err := b.Store.Write(func(tx *store.Tx) error {
				r, err := tx.Room(roomID.String())
				if err != nil {
					return err
				}
				for id, pdu := range map[string][]byte{x: pduX, y: pduY} {
					if err := tx.PutEvent(&store.Event{EventID: id, RoomNID: r.NID, Flags: store.FlagOutlier, JSON: pdu}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var gme struct {
				Events []json.RawMessage `json:"events"`
			}
			if err := a.Fed.Client.Post(ctxT(t), b.Name, "/_matrix/federation/v1/get_missing_events/"+url.PathEscape(roomID.String()),
				map[string]any{"earliest_events": []string{}, "latest_events": []string{x}, "limit": 10}, &gme); err != nil {
				t.Fatal(err)
			}
			// The loop is reachable: B hands out y as x's missing parent.
			if len(gme.Events) != 1 || !strings.Contains(string(gme.Events[0]), y) {
				t.Fatalf("B's get_missing_events for x = %s, want y", gme.Events)
			}
			done := make(chan string, 1)
			go func() { v, _ := h.sendMaybe(pduX, x); done <- v }()
			select {
			case v := <-done:
				if v == "" {
					t.Fatal("A accepted an event whose history loops")
				}
			case <-time.After(60 * time.Second):
				t.Fatal("A did not answer a transaction holding a prev_events loop within 60 s")
			}
			if pl, _ := rfStateEvent(t, a, roomID, "m.room.power_levels", ""); pl.ID != plBefore.ID {
				t.Fatalf("A's power levels changed to %s", pl.ID)
			}
			for _, id := range []string{x, y} {
				if flags, ok := rfStoredFlags(a, id); ok && flags&(store.FlagRejected|store.FlagSoftFailed|store.FlagOutlier) == 0 {
					t.Errorf("A took %s into its timeline", id)
				}
			}
			// The room still works both ways.
			sendText(t, alice.c, roomID, "after the loop, from A")
			bob.until(t, "alice's message", func(evs []*event.Event) bool {
				return strings.Contains(strings.Join(rfBodies(evs, roomID), "\n"), "after the loop, from A")
			})
			sendText(t, bob.c, roomID, "after the loop, from B")
			alice.until(t, "bob's message", func(evs []*event.Event) bool {
				return strings.Contains(strings.Join(rfBodies(evs, roomID), "\n"), "after the loop, from B")
			})
		})
	}
}
