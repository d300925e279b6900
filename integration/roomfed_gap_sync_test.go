package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/store"
)

// rfMakeGap has B store n messages of bob's without sending them to A
// and returns the last one, which A has yet to receive.
func rfMakeGap(t *testing.T, b *rfNode, roomID id.RoomID, bob id.UserID, n int) (json.RawMessage, string) {
	t.Helper()
	hook := b.Rooms.InTx
	b.Rooms.InTx = nil // B stores without queueing to A
	defer func() { b.Rooms.InTx = hook }()
	var last json.RawMessage
	var lastID string
	err := b.Store.Write(func(tx *store.Tx) error {
		for i := range n {
			content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": fmt.Sprint("unseen ", i)})
			ev, err := b.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.message", Sender: bob.String(), Content: content})
			if err != nil {
				return err
			}
			last, lastID = ev.Raw, ev.ID
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last, lastID
}

// TestRoomFedGapLimitsSync: an event arriving after a gap that
// get_missing_events cannot close (A takes the state at the missing prev
// event instead) starts a limited timeline in /sync: the events before
// the gap are not shown as if continuous with it (Complement's
// TestSyncTimelineGap).
func TestRoomFedGapLimitsSync(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	ctx := ctxT(t)
	first, err := alice.c.SyncRequest(ctx, 0, "", rfSyncFilter, false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.SendText(ctx, roomID, "before the gap"); err != nil {
		t.Fatal(err)
	}
	last, lastID := rfMakeGap(t, b, roomID, bob.c.UserID, 50)
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	if verdict := h.send(last, lastID); verdict != "" {
		t.Fatalf("the event after the gap: %q", verdict)
	}
	check := func(what string, tl mautrix.SyncTimeline) {
		t.Helper()
		if !tl.Limited {
			t.Errorf("%s: the timeline across the gap is not limited", what)
		}
		if n := len(tl.Events); n == 0 || tl.Events[n-1].ID.String() != lastID {
			t.Fatalf("%s: the timeline does not end with the event after the gap", what)
		}
		for _, ev := range tl.Events {
			if ev.Sender == alice.c.UserID {
				t.Errorf("%s: alice's message from before the gap is in the timeline after it", what)
			}
		}
		if tl.PrevBatch == "" {
			t.Errorf("%s: no prev_batch to page back from", what)
		}
	}
	resp, err := alice.c.SyncRequest(ctx, 0, first.NextBatch, rfSyncFilter, false, "")
	if err != nil {
		t.Fatal(err)
	}
	check("incremental sync", resp.Rooms.Join[roomID].Timeline)
	full, err := alice.c.SyncRequest(ctx, 0, "", rfSyncFilter, false, "")
	if err != nil {
		t.Fatal(err)
	}
	check("initial sync", full.Rooms.Join[roomID].Timeline)
}

// TestRoomFedGapMessages: /messages pages backwards into a gap inside the
// timeline (left by the state fetch), fetching its history with
// /backfill page by page, and then on past it to the events before.
func TestRoomFedGapMessages(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	ctx := ctxT(t)
	if _, err := alice.c.SendText(ctx, roomID, "before the gap"); err != nil {
		t.Fatal(err)
	}
	const gap = 45
	last, lastID := rfMakeGap(t, b, roomID, bob.c.UserID, gap)
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	if verdict := h.send(last, lastID); verdict != "" {
		t.Fatalf("the event after the gap: %q", verdict)
	}
	back, from := paginate(t, alice.c, roomID, "", mautrix.DirectionBackward, 10)
	bodies := bodiesOf(back)
	var want []string
	for i := gap - 1; i >= 0; i-- {
		want = append(want, fmt.Sprint("unseen ", i))
	}
	want = append(want, "before the gap")
	if fmt.Sprint(bodies) != fmt.Sprint(want) {
		t.Fatalf("/messages backwards across the gap:\n got %q\nwant %q", bodies, want)
	}
	// Forwards from the oldest point back to the newest: the gap's
	// history comes before the event after it, in order.
	fwd, _ := paginate(t, alice.c, roomID, from, mautrix.DirectionForward, 7)
	forward := bodiesOf(fwd)
	slices.Reverse(want)
	if fmt.Sprint(forward) != fmt.Sprint(want) {
		t.Fatalf("/messages forwards across the gap:\n got %q\nwant %q", forward, want)
	}
}

// TestRoomFedGapStateEventWithheld: during a gap's state fetch B will not
// give one of the state events A lacks (/event answers 404). A leaves it
// out instead of failing the fetch: the events it authorises are
// rejected for want of it, and so are the events after the gap that
// build on them, but the pushed event is processed (answered without an
// error) and A's state keeps bob's membership from before the gap
// (Complement's TestCorruptedAuthChain).
func TestRoomFedGapStateEventWithheld(t *testing.T) {
	ca := newRFCA(t)
	var withheld atomic.Value
	b := startRFNodeWrapped(t, ca, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if id, ok := withheld.Load().(string); ok && r.URL.Path == "/_matrix/federation/v1/event/"+id {
				http.Error(w, `{"errcode":"M_NOT_FOUND","error":"withheld"}`, http.StatusNotFound)
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
	before, _ := rfStateEvent(t, a, roomID, "m.room.member", bob.UserID.String())

	// Unseen by A: two display name changes of bob's (the second
	// authorised by the first), then more messages than one
	// get_missing_events gives.
	hook := b.Rooms.InTx
	b.Rooms.InTx = nil
	var first string
	err := b.Store.Write(func(tx *store.Tx) error {
		for i, name := range []string{"B1", "B2"} {
			content, _ := json.Marshal(map[string]string{"membership": "join", "displayname": name})
			key := bob.UserID.String()
			ev, err := b.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &key, Sender: key, Content: content})
			if err != nil {
				return err
			}
			if i == 0 {
				first = ev.ID
			}
		}
		return nil
	})
	b.Rooms.InTx = hook
	if err != nil {
		t.Fatal(err)
	}
	withheld.Store(first)
	last, lastID := rfMakeGap(t, b, roomID, bob.UserID, 30)
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	if verdict := h.send(last, lastID); verdict != "" {
		t.Fatalf("the event after the gap: %q, want it processed", verdict)
	}
	if flags, ok := rfStoredFlags(a, lastID); !ok || flags&store.FlagRejected == 0 {
		t.Fatalf("the event after the gap is stored (%v) with flags %v, want rejected", ok, flags)
	}
	if _, ok := rfStoredFlags(a, first); ok {
		t.Fatal("A stored the withheld event")
	}
	if cur, _ := rfStateEvent(t, a, roomID, "m.room.member", bob.UserID.String()); cur.ID != before.ID {
		t.Fatalf("bob's membership on A changed to %s (want %s from before the gap)", cur.ID, before.ID)
	}
}
