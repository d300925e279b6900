package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// udWantErr asserts that err is a Matrix error with this status and errcode.
func udWantErr(t testing.TB, err error, status int, errcode string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		t.Fatalf("want %d %s, got %v", status, errcode, err)
	}
	got := ""
	if he.RespError != nil {
		got = he.RespError.ErrCode
	}
	if he.Response.StatusCode != status || got != errcode {
		t.Fatalf("want %d %s, got %d %s: %v", status, errcode, he.Response.StatusCode, got, err)
	}
}

// udDo sends one request with c's access token (if any) and returns the
// status and decoded JSON body. body is sent as is when it is []byte.
func udDo(t testing.TB, c *mautrix.Client, method, url string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if c.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: body is not a JSON object: %q", method, url, raw)
	}
	return resp.StatusCode, out
}

// udWantStatus checks a udDo result's status and errcode ("" for none).
func udWantStatus(t testing.TB, status int, body map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	code, _ := body["errcode"].(string)
	if status != wantStatus || code != wantCode {
		t.Fatalf("want %d %q, got %d %v", wantStatus, wantCode, status, body)
	}
}

// udFindAccountData returns the content of the event of evType in evs.
func udFindAccountData(evs []*event.Event, evType string) map[string]any {
	var found map[string]any
	for _, ev := range evs {
		if ev.Type.Type == evType {
			found = ev.Content.Raw
		}
	}
	return found
}

func TestAccountDataGlobalAndRoom(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})

	// Missing data is a 404 before anything is set, globally and per room.
	var out map[string]any
	udWantErr(t, alice.GetAccountData(ctx, "org.example.config", &out), 404, "M_NOT_FOUND")
	udWantErr(t, alice.GetRoomAccountData(ctx, roomID, "org.example.config", &out), 404, "M_NOT_FOUND")

	if err := alice.SetAccountData(ctx, "org.example.config", map[string]any{"theme": "dark"}); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetRoomAccountData(ctx, roomID, "org.example.config", map[string]any{"pinned": true}); err != nil {
		t.Fatal(err)
	}
	if err := alice.GetAccountData(ctx, "org.example.config", &out); err != nil || out["theme"] != "dark" {
		t.Fatalf("global get = %v, %v", out, err)
	}
	// Room data does not fall back to global data, nor the reverse.
	out = nil
	if err := alice.GetRoomAccountData(ctx, roomID, "org.example.config", &out); err != nil || out["pinned"] != true || out["theme"] != nil {
		t.Fatalf("room get = %v, %v", out, err)
	}
	// Overwriting replaces the whole content.
	if err := alice.SetAccountData(ctx, "org.example.config", map[string]any{"lang": "fr"}); err != nil {
		t.Fatal(err)
	}
	out = nil
	if err := alice.GetAccountData(ctx, "org.example.config", &out); err != nil || out["lang"] != "fr" || out["theme"] != nil {
		t.Fatalf("after overwrite = %v, %v", out, err)
	}

	// Another user's data: forbidden both ways.
	aliceGlobal := alice.BuildClientURL("v3", "user", alice.UserID, "account_data", "org.example.config")
	aliceRoom := alice.BuildClientURL("v3", "user", alice.UserID, "rooms", roomID, "account_data", "org.example.config")
	for _, u := range []string{aliceGlobal, aliceRoom} {
		st, body := udDo(t, bob, http.MethodGet, u, nil)
		udWantStatus(t, st, body, 403, "M_FORBIDDEN")
		st, body = udDo(t, bob, http.MethodPut, u, map[string]any{"x": 1})
		udWantStatus(t, st, body, 403, "M_FORBIDDEN")
	}

	// Bodies must be JSON objects.
	st, body := udDo(t, alice, http.MethodPut, aliceGlobal, []byte(`[1,2]`))
	udWantStatus(t, st, body, 400, "M_BAD_JSON")
	st, body = udDo(t, alice, http.MethodPut, aliceRoom, []byte(`{nope`))
	udWantStatus(t, st, body, 400, "M_NOT_JSON")

	// A malformed room ID is M_INVALID_PARAM for reads and writes.
	bad := alice.BuildClientURL("v3", "user", alice.UserID, "rooms", "@notaroom:localhost", "account_data", "org.example.config")
	st, body = udDo(t, alice, http.MethodGet, bad, nil)
	udWantStatus(t, st, body, 400, "M_INVALID_PARAM")
	st, body = udDo(t, alice, http.MethodPut, bad, map[string]any{})
	udWantStatus(t, st, body, 400, "M_INVALID_PARAM")

	// Server-managed types are refused with 405 M_BAD_JSON, globally and per room.
	for _, typ := range []string{"m.fully_read", "m.push_rules"} {
		udWantErr(t, alice.SetAccountData(ctx, typ, map[string]any{"event_id": "$x"}), 405, "M_BAD_JSON")
		udWantErr(t, alice.SetRoomAccountData(ctx, roomID, typ, map[string]any{"event_id": "$x"}), 405, "M_BAD_JSON")
	}
}

func TestAccountDataSync(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	if err := alice.SetAccountData(ctx, "org.example.a", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetRoomAccountData(ctx, roomID, "org.example.r", map[string]any{"v": 2}); err != nil {
		t.Fatal(err)
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if c := udFindAccountData(first.AccountData.Events, "org.example.a"); c == nil || c["v"] != float64(1) {
		t.Fatalf("initial sync global account data: %v", c)
	}
	jr := first.Rooms.Join[roomID]
	if jr == nil {
		t.Fatalf("room missing from initial sync")
	}
	if c := udFindAccountData(jr.AccountData.Events, "org.example.r"); c == nil || c["v"] != float64(2) {
		t.Fatalf("initial sync room account data: %v", c)
	}

	// A waiting sync wakes for a global write.
	type result struct {
		resp *mautrix.RespSync
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		resp, err := alice.SyncRequest(ctx, 20000, first.NextBatch, "", false, "")
		done <- result{resp, err, time.Since(start)}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := alice.SetAccountData(ctx, "org.example.b", map[string]any{"v": 3}); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.took > 10*time.Second {
		t.Fatalf("sync was not woken by the account data write (took %v)", res.took)
	}
	if c := udFindAccountData(res.resp.AccountData.Events, "org.example.b"); c == nil || c["v"] != float64(3) {
		t.Fatalf("incremental sync global account data: %v", res.resp.AccountData.Events)
	}
	if udFindAccountData(res.resp.AccountData.Events, "org.example.a") != nil {
		t.Fatal("unchanged account data repeated in incremental sync")
	}

	// And for a room write, which lands in the room's section.
	go func() {
		start := time.Now()
		resp, err := alice.SyncRequest(ctx, 20000, res.resp.NextBatch, "", false, "")
		done <- result{resp, err, time.Since(start)}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := alice.SetRoomAccountData(ctx, roomID, "org.example.r", map[string]any{"v": 4}); err != nil {
		t.Fatal(err)
	}
	res = <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.took > 10*time.Second {
		t.Fatalf("sync was not woken by the room account data write (took %v)", res.took)
	}
	jr = res.resp.Rooms.Join[roomID]
	if jr == nil {
		t.Fatalf("room missing from incremental sync: %+v", res.resp.Rooms)
	}
	if c := udFindAccountData(jr.AccountData.Events, "org.example.r"); c == nil || c["v"] != float64(4) {
		t.Fatalf("incremental sync room account data: %v", jr.AccountData.Events)
	}
	if udFindAccountData(res.resp.AccountData.Events, "org.example.r") != nil {
		t.Fatal("room account data leaked into the global section")
	}
}

func TestTags(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})

	tags, err := alice.GetTags(ctx, roomID)
	if err != nil || len(tags.Tags) != 0 {
		t.Fatalf("tags before any = %v, %v", tags, err)
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.AddTag(ctx, roomID, event.RoomTagFavourite, 0.25); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddTagWithCustomData(ctx, roomID, "u.work", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	tags, err = alice.GetTags(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	fav, ok := tags.Tags[event.RoomTagFavourite]
	if order, _ := fav.Order.Float64(); !ok || order != 0.25 {
		t.Fatalf("m.favourite = %+v (%v)", fav, tags.Tags)
	}
	if _, ok := tags.Tags["u.work"]; !ok {
		t.Fatalf("u.work missing: %v", tags.Tags)
	}

	// Tags reach /sync as the room's m.tag account data.
	inc, err := alice.SyncRequest(ctx, 0, first.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	jr := inc.Rooms.Join[roomID]
	if jr == nil {
		t.Fatal("room missing from incremental sync after tagging")
	}
	c := udFindAccountData(jr.AccountData.Events, "m.tag")
	got, _ := c["tags"].(map[string]any)
	if len(got) != 2 || got["m.favourite"] == nil || got["u.work"] == nil {
		t.Fatalf("m.tag in sync = %v", c)
	}

	// Removing a tag shows up in the next incremental sync too.
	if err := alice.RemoveTag(ctx, roomID, "u.work"); err != nil {
		t.Fatal(err)
	}
	inc2, err := alice.SyncRequest(ctx, 0, inc.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	jr = inc2.Rooms.Join[roomID]
	if jr == nil {
		t.Fatal("room missing from incremental sync after untagging")
	}
	c = udFindAccountData(jr.AccountData.Events, "m.tag")
	got, _ = c["tags"].(map[string]any)
	if len(got) != 1 || got["m.favourite"] == nil {
		t.Fatalf("m.tag after removal = %v", c)
	}
	// Removing an absent tag is fine.
	if err := alice.RemoveTag(ctx, roomID, "u.never"); err != nil {
		t.Fatal(err)
	}

	tagURL := func(c *mautrix.Client, user id.UserID, room, tag string) string {
		return c.BuildClientURL("v3", "user", user, "rooms", room, "tags", tag)
	}
	// Someone else's tags: forbidden.
	st, body := udDo(t, bob, http.MethodGet, bob.BuildClientURL("v3", "user", alice.UserID, "rooms", roomID, "tags"), nil)
	udWantStatus(t, st, body, 403, "M_FORBIDDEN")
	st, body = udDo(t, bob, http.MethodPut, tagURL(bob, alice.UserID, string(roomID), "u.x"), map[string]any{})
	udWantStatus(t, st, body, 403, "M_FORBIDDEN")
	st, body = udDo(t, bob, http.MethodDelete, tagURL(bob, alice.UserID, string(roomID), "m.favourite"), nil)
	udWantStatus(t, st, body, 403, "M_FORBIDDEN")
	// Tag names over 255 bytes, non-numeric orders, bad room IDs.
	st, body = udDo(t, alice, http.MethodPut, tagURL(alice, alice.UserID, string(roomID), "u."+strings.Repeat("x", 254)), map[string]any{})
	udWantStatus(t, st, body, 400, "M_INVALID_PARAM")
	st, body = udDo(t, alice, http.MethodPut, tagURL(alice, alice.UserID, string(roomID), "u.y"), map[string]any{"order": "high"})
	udWantStatus(t, st, body, 400, "M_BAD_JSON")
	st, body = udDo(t, alice, http.MethodPut, tagURL(alice, alice.UserID, "nope", "u.y"), map[string]any{})
	udWantStatus(t, st, body, 400, "M_INVALID_PARAM")
	// None of that changed the tags.
	tags, err = alice.GetTags(ctx, roomID)
	if err != nil || len(tags.Tags) != 1 {
		t.Fatalf("tags after rejected writes = %v, %v", tags.Tags, err)
	}
}

func TestIgnoredUsersAccountData(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ctx := ctxT(t)

	list := map[string]any{"ignored_users": map[string]any{"@spammer:example.org": map[string]any{}}}
	if err := alice.SetAccountData(ctx, "m.ignored_user_list", list); err != nil {
		t.Fatal(err)
	}
	var out struct {
		IgnoredUsers map[string]any `json:"ignored_users"`
	}
	if err := alice.GetAccountData(ctx, "m.ignored_user_list", &out); err != nil || out.IgnoredUsers["@spammer:example.org"] == nil {
		t.Fatalf("ignored list = %v, %v", out, err)
	}
	resp, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if c := udFindAccountData(resp.AccountData.Events, "m.ignored_user_list"); c == nil {
		t.Fatal("m.ignored_user_list missing from sync")
	}

	// Content that does not fit the schema is refused and changes nothing.
	for name, bad := range map[string]any{
		"missing ignored_users": map[string]any{},
		"array":                 map[string]any{"ignored_users": []string{"@a:b"}},
		"not a user ID":         map[string]any{"ignored_users": map[string]any{"spammer": map[string]any{}}},
		"non-object value":      map[string]any{"ignored_users": map[string]any{"@a:b": true}},
	} {
		t.Run(name, func(t *testing.T) {
			udWantErr(t, alice.SetAccountData(ctx, "m.ignored_user_list", bad), 400, "M_BAD_JSON")
		})
	}
	out.IgnoredUsers = nil
	if err := alice.GetAccountData(ctx, "m.ignored_user_list", &out); err != nil || len(out.IgnoredUsers) != 1 {
		t.Fatalf("ignored list after rejected writes = %v, %v", out, err)
	}
	// Emptying the list is allowed.
	if err := alice.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
}
