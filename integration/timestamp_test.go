package integration

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// jump calls GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event.
func jump(t *testing.T, c *mautrix.Client, roomID id.RoomID, ts int64, dir string) rawResp {
	t.Helper()
	u := c.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "rooms", roomID.String(), "timestamp_to_event"}, map[string]string{"ts": strconv.FormatInt(ts, 10), "dir": dir})
	return doRaw(t, c, http.MethodGet, u, nil, nil)
}

func wantJump(t *testing.T, r rawResp, eventID string) {
	t.Helper()
	if eventID == "" {
		r.want(t, 404, "M_NOT_FOUND")
		return
	}
	if r.Status != 200 || r.Body["event_id"] != eventID || r.Body["origin_server_ts"] == nil {
		t.Fatalf("timestamp_to_event: %d %s, want %s", r.Status, r.Raw, eventID)
	}
}

// TestTimestampToEvent: the closest event either way, ties broken
// topologically, 404 past either end, 403 for non-members, and 400 for
// bad parameters.
func TestTimestampToEvent(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	before := time.Now().UnixMilli()
	time.Sleep(5 * time.Millisecond)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	time.Sleep(5 * time.Millisecond)
	send := func(body string) (id.EventID, int64) {
		resp, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := alice.GetEvent(ctxT(t), roomID, resp.EventID)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		return resp.EventID, ev.Timestamp
	}
	a, aTS := send("A")
	b, bTS := send("B")
	wantJump(t, jump(t, alice, roomID, aTS+1, "f"), b.String())
	wantJump(t, jump(t, alice, roomID, aTS, "f"), a.String())
	wantJump(t, jump(t, alice, roomID, bTS-1, "b"), a.String())
	wantJump(t, jump(t, alice, roomID, bTS+1000, "f"), "")
	wantJump(t, jump(t, alice, roomID, before, "b"), "")

	stranger := n.register(t, "")
	jump(t, stranger, roomID, aTS, "f").want(t, 403, "M_FORBIDDEN")
	doRaw(t, alice, http.MethodGet, alice.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "rooms", roomID.String(), "timestamp_to_event"}, map[string]string{"ts": "x", "dir": "f"}), nil, nil).want(t, 400, "M_INVALID_PARAM")
	doRaw(t, alice, http.MethodGet, alice.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "rooms", roomID.String(), "timestamp_to_event"}, map[string]string{"ts": "1", "dir": "x"}), nil, nil).want(t, 400, "M_INVALID_PARAM")
}

// TestTimestampToEventFederated: bob's server joined after A and B were
// sent, so it holds neither; it asks alice's server
// (GET /_matrix/federation/v1/timestamp_to_event) and backfills the
// answer so bob can read it.
func TestTimestampToEventFederated(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca)
	b := startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	var ids []id.EventID
	var stamps []int64
	for _, body := range []string{"A", "B"} {
		time.Sleep(5 * time.Millisecond)
		resp, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := alice.GetEvent(ctxT(t), roomID, resp.EventID)
		if err != nil {
			t.Fatal(err)
		}
		ids, stamps = append(ids, resp.EventID), append(stamps, ev.Timestamp)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	// /joined_members waits for a faster join's full state, whose resync
	// keeps B (the event the state was fetched at) as an outlier: held,
	// yet still to be placed in the history.
	if _, err := bob.JoinedMembers(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	wantJump(t, jump(t, bob, roomID, stamps[1]+1, "b"), ids[1].String())
	if _, err := bob.GetEvent(ctxT(t), roomID, ids[1]); err != nil {
		t.Fatalf("the answer was not backfilled: %v", err)
	}
	// /context on the backfilled answer gives tokens /messages pages from:
	// before B (start) reaches A, after B (end) reaches both.
	var ctx mautrix.RespContext
	u := bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID.String(), "context", ids[1].String()}, map[string]string{"limit": "0"})
	if _, err := bob.MakeRequest(ctxT(t), http.MethodGet, u, nil, &ctx); err != nil {
		t.Fatalf("context of the backfilled event: %v", err)
	}
	for _, tc := range []struct {
		from string
		want []id.EventID
	}{{ctx.Start, ids[:1]}, {ctx.End, ids}} {
		page, err := bob.Messages(ctxT(t), roomID, tc.from, "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatalf("messages from %s: %v", tc.from, err)
		}
		got := map[id.EventID]bool{}
		for _, ev := range page.Chunk {
			got[ev.ID] = true
		}
		for _, w := range tc.want {
			if !got[w] {
				t.Errorf("messages back from %s lack %s", tc.from, w)
			}
		}
		if tc.from == ctx.Start && got[ids[1]] {
			t.Errorf("messages back from start %s include B itself", tc.from)
		}
	}
	wantJump(t, jump(t, bob, roomID, stamps[0], "f"), ids[0].String())
}

// TestEventStampsBetweenClockReadings: a new room's events are stamped
// strictly after any time its client read before createRoom and strictly
// before any time read after the answer, and a message strictly before
// any time read after its send's answer (not before the previous reading),
// even when a request takes less than a millisecond; so
// timestamp_to_event, inclusive at ts, finds nothing before a room created
// after ts was read, nor a later event at a ts read right after an earlier
// one (Complement's TestJumpToDateEndpoint raced this).
func TestEventStampsBetweenClockReadings(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ctx := ctxT(t)
	before := time.Now().UnixMilli()
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	afterCreate := time.Now().UnixMilli()
	wantJump(t, jump(t, alice, roomID, before, "b"), "")
	wantJump(t, jump(t, alice, roomID, afterCreate, "f"), "")
	for i := range 20 {
		before := time.Now().UnixMilli()
		resp, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		after := time.Now().UnixMilli()
		ev, err := alice.GetEvent(ctx, roomID, resp.EventID)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Timestamp < before || ev.Timestamp >= after {
			t.Fatalf("message %d stamped %d, not in [%d, %d), the clock readings around its send", i, ev.Timestamp, before, after)
		}
		wantJump(t, jump(t, alice, roomID, before, "f"), resp.EventID.String())
		wantJump(t, jump(t, alice, roomID, after, "b"), resp.EventID.String())
	}
}
