package integration

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// hierRoom is a room of a /hierarchy answer as the tests read it.
type hierRoom struct {
	RoomID         string   `json:"room_id"`
	Name           string   `json:"name"`
	RoomType       string   `json:"room_type"`
	JoinRule       string   `json:"join_rule"`
	NumJoined      int      `json:"num_joined_members"`
	WorldReadable  bool     `json:"world_readable"`
	AllowedRoomIDs []string `json:"allowed_room_ids"`
	ChildrenState  []struct {
		Type     string         `json:"type"`
		StateKey string         `json:"state_key"`
		Sender   string         `json:"sender"`
		Content  map[string]any `json:"content"`
		TS       int64          `json:"origin_server_ts"`
	} `json:"children_state"`
}

type hierResp struct {
	Rooms     []hierRoom `json:"rooms"`
	NextBatch string     `json:"next_batch"`
}

// getHierarchy asks GET /_matrix/client/v1/rooms/{roomId}/hierarchy.
func getHierarchy(t *testing.T, c *mautrix.Client, roomID id.RoomID, q url.Values) (*hierResp, error) {
	t.Helper()
	u := c.HomeserverURL.String() + "/_matrix/client/v1/rooms/" + url.PathEscape(roomID.String()) + "/hierarchy"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var resp hierResp
	_, err := c.MakeRequest(ctxT(t), http.MethodGet, u, nil, &resp)
	return &resp, err
}

func mustHierarchy(t *testing.T, c *mautrix.Client, roomID id.RoomID, q url.Values) *hierResp {
	t.Helper()
	resp, err := getHierarchy(t, c, roomID, q)
	if err != nil {
		t.Fatalf("hierarchy of %s: %v", roomID, err)
	}
	return resp
}

func (h *hierResp) ids() []string {
	out := []string{}
	for _, r := range h.Rooms {
		out = append(out, r.RoomID)
	}
	return out
}

func (h *hierResp) room(roomID id.RoomID) *hierRoom {
	for i := range h.Rooms {
		if h.Rooms[i].RoomID == roomID.String() {
			return &h.Rooms[i]
		}
	}
	return nil
}

// links lists a room's children_state state keys in order.
func (r *hierRoom) links() []string {
	out := []string{}
	for _, c := range r.ChildrenState {
		out = append(out, c.StateKey)
	}
	return out
}

func strs(ids ...id.RoomID) []string {
	out := []string{}
	for _, i := range ids {
		out = append(out, i.String())
	}
	return out
}

func wantErr(t *testing.T, err error, status int, code string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != status || he.RespError == nil || he.RespError.ErrCode != code {
		t.Fatalf("got %v, want %d %s", err, status, code)
	}
}

func spaceReq(name string, extra ...*event.Event) *mautrix.ReqCreateRoom {
	return &mautrix.ReqCreateRoom{Preset: "public_chat", Name: name, CreationContent: map[string]any{"type": "m.space"}, InitialState: extra}
}

func worldReadable() *event.Event {
	return &event.Event{Type: event.StateHistoryVisibility, StateKey: new(string),
		Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}}}
}

func restrictedTo(space id.RoomID, via string) *event.Event {
	return &event.Event{Type: event.StateJoinRules, StateKey: new(string), Content: event.Content{Raw: map[string]any{
		"join_rule": "restricted",
		"allow":     []any{map[string]any{"type": "m.room_membership", "room_id": space.String(), "via": []string{via}}},
	}}}
}

// link sends an m.space.child from parent to child.
func link(t *testing.T, c *mautrix.Client, parent, child id.RoomID, via string, suggested bool) {
	t.Helper()
	content := map[string]any{"via": []string{via}}
	if suggested {
		content["suggested"] = true
	}
	if _, err := c.SendStateEvent(ctxT(t), parent, event.StateSpaceChild, child.String(), content); err != nil {
		t.Fatalf("link %s → %s: %v", parent, child, err)
	}
}

// TestHierarchyLocal walks a space of one server:
//
//	root ─┬─ r1 (suggested)
//	      ├─ ss1 (space) ─┬─ ss2 (space) ─ r3
//	      │               └─ r4 (bob's, invite-only)
//	      └─ r2 (suggested; not a space: its own child link to r5 is ignored)
//
// depth first in link order; max_depth, suggested_only, limit and from;
// links removed by emptying their content; rooms the user could not join
// left out but their links kept; restricted rooms shown to members of an
// allowed room; the root refused to a user who cannot see it; a token of
// another request refused.
func TestHierarchyLocal(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	carol := n.register(t, "carol")
	ctx := ctxT(t)

	root := mustCreateRoom(t, alice, spaceReq("Root"))
	r1 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R1"})
	ss1 := mustCreateRoom(t, alice, spaceReq("SS1"))
	r2 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R2"})
	ss2 := mustCreateRoom(t, alice, spaceReq("SS2"))
	r3 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R3"})
	r4 := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "R4"})
	r5 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R5"})
	hs := n.Config.ServerName
	link(t, alice, root, r1, hs, true)
	time.Sleep(2 * time.Millisecond) // distinct origin_server_ts: the links' order
	link(t, alice, root, ss1, hs, false)
	time.Sleep(2 * time.Millisecond)
	link(t, alice, root, r2, hs, true)
	link(t, alice, r2, r5, hs, false)
	link(t, alice, ss1, ss2, hs, false)
	time.Sleep(2 * time.Millisecond)
	link(t, alice, ss1, r4, hs, false)
	link(t, alice, ss2, r3, hs, false)

	all := mustHierarchy(t, alice, root, nil)
	if want := strs(root, r1, ss1, ss2, r3, r2); !slices.Equal(all.ids(), want) {
		t.Fatalf("whole walk %v, want %v (r4 is invite-only, r5 under a non-space)", all.ids(), want)
	}
	if all.NextBatch != "" {
		t.Fatalf("next_batch %q on the last page", all.NextBatch)
	}
	rr := all.room(root)
	if rr.Name != "Root" || rr.RoomType != "m.space" || rr.JoinRule != "public" || rr.NumJoined != 1 {
		t.Fatalf("root entry %+v", rr)
	}
	if got, want := rr.links(), strs(r1, ss1, r2); !slices.Equal(got, want) {
		t.Fatalf("root's children_state %v, want %v", got, want)
	}
	if c := rr.ChildrenState[0]; c.Type != "m.space.child" || c.Sender != alice.UserID.String() || c.TS == 0 || c.Content["suggested"] != true {
		t.Fatalf("stripped child %+v", c)
	}
	if got := all.room(ss1).links(); !slices.Equal(got, strs(ss2, r4)) {
		t.Fatalf("ss1's children_state %v keeps the link to r4", got)
	}
	if got := all.room(r2).ChildrenState; len(got) != 0 {
		t.Fatalf("a non-space lists children %v", got)
	}

	depth := mustHierarchy(t, alice, root, url.Values{"max_depth": {"1"}})
	if want := strs(root, r1, ss1, r2); !slices.Equal(depth.ids(), want) {
		t.Fatalf("max_depth=1: %v, want %v", depth.ids(), want)
	}
	if got := depth.room(ss1).links(); !slices.Equal(got, strs(ss2, r4)) {
		t.Fatalf("max_depth=1 drops ss1's links: %v", got)
	}
	sugg := mustHierarchy(t, alice, root, url.Values{"suggested_only": {"true"}})
	if want := strs(root, r1, r2); !slices.Equal(sugg.ids(), want) {
		t.Fatalf("suggested_only: %v, want %v", sugg.ids(), want)
	}
	if got := sugg.room(root).links(); !slices.Equal(got, strs(r1, r2)) {
		t.Fatalf("suggested_only children_state %v", got)
	}

	page1 := mustHierarchy(t, alice, root, url.Values{"limit": {"4"}})
	if want := strs(root, r1, ss1, ss2); !slices.Equal(page1.ids(), want) || page1.NextBatch == "" {
		t.Fatalf("page 1: %v next %q, want %v and a token", page1.ids(), page1.NextBatch, want)
	}
	page2 := mustHierarchy(t, alice, root, url.Values{"from": {page1.NextBatch}})
	if want := strs(r3, r2); !slices.Equal(page2.ids(), want) || page2.NextBatch != "" {
		t.Fatalf("page 2: %v next %q, want %v and no token", page2.ids(), page2.NextBatch, want)
	}
	_, err := getHierarchy(t, alice, root, url.Values{"from": {page1.NextBatch}, "suggested_only": {"true"}})
	wantErr(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
	_, err = getHierarchy(t, alice, root, url.Values{"from": {"garbage"}})
	wantErr(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
	_, err = getHierarchy(t, alice, root, url.Values{"limit": {"0"}})
	wantErr(t, err, http.StatusBadRequest, "M_INVALID_PARAM")

	// bob sees r4 (his) but not through ss1 until he may see ss1: ss1 is public.
	if got := mustHierarchy(t, bob, root, nil).ids(); !slices.Contains(got, r4.String()) {
		t.Fatalf("bob's walk %v lacks his own room r4", got)
	}
	// An invite makes an invite-only room visible.
	if _, err := bob.InviteUser(ctx, r4, &mautrix.ReqInviteUser{UserID: alice.UserID}); err != nil {
		t.Fatal(err)
	}
	if got := mustHierarchy(t, alice, root, nil).ids(); !slices.Contains(got, r4.String()) {
		t.Fatalf("alice's walk %v lacks r4 after her invite", got)
	}

	// Removing a link (empty content) drops the subtree.
	if _, err := alice.SendStateEvent(ctx, root, event.StateSpaceChild, ss1.String(), map[string]any{}); err != nil {
		t.Fatal(err)
	}
	after := mustHierarchy(t, alice, root, nil)
	if want := strs(root, r1, r2); !slices.Equal(after.ids(), want) || !slices.Equal(after.room(root).links(), strs(r1, r2)) {
		t.Fatalf("after unlinking ss1: %v, links %v", after.ids(), after.room(root).links())
	}

	// A private space is refused to a user who is not in it.
	private := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", CreationContent: map[string]any{"type": "m.space"}})
	_, err = getHierarchy(t, carol, private, nil)
	wantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

	// A restricted room shows to members of its allowed room only.
	space := mustCreateRoom(t, alice, spaceReq("Space", worldReadable()))
	restricted := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Restricted", RoomVersion: "8",
		InitialState: []*event.Event{restrictedTo(space, hs)}})
	link(t, alice, space, restricted, hs, false)
	if got := mustHierarchy(t, carol, space, nil).ids(); !slices.Equal(got, strs(space)) {
		t.Fatalf("carol outside the space sees %v", got)
	}
	if _, err := carol.JoinRoom(ctx, space.String(), nil); err != nil {
		t.Fatal(err)
	}
	got := mustHierarchy(t, carol, space, nil)
	if !slices.Equal(got.ids(), strs(space, restricted)) {
		t.Fatalf("carol in the space sees %v", got.ids())
	}
	if a := got.room(restricted).AllowedRoomIDs; !slices.Equal(a, strs(space)) {
		t.Fatalf("allowed_room_ids %v", a)
	}
}

// roomSummary asks GET /_matrix/client/v1/room_summary/{roomIdOrAlias}.
func roomSummary(t *testing.T, c *mautrix.Client, target string, authed bool) (map[string]any, error) {
	t.Helper()
	u := c.HomeserverURL.String() + "/_matrix/client/v1/room_summary/" + url.PathEscape(target)
	cli := c
	if !authed {
		var err error
		if cli, err = mautrix.NewClient(c.HomeserverURL.String(), "", ""); err != nil {
			t.Fatal(err)
		}
	}
	var resp map[string]any
	_, err := cli.MakeRequest(ctxT(t), http.MethodGet, u, nil, &resp)
	return resp, err
}

// TestRoomSummaryAPI: the room summary of a restricted room lists its
// allowed rooms, an invite-only one does not and is 404 to outsiders; an
// alias resolves; the caller's membership is given; without a token only
// rooms anyone may see answer.
func TestRoomSummaryAPI(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	space := mustCreateRoom(t, alice, spaceReq("Space"))
	restricted := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "8",
		InitialState: []*event.Event{restrictedTo(space, n.Config.ServerName)}})
	private := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret", RoomAliasName: "secret"})

	s, err := roomSummary(t, alice, restricted.String(), true)
	if err != nil {
		t.Fatal(err)
	}
	if s["room_id"] != restricted.String() || s["join_rule"] != "restricted" || s["membership"] != "join" || s["room_version"] != "8" {
		t.Fatalf("restricted summary %v", s)
	}
	if a, _ := s["allowed_room_ids"].([]any); len(a) != 1 || a[0] != space.String() {
		t.Fatalf("allowed_room_ids %v", s["allowed_room_ids"])
	}
	s, err = roomSummary(t, alice, "#secret:"+n.Config.ServerName, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s["allowed_room_ids"]; ok || s["room_id"] != private.String() || s["name"] != "Secret" || s["join_rule"] != "invite" {
		t.Fatalf("invite-only summary through its alias %v", s)
	}
	_, err = roomSummary(t, bob, private.String(), true)
	wantErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = roomSummary(t, bob, private.String(), false)
	wantErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	s, err = roomSummary(t, bob, space.String(), false)
	if err != nil || s["room_type"] != "m.space" || s["membership"] != nil || s["children_state"] != nil {
		t.Fatalf("unauthenticated summary of a public space: %v %v", s, err)
	}
	_, err = roomSummary(t, bob, "not-a-room", true)
	wantErr(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
}

// fedHierarchyLog records the federation /hierarchy requests a node
// answers and its answers.
type fedHierarchyLog struct {
	mu      sync.Mutex
	queries []string
	answers []map[string]json.RawMessage
}

func (l *fedHierarchyLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/hierarchy/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		var ans map[string]json.RawMessage
		_ = json.Unmarshal(rec.Body.Bytes(), &ans)
		l.mu.Lock()
		l.queries = append(l.queries, r.URL.RequestURI())
		l.answers = append(l.answers, ans)
		l.mu.Unlock()
		maps.Copy(w.Header(), rec.Header())
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

// answerFor returns the last recorded answer about roomID.
func (l *fedHierarchyLog) answerFor(roomID id.RoomID) map[string]json.RawMessage {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.queries) - 1; i >= 0; i-- {
		if strings.Contains(l.queries[i], url.PathEscape(roomID.String())) {
			return l.answers[i]
		}
	}
	return nil
}

// TestHierarchyFederated walks a space spread over two servers:
//
//	root (A) ─┬─ r1 (A)
//	          ├─ r2 (B, world-readable)
//	          ├─ ss2 (B, space) ─┬─ r4 (A)
//	          │                  ├─ r3 (B, public)
//	          │                  └─ rp (B, invite-only)
//	          └─ rr (B, restricted to root's members)
//
// A asks B about B's rooms; B answers for ss2 with r3 among its children
// (so A does not ask about r3 again), rp among the inaccessible ones and
// r4 (not B's) left out; rr is 404 to A
// until B is in root and can tell A's members are, then shown to root's
// members on A only; suggested_only is passed on.
func TestHierarchyFederated(t *testing.T) {
	ca := newRFCA(t)
	var logB fedHierarchyLog
	a := startRFNode(t, ca)
	b := startRFNodeWrapped(t, ca, logB.wrap)
	alice := a.register(t, "alice")
	dave := a.register(t, "dave")
	bob := b.register(t, "bob")
	ctx := ctxT(t)

	root := mustCreateRoom(t, alice, spaceReq("Root", worldReadable()))
	r1 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R1"})
	r4 := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R4"})
	r2 := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R2", InitialState: []*event.Event{worldReadable()}})
	ss2 := mustCreateRoom(t, bob, spaceReq("SS2", worldReadable()))
	r3 := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R3"})
	rp := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "RP"})
	rr := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "RR", RoomVersion: "8",
		InitialState: []*event.Event{restrictedTo(root, a.Name)}})
	link(t, alice, root, r1, a.Name, false)
	time.Sleep(2 * time.Millisecond)
	link(t, alice, root, r2, b.Name, true)
	time.Sleep(2 * time.Millisecond)
	link(t, alice, root, ss2, b.Name, false)
	time.Sleep(2 * time.Millisecond)
	link(t, alice, root, rr, b.Name, false)
	link(t, bob, ss2, r4, a.Name, false)
	time.Sleep(2 * time.Millisecond)
	link(t, bob, ss2, r3, b.Name, false)
	time.Sleep(2 * time.Millisecond)
	link(t, bob, ss2, rp, b.Name, false)

	walk := mustHierarchy(t, alice, root, nil)
	if want := strs(root, r1, r2, ss2, r4, r3); !slices.Equal(walk.ids(), want) {
		t.Fatalf("alice's walk %v, want %v", walk.ids(), want)
	}
	if got := walk.room(ss2); got.Name != "SS2" || got.RoomType != "m.space" || !slices.Equal(got.links(), strs(r4, r3, rp)) {
		t.Fatalf("B's space as A shows it: %+v", got)
	}
	ans := logB.answerFor(ss2)
	var children []hierRoom
	var inaccessible []string
	_ = json.Unmarshal(ans["children"], &children)
	_ = json.Unmarshal(ans["inaccessible_children"], &inaccessible)
	if len(children) != 1 || children[0].RoomID != r3.String() || children[0].Name != "R3" || !slices.Equal(inaccessible, strs(rp)) {
		t.Fatalf("B's answer for ss2: children %+v, inaccessible %v", children, inaccessible)
	}
	if logB.answerFor(r3) != nil {
		t.Fatal("A asked B about r3, which B's answer for ss2 already described")
	}
	if ans := logB.answerFor(rr); !strings.Contains(string(ans["errcode"]), "M_NOT_FOUND") {
		t.Fatalf("B's answer for the restricted room before it is in root: %s", ans["errcode"])
	}

	// B joins root: it now sees that A's users are in it.
	if _, err := bob.JoinRoom(ctx, root.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	walk = mustHierarchy(t, alice, root, nil)
	if !slices.Contains(walk.ids(), rr.String()) {
		t.Fatalf("alice (in root) does not see the restricted room: %v; B answered %s", walk.ids(), logB.answerFor(rr))
	}
	if got := walk.room(rr); got.JoinRule != "restricted" || !slices.Equal(got.AllowedRoomIDs, strs(root)) {
		t.Fatalf("restricted room entry %+v", got)
	}
	if got := mustHierarchy(t, dave, root, nil).ids(); slices.Contains(got, rr.String()) || !slices.Contains(got, r3.String()) {
		t.Fatalf("dave (not in root) sees %v", got)
	}

	sugg := mustHierarchy(t, alice, root, url.Values{"suggested_only": {"true"}})
	if want := strs(root, r2); !slices.Equal(sugg.ids(), want) {
		t.Fatalf("suggested_only over federation: %v, want %v", sugg.ids(), want)
	}
	logB.mu.Lock()
	last := logB.queries[len(logB.queries)-1]
	logB.mu.Unlock()
	if !strings.Contains(last, url.PathEscape(r2.String())) || !strings.Contains(last, "suggested_only=true") {
		t.Fatalf("last federation hierarchy request %q", last)
	}

	// A room known to nobody is left out, not an error.
	link(t, alice, root, id.RoomID("!nowhere:"+b.Name), b.Name, false)
	if got := mustHierarchy(t, alice, root, nil).ids(); len(got) != 7 {
		t.Fatalf("walk with a dangling link: %v", got)
	}
}
