package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// ephEvent is an event as /sync returns it, content left raw.
type ephEvent struct {
	Type    string          `json:"type"`
	Sender  string          `json:"sender"`
	EventID string          `json:"event_id"`
	Content json.RawMessage `json:"content"`
}

type ephEvents struct {
	Events []ephEvent `json:"events"`
}

type ephJoinedRoom struct {
	Timeline            ephEvents      `json:"timeline"`
	Ephemeral           ephEvents      `json:"ephemeral"`
	AccountData         ephEvents      `json:"account_data"`
	UnreadNotifications map[string]int `json:"unread_notifications"`
}

// ephSyncResp is the part of a /sync response these tests read.
type ephSyncResp struct {
	NextBatch   string    `json:"next_batch"`
	Presence    ephEvents `json:"presence"`
	AccountData ephEvents `json:"account_data"`
	Rooms       struct {
		Join map[id.RoomID]ephJoinedRoom `json:"join"`
	} `json:"rooms"`
}

// ephSync calls /sync and decodes it raw, so the tests see exactly what
// the server sent. extra adds query parameters.
func ephSync(t *testing.T, c *mautrix.Client, since string, timeout time.Duration, extra ...string) *ephSyncResp {
	t.Helper()
	q := map[string]string{"timeout": strconv.FormatInt(timeout.Milliseconds(), 10)}
	if since != "" {
		q["since"] = since
	}
	for i := 0; i+1 < len(extra); i += 2 {
		q[extra[i]] = extra[i+1]
	}
	var resp ephSyncResp
	if _, err := c.MakeRequest(ctxT(t), http.MethodGet, c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, q), nil, &resp); err != nil {
		t.Fatalf("sync as %s: %v", c.UserID, err)
	}
	return &resp
}

// ephFind returns the first event of type evType, or nil.
func ephFind(evs []ephEvent, evType string) *ephEvent {
	for i := range evs {
		if evs[i].Type == evType {
			return &evs[i]
		}
	}
	return nil
}

// ephTypingUsers returns the user_ids of a room's m.typing event in a
// sync, and whether there was one.
func ephTypingUsers(t *testing.T, resp *ephSyncResp, roomID id.RoomID) ([]string, bool) {
	t.Helper()
	ev := ephFind(resp.Rooms.Join[roomID].Ephemeral.Events, "m.typing")
	if ev == nil {
		return nil, false
	}
	var c struct {
		UserIDs []string `json:"user_ids"`
	}
	if err := json.Unmarshal(ev.Content, &c); err != nil {
		t.Fatal(err)
	}
	return c.UserIDs, true
}

// ephReceipts flattens a room's m.receipt events into
// "eventID receiptType userID" → receipt data.
func ephReceipts(t *testing.T, resp *ephSyncResp, roomID id.RoomID) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, ev := range resp.Rooms.Join[roomID].Ephemeral.Events {
		if ev.Type != "m.receipt" {
			continue
		}
		var c map[string]map[string]map[string]map[string]any
		if err := json.Unmarshal(ev.Content, &c); err != nil {
			t.Fatalf("m.receipt content %s: %v", ev.Content, err)
		}
		for eventID, byType := range c {
			for rType, users := range byType {
				for user, data := range users {
					out[eventID+" "+rType+" "+user] = data
				}
			}
		}
	}
	return out
}

// ephWantErr asserts err is a Matrix error with status and errcode.
func ephWantErr(t *testing.T, what string, err error, status int, errcode string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.RespError == nil {
		t.Errorf("%s: want %d %s, got %v", what, status, errcode, err)
		return
	}
	if he.Response.StatusCode != status || he.RespError.ErrCode != errcode {
		t.Errorf("%s: got %d %s (%s), want %d %s", what, he.Response.StatusCode, he.RespError.ErrCode, he.RespError.Err, status, errcode)
	}
}

// ephRaw sends a request with body as is (it need not be valid JSON).
func ephRaw(t *testing.T, c *mautrix.Client, method, url, body string) error {
	t.Helper()
	req := mautrix.FullRequest{Method: method, URL: url}
	if body != "" {
		req.RequestBytes = []byte(body)
	}
	_, err := c.MakeFullRequest(ctxT(t), req)
	return err
}

// ephRoom makes a public room of alice's that bob joins.
func ephRoom(t *testing.T, alice, bob *mautrix.Client) id.RoomID {
	t.Helper()
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	return roomID
}

func TestTypingIncrementalSync(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	ctx := ctxT(t)
	since := ephSync(t, bob, "", 0).NextBatch

	if _, err := alice.UserTyping(ctx, roomID, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	resp := ephSync(t, bob, since, 5*time.Second)
	if users, ok := ephTypingUsers(t, resp, roomID); !ok || !slices.Equal(users, []string{alice.UserID.String()}) {
		t.Fatalf("bob's sync typing = %v (present %v), want [alice]", users, ok)
	}
	since = resp.NextBatch

	// A long-polling sync is woken by alice stopping.
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = alice.UserTyping(ctx, roomID, false, 0)
	}()
	start := time.Now()
	resp = ephSync(t, bob, since, 20*time.Second)
	if time.Since(start) > 10*time.Second {
		t.Fatalf("long-poll not woken by typing=false (took %v)", time.Since(start))
	}
	if users, ok := ephTypingUsers(t, resp, roomID); !ok || len(users) != 0 {
		t.Fatalf("after typing=false: users = %v (present %v), want []", users, ok)
	}
	since = resp.NextBatch

	// Nothing changed: no m.typing in the next incremental sync.
	if _, ok := ephTypingUsers(t, ephSync(t, bob, since, 0), roomID); ok {
		t.Error("unchanged typing state repeated in incremental sync")
	}
}

func TestTypingTimeoutExpires(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	since := ephSync(t, bob, "", 0).NextBatch

	// The long-poll is started first: the typing notice itself wakes it.
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = alice.UserTyping(ctxT(t), roomID, true, time.Second)
	}()
	start := time.Now()
	resp := ephSync(t, bob, since, 20*time.Second)
	if time.Since(start) > 10*time.Second {
		t.Fatalf("long-poll not woken by a typing notice (took %v)", time.Since(start))
	}
	if users, _ := ephTypingUsers(t, resp, roomID); !slices.Equal(users, []string{alice.UserID.String()}) {
		t.Fatalf("typing = %v, want [alice]", users)
	}
	// The expiry (1s) wakes the next long-poll with an empty list.
	start = time.Now()
	resp = ephSync(t, bob, resp.NextBatch, 20*time.Second)
	if users, ok := ephTypingUsers(t, resp, roomID); !ok || len(users) != 0 {
		t.Fatalf("after timeout: users = %v (present %v), want []", users, ok)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("typing expiry took %v", took)
	}
	// And an initial sync does not show an expired notice.
	if _, ok := ephTypingUsers(t, ephSync(t, bob, "", 0), roomID); ok {
		t.Error("initial sync shows m.typing with nobody typing")
	}
}

func TestTypingErrors(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, ""), n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	ctx := ctxT(t)

	url := func(c *mautrix.Client, user id.UserID) string {
		return c.BuildClientURL("v3", "rooms", roomID, "typing", user)
	}
	ephWantErr(t, "typing as another user", ephRaw(t, alice, http.MethodPut, url(alice, bob.UserID), `{"typing":true,"timeout":1000}`), 403, "M_FORBIDDEN")
	_, err := carol.UserTyping(ctx, roomID, true, time.Second)
	ephWantErr(t, "typing in a room one has not joined", err, 403, "M_FORBIDDEN")
	ephWantErr(t, "typing not a boolean", ephRaw(t, alice, http.MethodPut, url(alice, alice.UserID), `{"typing":"yes"}`), 400, "M_BAD_JSON")
	ephWantErr(t, "typing missing", ephRaw(t, alice, http.MethodPut, url(alice, alice.UserID), `{"timeout":1000}`), 400, "M_BAD_JSON")
	ephWantErr(t, "timeout not an integer", ephRaw(t, alice, http.MethodPut, url(alice, alice.UserID), `{"typing":true,"timeout":"soon"}`), 400, "M_BAD_JSON")
	ephWantErr(t, "body not JSON", ephRaw(t, alice, http.MethodPut, url(alice, alice.UserID), `{nope`), 400, "M_NOT_JSON")
	if _, err := alice.UserTyping(ctx, roomID, false, 0); err != nil {
		t.Errorf("typing=false without timeout: %v", err)
	}
}

func TestReceiptsPublicPrivateThreaded(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	ctx := ctxT(t)
	msg1, err := bob.SendText(ctx, roomID, "one")
	if err != nil {
		t.Fatal(err)
	}
	msg2, err := bob.SendText(ctx, roomID, "two")
	if err != nil {
		t.Fatal(err)
	}
	reply, err := bob.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{
		"msgtype": "m.text", "body": "in thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": msg1.EventID},
	})
	if err != nil {
		t.Fatal(err)
	}
	aliceSince := ephSync(t, alice, "", 0).NextBatch
	bobSince := ephSync(t, bob, "", 0).NextBatch
	a := alice.UserID.String()

	// Public receipt: bob sees it, with a ts.
	if err := alice.SendReceipt(ctx, roomID, msg1.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	resp := ephSync(t, bob, bobSince, 5*time.Second)
	bobSince = resp.NextBatch
	data, ok := ephReceipts(t, resp, roomID)[msg1.EventID.String()+" m.read "+a]
	if !ok {
		t.Fatalf("bob does not see alice's m.read: %v", ephReceipts(t, resp, roomID))
	}
	if ts, _ := data["ts"].(float64); ts <= 0 {
		t.Errorf("receipt ts = %v", data["ts"])
	}
	if _, has := data["thread_id"]; has {
		t.Errorf("unthreaded receipt carries thread_id %v", data["thread_id"])
	}

	// Private receipt: alice sees it, bob does not.
	if err := alice.SendReceipt(ctx, roomID, msg2.EventID, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	aresp := ephSync(t, alice, aliceSince, 5*time.Second)
	if _, ok := ephReceipts(t, aresp, roomID)[msg2.EventID.String()+" m.read.private "+a]; !ok {
		t.Errorf("alice does not see her own private receipt: %v", ephReceipts(t, aresp, roomID))
	}
	for k := range ephReceipts(t, ephSync(t, bob, bobSince, 0), roomID) {
		t.Errorf("bob sees %s after alice's private receipt", k)
	}
	for k := range ephReceipts(t, ephSync(t, bob, "", 0), roomID) {
		if k == msg2.EventID.String()+" m.read.private "+a {
			t.Error("bob's initial sync leaks alice's private receipt")
		}
	}

	// Threaded receipt keeps its thread_id.
	if err := alice.SendReceipt(ctx, roomID, reply.EventID, event.ReceiptTypeRead, &mautrix.ReqSendReceipt{ThreadID: msg1.EventID.String()}); err != nil {
		t.Fatal(err)
	}
	resp = ephSync(t, bob, bobSince, 5*time.Second)
	data, ok = ephReceipts(t, resp, roomID)[reply.EventID.String()+" m.read "+a]
	if !ok || data["thread_id"] != msg1.EventID.String() {
		t.Fatalf("threaded receipt seen by bob = %v (present %v)", data, ok)
	}
	// A main-timeline receipt on the thread root is fine too.
	if err := alice.SendReceipt(ctx, roomID, msg2.EventID, event.ReceiptTypeRead, &mautrix.ReqSendReceipt{ThreadID: "main"}); err != nil {
		t.Errorf("main-timeline receipt: %v", err)
	}
	// The unthreaded receipt is separate from the threaded ones.
	data, ok = ephReceipts(t, ephSync(t, bob, "", 0), roomID)[msg1.EventID.String()+" m.read "+a]
	if !ok {
		t.Error("unthreaded receipt replaced by a threaded one")
	} else if _, has := data["thread_id"]; has {
		t.Errorf("unthreaded receipt gained thread_id %v", data["thread_id"])
	}
}

func TestReceiptsErrors(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, ""), n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	other := mustCreateRoom(t, carol, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	ctx := ctxT(t)
	msg, err := bob.SendText(ctx, roomID, "hi")
	if err != nil {
		t.Fatal(err)
	}
	elsewhere, err := carol.SendText(ctx, other, "elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	inThread, err := bob.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{
		"msgtype": "m.text", "body": "threaded",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": msg.EventID},
	})
	if err != nil {
		t.Fatal(err)
	}
	url := func(rType string, eventID id.EventID) string {
		return alice.BuildClientURL("v3", "rooms", roomID, "receipt", rType, eventID)
	}
	ephWantErr(t, "unknown receipt type", ephRaw(t, alice, http.MethodPost, url("m.bogus", msg.EventID), `{}`), 400, "M_INVALID_PARAM")
	ephWantErr(t, "unknown event", ephRaw(t, alice, http.MethodPost, url("m.read", "$nope"), `{}`), 404, "M_NOT_FOUND")
	ephWantErr(t, "event of another room", ephRaw(t, alice, http.MethodPost, url("m.read", elsewhere.EventID), `{}`), 404, "M_NOT_FOUND")
	ephWantErr(t, "empty thread_id", ephRaw(t, alice, http.MethodPost, url("m.read", msg.EventID), `{"thread_id":""}`), 400, "M_INVALID_PARAM")
	ephWantErr(t, "thread_id not a string", ephRaw(t, alice, http.MethodPost, url("m.read", msg.EventID), `{"thread_id":5}`), 400, "M_INVALID_PARAM")
	ephWantErr(t, "thread_id with m.fully_read", ephRaw(t, alice, http.MethodPost, url("m.fully_read", msg.EventID), `{"thread_id":"main"}`), 400, "M_INVALID_PARAM")
	ephWantErr(t, "main receipt on a thread event", ephRaw(t, alice, http.MethodPost, url("m.read", inThread.EventID), `{"thread_id":"main"}`), 400, "M_INVALID_PARAM")
	ephWantErr(t, "thread receipt on an unrelated event", ephRaw(t, alice, http.MethodPost, url("m.read", msg.EventID), `{"thread_id":"$unrelated"}`), 400, "M_INVALID_PARAM")
	ephWantErr(t, "body not an object", ephRaw(t, alice, http.MethodPost, url("m.read", msg.EventID), `[]`), 400, "M_BAD_JSON")
	err = carol.SendReceipt(ctx, roomID, msg.EventID, event.ReceiptTypeRead, nil)
	ephWantErr(t, "receipt in a room one has not joined", err, 403, "M_FORBIDDEN")

	// m.fully_read through /receipt sets the read marker, not a receipt.
	since := ephSync(t, alice, "", 0).NextBatch
	if err := alice.SendReceipt(ctx, roomID, msg.EventID, event.ReceiptType("m.fully_read"), nil); err != nil {
		t.Fatal(err)
	}
	resp := ephSync(t, alice, since, 5*time.Second)
	fr := ephFind(resp.Rooms.Join[roomID].AccountData.Events, "m.fully_read")
	if fr == nil || !ephHasString(fr.Content, "event_id", msg.EventID.String()) {
		t.Fatalf("m.fully_read account data after /receipt = %+v", fr)
	}
	for k := range ephReceipts(t, resp, roomID) {
		t.Errorf("m.fully_read produced receipt %s", k)
	}
}

// ephHasString tells whether raw is an object whose key is the string want.
func ephHasString(raw json.RawMessage, key, want string) bool {
	var m map[string]any
	return json.Unmarshal(raw, &m) == nil && m[key] == want
}

func TestReadMarkers(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	ctx := ctxT(t)
	msg1, err := bob.SendText(ctx, roomID, "one")
	if err != nil {
		t.Fatal(err)
	}
	msg2, err := bob.SendText(ctx, roomID, "two")
	if err != nil {
		t.Fatal(err)
	}
	aliceSince := ephSync(t, alice, "", 0).NextBatch
	bobSince := ephSync(t, bob, "", 0).NextBatch
	a := alice.UserID.String()

	if err := alice.SetReadMarkers(ctx, roomID, &mautrix.ReqSetReadMarkers{FullyRead: msg1.EventID, Read: msg2.EventID, ReadPrivate: msg2.EventID}); err != nil {
		t.Fatal(err)
	}
	aresp := ephSync(t, alice, aliceSince, 5*time.Second)
	fr := ephFind(aresp.Rooms.Join[roomID].AccountData.Events, "m.fully_read")
	if fr == nil || !ephHasString(fr.Content, "event_id", msg1.EventID.String()) {
		t.Fatalf("m.fully_read account data = %+v", fr)
	}
	got := ephReceipts(t, aresp, roomID)
	for _, k := range []string{" m.read ", " m.read.private "} {
		if _, ok := got[msg2.EventID.String()+k+a]; !ok {
			t.Errorf("alice's sync lacks%sreceipt: %v", k, got)
		}
	}
	bgot := ephReceipts(t, ephSync(t, bob, bobSince, 5*time.Second), roomID)
	if _, ok := bgot[msg2.EventID.String()+" m.read "+a]; !ok {
		t.Errorf("bob does not see alice's m.read from read_markers: %v", bgot)
	}
	if _, ok := bgot[msg2.EventID.String()+" m.read.private "+a]; ok {
		t.Error("bob sees alice's private receipt from read_markers")
	}

	// A receipt does not move back (as in Synapse); the fully-read marker
	// may (undoing "mark as read").
	if err := alice.SetReadMarkers(ctx, roomID, &mautrix.ReqSetReadMarkers{Read: msg1.EventID}); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, roomID, msg2.EventID, event.ReceiptType("m.fully_read"), nil); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetReadMarkers(ctx, roomID, &mautrix.ReqSetReadMarkers{FullyRead: msg1.EventID}); err != nil {
		t.Fatal(err)
	}
	initial := ephSync(t, bob, "", 0)
	bgot = ephReceipts(t, initial, roomID)
	if _, ok := bgot[msg2.EventID.String()+" m.read "+a]; !ok {
		t.Errorf("m.read moved back from %s: %v", msg2.EventID, bgot)
	}
	fr = ephFind(ephSync(t, alice, "", 0).Rooms.Join[roomID].AccountData.Events, "m.fully_read")
	if fr == nil || !ephHasString(fr.Content, "event_id", msg1.EventID.String()) {
		t.Errorf("m.fully_read did not move back to %s: %+v", msg1.EventID, fr)
	}

	url := alice.BuildClientURL("v3", "rooms", roomID, "read_markers")
	ephWantErr(t, "unknown event", ephRaw(t, alice, http.MethodPost, url, `{"m.fully_read":"$nope"}`), 404, "M_NOT_FOUND")
	ephWantErr(t, "non-string event ID", ephRaw(t, alice, http.MethodPost, url, `{"m.read":5}`), 400, "M_BAD_JSON")
	carol := n.register(t, "")
	err = carol.SetReadMarkers(ctx, roomID, &mautrix.ReqSetReadMarkers{FullyRead: msg1.EventID})
	ephWantErr(t, "read markers in a room one has not joined", err, 403, "M_FORBIDDEN")
}

func TestPresence(t *testing.T) {
	n := startNode(t)
	alice, bob, carol := n.register(t, ""), n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	_ = roomID
	ctx := ctxT(t)
	bobSince := ephSync(t, bob, "", 0).NextBatch
	carolSince := ephSync(t, carol, "", 0).NextBatch

	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "hacking"}); err != nil {
		t.Fatal(err)
	}
	own, err := alice.GetOwnPresence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if own.Presence != event.PresenceOnline || own.StatusMsg != "hacking" || !own.CurrentlyActive {
		t.Errorf("own presence = %+v", own)
	}
	seen, err := bob.GetPresence(ctx, alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if seen.Presence != event.PresenceOnline || seen.StatusMsg != "hacking" {
		t.Errorf("alice's presence seen by bob = %+v", seen)
	}
	// Bob never set a presence, but his /sync without set_presence marked
	// him online, as the spec says of an omitted set_presence.
	if p, err := alice.GetPresence(ctx, bob.UserID); err != nil || p.Presence != event.PresenceOnline {
		t.Errorf("bob's presence = %+v, %v", p, err)
	}

	// Bob's sync carries alice's m.presence; carol, sharing no room, gets none.
	resp := ephSync(t, bob, bobSince, 5*time.Second)
	pe := ephFind(resp.Presence.Events, "m.presence")
	if pe == nil || pe.Sender != alice.UserID.String() || !ephHasString(pe.Content, "presence", "online") || !ephHasString(pe.Content, "status_msg", "hacking") {
		t.Fatalf("bob's sync presence = %+v", resp.Presence.Events)
	}
	var content map[string]any
	_ = json.Unmarshal(pe.Content, &content)
	if _, ok := content["last_active_ago"].(float64); !ok || content["currently_active"] != true {
		t.Errorf("presence content = %v", content)
	}
	for _, ev := range ephSync(t, carol, carolSince, 0).Presence.Events {
		if ev.Sender == alice.UserID.String() {
			t.Error("carol, sharing no room with alice, sees her presence")
		}
	}
	if initial := ephSync(t, bob, "", 0); ephFind(initial.Presence.Events, "m.presence") == nil {
		t.Error("bob's initial sync lacks alice's presence")
	}

	// A change wakes bob's long-poll.
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable})
	}()
	start := time.Now()
	resp = ephSync(t, bob, resp.NextBatch, 20*time.Second)
	if time.Since(start) > 10*time.Second {
		t.Fatalf("long-poll not woken by a presence change (took %v)", time.Since(start))
	}
	pe = ephFind(resp.Presence.Events, "m.presence")
	if pe == nil || !ephHasString(pe.Content, "presence", "unavailable") {
		t.Fatalf("presence after change = %+v", resp.Presence.Events)
	}
	var c map[string]any
	_ = json.Unmarshal(pe.Content, &c)
	if _, has := c["status_msg"]; has {
		t.Errorf("status_msg kept though the PUT omitted it: %v", c)
	}

	// /sync's set_presence sets it too.
	ephSync(t, alice, "", 0, "set_presence", "online")
	if p, err := bob.GetPresence(ctx, alice.UserID); err != nil || p.Presence != event.PresenceOnline {
		t.Errorf("after set_presence=online: %+v, %v", p, err)
	}

	// Errors.
	_, err = carol.GetPresence(ctx, alice.UserID)
	ephWantErr(t, "presence of a user sharing no room", err, 403, "M_FORBIDDEN")
	_, err = alice.GetPresence(ctx, "@nobody:localhost")
	ephWantErr(t, "presence of an unknown user", err, 404, "M_NOT_FOUND")
	url := func(user id.UserID) string { return alice.BuildClientURL("v3", "presence", user, "status") }
	ephWantErr(t, "setting another user's presence", ephRaw(t, alice, http.MethodPut, url(bob.UserID), `{"presence":"online"}`), 403, "M_FORBIDDEN")
	ephWantErr(t, "unknown presence value", ephRaw(t, alice, http.MethodPut, url(alice.UserID), `{"presence":"away"}`), 400, "M_INVALID_PARAM")
	ephWantErr(t, "presence missing", ephRaw(t, alice, http.MethodPut, url(alice.UserID), `{"status_msg":"x"}`), 400, "M_BAD_JSON")
	ephWantErr(t, "status_msg not a string", ephRaw(t, alice, http.MethodPut, url(alice.UserID), `{"presence":"online","status_msg":5}`), 400, "M_BAD_JSON")
}
