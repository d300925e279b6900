package integration

import (
	"testing"

	"maunium.net/go/mautrix"

	"edge/edge/config"
)

func dirIDs(r *mautrix.RespSearchUserDirectory) map[string]bool {
	out := map[string]bool{}
	for _, e := range r.Results {
		out[string(e.UserID)] = true
	}
	return out
}

// TestUserDirectorySearch: the directory lists users sharing a room with
// the searcher and users in public rooms, by user ID or display name, and
// not users the searcher has no way of knowing; limit sets limited.
func TestUserDirectorySearch(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	alice := n.register(t, "udalice")
	bob := n.register(t, "udbob")
	carol := n.register(t, "udcarol")
	dave := n.register(t, "uddave")
	if err := bob.SetDisplayName(ctx, "Bobby Tables"); err != nil {
		t.Fatal(err)
	}
	// alice and bob share a private room; carol sits alone in a public one;
	// dave is in a private room of his own.
	shared := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: nil})
	if _, err := alice.InviteUser(ctx, shared, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, shared); err != nil {
		t.Fatal(err)
	}
	mustCreateRoom(t, carol, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	mustCreateRoom(t, dave, &mautrix.ReqCreateRoom{Preset: "private_chat"})

	// The spec names the field display_name (mautrix reads displayname), so raw JSON here.
	st, body := relHTTP(t, alice, "POST", "/_matrix/client/v3/user_directory/search", map[string]any{"search_term": "tables"})
	if st != 200 || dig(body, "results", 0, "user_id") != string(bob.UserID) || dig(body, "results", 0, "display_name") != "Bobby Tables" || dig(body, "results", 1) != nil {
		t.Fatalf("'tables' = %d %v", st, body)
	}
	r, err := alice.SearchUserDirectory(ctx, "BOBBY", 10)
	if err != nil || len(r.Results) != 1 || r.Results[0].UserID != bob.UserID {
		t.Fatalf("'BOBBY' = %+v %v", r, err)
	}
	r, err = alice.SearchUserDirectory(ctx, "udcar", 10)
	if err != nil || !dirIDs(r)[string(carol.UserID)] {
		t.Fatalf("carol (public room) not found: %+v %v", r, err)
	}
	r, err = alice.SearchUserDirectory(ctx, "uddave", 10)
	if err != nil || len(r.Results) != 0 {
		t.Fatalf("dave (no shared or public room) found: %+v %v", r, err)
	}
	r, err = alice.SearchUserDirectory(ctx, "ud", 1)
	if err != nil || len(r.Results) != 1 || !r.Limited {
		t.Fatalf("limit 1 of several: %+v %v", r, err)
	}
	// Shared-room users rank first.
	if r.Results[0].UserID != bob.UserID {
		t.Fatalf("first result %s does not share a room", r.Results[0].UserID)
	}
	// bob and carol; alice does not find herself (her only room is
	// private), carol does (a member of a public room, as in Synapse).
	r, err = alice.SearchUserDirectory(ctx, "ud", 10)
	if err != nil || r.Limited || len(r.Results) != 2 || dirIDs(r)[string(alice.UserID)] {
		t.Fatalf("all of 'ud': %+v %v", r, err)
	}
	if r, err = carol.SearchUserDirectory(ctx, "udcarol", 10); err != nil || !dirIDs(r)[string(carol.UserID)] {
		t.Fatalf("carol, in a public room, does not find herself: %+v %v", r, err)
	}
	if st, body := relHTTP(t, alice, "POST", "/_matrix/client/v3/user_directory/search", map[string]any{"limit": 3}); st != 400 || body["errcode"] != "M_MISSING_PARAM" {
		t.Fatalf("no search_term: %d %v", st, body)
	}
	if st, body := relHTTP(t, alice, "POST", "/_matrix/client/v3/user_directory/search", map[string]any{"search_term": 7}); st != 400 || body["errcode"] != "M_BAD_JSON" {
		t.Fatalf("numeric search_term: %d %v", st, body)
	}
}

// TestUserDirectorySearchAllUsers: with search_all_users every local user
// is listed, roomless ones too.
func TestUserDirectorySearchAllUsers(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.UserDirectory.SearchAllUsers = true })
	alice := n.register(t, "")
	loner := n.register(t, "lonelyheart")
	r, err := alice.SearchUserDirectory(ctxT(t), "lonely", 10)
	if err != nil || len(r.Results) != 1 || r.Results[0].UserID != loner.UserID {
		t.Fatalf("search_all_users: %+v %v", r, err)
	}
}
