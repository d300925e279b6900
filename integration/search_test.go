package integration

import (
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func searchReq(term string, extra map[string]any) map[string]any {
	crit := map[string]any{"search_term": term}
	for k, v := range extra {
		crit[k] = v
	}
	return map[string]any{"search_categories": map[string]any{"room_events": crit}}
}

func searchResultIDs(resp map[string]any) []string {
	var out []string
	a, _ := dig(resp, "search_categories", "room_events", "results").([]any)
	for _, r := range a {
		if s, ok := dig(r, "result", "event_id").(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func searchSend(t testing.TB, c *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	return sendJSON(t, c, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

// TestSearchRoomEvents: search finds what was sent in rooms the user may
// see and nothing else, ranks and orders, pages, gives context, groups by
// room, matches names and topics, and forgets redacted events.
func TestSearchRoomEvents(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	ctx := ctxT(t)
	shared := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Gardening Club", Topic: "Tomatoes and basil"})
	if _, err := bob.JoinRoomByID(ctx, shared); err != nil {
		t.Fatal(err)
	}
	private := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	// A room bob joins after the fact, with history only for members.
	late := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
		Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}},
	}}})

	before := searchSend(t, alice, shared, "warming up")
	e1 := searchSend(t, alice, shared, "The quick brown fox")
	after := searchSend(t, bob, shared, "jumps over")
	e2 := searchSend(t, bob, shared, "quick quick QUICK, said the fox")
	secret := searchSend(t, alice, private, "quick secret plans")
	early := searchSend(t, alice, late, "quick words before bob")
	if _, err := bob.JoinRoomByID(ctx, late); err != nil {
		t.Fatal(err)
	}
	e3 := searchSend(t, alice, late, "quick words after bob joined")

	// Bob: only what he may see; rank puts the triple "quick" first.
	st, resp := relHTTP(t, bob, "POST", "/_matrix/client/v3/search", searchReq("quick", nil))
	if st != 200 {
		t.Fatalf("search: %d %v", st, resp)
	}
	got := searchResultIDs(resp)
	if len(got) != 3 || got[0] != string(e2) {
		t.Fatalf("bob's results = %v, want %s first of [%s %s %s]", got, e2, e2, e1, e3)
	}
	for _, g := range got {
		if g == string(secret) || g == string(early) {
			t.Fatalf("bob found %s, which he may not see", g)
		}
	}
	if c := dig(resp, "search_categories", "room_events", "count"); c != float64(3) {
		t.Fatalf("count = %v", c)
	}
	// Alice sees all five; recent order is newest first.
	_, resp = relHTTP(t, alice, "POST", "/_matrix/client/v3/search", searchReq("quick", map[string]any{"order_by": "recent"}))
	got = searchResultIDs(resp)
	want := []string{string(e3), string(early), string(secret), string(e2), string(e1)}
	if len(got) != len(want) {
		t.Fatalf("alice's recent results = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("alice's recent results = %v, want %v", got, want)
		}
	}
	// Several words: all must occur (prefix for longer words).
	_, resp = relHTTP(t, alice, "POST", "/_matrix/client/v3/search", searchReq("QUICK bro", nil))
	if got := searchResultIDs(resp); len(got) != 1 || got[0] != string(e1) {
		t.Fatalf("'QUICK bro' = %v, want [%s]", got, e1)
	}

	// Pagination with next_batch, two at a time, no duplicates.
	seen := map[string]bool{}
	next := ""
	for page := 0; page < 5; page++ {
		path := "/_matrix/client/v3/search"
		if next != "" {
			path += "?next_batch=" + next
		}
		_, resp = relHTTP(t, alice, "POST", path, searchReq("quick", map[string]any{"order_by": "recent", "filter": map[string]any{"limit": 2}}))
		ids := searchResultIDs(resp)
		if len(ids) > 2 {
			t.Fatalf("page of %d with limit 2", len(ids))
		}
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("%s on two pages", id)
			}
			seen[id] = true
		}
		next, _ = dig(resp, "search_categories", "room_events", "next_batch").(string)
		if next == "" {
			break
		}
	}
	if len(seen) != 5 {
		t.Fatalf("paged through %d results, want 5", len(seen))
	}

	// Context around the hit and groups by room.
	_, resp = relHTTP(t, bob, "POST", "/_matrix/client/v3/search", searchReq("brown", map[string]any{
		"event_context": map[string]any{"before_limit": 1, "after_limit": 1, "include_profile": true},
		"groupings":     map[string]any{"group_by": []any{map[string]any{"key": "room_id"}}},
	}))
	res := dig(resp, "search_categories", "room_events", "results", 0)
	if dig(res, "result", "event_id") != string(e1) {
		t.Fatalf("brown: %v", resp)
	}
	if b := chunkIDs(dig(res, "context", "events_before")); len(b) != 1 || b[0] != string(before) {
		t.Fatalf("events_before = %v, want [%s]", b, before)
	}
	if a := chunkIDs(dig(res, "context", "events_after")); len(a) != 1 || a[0] != string(after) {
		t.Fatalf("events_after = %v, want [%s]", a, after)
	}
	if dig(res, "context", "profile_info", string(alice.UserID)) == nil {
		t.Fatalf("no profile_info for alice: %v", dig(res, "context"))
	}
	if g := dig(resp, "search_categories", "room_events", "groups", "room_id", string(shared), "results", 0); g != string(e1) {
		t.Fatalf("groups = %v", dig(resp, "search_categories", "room_events", "groups"))
	}

	// Room names and topics are searchable, and keys narrow the fields.
	_, resp = relHTTP(t, bob, "POST", "/_matrix/client/v3/search", searchReq("gardening", nil))
	if got := dig(resp, "search_categories", "room_events", "results", 0, "result", "type"); got != "m.room.name" {
		t.Fatalf("name search: %v", resp)
	}
	_, resp = relHTTP(t, bob, "POST", "/_matrix/client/v3/search", searchReq("basil", map[string]any{"keys": []string{"content.body"}}))
	if got := searchResultIDs(resp); len(got) != 0 {
		t.Fatalf("topic word found in bodies: %v", got)
	}
	_, resp = relHTTP(t, bob, "POST", "/_matrix/client/v3/search", searchReq("basil", map[string]any{"keys": []string{"content.topic"}}))
	if got := dig(resp, "search_categories", "room_events", "results", 0, "result", "type"); got != "m.room.topic" {
		t.Fatalf("topic search: %v", resp)
	}

	// A redacted event is not found any more.
	if _, err := bob.RedactEvent(ctx, shared, e2); err != nil {
		t.Fatal(err)
	}
	_, resp = relHTTP(t, bob, "POST", "/_matrix/client/v3/search", searchReq("quick", nil))
	for _, g := range searchResultIDs(resp) {
		if g == string(e2) {
			t.Fatal("redacted event still found")
		}
	}

	// Bad input.
	for name, body := range map[string]any{
		"no categories": map[string]any{},
		"no term":       map[string]any{"search_categories": map[string]any{"room_events": map[string]any{}}},
	} {
		if st, r := relHTTP(t, bob, "POST", "/_matrix/client/v3/search", body); st != 400 || r["errcode"] != "M_BAD_JSON" {
			t.Fatalf("%s: %d %v", name, st, r)
		}
	}
	if st, r := relHTTP(t, bob, "POST", "/_matrix/client/v3/search", searchReq("x", map[string]any{"order_by": "size"})); st != 400 || r["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("order_by=size: %d %v", st, r)
	}
	if st, r := relHTTP(t, bob, "POST", "/_matrix/client/v3/search?next_batch=zzz", searchReq("x", nil)); st != 400 || r["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad next_batch: %d %v", st, r)
	}
}

// TestSearchMautrixClient drives the endpoint through mautrix's own types.
func TestSearchMautrixClient(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	want := searchSend(t, alice, roomID, "needle in a haystack")
	searchSend(t, alice, roomID, "just hay")
	re, err := alice.Search(ctxT(t), &mautrix.ReqSearch{SearchTerm: "needle", OrderBy: "recent"})
	if err != nil {
		t.Fatal(err)
	}
	if re == nil || len(re.Results) != 1 || re.Results[0].Event.ID != want || re.Count != 1 {
		t.Fatalf("search = %+v", re)
	}
}
