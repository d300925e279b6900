package integration

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/store"
)

// TestSyncInitialTopologicalOrder: bob's server forks the room at E1 with
// a state event S2 (bob's new display name) that reaches A only after
// alice's E3 and E4; alice then sends E5, merging the forks. An initial
// sync whose filter leaves E5 out and keeps one event shows E4 (newest by
// depth), not S2 (newest by arrival), and S2 in its state, since that is
// the room's current state and the timeline does not carry it
// (Complement's TestSyncOmitsStateChangeOnFilteredEvents, Synapse's
// order). An incremental sync still gives S2 and E5 in arrival order, and
// the initial sync's prev_batch pages on from before E4.
func TestSyncInitialTopologicalOrder(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	ctx := ctxT(t)
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	send := func(evType, body string) string {
		resp, err := alice.c.SendMessageEvent(ctx, roomID, event.Type{Type: evType, Class: event.MessageEventType}, map[string]any{"msgtype": "m.text", "body": body})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID.String()
	}
	e1 := send("m.room.message", "E1")
	waitFor(t, 10*time.Second, "B has E1", func() bool {
		return b.Store.View(func(tx *store.Tx) error { _, err := tx.EventByID(e1); return err }) == nil
	})
	// S2 is built on B's state at E1 and not stored on B.
	bobID := bob.c.UserID.String()
	content, _ := json.Marshal(map[string]any{"membership": "join", "displayname": "bob of S2"})
	s2, s2ID := h.forge(room.Proto{Type: "m.room.member", StateKey: &bobID, Sender: bobID, Content: content}, nil)
	e3 := send("m.room.message", "E3")
	e4 := send("m.room.message", "E4")
	before := rawSync(t, alice, "", "")
	if verdict := h.send(s2, s2ID); verdict != "" {
		t.Fatalf("A refused S2: %s", verdict)
	}
	e5 := send("please_filter_me", "E5")

	filter := `{"room":{"timeline":{"not_types":["please_filter_me"],"limit":1}}}`
	resp := rawSync(t, alice, "", filter)
	jr := resp.Rooms.Join[roomID]
	if got := topoEventIDs(jr.Timeline.Events); !slices.Equal(got, []string{e4}) {
		t.Errorf("initial sync timeline = %v, want [E4 %s] (S2 is %s)", got, e4, s2ID)
	}
	if !jr.Timeline.Limited {
		t.Error("initial sync timeline of 1 of many events is not limited")
	}
	if !slices.Contains(topoEventIDs(jr.State.Events), s2ID) {
		t.Errorf("initial sync state %v lacks S2 %s, the current state it changed", topoEventIDs(jr.State.Events), s2ID)
	}

	// Incremental: what arrived since, in arrival order.
	inc := rawSync(t, alice, before.NextBatch, "")
	if got := topoEventIDs(inc.Rooms.Join[roomID].Timeline.Events); !slices.Equal(got, []string{s2ID, e5}) {
		t.Errorf("incremental timeline = %v, want [S2 %s, E5 %s]", got, s2ID, e5)
	}

	// prev_batch continues before E4, without repeating it.
	var page struct {
		Chunk []struct {
			EventID string `json:"event_id"`
		} `json:"chunk"`
	}
	u := alice.c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "messages"}, map[string]string{"dir": "b", "from": jr.Timeline.PrevBatch, "limit": "1"})
	if _, err := alice.c.MakeRequest(ctx, "GET", u, nil, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Chunk) != 1 || page.Chunk[0].EventID != e3 {
		t.Errorf("/messages from prev_batch %s = %v, want E3 %s", jr.Timeline.PrevBatch, page.Chunk, e3)
	}
}

type rawSyncEvent struct {
	EventID string `json:"event_id"`
	Type    string `json:"type"`
}

type rawSyncResp struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[id.RoomID]struct {
			Timeline struct {
				Events    []rawSyncEvent `json:"events"`
				Limited   bool           `json:"limited"`
				PrevBatch string         `json:"prev_batch"`
			} `json:"timeline"`
			State struct {
				Events []rawSyncEvent `json:"events"`
			} `json:"state"`
		} `json:"join"`
	} `json:"rooms"`
}

// rawSync is one /sync (initial when since is empty) with a filter given
// inline.
func rawSync(t *testing.T, s *rfSyncer, since, filter string) rawSyncResp {
	t.Helper()
	q := url.Values{"timeout": {"0"}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	qm := map[string]string{}
	for k := range q {
		qm[k] = q.Get(k)
	}
	var resp rawSyncResp
	if _, err := s.c.MakeRequest(ctxT(t), "GET", s.c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, qm), nil, &resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func topoEventIDs(evs []rawSyncEvent) []string {
	out := []string{}
	for _, ev := range evs {
		out = append(out, ev.EventID)
	}
	return out
}
