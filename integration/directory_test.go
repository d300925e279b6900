package integration

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestDirectoryAliases(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	anon, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})

	if _, err := alice.CreateAlias(ctx, "#lobby:localhost", roomID); err != nil {
		t.Fatal(err)
	}
	// Anyone resolves it, with our server to join through.
	for _, c := range []*mautrix.Client{alice, anon} {
		res, err := c.ResolveAlias(ctx, "#lobby:localhost")
		if err != nil {
			t.Fatal(err)
		}
		if res.RoomID != roomID || !slices.Equal(res.Servers, []string{"localhost"}) {
			t.Fatalf("resolve = %+v", res)
		}
	}

	// Taken, malformed, foreign, incomplete.
	_, err = alice.CreateAlias(ctx, "#lobby:localhost", roomID)
	udWantErr(t, err, 409, "M_UNKNOWN")
	for _, bad := range []id.RoomAlias{"lobby", "#:localhost", "#nolocal", "#x:bad_server!"} {
		_, err = alice.CreateAlias(ctx, bad, roomID)
		udWantErr(t, err, 400, "M_INVALID_PARAM")
		_, err = anon.ResolveAlias(ctx, bad)
		udWantErr(t, err, 400, "M_INVALID_PARAM")
	}
	_, err = alice.CreateAlias(ctx, "#elsewhere:remote.example", roomID)
	udWantErr(t, err, 400, "M_INVALID_PARAM")
	st, body := udDo(t, alice, http.MethodPut, alice.BuildClientURL("v3", "directory", "room", "#nobody:localhost"), map[string]any{})
	udWantStatus(t, st, body, 400, "M_MISSING_PARAM")
	_, err = alice.CreateAlias(ctx, "#notroom:localhost", "not-a-room")
	udWantErr(t, err, 400, "M_INVALID_PARAM")
	_, err = anon.ResolveAlias(ctx, "#missing:localhost")
	udWantErr(t, err, 404, "M_NOT_FOUND")
	_, err = anon.ResolveAlias(ctx, "#remote:remote.example")
	udWantErr(t, err, 404, "M_NOT_FOUND")

	// Non-members may neither add aliases nor list them.
	_, err = bob.CreateAlias(ctx, "#bobs:localhost", roomID)
	udWantErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.GetAliases(ctx, roomID)
	udWantErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.GetAliases(ctx, "!unknown:localhost")
	udWantErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.GetAliases(ctx, "garbage")
	udWantErr(t, err, 400, "M_INVALID_PARAM")

	// Once joined, bob (power 0) may add an alias and delete it as its
	// creator, but not alice's.
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.CreateAlias(ctx, "#bobs:localhost", roomID); err != nil {
		t.Fatal(err)
	}
	list, err := bob.GetAliases(ctx, roomID)
	if err != nil || !slices.Equal(list.Aliases, []id.RoomAlias{"#bobs:localhost", "#lobby:localhost"}) {
		t.Fatalf("aliases = %+v, %v", list, err)
	}
	_, err = bob.DeleteAlias(ctx, "#lobby:localhost")
	udWantErr(t, err, 403, "M_FORBIDDEN")
	if _, err := bob.DeleteAlias(ctx, "#bobs:localhost"); err != nil {
		t.Fatal(err)
	}
	_, err = bob.DeleteAlias(ctx, "#bobs:localhost")
	udWantErr(t, err, 404, "M_NOT_FOUND")

	// Alice, with the power to set m.room.canonical_alias, may delete an
	// alias bob made; that also drops it from the canonical alias event.
	if _, err := bob.CreateAlias(ctx, "#bobs2:localhost", roomID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendStateEvent(ctx, roomID, event.StateCanonicalAlias, "", map[string]any{
		"alias": "#bobs2:localhost", "alt_aliases": []string{"#bobs2:localhost", "#lobby:localhost"},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.DeleteAlias(ctx, "#bobs2:localhost"); err != nil {
		t.Fatal(err)
	}
	_, err = anon.ResolveAlias(ctx, "#bobs2:localhost")
	udWantErr(t, err, 404, "M_NOT_FOUND")
	var canon map[string]any
	if err := alice.StateEvent(ctx, roomID, event.StateCanonicalAlias, "", &canon); err != nil {
		t.Fatal(err)
	}
	if canon["alias"] != nil || fmt.Sprint(canon["alt_aliases"]) != "[#lobby:localhost]" {
		t.Fatalf("canonical alias after delete = %v", canon)
	}
	// The remaining alias still resolves; a recreated one is reusable.
	if res, err := anon.ResolveAlias(ctx, "#lobby:localhost"); err != nil || res.RoomID != roomID {
		t.Fatalf("lobby = %+v, %v", res, err)
	}
	if _, err := alice.CreateAlias(ctx, "#bobs2:localhost", roomID); err != nil {
		t.Fatal(err)
	}
}

func TestDirectoryAliasesWorldReadable(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{
		InitialState: []*event.Event{{
			Type: event.StateHistoryVisibility, StateKey: new(string),
			Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}},
		}},
	})
	if _, err := alice.CreateAlias(ctx, "#readable:localhost", roomID); err != nil {
		t.Fatal(err)
	}
	list, err := bob.GetAliases(ctx, roomID)
	if err != nil || !slices.Equal(list.Aliases, []id.RoomAlias{"#readable:localhost"}) {
		t.Fatalf("world-readable aliases for a non-member = %+v, %v", list, err)
	}
}

func TestDirectoryVisibility(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	anon, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	visURL := func(c *mautrix.Client, r id.RoomID) string {
		return c.BuildClientURL("v3", "directory", "list", "room", r)
	}

	st, body := udDo(t, anon, http.MethodGet, visURL(anon, roomID), nil)
	if st != 200 || body["visibility"] != "private" {
		t.Fatalf("initial visibility = %d %v", st, body)
	}
	// Only members with power over m.room.canonical_alias may publish.
	st, body = udDo(t, bob, http.MethodPut, visURL(bob, roomID), map[string]any{"visibility": "public"})
	udWantStatus(t, st, body, 403, "M_FORBIDDEN")
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	st, body = udDo(t, bob, http.MethodPut, visURL(bob, roomID), map[string]any{"visibility": "public"})
	udWantStatus(t, st, body, 403, "M_FORBIDDEN")
	st, body = udDo(t, alice, http.MethodPut, visURL(alice, roomID), map[string]any{"visibility": "sideways"})
	udWantStatus(t, st, body, 400, "M_INVALID_PARAM")
	// visibility defaults to public.
	st, body = udDo(t, alice, http.MethodPut, visURL(alice, roomID), map[string]any{})
	udWantStatus(t, st, body, 200, "")
	st, body = udDo(t, anon, http.MethodGet, visURL(anon, roomID), nil)
	if st != 200 || body["visibility"] != "public" {
		t.Fatalf("after publishing = %d %v", st, body)
	}
	pub, err := anon.PublicRooms(ctxT(t), &mautrix.ReqPublicRooms{})
	if err != nil || len(pub.Chunk) != 1 || pub.Chunk[0].RoomID != roomID {
		t.Fatalf("public rooms after publishing = %+v, %v", pub, err)
	}
	st, body = udDo(t, alice, http.MethodPut, visURL(alice, roomID), map[string]any{"visibility": "private"})
	udWantStatus(t, st, body, 200, "")
	pub, err = anon.PublicRooms(ctxT(t), &mautrix.ReqPublicRooms{})
	if err != nil || len(pub.Chunk) != 0 {
		t.Fatalf("public rooms after unpublishing = %+v, %v", pub, err)
	}
	// Unknown rooms are 404s.
	st, body = udDo(t, anon, http.MethodGet, visURL(anon, "!nope:localhost"), nil)
	udWantStatus(t, st, body, 404, "M_NOT_FOUND")
	st, body = udDo(t, alice, http.MethodPut, visURL(alice, "!nope:localhost"), map[string]any{"visibility": "public"})
	udWantStatus(t, st, body, 404, "M_NOT_FOUND")
}

func TestDirectoryPublicRooms(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	anon, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	extra := []*mautrix.Client{n.register(t, ""), n.register(t, ""), n.register(t, "")}

	// Six published rooms: joined counts 4, 2, 2, 1, 1, 1 (ties ordered by room ID).
	specs := []struct {
		name, topic string
		joiners     int
	}{
		{"Gardening", "Tomatoes and more", 3},
		{"Chess Club", "Openings, endgames", 1},
		{"Knitting", "Wool WORLD", 1},
		{"Astronomy", "Stars", 0},
		{"Cooking", "", 0},
		{"Running", "Trails", 0},
	}
	members := map[id.RoomID]int{}
	for _, sp := range specs {
		roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: sp.name, Topic: sp.topic})
		for _, c := range extra[:sp.joiners] {
			if _, err := c.JoinRoomByID(ctx, roomID); err != nil {
				t.Fatal(err)
			}
		}
		members[roomID] = 1 + sp.joiners
	}
	// An alias makes one room findable by it; an invite-only published
	// room and an unpublished public room stay out of the list.
	var cooking id.RoomID
	for r := range members {
		if members[r] == 1 {
			var name map[string]any
			_ = alice.StateEvent(ctx, r, event.StateRoomName, "", &name)
			if name["name"] == "Cooking" {
				cooking = r
			}
		}
	}
	if _, err := alice.CreateAlias(ctx, "#recipes:localhost", cooking); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendStateEvent(ctx, cooking, event.StateCanonicalAlias, "", map[string]any{"alias": "#recipes:localhost"}); err != nil {
		t.Fatal(err)
	}
	hidden := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret gardening"})
	st, body := udDo(t, alice, http.MethodPut, alice.BuildClientURL("v3", "directory", "list", "room", hidden), map[string]any{"visibility": "public"})
	udWantStatus(t, st, body, 200, "")
	mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Unlisted gardening"})

	want := make([]id.RoomID, 0, len(members))
	for r := range members {
		want = append(want, r)
	}
	slices.SortFunc(want, func(a, b id.RoomID) int {
		if members[a] != members[b] {
			return members[b] - members[a]
		}
		return strings.Compare(string(a), string(b))
	})

	// Page through unauthenticated, two at a time.
	var got []id.RoomID
	since := ""
	var pages []*mautrix.RespPublicRooms
	for i := 0; ; i++ {
		if i > 5 {
			t.Fatal("pagination does not end")
		}
		page, err := anon.PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 2, Since: since})
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, page)
		if page.TotalRoomCountEstimate != 6 {
			t.Fatalf("total_room_count_estimate = %d", page.TotalRoomCountEstimate)
		}
		if len(page.Chunk) > 2 {
			t.Fatalf("page of %d with limit 2", len(page.Chunk))
		}
		if (i == 0) != (page.PrevBatch == "") {
			t.Fatalf("page %d prev_batch = %q", i, page.PrevBatch)
		}
		for _, e := range page.Chunk {
			got = append(got, e.RoomID)
			if e.NumJoinedMembers != members[e.RoomID] || e.JoinRule != "public" || e.GuestCanJoin || e.WorldReadable {
				t.Fatalf("entry %+v (want %d members)", e, members[e.RoomID])
			}
		}
		if page.NextBatch == "" {
			break
		}
		since = page.NextBatch
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged order = %v, want %v", got, want)
	}
	if len(pages) != 3 {
		t.Fatalf("%d pages", len(pages))
	}
	// prev_batch of the last page leads back to the middle one.
	back, err := anon.PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 2, Since: pages[2].PrevBatch})
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Chunk) != 2 || back.Chunk[0].RoomID != want[2] || back.Chunk[1].RoomID != want[3] || back.NextBatch == "" || back.PrevBatch == "" {
		t.Fatalf("backwards page = %+v", back)
	}
	// The first entry carries name and topic.
	first := pages[0].Chunk[0]
	if first.Name != "Gardening" || first.Topic != "Tomatoes and more" {
		t.Fatalf("first entry = %+v", first)
	}

	// POST with a search term matches name, topic and alias, ignoring case.
	search := func(term string, extra map[string]any) *mautrix.RespPublicRooms {
		t.Helper()
		req := map[string]any{"filter": map[string]any{"generic_search_term": term}}
		for k, v := range extra {
			req[k] = v
		}
		var resp mautrix.RespPublicRooms
		if _, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "publicRooms"), req, &resp); err != nil {
			t.Fatal(err)
		}
		return &resp
	}
	names := func(r *mautrix.RespPublicRooms) []string {
		var out []string
		for _, e := range r.Chunk {
			out = append(out, e.Name)
		}
		slices.Sort(out)
		return out
	}
	for term, wantNames := range map[string][]string{
		"GARDEN":  {"Gardening"},
		"world":   {"Knitting"},
		"recipes": {"Cooking"},
		"i":       {"Chess Club", "Cooking", "Gardening", "Knitting", "Running"},
		"nothing": nil,
	} {
		if r := search(term, nil); !slices.Equal(names(r), wantNames) || r.TotalRoomCountEstimate != len(wantNames) {
			t.Fatalf("search %q = %v (total %d)", term, names(r), r.TotalRoomCountEstimate)
		}
	}
	if r := search("i", map[string]any{"limit": 1}); len(r.Chunk) != 1 || r.NextBatch == "" {
		t.Fatalf("limited search = %+v", r)
	}
	if r := search("", map[string]any{"include_all_networks": true}); len(r.Chunk) != 6 {
		t.Fatalf("include_all_networks = %d rooms", len(r.Chunk))
	}
	if r := search("", map[string]any{"third_party_instance_id": "irc"}); len(r.Chunk) != 0 {
		t.Fatalf("a bridge network with no rooms = %+v", r)
	}

	// Our own server name is accepted; another server's directory is not (yet).
	if r, err := anon.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: "localhost"}); err != nil || len(r.Chunk) != 6 {
		t.Fatalf("server=localhost = %+v, %v", r, err)
	}
	_, err = anon.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: "remote.example"})
	udWantErr(t, err, 404, "M_NOT_FOUND")
	// Bad tokens and limits; POST needs a token.
	_, err = anon.PublicRooms(ctx, &mautrix.ReqPublicRooms{Since: "not-a-token"})
	udWantErr(t, err, 400, "M_INVALID_PARAM")
	st, body = udDo(t, anon, http.MethodGet, anon.BuildClientURL("v3", "publicRooms")+"?limit=many", nil)
	udWantStatus(t, st, body, 400, "M_INVALID_PARAM")
	st, body = udDo(t, anon, http.MethodPost, anon.BuildClientURL("v3", "publicRooms"), map[string]any{})
	udWantStatus(t, st, body, 401, "M_MISSING_TOKEN")
	st, body = udDo(t, alice, http.MethodPost, alice.BuildClientURL("v3", "publicRooms"), map[string]any{"include_all_networks": true, "third_party_instance_id": "irc"})
	udWantStatus(t, st, body, 400, "M_INVALID_PARAM")
	bad, _ := mautrix.NewClient(n.URL, "", "bogus-token")
	_, err = bad.PublicRooms(ctx, &mautrix.ReqPublicRooms{})
	udWantErr(t, err, 401, "M_UNKNOWN_TOKEN")
}

func TestDirectoryPublicRoomTypes(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ctx := ctxT(t)
	space := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "A space",
		CreationContent: map[string]any{"type": "m.space"}})
	plain := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "A room"})
	query := func(roomTypes any) []id.RoomID {
		t.Helper()
		var resp mautrix.RespPublicRooms
		req := map[string]any{"filter": map[string]any{"room_types": roomTypes}}
		if _, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "publicRooms"), req, &resp); err != nil {
			t.Fatal(err)
		}
		var out []id.RoomID
		for _, e := range resp.Chunk {
			if e.RoomID == space && e.RoomType != event.RoomTypeSpace {
				t.Fatalf("space entry room_type = %q", e.RoomType)
			}
			out = append(out, e.RoomID)
		}
		return out
	}
	if got := query([]any{"m.space"}); !slices.Equal(got, []id.RoomID{space}) {
		t.Fatalf("m.space = %v", got)
	}
	if got := query([]any{nil}); !slices.Equal(got, []id.RoomID{plain}) {
		t.Fatalf("untyped = %v", got)
	}
	if got := query(nil); len(got) != 2 {
		t.Fatalf("no room_types filter = %v", got)
	}
	st, body := udDo(t, alice, http.MethodPost, alice.BuildClientURL("v3", "publicRooms"), map[string]any{"filter": map[string]any{"room_types": "m.space"}})
	udWantStatus(t, st, body, 400, "M_BAD_JSON")
}
