package integration

import (
	"encoding/json"
	"fmt"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// messagesRaw calls GET /rooms/{roomId}/messages with query parameters as
// given, for filters mautrix's FilterPart cannot express.
func messagesRaw(t *testing.T, c *mautrix.Client, roomID id.RoomID, query map[string]string) (*mautrix.RespMessages, error) {
	t.Helper()
	var resp mautrix.RespMessages
	u := c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "messages"}, query)
	_, err := c.MakeRequest(ctxT(t), "GET", u, nil, &resp)
	return &resp, err
}

func eventIDsOf(evs []*event.Event) []id.EventID {
	out := []id.EventID{}
	for _, ev := range evs {
		out = append(out, ev.ID)
	}
	return out
}

// Complement "Setting state twice is idempotent": the same state from the
// same sender answers the current event and adds nothing to the timeline.
func TestComplementClientStateTwice(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	typ := event.NewEventType("a.test.state.type")
	content := map[string]any{"a_key": "a_value", "n": 1}

	first, err := alice.SendStateEvent(ctx, roomID, typ, "", content)
	if err != nil {
		t.Fatal(err)
	}
	// Same content with keys in another order is still the same content.
	var second mautrix.RespSendEvent
	u := alice.BuildClientURL("v3", "rooms", roomID, "state", typ.Type, "")
	if _, err := alice.MakeRequest(ctx, "PUT", u, json.RawMessage(`{"n":1,  "a_key":"a_value"}`), &second); err != nil {
		t.Fatal(err)
	}
	if first.EventID != second.EventID {
		t.Fatalf("same state twice gave %s then %s", first.EventID, second.EventID)
	}
	changed, err := alice.SendStateEvent(ctx, roomID, typ, "", map[string]any{"a_key": "other"})
	if err != nil {
		t.Fatal(err)
	}
	if changed.EventID == first.EventID {
		t.Fatal("changed content answered the old event")
	}
	resp, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, &mautrix.FilterPart{Types: []event.Type{typ}}, 50)
	if err != nil {
		t.Fatal(err)
	}
	if got := eventIDsOf(resp.Chunk); fmt.Sprint(got) != fmt.Sprint([]id.EventID{changed.EventID, first.EventID}) {
		t.Fatalf("timeline holds %v, want %s and %s once each", got, changed.EventID, first.EventID)
	}
}

// Complement TestRoomImageRoundtrip: a page with events carries an end
// token even when it reached the start of the room; the page after it is
// empty and has none.
func TestComplementClientMessagesEnd(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	sendText(t, alice, roomID, "test")
	file, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{"msgtype": "m.file", "body": "test.png", "url": "mxc://example.org/abc"})
	if err != nil {
		t.Fatal(err)
	}

	page, err := messagesRaw(t, alice, roomID, map[string]string{"dir": "b", "filter": `{"contains_url":true}`})
	if err != nil {
		t.Fatal(err)
	}
	if got := eventIDsOf(page.Chunk); fmt.Sprint(got) != fmt.Sprint([]id.EventID{file.EventID}) {
		t.Fatalf("contains_url page: %v, want [%s]", got, file.EventID)
	}
	if page.Start == "" || page.End == "" {
		t.Fatalf("start %q end %q: both must be set", page.Start, page.End)
	}
	after, err := messagesRaw(t, alice, roomID, map[string]string{"dir": "b", "from": page.End, "filter": `{"contains_url":true}`})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Chunk) != 0 || after.End != "" {
		t.Fatalf("past the start: %d events, end %q; want none and no end", len(after.Chunk), after.End)
	}

	// Forwards to the newest event likewise, and the next page is empty.
	fwd, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionForward, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(fwd.Chunk) == 0 || fwd.End == "" {
		t.Fatalf("forwards: %d events, end %q", len(fwd.Chunk), fwd.End)
	}
	if last := fwd.Chunk[len(fwd.Chunk)-1].ID; last != file.EventID {
		t.Fatalf("forwards ends at %s, want %s", last, file.EventID)
	}
	more, err := alice.Messages(ctx, roomID, fwd.End, "", mautrix.DirectionForward, nil, 100)
	if err != nil || len(more.Chunk) != 0 {
		t.Fatalf("after the newest event: %v %v", eventIDsOf(more.Chunk), err)
	}
}

// Complement TestFilterMessagesByRelType (MSC3874): rel_types and
// not_rel_types, under the unstable prefix and the stable names.
func TestComplementClientMessagesRelTypes(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	before, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	root := sendText(t, alice, roomID, "root")
	relate := func(relType, body string) id.EventID {
		resp, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{
			"msgtype": "m.text", "body": body,
			"m.relates_to": map[string]any{"event_id": root, "rel_type": relType},
		})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID
	}
	thread := relate("m.thread", "threaded")
	ref := relate("m.reference", "reference")

	for _, prefix := range []string{"org.matrix.msc3874.", ""} {
		for _, tc := range []struct {
			filter string
			want   []id.EventID
		}{
			{`{"%srel_types":["m.thread"]}`, []id.EventID{thread}},
			{`{"%srel_types":["m.reference"]}`, []id.EventID{ref}},
			{`{"%srel_types":["m.thread","m.reference"]}`, []id.EventID{thread, ref}},
			{`{"%snot_rel_types":["m.thread"]}`, []id.EventID{root, ref}},
			{`{"%snot_rel_types":["m.reference"]}`, []id.EventID{root, thread}},
			{`{"%snot_rel_types":["m.thread","m.reference"]}`, []id.EventID{root}},
		} {
			f := fmt.Sprintf(tc.filter, prefix)
			page, err := messagesRaw(t, alice, roomID, map[string]string{"dir": "f", "from": before.NextBatch, "filter": f})
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if got := eventIDsOf(page.Chunk); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("%s: got %v, want %v", f, got, tc.want)
			}
		}
	}
	_, err = messagesRaw(t, alice, roomID, map[string]string{"filter": `{"rel_types":"m.thread"}`})
	wantMatrixErr(t, err, 400, "M_BAD_JSON")
}

// Complement TestRoomForget "Forgotten room messages cannot be paginated":
// after /forget the room's history and state are closed to the user.
func TestComplementClientForgottenRoom(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	sendText(t, alice, roomID, "Hello world!")
	if _, err := alice.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	// Having left, alice still reads what she saw.
	page, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 10)
	if err != nil || len(page.Chunk) == 0 {
		t.Fatalf("after leaving: %d events, %v", len(page.Chunk), err)
	}
	if _, err := alice.ForgetRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	_, err = alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 10)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.State(ctx, roomID)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	// Bob, still joined, is unaffected.
	if page, err := bob.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 10); err != nil || len(page.Chunk) == 0 {
		t.Fatalf("bob: %d events, %v", len(page.Chunk), err)
	}
}
