package integration

import (
	"errors"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// leftRooms runs an initial /sync with include_leave and returns the
// rooms in its leave section.
func leftRooms(t *testing.T, c *mautrix.Client) map[id.RoomID]bool {
	t.Helper()
	u := c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, map[string]string{
		"filter": `{"room":{"include_leave":true}}`, "timeout": "0"})
	var resp mautrix.RespSync
	if _, err := c.MakeRequest(ctxT(t), "GET", u, nil, &resp); err != nil {
		t.Fatal(err)
	}
	out := map[id.RoomID]bool{}
	for r := range resp.Rooms.Leave {
		out[r] = true
	}
	return out
}

func wantHTTPErr(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != status || he.RespError == nil || he.RespError.ErrCode != code {
		t.Fatalf("%s: got %v, want %d %s", what, err, status, code)
	}
}

// TestAdminDeleteRoom: access checks, then a delete with block: every
// local member is out, the listing and aliases are gone, nobody can join
// again, and purge hid the room from its former members.
func TestAdminDeleteRoom(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	root := adminUser(t, n, "root")
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	carol := n.register(t, "carol")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat",
		RoomAliasName: "doomed", Invite: []id.UserID{carol.UserID}})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	path := "/_synapse/admin/v1/rooms/" + url.PathEscape(roomID.String())

	st, body := adminCall(t, n, alice.AccessToken, "DELETE", path, map[string]any{})
	if st != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("delete as room creator, not admin: %d %v", st, body)
	}
	st, body = adminCall(t, n, "", "DELETE", path, map[string]any{})
	if st != 401 {
		t.Fatalf("delete without token: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "DELETE", "/_synapse/admin/v1/rooms/!nope:localhost", map[string]any{})
	if st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("delete unknown room: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "DELETE", "/_synapse/admin/v1/rooms/not-a-room", map[string]any{})
	if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("delete with bad room ID: %d %v", st, body)
	}
	// The refused calls changed nothing.
	if joined, err := bob.JoinedRooms(ctx); err != nil || !slices.Contains(joined.JoinedRooms, roomID) {
		t.Fatalf("bob not in room after refused deletes: %v %v", joined, err)
	}

	// The admin is not in the room, so each member leaves by their own event.
	st, body = adminCall(t, n, root.AccessToken, "DELETE", path, map[string]any{"block": true})
	wantStatus(t, "delete", st, body, 200)
	kicked, _ := body["kicked_users"].([]any)
	if len(kicked) != 3 || kicked[0] != "@alice:localhost" || kicked[1] != "@bob:localhost" || kicked[2] != "@carol:localhost" {
		t.Fatalf("kicked_users: %v", body)
	}
	if failed, _ := body["failed_to_kick_users"].([]any); failed == nil || len(failed) != 0 {
		t.Fatalf("failed_to_kick_users: %v", body)
	}
	if aliases, _ := body["local_aliases"].([]any); len(aliases) != 1 || aliases[0] != "#doomed:localhost" {
		t.Fatalf("local_aliases: %v", body)
	}
	if v, ok := body["new_room_id"]; !ok || v != nil {
		t.Fatalf("new_room_id: %v", body)
	}

	for _, c := range []*mautrix.Client{alice, bob} {
		joined, err := c.JoinedRooms(ctx)
		if err != nil || slices.Contains(joined.JoinedRooms, roomID) {
			t.Fatalf("%s still joined: %v %v", c.UserID, joined, err)
		}
	}
	// The members' own leave events are the room's last membership state.
	st, body = adminCall(t, n, root.AccessToken, "GET", path+"/members", nil)
	if wantStatus(t, "members", st, body, 200); body["total"] != 0.0 {
		t.Fatalf("members after delete: %v", body)
	}
	if _, err := alice.ResolveAlias(ctx, "#doomed:localhost"); err == nil {
		t.Fatal("alias survived the delete")
	} else {
		wantHTTPErr(t, "resolve deleted alias", err, 404, "M_NOT_FOUND")
	}
	pub, err := bob.PublicRooms(ctx, &mautrix.ReqPublicRooms{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range pub.Chunk {
		if r.RoomID == roomID {
			t.Fatal("deleted room still in the public directory")
		}
	}
	// Blocked: the room's join rule is still public, but joins are refused.
	_, err = bob.JoinRoomByID(ctx, roomID)
	wantHTTPErr(t, "join blocked room", err, 403, "M_FORBIDDEN")
	_, err = root.JoinRoom(ctx, roomID.String(), nil)
	wantHTTPErr(t, "admin join of blocked room", err, 403, "M_FORBIDDEN")
	st, body = adminCall(t, n, root.AccessToken, "GET", path+"/block", nil)
	if st != 200 || body["block"] != true || body["user_id"] != "@root:localhost" {
		t.Fatalf("block status: %d %v", st, body)
	}
	// purge (the default) made the room forgotten for its former members.
	if left := leftRooms(t, alice); left[roomID] {
		t.Fatal("purged room still in alice's archived rooms")
	}

	// Unblocking lets users back in.
	st, body = adminCall(t, n, root.AccessToken, "PUT", path+"/block", map[string]any{"block": false})
	wantStatus(t, "unblock", st, body, 200)
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("join after unblock: %v", err)
	}
	st, body = adminCall(t, n, bob.AccessToken, "PUT", path+"/block", map[string]any{"block": true})
	if st != 403 {
		t.Fatalf("block as non-admin: %d %v", st, body)
	}
}

// TestAdminDeleteRoomReplacement: new_room_user_id moves the members and
// aliases to a new room carrying the admin's message; purge=false keeps
// the old room in the members' archives; a deleted room without block can
// be joined again.
func TestAdminDeleteRoomReplacement(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	root := adminUser(t, n, "root")
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "old"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	// The admin is in the room too, and is evicted like everyone else.
	if _, err := root.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	path := "/_synapse/admin/v1/rooms/" + url.PathEscape(roomID.String())
	st, body := adminCall(t, n, root.AccessToken, "DELETE", path, map[string]any{"new_room_user_id": "@nobody:localhost"})
	if st != 400 {
		t.Fatalf("unknown new_room_user_id: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "DELETE", path, map[string]any{"new_room_user_id": "@bob:elsewhere"})
	if st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("remote new_room_user_id: %d %v", st, body)
	}
	st, body = adminCall(t, n, root.AccessToken, "DELETE", path, map[string]any{
		"new_room_user_id": root.UserID.String(), "message": "Moved for review", "room_name": "Moved", "purge": false})
	wantStatus(t, "delete", st, body, 200)
	newID, _ := body["new_room_id"].(string)
	if newID == "" || newID == roomID.String() {
		t.Fatalf("new_room_id: %v", body)
	}
	if kicked, _ := body["kicked_users"].([]any); len(kicked) != 3 {
		t.Fatalf("kicked_users: %v", body)
	}
	// Members now sit in the replacement room, where the message waits.
	for _, c := range []*mautrix.Client{alice, bob} {
		joined, err := c.JoinedRooms(ctx)
		if err != nil || slices.Contains(joined.JoinedRooms, roomID) || !slices.Contains(joined.JoinedRooms, id.RoomID(newID)) {
			t.Fatalf("%s rooms after delete: %v %v", c.UserID, joined, err)
		}
	}
	msgs, err := alice.Messages(ctx, id.RoomID(newID), "", "", mautrix.DirectionBackward, nil, 20)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range msgs.Chunk {
		if ev.Type == event.EventMessage && ev.Content.Raw["body"] == "Moved for review" {
			found = true
		}
	}
	if !found {
		t.Fatalf("replacement room lacks the admin's message: %d events", len(msgs.Chunk))
	}
	var nameEv event.RoomNameEventContent
	if err := alice.StateEvent(ctx, id.RoomID(newID), event.StateRoomName, "", &nameEv); err != nil || nameEv.Name != "Moved" {
		t.Fatalf("replacement room name: %q %v", nameEv.Name, err)
	}
	// Members of the replacement room cannot talk in it.
	_, err = alice.SendText(ctx, id.RoomID(newID), "hello?")
	wantHTTPErr(t, "send in replacement room", err, 403, "M_FORBIDDEN")
	// The alias now leads to the replacement room.
	res, err := bob.ResolveAlias(ctx, "#old:localhost")
	if err != nil || res.RoomID.String() != newID {
		t.Fatalf("moved alias: %v %v", res, err)
	}
	// purge=false: the old room stays in the archive.
	if left := leftRooms(t, alice); !left[roomID] {
		t.Fatal("unpurged room missing from alice's archived rooms")
	}
	// Not blocked: joining again works.
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("rejoin of unblocked deleted room: %v", err)
	}
}
