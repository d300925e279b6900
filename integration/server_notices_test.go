package integration

import (
	"net/http"
	"testing"

	"maunium.net/go/mautrix/id"

	"edge/edge/config"
)

// TestServerNotices: admins (only) send a user notices from the system
// user in one room per user, tagged m.server_notice; the user cannot
// refuse the invite but may leave after joining, and the next notice
// re-invites them to the same room. PUT with a txnId is idempotent.
func TestServerNotices(t *testing.T) {
	n := startNode(t, func(c *config.Config) {
		c.ServerNotices = config.ServerNotices{SystemMXIDLocalpart: "_server", RoomName: "Server Notices"}
	})
	admin := adminUser(t, n, "boss")
	alice := n.register(t, "")
	notice := map[string]any{"user_id": alice.UserID, "content": map[string]any{"msgtype": "m.text", "body": "hello"}}
	const path = "/_synapse/admin/v1/send_server_notice"

	if st, body := adminCall(t, n, alice.AccessToken, "POST", path, notice); st != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("a non-admin sent a notice: %d %v", st, body)
	}
	st, body := adminCall(t, n, admin.AccessToken, "POST", path, notice)
	first, _ := body["event_id"].(string)
	if st != 200 || first == "" {
		t.Fatalf("send_server_notice: %d %v", st, body)
	}

	// Alice is invited by @_server to a room tagged m.server_notice.
	var roomID id.RoomID
	sync, err := alice.SyncRequest(ctxT(t), 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	for rid, inv := range sync.Rooms.Invite {
		if len(inv.State.Events) > 0 && inv.State.Events[0].Sender == "@_server:localhost" {
			roomID = rid
		}
	}
	if roomID == "" {
		t.Fatalf("no invite from @_server: %+v", sync.Rooms.Invite)
	}
	var tags struct {
		Tags map[string]any `json:"tags"`
	}
	if _, err := alice.MakeRequest(ctxT(t), http.MethodGet, alice.BuildClientURL("v3", "user", alice.UserID, "rooms", roomID, "tags"), nil, &tags); err != nil || tags.Tags["m.server_notice"] == nil {
		t.Fatalf("tags of the notices room: %+v %v", tags, err)
	}

	// The invite cannot be rejected; once joined, the room can be left.
	_, err = alice.LeaveRoom(ctxT(t), roomID)
	wantMatrixErr(t, err, 403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
	if _, err := alice.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	if ev, err := alice.GetEvent(ctxT(t), roomID, id.EventID(first)); err != nil || ev.Sender != "@_server:localhost" {
		t.Fatalf("the notice: %+v %v", ev, err)
	}
	if _, err := alice.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("leaving after joining: %v", err)
	}

	// The next notice re-invites her to the same room.
	if st, body = adminCall(t, n, admin.AccessToken, "POST", path, notice); st != 200 {
		t.Fatalf("second notice: %d %v", st, body)
	}
	if _, err := alice.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatalf("rejoining the same room after the new invite: %v", err)
	}
	joined, err := alice.JoinedRooms(ctxT(t))
	if err != nil || len(joined.JoinedRooms) != 1 || joined.JoinedRooms[0] != roomID {
		t.Fatalf("joined rooms: %+v %v, want only %s", joined, err, roomID)
	}

	// Idempotent per txnId.
	_, b1 := adminCall(t, n, admin.AccessToken, "PUT", path+"/t1", notice)
	_, b2 := adminCall(t, n, admin.AccessToken, "PUT", path+"/t1", notice)
	if b1["event_id"] == nil || b1["event_id"] != b2["event_id"] {
		t.Fatalf("PUT with the same txnId: %v then %v", b1, b2)
	}
	// Only local users get notices.
	if st, _ := adminCall(t, n, admin.AccessToken, "POST", path, map[string]any{"user_id": "@x:elsewhere", "content": map[string]any{}}); st != 400 {
		t.Fatalf("notice to a remote user: %d, want 400", st)
	}
}
