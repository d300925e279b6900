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

	"edge/edge/client"
)

// adminUser registers an admin through shared-secret registration, the
// way `edge register --admin` and register_new_matrix_user do.
func adminUser(t testing.TB, n *testNode, name string) *mautrix.Client {
	t.Helper()
	c := newAnon(t, n)
	ctx := ctxT(t)
	u := n.URL + "/_synapse/admin/v1/register"
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if _, err := c.MakeRequest(ctx, "GET", u, nil, &nonce); err != nil {
		t.Fatal(err)
	}
	var resp mautrix.RespRegister
	_, err := c.MakeRequest(ctx, "POST", u, map[string]any{"nonce": nonce.Nonce, "username": name, "password": testPassword,
		"admin": true, "mac": client.SharedSecretMAC("test-shared-secret", nonce.Nonce, name, testPassword, true)}, &resp)
	if err != nil {
		t.Fatal(err)
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	return c
}

// adminCall sends one admin API request with token ("" for none) and
// returns the status and decoded JSON body.
func adminCall(t testing.TB, n *testNode, token, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, n.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: HTTP %d, not JSON: %q", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

// wantAdmin fails unless the call answered 200 (or want).
func wantStatus(t testing.TB, what string, status int, body map[string]any, want int) {
	t.Helper()
	if status != want {
		t.Fatalf("%s: HTTP %d %v, want %d", what, status, body, want)
	}
}

func userNames(body map[string]any) []string {
	var out []string
	users, _ := body["users"].([]any)
	for _, u := range users {
		out = append(out, u.(map[string]any)["name"].(string))
	}
	return out
}

// TestAdminAccess: no token is 401, a non-admin's token 403 on every route.
func TestAdminAccess(t *testing.T) {
	n := startNode(t)
	user := n.register(t, "plain")
	paths := []struct{ method, path string }{
		{"GET", "/_synapse/admin/v2/users"},
		{"GET", "/_synapse/admin/v2/users/@plain:localhost"},
		{"PUT", "/_synapse/admin/v2/users/@new:localhost"},
		{"POST", "/_synapse/admin/v1/deactivate/@plain:localhost"},
		{"POST", "/_synapse/admin/v1/reset_password/@plain:localhost"},
		{"GET", "/_synapse/admin/v1/rooms"},
		{"GET", "/_synapse/admin/v1/rooms/!x:localhost"},
		{"GET", "/_synapse/admin/v1/rooms/!x:localhost/members"},
		{"GET", "/_synapse/admin/v1/server_version"},
	}
	for _, p := range paths {
		st, body := adminCall(t, n, "", p.method, p.path, map[string]any{})
		if st != 401 || body["errcode"] != "M_MISSING_TOKEN" {
			t.Errorf("%s %s without token: %d %v", p.method, p.path, st, body)
		}
		st, body = adminCall(t, n, user.AccessToken, p.method, p.path, map[string]any{"password": "x", "new_password": "x"})
		if st != 403 || body["errcode"] != "M_FORBIDDEN" {
			t.Errorf("%s %s as non-admin: %d %v", p.method, p.path, st, body)
		}
	}
	// The non-admin's attempts changed nothing.
	if _, err := user.Whoami(ctxT(t)); err != nil {
		t.Fatalf("plain user logged out by refused calls: %v", err)
	}
	root := adminUser(t, n, "root")
	st, body := adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v2/users/@new:localhost", nil)
	if st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("refused PUT created a user: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "GET", "/_synapse/admin/v1/server_version", nil)
	if v, _ := body["server_version"].(string); st != 200 || v == "" {
		t.Fatalf("server_version: %d %v", st, body)
	}
}

// TestAdminUsers: list with paging and filters, create and modify with
// PUT, reset a password, deactivate.
func TestAdminUsers(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	root := adminUser(t, n, "root")
	tok := root.AccessToken
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")

	st, body := adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users", nil)
	wantStatus(t, "list", st, body, 200)
	if got := userNames(body); len(got) != 3 || got[0] != "@alice:localhost" || got[1] != "@bob:localhost" || got[2] != "@root:localhost" ||
		body["total"] != 3.0 || body["next_token"] != nil {
		t.Fatalf("list users: %v", body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users?limit=2", nil)
	if got := userNames(body); st != 200 || len(got) != 2 || body["next_token"] != "2" || body["total"] != 3.0 {
		t.Fatalf("first page: %v", body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users?limit=2&from=2", nil)
	if got := userNames(body); st != 200 || len(got) != 1 || got[0] != "@root:localhost" || body["next_token"] != nil {
		t.Fatalf("second page: %v", body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users?limit=-1", nil)
	if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad limit: %d %v", st, body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users?deactivated=maybe", nil)
	if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad deactivated: %d %v", st, body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users/@nobody:localhost", nil)
	if st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("unknown user: %d %v", st, body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users/@alice:elsewhere.example", nil)
	if st != 400 {
		t.Fatalf("remote user: %d %v", st, body)
	}

	// PUT creates (201), and the new user can log in with the password.
	st, body = adminCall(t, n, tok, "PUT", "/_synapse/admin/v2/users/@carol:localhost",
		map[string]any{"password": "carols password", "displayname": "Carol"})
	wantStatus(t, "create carol", st, body, 201)
	if body["name"] != "@carol:localhost" || body["displayname"] != "Carol" || body["admin"] != false {
		t.Fatalf("created: %v", body)
	}
	carol := newAnon(t, n)
	login, err := carol.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "carol"}, Password: "carols password", StoreCredentials: true})
	if err != nil {
		t.Fatalf("carol login: %v", err)
	}
	st, body = adminCall(t, n, login.AccessToken, "GET", "/_synapse/admin/v2/users", nil)
	if st != 403 {
		t.Fatalf("carol is an admin too early: %d", st)
	}
	// PUT modifies (200): admin flag and display name.
	st, body = adminCall(t, n, tok, "PUT", "/_synapse/admin/v2/users/@carol:localhost", map[string]any{"admin": true, "displayname": "Carol A"})
	wantStatus(t, "promote carol", st, body, 200)
	st, body = adminCall(t, n, login.AccessToken, "GET", "/_synapse/admin/v2/users/@carol:localhost", nil)
	if st != 200 || body["admin"] != true || body["displayname"] != "Carol A" || body["deactivated"] != false {
		t.Fatalf("carol after promotion: %d %v", st, body)
	}
	if st, body = adminCall(t, n, tok, "PUT", "/_synapse/admin/v2/users/@root:localhost", map[string]any{"admin": false}); st != 400 {
		t.Fatalf("self-demotion: %d %v", st, body)
	}
	if st, body = adminCall(t, n, tok, "PUT", "/_synapse/admin/v2/users/@carol:localhost", map[string]any{"admin": "yes"}); st != 400 || body["errcode"] != "M_BAD_JSON" {
		t.Fatalf("admin as a string: %d %v", st, body)
	}
	// A new password logs carol out everywhere; the old one stops working.
	st, body = adminCall(t, n, tok, "PUT", "/_synapse/admin/v2/users/@carol:localhost", map[string]any{"password": "new carol password"})
	wantStatus(t, "carol password", st, body, 200)
	if _, err := carol.Whoami(ctx); err == nil {
		t.Fatal("carol's token survived a password change")
	}
	if _, err := newAnon(t, n).Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "carol"}, Password: "new carol password"}); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}

	// reset_password with logout_devices false keeps alice logged in.
	st, body = adminCall(t, n, tok, "POST", "/_synapse/admin/v1/reset_password/@alice:localhost",
		map[string]any{"new_password": "alice again", "logout_devices": false})
	wantStatus(t, "reset alice", st, body, 200)
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatalf("alice logged out: %v", err)
	}
	if st, body = adminCall(t, n, tok, "POST", "/_synapse/admin/v1/reset_password/@alice:localhost", map[string]any{}); st != 400 || body["errcode"] != "M_MISSING_PARAM" {
		t.Fatalf("reset without password: %d %v", st, body)
	}

	// Deactivation: bob leaves his rooms and loses his tokens.
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	st, body = adminCall(t, n, tok, "POST", "/_synapse/admin/v1/deactivate/@bob:localhost", map[string]any{"erase": false})
	wantStatus(t, "deactivate bob", st, body, 200)
	if _, err := bob.Whoami(ctx); err == nil {
		t.Fatal("bob's token works after deactivation")
	}
	var member event.MemberEventContent
	if err := alice.StateEvent(ctx, roomID, event.StateMember, "@bob:localhost", &member); err != nil || member.Membership != event.MembershipLeave {
		t.Fatalf("bob's membership after deactivation: %v %v", member.Membership, err)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users", nil)
	for _, name := range userNames(body) {
		if name == "@bob:localhost" {
			t.Fatalf("deactivated bob listed by default: %v", body)
		}
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users?deactivated=true&name=bob", nil)
	if got := userNames(body); st != 200 || len(got) != 1 || got[0] != "@bob:localhost" {
		t.Fatalf("deactivated=true&name=bob: %v", body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v2/users/@bob:localhost", nil)
	if body["deactivated"] != true {
		t.Fatalf("bob: %v", body)
	}
	if st, body = adminCall(t, n, tok, "POST", "/_synapse/admin/v1/deactivate/@ghost:localhost", nil); st != 404 {
		t.Fatalf("deactivate unknown: %d %v", st, body)
	}
	// PUT deactivated:true does the same for carol.
	st, body = adminCall(t, n, tok, "PUT", "/_synapse/admin/v2/users/@carol:localhost", map[string]any{"deactivated": true})
	if st != 200 || body["deactivated"] != true {
		t.Fatalf("PUT deactivated: %d %v", st, body)
	}
	if _, err := newAnon(t, n).Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "carol"}, Password: "new carol password"}); err == nil {
		t.Fatal("deactivated carol can log in")
	}
}

// TestAdminRooms: list, details and members of rooms.
func TestAdminRooms(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	tok := adminUser(t, n, "root").AccessToken
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	zoo := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Zoo", RoomAliasName: "zoo"})
	if _, err := bob.JoinRoomByID(ctx, zoo); err != nil {
		t.Fatal(err)
	}
	mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Name: "Aquarium"})
	unnamed := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{})

	st, body := adminCall(t, n, tok, "GET", "/_synapse/admin/v1/rooms", nil)
	wantStatus(t, "list rooms", st, body, 200)
	rooms, _ := body["rooms"].([]any)
	if len(rooms) != 3 || body["total_rooms"] != 3.0 {
		t.Fatalf("rooms: %v", body)
	}
	first, second, third := rooms[0].(map[string]any), rooms[1].(map[string]any), rooms[2].(map[string]any)
	if first["name"] != "Aquarium" || second["name"] != "Zoo" || third["room_id"] != unnamed.String() || third["name"] != nil {
		t.Fatalf("room order: %v", body)
	}
	if second["room_id"] != zoo.String() || second["canonical_alias"] != "#zoo:localhost" || second["joined_members"] != 2.0 ||
		second["creator"] != "@alice:localhost" || second["version"] == "" || second["join_rules"] != "public" {
		t.Fatalf("zoo in the list: %v", second)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v1/rooms?limit=1&from=1", nil)
	rooms, _ = body["rooms"].([]any)
	if st != 200 || len(rooms) != 1 || rooms[0].(map[string]any)["name"] != "Zoo" || body["next_batch"] != 2.0 || body["total_rooms"] != 3.0 {
		t.Fatalf("paged rooms: %v", body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v1/rooms?search_term=aqua", nil)
	if rooms, _ = body["rooms"].([]any); st != 200 || len(rooms) != 1 {
		t.Fatalf("search_term: %v", body)
	}
	if st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v1/rooms?from=x", nil); st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad from: %d %v", st, body)
	}

	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(zoo.String()), nil)
	if st != 200 || body["name"] != "Zoo" || body["joined_members"] != 2.0 || body["joined_local_members"] != 2.0 || body["public"] != false {
		t.Fatalf("zoo details: %d %v", st, body)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(zoo.String())+"/members", nil)
	members, _ := body["members"].([]any)
	if st != 200 || len(members) != 2 || members[0] != "@alice:localhost" || members[1] != "@bob:localhost" || body["total"] != 2.0 {
		t.Fatalf("zoo members: %d %v", st, body)
	}
	if _, err := bob.LeaveRoom(ctx, zoo); err != nil {
		t.Fatal(err)
	}
	st, body = adminCall(t, n, tok, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(zoo.String())+"/members", nil)
	if members, _ = body["members"].([]any); len(members) != 1 || members[0] != id.UserID("@alice:localhost").String() {
		t.Fatalf("members after bob left: %v", body)
	}
	for _, p := range []string{"/_synapse/admin/v1/rooms/!nope:localhost", "/_synapse/admin/v1/rooms/!nope:localhost/members"} {
		if st, body = adminCall(t, n, tok, "GET", p, nil); st != 404 || body["errcode"] != "M_NOT_FOUND" {
			t.Errorf("%s: %d %v", p, st, body)
		}
	}
}
