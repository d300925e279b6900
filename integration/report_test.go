package integration

import (
	"fmt"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// report POSTs to a client reporting path (segments after /v3).
func report(t *testing.T, c *mautrix.Client, body any, path ...any) error {
	t.Helper()
	_, err := c.MakeRequest(ctxT(t), "POST", c.BuildClientURL(append([]any{"v3"}, path...)...), body, nil)
	return err
}

// TestReportEvent: a joined member reports a visible event; reports of
// events the reporter cannot see are 404; admins list and read them.
func TestReportEvent(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	root := adminUser(t, n, "root")
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	carol := n.register(t, "carol")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Reported"})
	other := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	// Sent while history is visible to joined members only, before bob joins.
	if _, err := alice.SendStateEvent(ctx, roomID, event.StateHistoryVisibility, "",
		map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}
	hidden, err := alice.SendText(ctx, roomID, "before bob")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []id.RoomID{roomID, other} {
		if _, err := bob.JoinRoomByID(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	bad, err := alice.SendText(ctx, roomID, "offensive")
	if err != nil {
		t.Fatal(err)
	}
	otherEv, err := alice.SendText(ctx, other, "elsewhere")
	if err != nil {
		t.Fatal(err)
	}

	if err := report(t, bob, map[string]any{"reason": "rude", "score": -50}, "rooms", roomID, "report", bad.EventID); err != nil {
		t.Fatalf("report: %v", err)
	}
	err = report(t, bob, map[string]any{"reason": "x", "score": 5}, "rooms", roomID, "report", bad.EventID)
	wantHTTPErr(t, "score out of range", err, 400, "M_INVALID_PARAM")
	err = report(t, bob, map[string]any{"reason": 3}, "rooms", roomID, "report", bad.EventID)
	wantHTTPErr(t, "non-string reason", err, 400, "M_BAD_JSON")
	// Not joined: 404, not 403, so the event's existence does not leak.
	err = report(t, carol, map[string]any{"reason": "x"}, "rooms", roomID, "report", bad.EventID)
	wantHTTPErr(t, "report by non-member", err, 404, "M_NOT_FOUND")
	err = report(t, bob, map[string]any{"reason": "x"}, "rooms", roomID, "report", "$nope:localhost")
	wantHTTPErr(t, "report of unknown event", err, 404, "M_NOT_FOUND")
	err = report(t, bob, map[string]any{"reason": "x"}, "rooms", roomID, "report", otherEv.EventID)
	wantHTTPErr(t, "report of an event under another room", err, 404, "M_NOT_FOUND")
	err = report(t, bob, map[string]any{"reason": "x"}, "rooms", roomID, "report", hidden.EventID)
	wantHTTPErr(t, "report of an event hidden by history visibility", err, 404, "M_NOT_FOUND")
	err = report(t, bob, map[string]any{"reason": "x"}, "rooms", "!nope:localhost", "report", bad.EventID)
	wantHTTPErr(t, "report in unknown room", err, 404, "M_NOT_FOUND")
	// Reason may be left out of an event report; this one is from alice.
	if err := report(t, alice, map[string]any{}, "rooms", other, "report", otherEv.EventID); err != nil {
		t.Fatalf("report without reason: %v", err)
	}

	st, body := adminCall(t, n, bob.AccessToken, "GET", "/_synapse/admin/v1/event_reports", nil)
	if st != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("list as non-admin: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/event_reports", nil)
	wantStatus(t, "list", st, body, 200)
	reps, _ := body["event_reports"].([]any)
	if len(reps) != 2 || body["total"] != 2.0 || body["next_token"] != nil {
		t.Fatalf("list: %v", body)
	}
	// Newest first by default.
	newest, oldest := reps[0].(map[string]any), reps[1].(map[string]any)
	if newest["user_id"] != alice.UserID.String() || newest["reason"] != nil {
		t.Fatalf("newest report: %v", newest)
	}
	if oldest["event_id"] != bad.EventID.String() || oldest["room_id"] != roomID.String() || oldest["user_id"] != bob.UserID.String() ||
		oldest["sender"] != alice.UserID.String() || oldest["reason"] != "rude" || oldest["score"] != -50.0 || oldest["name"] != "Reported" {
		t.Fatalf("bob's report: %v", oldest)
	}
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/event_reports?dir=f&limit=1", nil)
	wantStatus(t, "page", st, body, 200)
	if reps, _ := body["event_reports"].([]any); len(reps) != 1 || reps[0].(map[string]any)["user_id"] != bob.UserID.String() || body["next_token"] != 1.0 {
		t.Fatalf("forward page: %v", body)
	}
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/event_reports?room_id="+url.QueryEscape(other.String()), nil)
	if reps, _ := body["event_reports"].([]any); st != 200 || len(reps) != 1 || body["total"] != 1.0 {
		t.Fatalf("room filter: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/event_reports?dir=x", nil)
	if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad dir: %d %v", st, body)
	}

	idPath := fmt.Sprintf("/_synapse/admin/v1/event_reports/%.0f", oldest["id"].(float64))
	st, body = adminCall(t, n, root.AccessToken, "GET", idPath, nil)
	wantStatus(t, "detail", st, body, 200)
	ej, _ := body["event_json"].(map[string]any)
	if body["event_id"] != bad.EventID.String() || ej == nil || ej["room_id"] != roomID.String() || ej["content"].(map[string]any)["body"] != "offensive" {
		t.Fatalf("detail: %v", body)
	}
	st, body = adminCall(t, n, bob.AccessToken, "GET", idPath, nil)
	if st != 403 {
		t.Fatalf("detail as non-admin: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/event_reports/999999", nil)
	if st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("unknown report: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/event_reports/abc", nil)
	if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad report id: %d %v", st, body)
	}
}

// TestReportRoom: rooms may be reported without being joined (v1.13);
// unknown rooms are 404 and reason is required.
func TestReportRoom(t *testing.T) {
	n := startNode(t)
	root := adminUser(t, n, "root")
	alice := n.register(t, "alice")
	carol := n.register(t, "carol")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Spam"})

	if err := report(t, carol, map[string]any{"reason": "spam room"}, "rooms", roomID, "report"); err != nil {
		t.Fatalf("report by non-member: %v", err)
	}
	err := report(t, carol, map[string]any{"reason": "x"}, "rooms", "!nope:localhost", "report")
	wantHTTPErr(t, "report of unknown room", err, 404, "M_NOT_FOUND")
	err = report(t, carol, map[string]any{}, "rooms", roomID, "report")
	wantHTTPErr(t, "report without reason", err, 400, "M_MISSING_PARAM")

	st, body := adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/room_reports", nil)
	wantStatus(t, "room reports", st, body, 200)
	reps, _ := body["room_reports"].([]any)
	if len(reps) != 1 {
		t.Fatalf("room reports: %v", body)
	}
	if r := reps[0].(map[string]any); r["room_id"] != roomID.String() || r["user_id"] != carol.UserID.String() || r["reason"] != "spam room" || r["name"] != "Spam" {
		t.Fatalf("room report: %v", r)
	}
	// Room reports are not event reports.
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/event_reports", nil)
	if st != 200 || body["total"] != 0.0 {
		t.Fatalf("event reports after a room report: %d %v", st, body)
	}
	id := fmt.Sprintf("/_synapse/admin/v1/event_reports/%.0f", reps[0].(map[string]any)["id"].(float64))
	if st, body = adminCall(t, n, root.AccessToken, "GET", id, nil); st != 404 {
		t.Fatalf("room report read as event report: %d %v", st, body)
	}
	if st, body = adminCall(t, n, alice.AccessToken, "GET", "/_synapse/admin/v1/room_reports", nil); st != 403 {
		t.Fatalf("room reports as non-admin: %d %v", st, body)
	}
}

// TestReportUser: users may be reported without sharing a room (v1.14);
// unknown local users are 404, remote ones are taken on trust.
func TestReportUser(t *testing.T) {
	n := startNode(t)
	root := adminUser(t, n, "root")
	alice := n.register(t, "alice")
	carol := n.register(t, "carol")

	if err := report(t, carol, map[string]any{"reason": "harassment"}, "users", alice.UserID, "report"); err != nil {
		t.Fatalf("report user: %v", err)
	}
	if err := report(t, carol, map[string]any{"reason": ""}, "users", "@someone:elsewhere.example", "report"); err != nil {
		t.Fatalf("report remote user: %v", err)
	}
	err := report(t, carol, map[string]any{"reason": "x"}, "users", "@ghost:localhost", "report")
	wantHTTPErr(t, "report unknown user", err, 404, "M_NOT_FOUND")
	err = report(t, carol, map[string]any{"reason": "x"}, "users", "not-a-user", "report")
	wantHTTPErr(t, "report invalid user ID", err, 400, "M_INVALID_PARAM")
	err = report(t, carol, map[string]any{}, "users", alice.UserID, "report")
	wantHTTPErr(t, "report without reason", err, 400, "M_MISSING_PARAM")

	st, body := adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/user_reports?dir=f", nil)
	wantStatus(t, "user reports", st, body, 200)
	reps, _ := body["user_reports"].([]any)
	if len(reps) != 2 || body["total"] != 2.0 {
		t.Fatalf("user reports: %v", body)
	}
	if r := reps[0].(map[string]any); r["target_user_id"] != alice.UserID.String() || r["user_id"] != carol.UserID.String() || r["reason"] != "harassment" {
		t.Fatalf("user report: %v", r)
	}
	if r := reps[1].(map[string]any); r["target_user_id"] != "@someone:elsewhere.example" {
		t.Fatalf("remote user report: %v", r)
	}
}
