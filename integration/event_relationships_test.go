package integration

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// threadReply sends a message naming parent in m.relationship (MSC2836);
// no parent: a thread root.
func threadReply(t *testing.T, c *mautrix.Client, roomID id.RoomID, body, parent string) string {
	t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body}
	if parent != "" {
		content["m.relationship"] = map[string]any{"rel_type": "m.reference", "event_id": parent}
	}
	resp, err := c.SendMessageEvent(ctxT(t), roomID, event.EventMessage, content)
	if err != nil {
		t.Fatalf("send %s: %v", body, err)
	}
	time.Sleep(2 * time.Millisecond) // distinct origin_server_ts, which orders siblings
	return resp.EventID.String()
}

type threadAnswerJSON struct {
	Events []struct {
		EventID  string `json:"event_id"`
		Unsigned struct {
			Children     map[string]int `json:"children"`
			ChildrenHash string         `json:"children_hash"`
		} `json:"unsigned"`
	} `json:"events"`
	Limited   *bool  `json:"limited"`
	NextBatch string `json:"next_batch"`
}

func (a threadAnswerJSON) ids() []string {
	var out []string
	for _, ev := range a.Events {
		out = append(out, ev.EventID)
	}
	return out
}

// eventRelationships POSTs body to /event_relationships and decodes a 200.
func eventRelationships(t *testing.T, c *mautrix.Client, body map[string]any) threadAnswerJSON {
	t.Helper()
	raw, _ := json.Marshal(body)
	r := doRaw(t, c, "POST", c.BuildURL(mautrix.ClientURLPath{"unstable", "event_relationships"}), raw, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("event_relationships %s: HTTP %d %s", raw, r.Status, r.Raw)
	}
	var out threadAnswerJSON
	if err := json.Unmarshal(r.Raw, &out); err != nil || out.Limited == nil {
		t.Fatalf("event_relationships answer %s: %v (limited must be present)", r.Raw, err)
	}
	return out
}

func wantThread(t *testing.T, what string, got threadAnswerJSON, names map[string]string, want ...string) {
	t.Helper()
	if !slices.Equal(got.ids(), want) {
		name := func(ids []string) []string {
			var out []string
			for _, id := range ids {
				out = append(out, names[id])
			}
			return out
		}
		t.Fatalf("%s: got %v, want %v", what, name(got.ids()), name(want))
	}
}

// wantChildren checks an event's unsigned children count and hash.
func wantChildren(t *testing.T, got threadAnswerJSON, i int, children ...string) {
	t.Helper()
	ev := got.Events[i]
	if ev.Unsigned.Children["m.reference"] != len(children) {
		t.Fatalf("event %d: unsigned.children %v, want m.reference: %d", i, ev.Unsigned.Children, len(children))
	}
	sorted := slices.Sorted(slices.Values(children))
	sum := sha256.Sum256([]byte(strings.Join(sorted, "")))
	if ev.Unsigned.ChildrenHash != base64.RawStdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("event %d: children_hash %q does not match its children", i, ev.Unsigned.ChildrenHash)
	}
}

// TestEventRelationshipsLocal walks an MSC2836 thread on one server:
//
//	  A
//	 / \
//	B   X
//	|\
//	C D
//
// up and down, breadth and depth first, within max_depth, max_breadth and
// limit (paged by next_batch), with the unsigned children counts; and
// refuses bad requests and users who may not see the room.
func TestEventRelationshipsLocal(t *testing.T) {
	n := startNode(t)
	alice, eve := n.register(t, "alice"), n.register(t, "eve")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	a := threadReply(t, alice, roomID, "A", "")
	b := threadReply(t, alice, roomID, "B", a)
	x := threadReply(t, alice, roomID, "X", a)
	c := threadReply(t, alice, roomID, "C", b)
	d := threadReply(t, alice, roomID, "D", b)
	// A reply by m.relates_to is a spec relation, not a thread child.
	rel, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{
		"msgtype": "m.text", "body": "R",
		"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": a},
	})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{a: "A", b: "B", c: "C", d: "D", x: "X", rel.EventID.String(): "R"}
	rid := roomID.String()

	got := eventRelationships(t, alice, map[string]any{"event_id": d, "room_id": rid, "include_parent": true})
	wantThread(t, "D with its parent", got, names, d, b)
	wantChildren(t, got, 1, c, d)
	if *got.Limited {
		t.Fatal("limited: true for a whole answer")
	}
	got = eventRelationships(t, alice, map[string]any{"event_id": b, "include_parent": true, "recent_first": false})
	wantThread(t, "B down, oldest first", got, names, b, a, c, d)
	wantChildren(t, got, 1, b, x)
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "recent_first": false})
	wantThread(t, "A breadth first", got, names, a, b, x, c, d)
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "recent_first": false, "depth_first": true})
	wantThread(t, "A depth first", got, names, a, b, c, d, x)
	got = eventRelationships(t, alice, map[string]any{"event_id": a})
	wantThread(t, "A newest first", got, names, a, x, b, d, c)
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "max_depth": 1, "recent_first": false})
	wantThread(t, "A to depth 1", got, names, a, b, x)
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "max_breadth": 1, "recent_first": false})
	wantThread(t, "A one child each", got, names, a, b, c)
	got = eventRelationships(t, alice, map[string]any{"event_id": c, "direction": "up", "max_depth": -1})
	wantThread(t, "C up", got, names, c, b, a)
	got = eventRelationships(t, alice, map[string]any{"event_id": b, "include_children": true, "max_depth": 0})
	wantThread(t, "B with its children only", got, names, b, d, c)

	// limit pages through next_batch
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "recent_first": false, "limit": 2})
	wantThread(t, "page 1", got, names, a, b)
	if !*got.Limited || got.NextBatch == "" {
		t.Fatalf("page 1: limited %v next_batch %q", *got.Limited, got.NextBatch)
	}
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "recent_first": false, "limit": 2, "batch": got.NextBatch})
	wantThread(t, "page 2", got, names, x, c)
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "recent_first": false, "limit": 2, "batch": got.NextBatch})
	wantThread(t, "page 3", got, names, d)
	if *got.Limited || got.NextBatch != "" {
		t.Fatalf("last page: limited %v next_batch %q", *got.Limited, got.NextBatch)
	}

	// The two relation fields stay apart: /relations does not list thread
	// children, the walk does not list m.relates_to replies.
	var relResp struct {
		Chunk []struct {
			EventID string `json:"event_id"`
		} `json:"chunk"`
	}
	if _, err := alice.MakeRequest(ctxT(t), "GET", alice.BuildClientURL("v1", "rooms", roomID, "relations", a), nil, &relResp); err != nil {
		t.Fatal(err)
	}
	if len(relResp.Chunk) != 1 || relResp.Chunk[0].EventID != rel.EventID.String() {
		t.Fatalf("/relations of A: %+v, want only R", relResp.Chunk)
	}

	post := func(c *mautrix.Client, body string) rawResp {
		return doRaw(t, c, "POST", c.BuildURL(mautrix.ClientURLPath{"unstable", "event_relationships"}), []byte(body), nil)
	}
	post(alice, `{"room_id":"`+rid+`"}`).want(t, http.StatusBadRequest, "M_MISSING_PARAM")
	post(alice, `{"event_id":"`+a+`","direction":"sideways"}`).want(t, http.StatusBadRequest, "M_INVALID_PARAM")
	post(alice, `{"event_id":"not-an-id"}`).want(t, http.StatusBadRequest, "M_INVALID_PARAM")
	post(alice, `{"event_id":"`+a+`","batch":"nonsense"}`).want(t, http.StatusBadRequest, "M_INVALID_PARAM")
	post(alice, `{"event_id":"`+a+`","limit":"ten"}`).want(t, http.StatusBadRequest, "M_BAD_JSON")
	post(alice, `{"event_id":`).want(t, http.StatusBadRequest, "M_NOT_JSON")
	post(alice, `{"event_id":"$unknown:nowhere"}`).want(t, http.StatusForbidden, "M_FORBIDDEN")
	post(alice, `{"event_id":"`+a+`","room_id":"!other:nowhere"}`).want(t, http.StatusForbidden, "M_FORBIDDEN")
	// eve is not in the (private, shared-history) room
	post(eve, `{"event_id":"`+a+`"}`).want(t, http.StatusForbidden, "M_FORBIDDEN")
	// large values are capped, not refused
	got = eventRelationships(t, alice, map[string]any{"event_id": a, "limit": 1 << 30, "max_depth": 1 << 30, "max_breadth": 1 << 30})
	if len(got.Events) != 5 || *got.Limited {
		t.Fatalf("capped walk: %v limited %v", got.ids(), *got.Limited)
	}
}

// TestEventRelationshipsFederated: a thread sent on A before bob's server
// B joined. B asks A for what it lacks (the event itself, its parent, the
// parent's other children, which A counts in unsigned.children), stores
// it as authorised outliers, and answers bob as A would. A answers only
// servers in the room.
func TestEventRelationshipsFederated(t *testing.T) {
	ca := newRFCA(t)
	a, b, c := startRFNode(t, ca), startRFNode(t, ca), startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	bob := &rfSyncer{c: b.register(t, "bob")}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	evA := threadReply(t, alice.c, roomID, "A", "")
	evB := threadReply(t, alice.c, roomID, "B", evA)
	evC := threadReply(t, alice.c, roomID, "C", evB)
	evD := threadReply(t, alice.c, roomID, "D", evB)
	names := map[string]string{evA: "A", evB: "B", evC: "C", evD: "D"}
	if _, err := bob.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins through A: %v", err)
	}
	isBobJoin := func(ev *event.Event) bool {
		return ev.GetStateKey() == bob.c.UserID.String() && ev.Content.Raw["membership"] == "join"
	}
	bob.until(t, "his join", rfHasEvent("m.room.member", isBobJoin))
	_ = b.Store.View(func(tx *store.Tx) error {
		if _, err := b.Rooms.EventByID(tx, evC); err == nil {
			t.Fatal("B holds C before any walk: the test proves nothing")
		}
		return nil
	})

	got := eventRelationships(t, bob.c, map[string]any{"event_id": evD, "room_id": roomID.String(), "include_parent": true})
	wantThread(t, "D with its parent", got, names, evD, evB)
	wantChildren(t, got, 1, evC, evD)
	got = eventRelationships(t, bob.c, map[string]any{"event_id": evB, "room_id": roomID.String(), "include_parent": true, "recent_first": false})
	wantThread(t, "B down", got, names, evB, evA, evC, evD)
	wantChildren(t, got, 1, evB)
	_ = b.Store.View(func(tx *store.Tx) error {
		for _, eid := range []string{evA, evB, evC, evD} {
			ev, err := b.Rooms.EventByID(tx, eid)
			if err != nil {
				t.Errorf("B did not keep %s: %v", names[eid], err)
			} else if ev.Flags&store.FlagRejected != 0 {
				t.Errorf("B rejected %s", names[eid])
			}
		}
		return nil
	})

	// A answers servers in the room with the auth chain and child counts,
	// and nobody else.
	var ans struct {
		Events    []json.RawMessage `json:"events"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	body := map[string]any{"event_id": evA, "max_depth": 1}
	if err := b.Fed.Client.Post(ctxT(t), a.Name, "/_matrix/federation/unstable/event_relationships", body, &ans); err != nil {
		t.Fatal(err)
	}
	if len(ans.Events) != 2 || len(ans.AuthChain) == 0 {
		t.Fatalf("federation answer: %d events, %d auth events", len(ans.Events), len(ans.AuthChain))
	}
	if n := childCount(ans.Events[0]); n != 1 {
		t.Fatalf("A's unsigned children over federation: %d, want 1", n)
	}
	if err := c.Fed.Client.Post(ctxT(t), a.Name, "/_matrix/federation/unstable/event_relationships", body, &ans); err == nil {
		t.Fatal("a server with no member in the room read its thread")
	}
	bad := map[string]any{"event_id": evA, "direction": "sideways"}
	if err := b.Fed.Client.Post(ctxT(t), a.Name, "/_matrix/federation/unstable/event_relationships", bad, &ans); err == nil || !strings.Contains(err.Error(), "M_INVALID_PARAM") {
		t.Fatalf("bad direction over federation: %v", err)
	}

	// carol's server C joins and walks up from D: it learns D, B, A, and
	// that B has a child (C) it was not given; walking B then fetches it.
	carol := &rfSyncer{c: c.register(t, "carol")}
	if _, err := carol.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("carol joins through A: %v", err)
	}
	got = eventRelationships(t, carol.c, map[string]any{"event_id": evD, "room_id": roomID.String(), "direction": "up", "max_depth": 10})
	wantThread(t, "D up on C", got, names, evD, evB, evA)
	got = eventRelationships(t, carol.c, map[string]any{"event_id": evA, "max_depth": 1})
	wantThread(t, "A's children on C", got, names, evA, evB)
	got = eventRelationships(t, carol.c, map[string]any{"event_id": evB, "recent_first": false})
	wantThread(t, "B's children on C", got, names, evB, evC, evD)
}

func childCount(raw json.RawMessage) int {
	var w struct {
		Unsigned struct {
			Children map[string]int `json:"children"`
		} `json:"unsigned"`
	}
	_ = json.Unmarshal(raw, &w)
	return w.Unsigned.Children["m.reference"]
}
