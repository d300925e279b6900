package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// relHTTP sends a request with c's token (body nil: none) and returns the
// status and decoded JSON object, whatever the status.
func relHTTP(t testing.TB, c *mautrix.Client, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, c.HomeserverURL.String()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// dig walks nested JSON objects and arrays (string keys, int indexes).
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				return nil
			}
			v = a[k]
		}
	}
	return v
}

func chunkIDs(v any) []string {
	var out []string
	a, _ := v.([]any)
	for _, e := range a {
		if s, ok := dig(e, "event_id").(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func sendJSON(t testing.TB, c *mautrix.Client, roomID id.RoomID, evType string, content map[string]any) id.EventID {
	t.Helper()
	resp, err := c.SendMessageEvent(ctxT(t), roomID, event.Type{Type: evType, Class: event.MessageEventType}, content)
	if err != nil {
		t.Fatalf("send %s: %v", evType, err)
	}
	return resp.EventID
}

func relPath(roomID id.RoomID, parts ...string) string {
	p := "/_matrix/client/v1/rooms/" + url.PathEscape(string(roomID))
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

func thread(root id.EventID) map[string]any {
	return map[string]any{"rel_type": "m.thread", "event_id": root, "is_falling_back": true}
}

// TestRelationsListAndAggregations sends a thread, an edit, a reaction and
// a reference to one message and reads them back through /relations (with
// each filter, pagination and recurse) and as bundled aggregations on the
// root as the second user sees it in /event, /messages and /sync.
func TestRelationsListAndAggregations(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, ""), n.register(t, ""), n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	root := sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "root"})
	reply1 := sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "r1", "m.relates_to": thread(root)})
	reply2 := sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "r2", "m.relates_to": thread(root)})
	edit := sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* root!",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "root!"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": root}})
	// An edit by someone else is listed but never applied.
	bogusEdit := sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* hijack",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "hijack"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": root}})
	reaction := sendJSON(t, bob, roomID, "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": root, "key": "👍"}})
	ref := sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "see above", "m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
	nested := sendJSON(t, alice, roomID, "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": reply1, "key": "🎉"}})

	// Everything, newest first, paged by 3.
	var all []string
	from := ""
	for page := 0; page < 5; page++ {
		q := "?limit=3"
		if from != "" {
			q += "&from=" + url.QueryEscape(from)
		}
		st, resp := relHTTP(t, bob, "GET", relPath(roomID, "relations", string(root))+q, nil)
		if st != 200 {
			t.Fatalf("relations: %d %v", st, resp)
		}
		all = append(all, chunkIDs(resp["chunk"])...)
		next, _ := resp["next_batch"].(string)
		if next == "" {
			break
		}
		from = next
	}
	want := []string{string(ref), string(reaction), string(bogusEdit), string(edit), string(reply2), string(reply1)}
	if len(all) != len(want) {
		t.Fatalf("relations = %v, want %v", all, want)
	}
	for i := range want {
		if all[i] != want[i] {
			t.Fatalf("relations = %v, want %v", all, want)
		}
	}

	// Forwards, by rel_type, by rel_type and event type.
	resp, err := bob.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelThread, Dir: mautrix.DirectionForward})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Chunk) != 2 || resp.Chunk[0].ID != reply1 || resp.Chunk[1].ID != reply2 {
		t.Fatalf("m.thread forwards = %v", resp.Chunk)
	}
	resp, err = bob.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelAnnotation, EventType: event.EventReaction})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Chunk) != 1 || resp.Chunk[0].ID != reaction {
		t.Fatalf("m.annotation/m.reaction = %v", resp.Chunk)
	}
	resp, err = bob.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelAnnotation, EventType: event.EventMessage})
	if err != nil || len(resp.Chunk) != 0 {
		t.Fatalf("m.annotation/m.room.message = %v, %v", resp, err)
	}
	// recurse reaches the reaction to a thread reply.
	resp, err = bob.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelAnnotation, Recurse: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Chunk) != 2 || resp.Chunk[0].ID != nested || resp.RecursionDepth < 2 {
		t.Fatalf("recursive annotations = %v (depth %d)", resp.Chunk, resp.RecursionDepth)
	}

	// Bad input and invisible parents.
	if st, r := relHTTP(t, bob, "GET", relPath(roomID, "relations", string(root))+"?dir=sideways", nil); st != 400 || r["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("dir=sideways: %d %v", st, r)
	}
	if st, r := relHTTP(t, bob, "GET", relPath(roomID, "relations", "$nope"), nil); st != 404 || r["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("unknown event: %d %v", st, r)
	}
	if st, r := relHTTP(t, carol, "GET", relPath(roomID, "relations", string(root)), nil); st != 404 {
		t.Fatalf("non-member: %d %v", st, r)
	}

	checkBundle := func(where string, ev any, latest id.EventID, count float64) {
		t.Helper()
		rel := dig(ev, "unsigned", "m.relations")
		if got := dig(rel, "m.thread", "latest_event", "event_id"); got != string(latest) {
			t.Fatalf("%s: thread latest = %v, want %s (%v)", where, got, latest, rel)
		}
		if got := dig(rel, "m.thread", "count"); got != count {
			t.Fatalf("%s: thread count = %v, want %v", where, got, count)
		}
		if got := dig(rel, "m.thread", "current_user_participated"); got != true {
			t.Fatalf("%s: bob participated = %v", where, got)
		}
		if got := dig(rel, "m.replace", "event_id"); got != string(edit) {
			t.Fatalf("%s: m.replace = %v, want %s", where, got, edit)
		}
		if got := dig(rel, "m.reference", "chunk", 0, "event_id"); got != string(ref) {
			t.Fatalf("%s: m.reference = %v", where, got)
		}
		if got := dig(ev, "content", "body"); got != "root" {
			t.Fatalf("%s: original content changed: %v", where, got)
		}
	}
	st, evJSON := relHTTP(t, bob, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/event/"+url.PathEscape(string(root)), nil)
	if st != 200 {
		t.Fatalf("event: %d %v", st, evJSON)
	}
	checkBundle("/event", evJSON, reply2, 2)
	findRoot := func(evs any) any {
		a, _ := evs.([]any)
		for _, e := range a {
			if dig(e, "event_id") == string(root) {
				return e
			}
		}
		return nil
	}
	_, msgs := relHTTP(t, bob, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/messages?dir=b&limit=50", nil)
	checkBundle("/messages", findRoot(msgs["chunk"]), reply2, 2)
	filter := url.QueryEscape(`{"room":{"timeline":{"limit":50}}}`)
	_, sync := relHTTP(t, bob, "GET", "/_matrix/client/v3/sync?timeout=0&filter="+filter, nil)
	checkBundle("/sync", findRoot(dig(sync, "rooms", "join", string(roomID), "timeline", "events")), reply2, 2)

	// Redacting a reply takes it out of the list and the summary.
	if _, err := bob.RedactEvent(ctx, roomID, reply2); err != nil {
		t.Fatal(err)
	}
	resp, err = bob.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelThread})
	if err != nil || len(resp.Chunk) != 1 || resp.Chunk[0].ID != reply1 {
		t.Fatalf("after redaction: %v %v", resp, err)
	}
	_, evJSON = relHTTP(t, bob, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(string(roomID))+"/event/"+url.PathEscape(string(root)), nil)
	checkBundle("/event after redaction", evJSON, reply1, 1)
}

// TestRelationsHistoryVisibility: a user who joins a "joined"-visibility
// room does not see relations sent before they joined.
func TestRelationsHistoryVisibility(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
		Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}},
	}}})
	root := sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "early"})
	sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "early reply", "m.relates_to": thread(root)})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	if st, r := relHTTP(t, bob, "GET", relPath(roomID, "relations", string(root)), nil); st != 404 {
		t.Fatalf("relations of an event bob cannot see: %d %v", st, r)
	}
	late := sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "late"})
	sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after join", "m.relates_to": thread(late)})
	_ = sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "seen", "m.relates_to": thread(late)})
	resp, err := bob.GetRelations(ctx, roomID, late, &mautrix.ReqGetRelations{})
	if err != nil || len(resp.Chunk) != 2 {
		t.Fatalf("bob's relations of a visible event: %v %v", resp, err)
	}
}

// TestThreadsList lists thread roots by latest activity, pages through them
// without repeats, and filters to the threads a user took part in.
func TestThreadsList(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, ""), n.register(t, ""), n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatal(err)
		}
	}
	rootA := sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "A"})
	rootB := sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "B"})
	sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "a1", "m.relates_to": thread(rootA)})
	sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "b1", "m.relates_to": thread(rootB)})
	sendJSON(t, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "a2", "m.relates_to": thread(rootA)})
	sendJSON(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "not a thread"})

	path := relPath(roomID, "threads")
	st, resp := relHTTP(t, carol, "GET", path, nil)
	if st != 200 {
		t.Fatalf("threads: %d %v", st, resp)
	}
	if got := chunkIDs(resp["chunk"]); len(got) != 2 || got[0] != string(rootA) || got[1] != string(rootB) {
		t.Fatalf("threads = %v, want [%s %s]", got, rootA, rootB)
	}
	if c := dig(resp, "chunk", 0, "unsigned", "m.relations", "m.thread", "count"); c != float64(2) {
		t.Fatalf("thread A summary count = %v", c)
	}
	// One per page, no root twice.
	st, p1 := relHTTP(t, carol, "GET", path+"?limit=1", nil)
	next, _ := p1["next_batch"].(string)
	if st != 200 || next == "" || len(chunkIDs(p1["chunk"])) != 1 || chunkIDs(p1["chunk"])[0] != string(rootA) {
		t.Fatalf("page 1: %d %v", st, p1)
	}
	var rest []string
	for i := 0; next != "" && i < 10; i++ {
		_, p := relHTTP(t, carol, "GET", path+"?limit=1&from="+url.QueryEscape(next), nil)
		rest = append(rest, chunkIDs(p["chunk"])...)
		next, _ = p["next_batch"].(string)
	}
	if len(rest) != 1 || rest[0] != string(rootB) {
		t.Fatalf("later pages = %v, want [%s]", rest, rootB)
	}
	// participated: alice wrote root A and a reply; carol took part in none.
	_, resp = relHTTP(t, alice, "GET", path+"?include=participated", nil)
	if got := chunkIDs(resp["chunk"]); len(got) != 1 || got[0] != string(rootA) {
		t.Fatalf("alice participated = %v", got)
	}
	_, resp = relHTTP(t, carol, "GET", path+"?include=participated", nil)
	if got := chunkIDs(resp["chunk"]); len(got) != 0 {
		t.Fatalf("carol participated = %v", got)
	}
	if st, r := relHTTP(t, carol, "GET", path+"?include=mine", nil); st != 400 || r["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("include=mine: %d %v", st, r)
	}
	outsider := n.register(t, "")
	if st, r := relHTTP(t, outsider, "GET", path, nil); st != 403 || r["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("outsider: %d %v", st, r)
	}
}
