package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/roomfed"
	"edge/edge/store"
)

// Simplified sliding sync (MSC4186), driven with raw HTTP: mautrix-go
// has no sliding sync client.

const ssPath = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"

type ssEvent struct {
	EventID  string         `json:"event_id"`
	Type     string         `json:"type"`
	Sender   string         `json:"sender"`
	StateKey *string        `json:"state_key"`
	Content  map[string]any `json:"content"`
}

type ssRoomResp struct {
	Name              string           `json:"name"`
	Initial           bool             `json:"initial"`
	BumpStamp         int64            `json:"bump_stamp"`
	Membership        string           `json:"membership"`
	TimelineEvents    []ssEvent        `json:"timeline_events"`
	RequiredState     []ssEvent        `json:"required_state"`
	InviteState       []ssEvent        `json:"invite_state"`
	Limited           bool             `json:"limited"`
	NumLive           int              `json:"num_live"`
	PrevBatch         string           `json:"prev_batch"`
	JoinedCount       int              `json:"joined_count"`
	InvitedCount      int              `json:"invited_count"`
	NotificationCount *int             `json:"notification_count"`
	Heroes            []map[string]any `json:"heroes"`
	IsDM              *bool            `json:"is_dm"`
	Expanded          bool             `json:"unstable_expanded_timeline"`
}

type ssResp struct {
	Pos   string `json:"pos"`
	Lists map[string]struct {
		Count int `json:"count"`
	} `json:"lists"`
	Rooms      map[string]ssRoomResp      `json:"rooms"`
	Extensions map[string]json.RawMessage `json:"extensions"`
	ErrCode    string                     `json:"errcode"`
	raw        []byte
}

// roomField is one field of a room entry as raw JSON (nil: absent).
func (r ssResp) roomField(t testing.TB, roomID id.RoomID, field string) json.RawMessage {
	t.Helper()
	var body struct {
		Rooms map[string]map[string]json.RawMessage `json:"rooms"`
	}
	if err := json.Unmarshal(r.raw, &body); err != nil {
		t.Fatal(err)
	}
	return body.Rooms[roomID.String()][field]
}

// ssDo posts a sliding sync request as c and returns the status and body.
func ssDo(t testing.TB, c *mautrix.Client, pos string, timeoutMS int, body map[string]any) (int, ssResp) {
	t.Helper()
	status, out, err := ssTry(c, pos, timeoutMS, body)
	if err != nil {
		t.Fatalf("sliding sync: %v", err)
	}
	return status, out
}

// ssTry is ssDo for other goroutines than the test's: it returns errors.
func ssTry(c *mautrix.Client, pos string, timeoutMS int, body map[string]any) (int, ssResp, error) {
	q := url.Values{}
	if pos != "" {
		q.Set("pos", pos)
	}
	if timeoutMS > 0 {
		q.Set("timeout", fmt.Sprint(timeoutMS))
	}
	raw, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, c.HomeserverURL.String()+ssPath+"?"+q.Encode(), bytes.NewReader(raw))
	if err != nil {
		return 0, ssResp{}, err
	}
	req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, ssResp{}, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out ssResp
	if err := json.Unmarshal(data, &out); err != nil {
		return 0, ssResp{}, fmt.Errorf("body %q: %w", data, err)
	}
	out.raw = data
	return resp.StatusCode, out, nil
}

// ssOK is ssDo that must succeed.
func ssOK(t testing.TB, c *mautrix.Client, pos string, timeoutMS int, body map[string]any) ssResp {
	t.Helper()
	status, out := ssDo(t, c, pos, timeoutMS, body)
	if status != http.StatusOK || out.Pos == "" {
		t.Fatalf("sliding sync: status %d, %+v", status, out)
	}
	return out
}

func ssList(ranges [][]int, limit int, required [][]string) map[string]any {
	return map[string]any{"ranges": ranges, "timeline_limit": limit, "required_state": required}
}

func mustSendText(t testing.TB, c *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	resp, err := c.SendText(ctxT(t), roomID, body)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	return resp.EventID
}

// TestSlidingSyncListsOrderingIncremental: a list's window holds the
// newest rooms by their last message, an incremental request (pos) sends
// only rooms with news, and only the news.
func TestSlidingSyncListsOrderingIncremental(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	a := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "A"})
	b := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "B"})
	c := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "C"})
	mustSendText(t, alice, a, "a1") // A is now the newest, then C, then B
	body := map[string]any{"lists": map[string]any{"all": ssList([][]int{{0, 1}}, 1, [][]string{{"m.room.name", ""}})}}
	r1 := ssOK(t, alice, "", 0, body)
	if r1.Lists["all"].Count != 3 {
		t.Fatalf("count = %+v", r1.Lists)
	}
	if len(r1.Rooms) != 2 {
		t.Fatalf("window [0,1] sent %d rooms: %v", len(r1.Rooms), keys(r1.Rooms))
	}
	ra, rc := r1.Rooms[a.String()], r1.Rooms[c.String()]
	if !ra.Initial || ra.Name != "A" || rc.Name != "C" || ra.BumpStamp <= rc.BumpStamp {
		t.Fatalf("A = %+v, C = %+v", ra, rc)
	}
	if len(ra.TimelineEvents) != 1 || ra.TimelineEvents[0].Content["body"] != "a1" || !ra.Limited || ra.Membership != "join" {
		t.Fatalf("A's timeline = %+v", ra)
	}
	if len(ra.RequiredState) != 1 || ra.RequiredState[0].Type != "m.room.name" || ra.JoinedCount != 1 || ra.NotificationCount == nil {
		t.Fatalf("A's required_state/counts = %+v", ra)
	}
	// prev_batch pages on with /messages from just before the timeline.
	msgs, err := alice.Messages(ctxT(t), a, ra.PrevBatch, "", mautrix.DirectionBackward, nil, 1)
	if err != nil || len(msgs.Chunk) != 1 || msgs.Chunk[0].ID.String() == ra.TimelineEvents[0].EventID {
		t.Fatalf("/messages from prev_batch: %v %+v", err, msgs)
	}
	// Nothing new: a short long-poll answers empty.
	r2 := ssOK(t, alice, r1.Pos, 200, body)
	if len(r2.Rooms) != 0 {
		t.Fatalf("no news but rooms %v", keys(r2.Rooms))
	}
	// B gets a message: it moves to the top and is sent whole (first seen).
	mustSendText(t, alice, b, "b1")
	r3 := ssOK(t, alice, r2.Pos, 0, body)
	rb, ok := r3.Rooms[b.String()]
	if !ok || !rb.Initial || rb.Name != "B" || len(rb.TimelineEvents) != 1 || rb.TimelineEvents[0].Content["body"] != "b1" {
		t.Fatalf("after b1: %+v", r3.Rooms)
	}
	if _, ok := r3.Rooms[a.String()]; ok {
		t.Fatalf("A had no news but was sent: %+v", r3.Rooms[a.String()])
	}
	// A new message in A: only it, not the name again.
	mustSendText(t, alice, a, "a2")
	r4 := ssOK(t, alice, r3.Pos, 0, body)
	ra = r4.Rooms[a.String()]
	if ra.Initial || len(ra.TimelineEvents) != 1 || ra.TimelineEvents[0].Content["body"] != "a2" || ra.NumLive != 1 || len(ra.RequiredState) != 0 {
		t.Fatalf("incremental A = %+v", ra)
	}
	if ra.BumpStamp <= r3.Rooms[b.String()].BumpStamp {
		t.Fatalf("A's bump_stamp %d not above B's %d", ra.BumpStamp, r3.Rooms[b.String()].BumpStamp)
	}
	// Opening A with a longer timeline sends it afresh, flagged.
	open := map[string]any{"lists": body["lists"], "room_subscriptions": map[string]any{a.String(): map[string]any{"timeline_limit": 5}}}
	r4b := ssOK(t, alice, r4.Pos, 0, open)
	ra = r4b.Rooms[a.String()]
	if !ra.Expanded || len(ra.TimelineEvents) != 5 || ra.TimelineEvents[4].Content["body"] != "a2" || ra.TimelineEvents[3].Content["body"] != "a1" || ra.NumLive != 0 {
		t.Fatalf("expanded A = %+v", ra)
	}
	if _, ok := r4b.Rooms[b.String()]; ok || len(ssOK(t, alice, r4b.Pos, 0, open).Rooms) != 0 {
		t.Fatal("rooms without news were sent again")
	}
	// A room subscription reaches a room outside the window.
	r5 := ssOK(t, alice, "", 0, map[string]any{
		"lists":              map[string]any{"all": ssList([][]int{{0, 0}}, 1, nil)},
		"room_subscriptions": map[string]any{c.String(): map[string]any{"timeline_limit": 2, "required_state": [][]string{{"m.room.create", ""}}}},
	})
	if len(r5.Rooms) != 2 || len(r5.Rooms[c.String()].RequiredState) != 1 || len(r5.Rooms[a.String()].TimelineEvents) != 1 {
		t.Fatalf("subscription: %+v", r5.Rooms)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestSlidingSyncRequiredState covers the required_state wildcards:
// "*", $ME and $LAZY (members of the timeline's senders only).
func TestSlidingSyncRequiredState(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	mustSendText(t, bob, roomID, "hi")
	stateOf := func(required [][]string) map[string]bool {
		r := ssOK(t, alice, "", 0, map[string]any{"lists": map[string]any{"l": ssList([][]int{{0, 9}}, 1, required)}})
		out := map[string]bool{}
		for _, ev := range r.Rooms[roomID.String()].RequiredState {
			out[ev.Type+"|"+*ev.StateKey] = true
		}
		return out
	}
	lazy := stateOf([][]string{{"m.room.member", "$LAZY"}, {"m.room.create", ""}})
	if !lazy["m.room.member|"+bob.UserID.String()] || lazy["m.room.member|"+alice.UserID.String()] || !lazy["m.room.create|"] || len(lazy) != 2 {
		t.Fatalf("$LAZY = %v", lazy)
	}
	me := stateOf([][]string{{"m.room.member", "$ME"}})
	if !me["m.room.member|"+alice.UserID.String()] || len(me) != 1 {
		t.Fatalf("$ME = %v", me)
	}
	all := stateOf([][]string{{"*", "*"}})
	if !all["m.room.power_levels|"] || !all["m.room.join_rules|"] || !all["m.room.member|"+bob.UserID.String()] || !all["m.room.member|"+alice.UserID.String()] {
		t.Fatalf("* * = %v", all)
	}
	members := stateOf([][]string{{"m.room.member", "*"}})
	if len(members) != 2 {
		t.Fatalf("m.room.member * = %v", members)
	}
	// The MSC's latest form: include/exclude/lazy_members, and range.
	objectForm := func(rs map[string]any) map[string]bool {
		r := ssOK(t, alice, "", 0, map[string]any{"lists": map[string]any{"l": map[string]any{"range": []int{0, 9}, "timeline_limit": 1, "required_state": rs}}})
		out := map[string]bool{}
		for _, ev := range r.Rooms[roomID.String()].RequiredState {
			out[ev.Type+"|"+*ev.StateKey] = true
		}
		return out
	}
	lazyObj := objectForm(map[string]any{"include": []any{map[string]any{"type": "m.room.join_rules"}}, "lazy_members": true})
	if len(lazyObj) != 2 || !lazyObj["m.room.join_rules|"] || !lazyObj["m.room.member|"+bob.UserID.String()] {
		t.Fatalf("include join_rules + lazy_members = %v", lazyObj)
	}
	allBut := objectForm(map[string]any{"include": []any{map[string]any{}}, "exclude": []any{map[string]any{"type": "m.room.create", "state_key": ""}}})
	if allBut["m.room.create|"] || !allBut["m.room.power_levels|"] || !allBut["m.room.member|"+alice.UserID.String()] {
		t.Fatalf("everything but the create event = %v", allBut)
	}
	// An incremental request sends a changed state event the client asked for.
	body := map[string]any{"lists": map[string]any{"l": ssList([][]int{{0, 9}}, 5, [][]string{{"m.room.topic", ""}})}}
	r1 := ssOK(t, alice, "", 0, body)
	if _, err := alice.SendStateEvent(ctxT(t), roomID, event.StateTopic, "", map[string]any{"topic": "new"}); err != nil {
		t.Fatal(err)
	}
	r2 := ssOK(t, alice, r1.Pos, 0, body)
	rs := r2.Rooms[roomID.String()].RequiredState
	if len(rs) != 1 || rs[0].Type != "m.room.topic" || rs[0].Content["topic"] != "new" {
		t.Fatalf("changed topic = %+v", r2.Rooms[roomID.String()])
	}
}

// TestSlidingSyncInvitesAndFilters: an invite is listed with its
// stripped state, and the is_invite / is_encrypted / is_dm filters.
func TestSlidingSyncInvitesAndFilters(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	plain := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Name: "plain"})
	enc := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{InitialState: []*event.Event{{
		Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
	}}})
	body := map[string]any{"lists": map[string]any{
		"invites":   map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"is_invite": true}},
		"joined":    map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"is_invite": false}},
		"encrypted": map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"is_encrypted": true}},
		"dms":       map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"is_dm": true}},
		// is_invite's name in the MSC's latest text
		"invited": map[string]any{"range": []int{0, 9}, "filters": map[string]any{"is_invited": true}},
	}}
	r1 := ssOK(t, bob, "", 0, body)
	if r1.Lists["invites"].Count != 0 || r1.Lists["joined"].Count != 2 || r1.Lists["encrypted"].Count != 1 || r1.Lists["dms"].Count != 0 {
		t.Fatalf("counts before invite = %+v", r1.Lists)
	}
	if _, ok := r1.Rooms[enc.String()]; !ok {
		t.Fatalf("encrypted room missing: %v", keys(r1.Rooms))
	}
	dm := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "chat", Invite: []id.UserID{bob.UserID}, IsDirect: true})
	r2 := ssOK(t, bob, r1.Pos, 5000, body)
	if r2.Lists["invites"].Count != 1 || r2.Lists["invited"].Count != 1 || r2.Lists["dms"].Count != 1 || r2.Lists["joined"].Count != 2 {
		t.Fatalf("counts after invite = %+v", r2.Lists)
	}
	inv, ok := r2.Rooms[dm.String()]
	if !ok || inv.Membership != "invite" || len(inv.InviteState) == 0 || inv.IsDM == nil || !*inv.IsDM {
		t.Fatalf("invite = %+v", r2.Rooms)
	}
	names := map[string]bool{}
	for _, ev := range inv.InviteState {
		names[ev.Type] = true
	}
	if !names["m.room.name"] || !names["m.room.member"] || !names["m.room.create"] {
		t.Fatalf("invite_state = %+v", inv.InviteState)
	}
	_ = plain
	// Joining turns it into a joined room, sent whole.
	if _, err := bob.JoinRoomByID(ctxT(t), dm); err != nil {
		t.Fatal(err)
	}
	r3 := ssOK(t, bob, r2.Pos, 0, body)
	if j := r3.Rooms[dm.String()]; j.Membership != "join" || !j.Initial || r3.Lists["invites"].Count != 0 || r3.Lists["joined"].Count != 3 {
		t.Fatalf("after join: %+v lists %+v", j, r3.Lists)
	}
	// A knock is listed with its stripped state.
	knockRoom := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "knock here", RoomVersion: "10", InitialState: []*event.Event{{
		Type: event.StateJoinRules, Content: event.Content{Parsed: &event.JoinRulesEventContent{JoinRule: event.JoinRuleKnock}},
	}}})
	if _, err := bob.KnockRoom(ctxT(t), knockRoom.String(), &mautrix.ReqKnockRoom{}); err != nil {
		t.Fatal(err)
	}
	rk := ssOK(t, bob, r3.Pos, 0, body)
	if k := rk.Rooms[knockRoom.String()]; k.Membership != "knock" || rk.roomField(t, knockRoom, "knock_state") == nil {
		t.Fatalf("knock = %+v", rk.Rooms)
	}
	r3 = rk
	// A rejected invite is sent once as a leave, then no more.
	other := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	r4 := ssOK(t, bob, r3.Pos, 5000, body)
	if r4.Rooms[other.String()].Membership != "invite" {
		t.Fatalf("second invite: %+v", r4.Rooms)
	}
	if _, err := bob.LeaveRoom(ctxT(t), other); err != nil {
		t.Fatal(err)
	}
	r5 := ssOK(t, bob, r4.Pos, 5000, body)
	left := r5.Rooms[other.String()]
	if left.Membership != "leave" || len(left.TimelineEvents) == 0 || left.TimelineEvents[len(left.TimelineEvents)-1].Content["membership"] != "leave" || r5.Lists["invites"].Count != 0 {
		t.Fatalf("rejected invite: %+v lists %+v", left, r5.Lists)
	}
	if r6 := ssOK(t, bob, r5.Pos, 0, body); len(r6.Rooms) != 0 || r6.Lists["joined"].Count != 4 {
		t.Fatalf("after the leave was sent: %+v %+v", r6.Rooms, r6.Lists)
	}
}

// TestSlidingSyncSpacesAndRoomTypes: the spaces, room_types and
// not_room_types filters.
func TestSlidingSyncSpacesAndRoomTypes(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	space := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "space", CreationContent: map[string]any{"type": "m.space"}})
	child := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "child"})
	mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "other"})
	if _, err := alice.SendStateEvent(ctxT(t), space, event.StateSpaceChild, child.String(), map[string]any{"via": []string{"localhost"}}); err != nil {
		t.Fatal(err)
	}
	list := func(filters map[string]any) map[string]any {
		return map[string]any{"ranges": [][]int{{0, 9}}, "filters": filters}
	}
	r := ssOK(t, alice, "", 0, map[string]any{"lists": map[string]any{
		"in_space": list(map[string]any{"spaces": []string{space.String()}}),
		"spaces":   list(map[string]any{"room_types": []string{"m.space"}}),
		"rooms":    list(map[string]any{"not_room_types": []string{"m.space"}}),
		"plain":    list(map[string]any{"room_types": []any{nil}}),
		"unknown":  list(map[string]any{"spaces": []string{"!nowhere:localhost"}}),
	}})
	want := map[string]int{"in_space": 1, "spaces": 1, "rooms": 2, "plain": 2, "unknown": 0}
	// A list without a range covers all its rooms.
	whole := ssOK(t, alice, "", 0, map[string]any{"conn_id": "whole", "lists": map[string]any{"all": map[string]any{"timeline_limit": 1}}})
	if whole.Lists["all"].Count != 3 || len(whole.Rooms) != 3 {
		t.Fatalf("list without range: %+v, %d rooms", whole.Lists, len(whole.Rooms))
	}
	for name, count := range want {
		if r.Lists[name].Count != count {
			t.Fatalf("list %s: count %d, want %d (%+v)", name, r.Lists[name].Count, count, r.Lists)
		}
	}
	if ls := r.roomField(t, child, "lists"); !bytes.Contains(ls, []byte(`"in_space"`)) {
		t.Fatalf("child's lists = %s", ls)
	}
}

// TestSlidingSyncKickAndRemovedName: a removed name is sent as null; a
// kick reaches the client and stays listed on a new connection, unlike a
// room the user left themself.
func TestSlidingSyncKickAndRemovedName(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	kicked := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "named"})
	left := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, r := range []id.RoomID{kicked, left} {
		if _, err := bob.JoinRoomByID(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	body := map[string]any{"lists": map[string]any{"l": ssList([][]int{{0, 9}}, 1, nil)}}
	r1 := ssOK(t, bob, "", 0, body)
	if r1.Rooms[kicked.String()].Name != "named" {
		t.Fatalf("name = %+v", r1.Rooms[kicked.String()])
	}
	if _, err := alice.SendStateEvent(ctxT(t), kicked, event.StateRoomName, "", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	r2 := ssOK(t, bob, r1.Pos, 0, body)
	if f := r2.roomField(t, kicked, "name"); string(f) != "null" {
		t.Fatalf("removed name = %s", f)
	}
	if _, err := alice.KickUser(ctxT(t), kicked, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "bye"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.LeaveRoom(ctxT(t), left); err != nil {
		t.Fatal(err)
	}
	r3 := ssOK(t, bob, r2.Pos, 0, body)
	for _, r := range []id.RoomID{kicked, left} {
		if m := r3.Rooms[r.String()].Membership; m != "leave" {
			t.Fatalf("%s membership = %q (%+v)", r, m, r3.Rooms)
		}
	}
	if f := r3.roomField(t, kicked, "joined_count"); f != nil {
		t.Fatalf("a kicked user still gets the member count: %s", f)
	}
	fresh := ssOK(t, bob, "", 0, map[string]any{"conn_id": "new", "lists": body["lists"]})
	if _, ok := fresh.Rooms[left.String()]; ok || fresh.Rooms[kicked.String()].Membership != "leave" || fresh.Lists["l"].Count != 1 {
		t.Fatalf("new connection: %+v %+v", fresh.Rooms, fresh.Lists)
	}
}

// TestSlidingSyncUnknownPos: a pos the server does not know is 400
// M_UNKNOWN_POS, as is one of another connection; bad input is 400.
func TestSlidingSyncUnknownPos(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	// Clients find sliding sync through /versions.
	var versions struct {
		Unstable map[string]bool `json:"unstable_features"`
	}
	if _, err := alice.MakeRequest(ctxT(t), http.MethodGet, alice.BuildURL(mautrix.ClientURLPath{"versions"}), nil, &versions); err != nil || !versions.Unstable["org.matrix.simplified_msc3575"] {
		t.Fatalf("versions: %v %+v", err, versions)
	}
	for _, pos := range []string{"nonsense", "abc_1", "0"} {
		status, r := ssDo(t, alice, pos, 0, map[string]any{})
		if status != http.StatusBadRequest || r.ErrCode != "M_UNKNOWN_POS" {
			t.Fatalf("pos %q: %d %s", pos, status, r.ErrCode)
		}
	}
	r := ssOK(t, alice, "", 0, map[string]any{"conn_id": "main"})
	if status, out := ssDo(t, alice, r.Pos, 0, map[string]any{"conn_id": "other"}); status != http.StatusBadRequest || out.ErrCode != "M_UNKNOWN_POS" {
		t.Fatalf("pos of another connection: %d %s", status, out.ErrCode)
	}
	if status, out := ssDo(t, alice, r.Pos, 0, map[string]any{"conn_id": "main"}); status != http.StatusOK || out.Pos == "" {
		t.Fatalf("own pos: %d %+v", status, out)
	}
	// Another user cannot use it either.
	bob := n.register(t, "")
	if status, out := ssDo(t, bob, r.Pos, 0, map[string]any{"conn_id": "main"}); status != http.StatusBadRequest || out.ErrCode != "M_UNKNOWN_POS" {
		t.Fatalf("pos of another user: %d %s", status, out.ErrCode)
	}
	// A device has at most 16 connections: the least recently used goes.
	var posOf []string
	for i := range 17 {
		posOf = append(posOf, ssOK(t, alice, "", 0, map[string]any{"conn_id": fmt.Sprint("c", i)}).Pos)
	}
	if status, out := ssDo(t, alice, posOf[0], 0, map[string]any{"conn_id": "c0"}); status != http.StatusBadRequest || out.ErrCode != "M_UNKNOWN_POS" {
		t.Fatalf("17th connection did not push out the first: %d %s", status, out.ErrCode)
	}
	if status, _ := ssDo(t, alice, posOf[16], 0, map[string]any{"conn_id": "c16"}); status != http.StatusOK {
		t.Fatalf("newest connection: %d", status)
	}
	for _, bad := range []map[string]any{
		{"lists": map[string]any{"l": map[string]any{"ranges": [][]int{{5, 1}}}}},
		{"lists": map[string]any{"l": map[string]any{"ranges": [][]int{{0}}}}},
		{"lists": map[string]any{"l": map[string]any{"required_state": [][]string{{"m.room.name"}}}}},
		{"lists": "no"},
	} {
		if status, out := ssDo(t, alice, "", 0, bad); status != http.StatusBadRequest || out.ErrCode == "" {
			t.Fatalf("bad request %v: %d %s", bad, status, out.ErrCode)
		}
	}
}

// TestSlidingSyncLongPoll: a waiting request wakes on a new event.
func TestSlidingSyncLongPoll(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"lists": map[string]any{"l": ssList([][]int{{0, 9}}, 3, nil)}}
	r1 := ssOK(t, alice, "", 0, body)
	done := make(chan ssResp, 1)
	start := time.Now()
	go func() {
		_, r, _ := ssTry(alice, r1.Pos, 20000, body)
		done <- r
	}()
	time.Sleep(300 * time.Millisecond)
	mustSendText(t, bob, roomID, "wake up")
	var woken ssResp
	select {
	case woken = <-done:
		tl := woken.Rooms[roomID.String()].TimelineEvents
		if len(tl) != 1 || tl[0].Content["body"] != "wake up" || time.Since(start) > 10*time.Second {
			t.Fatalf("woken response = %+v", woken)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("long poll did not wake on a new event")
	}
	// With nothing new it waits out its timeout and answers empty.
	start = time.Now()
	r := ssOK(t, alice, woken.Pos, 400, body)
	if el := time.Since(start); el < 350*time.Millisecond || len(r.Rooms) != 0 {
		t.Fatalf("a request with no news answered after %v with %v", el, keys(r.Rooms))
	}
}

// TestSlidingSyncE2EEAndToDevice: the to_device extension delivers a
// message to one device of two and drops it once acknowledged; the e2ee
// extension reports one-time key counts and device list changes.
func TestSlidingSyncE2EEAndToDevice(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	alice2 := e2eeLogin(t, n, alice.UserID, "second")
	bob := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	ext := func(since string) map[string]any {
		td := map[string]any{"enabled": true}
		if since != "" {
			td["since"] = since
		}
		return map[string]any{"extensions": map[string]any{"to_device": td, "e2ee": map[string]any{"enabled": true}}}
	}
	type toDev struct {
		NextBatch string          `json:"next_batch"`
		Events    []toDeviceEvent `json:"events"`
	}
	type e2ee struct {
		DeviceLists struct {
			Changed []string `json:"changed"`
		} `json:"device_lists"`
		OTKCounts map[string]int `json:"device_one_time_keys_count"`
	}
	parse := func(r ssResp) (toDev, e2ee) {
		var td toDev
		var e e2ee
		if err := json.Unmarshal(r.Extensions["to_device"], &td); err != nil {
			t.Fatalf("to_device %s: %v", r.Extensions["to_device"], err)
		}
		if err := json.Unmarshal(r.Extensions["e2ee"], &e); err != nil {
			t.Fatalf("e2ee %s: %v", r.Extensions["e2ee"], err)
		}
		return td, e
	}
	// One-time keys of the second device.
	kp := newE2EEKeyPair(t)
	if _, err := keysUpload(t, alice2, map[string]any{"device_keys": e2eeDeviceKeys(t, alice2, kp, randomCurveKey(t)), "one_time_keys": map[string]any{
		"signed_curve25519:AAAA": signedOTK(t, alice2, kp, false),
		"signed_curve25519:AAAB": signedOTK(t, alice2, kp, false),
	}}); err != nil {
		t.Fatal(err)
	}
	r1 := ssOK(t, alice2, "", 0, ext(""))
	td, e := parse(r1)
	if len(td.Events) != 0 || td.NextBatch == "" || e.OTKCounts["signed_curve25519"] != 2 {
		t.Fatalf("initial: %+v %+v", td, e)
	}
	if err := sendToDevice(t, bob, "m.test", "t1", map[string]any{alice.UserID.String(): map[string]any{alice2.DeviceID.String(): map[string]any{"n": 1}}}); err != nil {
		t.Fatal(err)
	}
	r2 := ssOK(t, alice2, r1.Pos, 5000, ext(td.NextBatch))
	td2, _ := parse(r2)
	if len(td2.Events) != 1 || td2.Events[0].Sender != bob.UserID.String() || string(td2.Events[0].Content) != `{"n":1}` {
		t.Fatalf("to-device delivery: %+v", td2)
	}
	// The other device got nothing.
	other := ssOK(t, alice, "", 0, ext(""))
	if tdo, _ := parse(other); len(tdo.Events) != 0 {
		t.Fatalf("first device got %+v", tdo.Events)
	}
	// Acknowledged by the next since: not delivered again.
	r3 := ssOK(t, alice2, r2.Pos, 0, ext(td2.NextBatch))
	if td3, _ := parse(r3); len(td3.Events) != 0 {
		t.Fatalf("redelivered after ack: %+v", td3.Events)
	}
	// Bob uploads device keys: alice's device list changes.
	bkp := newE2EEKeyPair(t)
	if _, err := keysUpload(t, bob, map[string]any{"device_keys": e2eeDeviceKeys(t, bob, bkp, randomCurveKey(t))}); err != nil {
		t.Fatal(err)
	}
	r4 := ssOK(t, alice2, r3.Pos, 5000, ext(td2.NextBatch))
	if _, e4 := parse(r4); len(e4.DeviceLists.Changed) != 1 || e4.DeviceLists.Changed[0] != bob.UserID.String() {
		t.Fatalf("device_lists = %+v", e4.DeviceLists)
	}
}

// TestSlidingSyncThreadSubscriptions is MSC4308's extension: current
// subscriptions on a new connection, changes since pos on an incremental
// one (subscribed with automatic and bump_stamp, unsubscribed).
func TestSlidingSyncThreadSubscriptions(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	root := mustSendText(t, alice, roomID, "thread root")
	const extName = "io.element.msc4308.thread_subscriptions"
	body := map[string]any{"extensions": map[string]any{extName: map[string]any{"enabled": true, "limit": 2}}}
	type subs struct {
		Subscribed   map[string]map[string]map[string]any `json:"subscribed"`
		Unsubscribed map[string]map[string]map[string]any `json:"unsubscribed"`
	}
	parse := func(r ssResp) subs {
		var s subs
		if raw := r.Extensions[extName]; raw != nil {
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	subPath := []any{"unstable", "io.element.msc4306", "rooms", roomID, "thread", root, "subscription"}
	r1 := ssOK(t, alice, "", 0, body)
	if s := parse(r1); s.Subscribed != nil {
		t.Fatalf("subscribed before subscribing: %+v", s)
	}
	if _, err := alice.MakeRequest(ctxT(t), http.MethodPut, alice.BuildClientURL(subPath...), map[string]any{}, nil); err != nil {
		t.Fatal(err)
	}
	// The body's pos (as Complement sends it) works like the query's.
	body["pos"] = r1.Pos
	r2 := ssOK(t, alice, "", 0, body)
	delete(body, "pos")
	entry := parse(r2).Subscribed[roomID.String()][root.String()]
	if entry == nil || entry["automatic"] != false || entry["bump_stamp"] == nil {
		t.Fatalf("incremental: %s", r2.Extensions[extName])
	}
	// A new connection (another conn_id: the same one would restart this
	// one) sees the current subscription.
	fresh := map[string]any{"conn_id": "other", "extensions": body["extensions"]}
	if e := parse(ssOK(t, alice, "", 0, fresh)).Subscribed[roomID.String()][root.String()]; e == nil {
		t.Fatal("initial sync lacks the subscription")
	}
	// Unsubscribing wakes a waiting request and is reported.
	done := make(chan ssResp, 1)
	go func() {
		_, r, _ := ssTry(alice, r2.Pos, 10000, body)
		done <- r
	}()
	time.Sleep(200 * time.Millisecond)
	if _, err := alice.MakeRequest(ctxT(t), http.MethodDelete, alice.BuildClientURL(subPath...), nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case r3 := <-done:
		s := parse(r3)
		if s.Unsubscribed[roomID.String()][root.String()] == nil || s.Subscribed != nil {
			t.Fatalf("after unsubscribe: %s", r3.Extensions[extName])
		}
	case <-time.After(8 * time.Second):
		t.Fatal("unsubscribing did not wake the request")
	}
}

// TestSlidingSyncEphemeralAndAccountData covers the account_data,
// receipts and typing extensions on an incremental request.
func TestSlidingSyncEphemeralAndAccountData(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{
		"lists": map[string]any{"l": ssList([][]int{{0, 9}}, 1, nil)},
		"extensions": map[string]any{
			"account_data": map[string]any{"enabled": true},
			"receipts":     map[string]any{"enabled": true},
			"typing":       map[string]any{"enabled": true},
		},
	}
	r1 := ssOK(t, alice, "", 0, body)
	if err := alice.SetAccountData(ctxT(t), "org.example.global", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetRoomAccountData(ctxT(t), roomID, "org.example.room", map[string]any{"b": 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.UserTyping(ctxT(t), roomID, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	evID := mustSendText(t, bob, roomID, "read me")
	if err := alice.SendReceipt(ctxT(t), roomID, evID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	r2 := ssOK(t, alice, r1.Pos, 0, body)
	var ad struct {
		Global []struct {
			Type string `json:"type"`
		} `json:"global"`
		Rooms map[string][]struct {
			Type string `json:"type"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(r2.Extensions["account_data"], &ad); err != nil {
		t.Fatal(err)
	}
	if len(ad.Global) != 1 || ad.Global[0].Type != "org.example.global" || len(ad.Rooms[roomID.String()]) != 1 || ad.Rooms[roomID.String()][0].Type != "org.example.room" {
		t.Fatalf("account_data = %s", r2.Extensions["account_data"])
	}
	var typing struct {
		Rooms map[string]struct {
			Type    string `json:"type"`
			Content struct {
				UserIDs []string `json:"user_ids"`
			} `json:"content"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(r2.Extensions["typing"], &typing); err != nil {
		t.Fatal(err)
	}
	if ty := typing.Rooms[roomID.String()]; ty.Type != "m.typing" || len(ty.Content.UserIDs) != 1 || ty.Content.UserIDs[0] != bob.UserID.String() {
		t.Fatalf("typing = %s", r2.Extensions["typing"])
	}
	var receipts struct {
		Rooms map[string]struct {
			Type    string                               `json:"type"`
			Content map[string]map[string]map[string]any `json:"content"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(r2.Extensions["receipts"], &receipts); err != nil {
		t.Fatal(err)
	}
	if rc := receipts.Rooms[roomID.String()]; rc.Type != "m.receipt" || rc.Content[evID.String()]["m.read"][alice.UserID.String()] == nil {
		t.Fatalf("receipts = %s", r2.Extensions["receipts"])
	}
	// The receipts extension narrowed to lists: only those lists' rooms.
	for list, want := range map[string]bool{"l": true, "other": false} {
		r := ssOK(t, alice, "", 0, map[string]any{"conn_id": "scoped", "lists": body["lists"],
			"extensions": map[string]any{"receipts": map[string]any{"enabled": true, "lists": []string{list}}}})
		if got := bytes.Contains(r.Extensions["receipts"], []byte(roomID.String())); got != want {
			t.Fatalf("receipts for lists [%s] = %s", list, r.Extensions["receipts"])
		}
	}
	// Nothing new since: the extensions are empty.
	r3 := ssOK(t, alice, r2.Pos, 0, body)
	if err := json.Unmarshal(r3.Extensions["account_data"], &ad); err != nil || len(ad.Global) != 0 {
		t.Fatalf("account_data again = %s", r3.Extensions["account_data"])
	}
	if string(r3.Extensions["receipts"]) != `{"rooms":{}}` {
		t.Fatalf("receipts again = %s", r3.Extensions["receipts"])
	}
}

// TestSlidingSyncThreadSubscriptionsPaging: more changes than the
// extension's limit leave a prev_batch, from which MSC4308's companion
// endpoint pages back to the request's pos.
func TestSlidingSyncThreadSubscriptionsPaging(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	const extName = "io.element.msc4308.thread_subscriptions"
	body := map[string]any{"extensions": map[string]any{extName: map[string]any{"enabled": true, "limit": 2}}}
	r1 := ssOK(t, alice, "", 0, body)
	var roots []id.EventID
	for i := range 3 {
		root := mustSendText(t, alice, roomID, fmt.Sprint("root ", i))
		roots = append(roots, root)
		subPath := []any{"unstable", "io.element.msc4306", "rooms", roomID, "thread", root, "subscription"}
		if _, err := alice.MakeRequest(ctxT(t), http.MethodPut, alice.BuildClientURL(subPath...), map[string]any{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	r2 := ssOK(t, alice, r1.Pos, 0, body)
	var ext struct {
		Subscribed map[string]map[string]any `json:"subscribed"`
		PrevBatch  string                    `json:"prev_batch"`
	}
	if err := json.Unmarshal(r2.Extensions[extName], &ext); err != nil {
		t.Fatal(err)
	}
	got := ext.Subscribed[roomID.String()]
	if len(got) != 2 || got[roots[2].String()] == nil || got[roots[1].String()] == nil || ext.PrevBatch == "" {
		t.Fatalf("extension = %s", r2.Extensions[extName])
	}
	var page struct {
		Subscribed map[string]map[string]any `json:"subscribed"`
		End        string                    `json:"end"`
	}
	u := alice.BuildURLWithQuery(mautrix.ClientURLPath{"unstable", "io.element.msc4308", "thread_subscriptions"},
		map[string]string{"dir": "b", "from": ext.PrevBatch, "to": r1.Pos, "limit": "10"})
	if _, err := alice.MakeRequest(ctxT(t), http.MethodGet, u, nil, &page); err != nil {
		t.Fatal(err)
	}
	if p := page.Subscribed[roomID.String()]; len(p) != 1 || p[roots[0].String()] == nil || page.End != "" {
		t.Fatalf("page = %+v", page)
	}
	// Paging without to reaches back to the beginning, a page at a time.
	u = alice.BuildURLWithQuery(mautrix.ClientURLPath{"unstable", "io.element.msc4308", "thread_subscriptions"}, map[string]string{"dir": "b", "limit": "2"})
	page.Subscribed, page.End = nil, ""
	if _, err := alice.MakeRequest(ctxT(t), http.MethodGet, u, nil, &page); err != nil || len(page.Subscribed[roomID.String()]) != 2 || page.End == "" {
		t.Fatalf("first page: %v %+v", err, page)
	}
	bad := alice.BuildURLWithQuery(mautrix.ClientURLPath{"unstable", "io.element.msc4308", "thread_subscriptions"}, map[string]string{"dir": "f"})
	_, err := alice.MakeRequest(ctxT(t), http.MethodGet, bad, nil, nil)
	e2eeWantErr(t, "dir=f", err, http.StatusBadRequest, "M_INVALID_PARAM")
}

// TestSlidingSyncRemoteInvite: an invite from another server (a room this
// server holds nothing of) is listed with its stripped state, and its
// rejection reaches the client once as a leave.
func TestSlidingSyncRemoteInvite(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	carol := b.register(t, "carol")
	body := map[string]any{"lists": map[string]any{
		"invites": map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"is_invite": true}},
		"all":     map[string]any{"ranges": [][]int{{0, 9}}},
	}}
	r1 := ssOK(t, carol, "", 0, body)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "over there", Invite: []id.UserID{carol.UserID}})
	var inv ssRoomResp
	pos := r1.Pos
	deadline := time.Now().Add(20 * time.Second)
	for inv.Membership == "" && time.Now().Before(deadline) {
		r := ssOK(t, carol, pos, 2000, body)
		pos, inv = r.Pos, r.Rooms[roomID.String()]
	}
	if inv.Membership != "invite" {
		t.Fatal("the remote invite never came")
	}
	name := ""
	for _, ev := range inv.InviteState {
		if ev.Type == "m.room.name" {
			name, _ = ev.Content["name"].(string)
		}
	}
	if name != "over there" {
		t.Fatalf("invite_state = %+v", inv.InviteState)
	}
	if _, err := carol.LeaveRoom(ctxT(t), roomID, &mautrix.ReqLeave{Reason: "no thanks"}); err != nil {
		t.Fatal(err)
	}
	r := ssOK(t, carol, pos, 5000, body)
	left := r.Rooms[roomID.String()]
	if left.Membership != "leave" || len(left.TimelineEvents) != 1 || left.TimelineEvents[0].Content["membership"] != "leave" || r.Lists["invites"].Count != 0 {
		t.Fatalf("rejection = %+v lists %+v raw %s", left, r.Lists, r.raw)
	}
	if again := ssOK(t, carol, r.Pos, 0, body); len(again.Rooms) != 0 {
		t.Fatalf("the rejection was sent twice: %+v", again.Rooms)
	}
}

// TestSlidingSyncInitialReceiptsTrimmed: a room new to the connection
// gets only the receipts on the events it is sent, and the user's own.
func TestSlidingSyncInitialReceiptsTrimmed(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	old := mustSendText(t, alice, roomID, "old")
	if err := bob.SendReceipt(ctxT(t), roomID, old, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	latest := mustSendText(t, alice, roomID, "latest")
	if err := alice.SendReceipt(ctxT(t), roomID, old, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"lists": map[string]any{"l": ssList([][]int{{0, 0}}, 1, nil)},
		"extensions": map[string]any{"receipts": map[string]any{"enabled": true}}}
	r := ssOK(t, alice, "", 0, body)
	var receipts struct {
		Rooms map[string]struct {
			Content map[string]map[string]map[string]any `json:"content"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(r.Extensions["receipts"], &receipts); err != nil {
		t.Fatal(err)
	}
	c := receipts.Rooms[roomID.String()].Content
	if len(r.Rooms[roomID.String()].TimelineEvents) != 1 || r.Rooms[roomID.String()].TimelineEvents[0].EventID != latest.String() {
		t.Fatalf("timeline = %+v", r.Rooms[roomID.String()].TimelineEvents)
	}
	if c[old.String()]["m.read"][bob.UserID.String()] != nil || c[old.String()]["m.read.private"][alice.UserID.String()] == nil {
		t.Fatalf("receipts on a room's first sight = %s", r.Extensions["receipts"])
	}
}

// TestSlidingSyncPartialState: a room joined with partial state (faster
// join) is held back from a list asking for every member until its state
// is complete, and shown at once to one lazy-loading members.
func TestSlidingSyncPartialState(t *testing.T) {
	roomfed.PartialResyncDelay = 3 * time.Second
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	_, roomID, _ := partialRoom(t, func(name string) *mautrix.Client { return a.register(t, name) }, 5)
	bob := b.register(t, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatal(err)
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("the join did not leave the room partial")
	}
	all := map[string]any{"conn_id": "all", "lists": map[string]any{"l": ssList([][]int{{0, 9}}, 1, [][]string{{"m.room.member", "*"}})}}
	lazy := map[string]any{"conn_id": "lazy", "lists": map[string]any{"l": ssList([][]int{{0, 9}}, 1, [][]string{{"m.room.member", "$LAZY"}})}}
	r1 := ssOK(t, bob, "", 0, all)
	if _, ok := r1.Rooms[roomID.String()]; ok || r1.Lists["l"].Count != 1 {
		t.Fatalf("partial room sent to a list wanting all members: %+v", r1)
	}
	if r := ssOK(t, bob, "", 0, lazy); r.Rooms[roomID.String()].Membership != "join" {
		t.Fatalf("lazy list lacks the partial room: %+v", r.Rooms)
	}
	waitFor(t, 30*time.Second, "the resync", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	r2 := ssOK(t, bob, r1.Pos, 0, all)
	got := r2.Rooms[roomID.String()]
	if !got.Initial || len(got.RequiredState) != 7 { // alice, five members, bob
		t.Fatalf("after the resync: %+v", got)
	}
}

// TestSlidingSyncRejectedInviteLeavesInviteList: a client whose only list
// is filtered to invites is still told of a rejected invite (as a leave)
// once, though no list covers a left room, so it drops the invite.
func TestSlidingSyncRejectedInviteLeavesInviteList(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	body := map[string]any{"lists": map[string]any{
		"invites": map[string]any{"ranges": [][]int{{0, 9}}, "timeline_limit": 1, "filters": map[string]any{"is_invite": true}},
	}}
	r1 := ssOK(t, bob, "", 0, body)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	r2 := ssOK(t, bob, r1.Pos, 5000, body)
	if r2.Rooms[roomID.String()].Membership != "invite" {
		t.Fatalf("invite: %+v", r2.Rooms)
	}
	if _, err := bob.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	r3 := ssOK(t, bob, r2.Pos, 5000, body)
	left, ok := r3.Rooms[roomID.String()]
	if !ok || left.Membership != "leave" || len(left.TimelineEvents) == 0 || left.TimelineEvents[len(left.TimelineEvents)-1].Content["membership"] != "leave" || r3.Lists["invites"].Count != 0 {
		t.Fatalf("rejection: %+v lists %+v raw %s", left, r3.Lists, r3.raw)
	}
	if r4 := ssOK(t, bob, r3.Pos, 0, body); len(r4.Rooms) != 0 {
		t.Fatalf("the rejection was sent twice: %+v", r4.Rooms)
	}
}

// TestSlidingSyncToDeviceLimit: the to_device extension's limit caps one
// response; its next_batch picks up the rest.
func TestSlidingSyncToDeviceLimit(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	for i := range 3 {
		if err := sendToDevice(t, bob, "m.test", fmt.Sprint("t", i), map[string]any{alice.UserID.String(): map[string]any{alice.DeviceID.String(): map[string]any{"n": i}}}); err != nil {
			t.Fatal(err)
		}
	}
	type toDev struct {
		NextBatch string          `json:"next_batch"`
		Events    []toDeviceEvent `json:"events"`
	}
	get := func(pos, since string) (ssResp, toDev) {
		td := map[string]any{"enabled": true, "limit": 2}
		if since != "" {
			td["since"] = since
		}
		r := ssOK(t, alice, pos, 0, map[string]any{"extensions": map[string]any{"to_device": td}})
		var out toDev
		if err := json.Unmarshal(r.Extensions["to_device"], &out); err != nil {
			t.Fatalf("to_device %s: %v", r.Extensions["to_device"], err)
		}
		return r, out
	}
	r1, td1 := get("", "")
	if len(td1.Events) != 2 || string(td1.Events[0].Content) != `{"n":0}` || string(td1.Events[1].Content) != `{"n":1}` {
		t.Fatalf("first page: %+v", td1)
	}
	r2, td2 := get(r1.Pos, td1.NextBatch)
	if len(td2.Events) != 1 || string(td2.Events[0].Content) != `{"n":2}` {
		t.Fatalf("second page: %+v", td2)
	}
	if _, td3 := get(r2.Pos, td2.NextBatch); len(td3.Events) != 0 {
		t.Fatalf("after all were acknowledged: %+v", td3)
	}
}

// TestSlidingSyncTagFilters: lists filtered by tags and not_tags (the
// favourites and low-priority lists some Element X versions keep).
func TestSlidingSyncTagFilters(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	fav := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "fav"})
	low := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "low"})
	plain := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "plain"})
	if err := alice.AddTag(ctxT(t), fav, event.RoomTagFavourite, 0.5); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddTag(ctxT(t), low, event.RoomTagLowPriority, 0.5); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"lists": map[string]any{
		"fav":  map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"tags": []string{"m.favourite"}}},
		"low":  map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"tags": []string{"m.lowpriority"}}},
		"rest": map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"not_tags": []string{"m.favourite", "m.lowpriority"}}},
		// not_tags wins over tags
		"none": map[string]any{"ranges": [][]int{{0, 9}}, "filters": map[string]any{"tags": []string{"m.favourite"}, "not_tags": []string{"m.favourite"}}},
	}}
	r := ssOK(t, alice, "", 0, body)
	if r.Lists["fav"].Count != 1 || r.Lists["low"].Count != 1 || r.Lists["rest"].Count != 1 || r.Lists["none"].Count != 0 {
		t.Fatalf("counts = %+v", r.Lists)
	}
	var raw struct {
		Rooms map[string]struct {
			Lists []string `json:"lists"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(r.raw, &raw); err != nil {
		t.Fatal(err)
	}
	for roomID, want := range map[id.RoomID]string{fav: "fav", low: "low", plain: "rest"} {
		if ls := raw.Rooms[roomID.String()].Lists; len(ls) != 1 || ls[0] != want {
			t.Fatalf("room %s lists = %v, want [%s]", roomID, ls, want)
		}
	}
	// Untagging moves the room to the rest.
	if err := alice.RemoveTag(ctxT(t), fav, event.RoomTagFavourite); err != nil {
		t.Fatal(err)
	}
	r2 := ssOK(t, alice, r.Pos, 5000, body)
	if r2.Lists["fav"].Count != 0 || r2.Lists["rest"].Count != 2 {
		t.Fatalf("after untagging: %+v", r2.Lists)
	}
}

// TestSlidingSyncPosInMessagesAndRelations: a pos token pages /messages
// and /relations from where the sliding sync response stood (MSC4186).
func TestSlidingSyncPosInMessagesAndRelations(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	before := mustSendText(t, alice, roomID, "before")
	react := func(key string) id.EventID {
		resp, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventReaction, &event.ReactionEventContent{RelatesTo: event.RelatesTo{
			Type: event.RelAnnotation, EventID: before, Key: key,
		}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID
	}
	early := react("👍")
	r := ssOK(t, alice, "", 0, map[string]any{"lists": map[string]any{"all": ssList([][]int{{0, 9}}, 1, nil)}})
	after := mustSendText(t, alice, roomID, "after")
	late := react("🎉")
	back, err := alice.Messages(ctxT(t), roomID, r.Pos, "", mautrix.DirectionBackward, nil, 10)
	if err != nil {
		t.Fatalf("/messages from a pos: %v", err)
	}
	if len(back.Chunk) == 0 || back.Chunk[0].ID != early {
		t.Fatalf("backwards from pos starts at %v, want %s", back.Chunk, early)
	}
	fwd, err := alice.Messages(ctxT(t), roomID, r.Pos, "", mautrix.DirectionForward, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(fwd.Chunk) != 2 || fwd.Chunk[0].ID != after || fwd.Chunk[1].ID != late {
		t.Fatalf("forwards from pos = %v, want %s %s", fwd.Chunk, after, late)
	}
	rel, err := alice.GetRelations(ctxT(t), roomID, before, &mautrix.ReqGetRelations{Dir: mautrix.DirectionBackward, From: r.Pos})
	if err != nil {
		t.Fatalf("/relations from a pos: %v", err)
	}
	if len(rel.Chunk) != 1 || rel.Chunk[0].ID != early {
		t.Fatalf("relations from pos = %v, want only %s", rel.Chunk, early)
	}
	// Not every string with underscores is a pos.
	if _, err := alice.Messages(ctxT(t), roomID, "zz_1_2", "", mautrix.DirectionBackward, nil, 10); !errors.Is(err, mautrix.MInvalidParam) {
		t.Fatalf("bogus token: %v", err)
	}
}

// TestSlidingSyncStateResetStub: state the client was sent that a state
// reset removes (carol's topic, undone when bob's concurrent demotion of
// carol wins state resolution) comes back as a stub, type and state_key
// without content (MSC4186's StateStub).
func TestSlidingSyncStateResetStub(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "10")
	ctx := ctxT(t)
	carol := &rfSyncer{c: a.register(t, "carol")}
	if _, err := carol.c.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	rfPromote(t, alice, carol, roomID, 50)
	rfPromote(t, alice, bob, roomID, 100)

	// The partition: each side writes with its federation queue hook off.
	write := func(n *rfNode, sender, evType string, content any) json.RawMessage {
		hook := n.Rooms.InTx
		n.Rooms.InTx = nil
		defer func() { n.Rooms.InTx = hook }()
		var raw json.RawMessage
		sk := ""
		body, _ := json.Marshal(content)
		err := n.Store.Write(func(tx *store.Tx) error {
			ev, err := n.Rooms.Send(tx, roomID.String(), room.Proto{Type: evType, StateKey: &sk, Sender: sender, Content: body})
			if err == nil {
				raw = ev.Raw
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	body := map[string]any{"room_subscriptions": map[string]any{roomID.String(): map[string]any{
		"timeline_limit": 1, "required_state": [][]string{{"m.room.topic", ""}},
	}}}
	r1 := ssOK(t, alice.c, "", 0, body)
	write(a, carol.c.UserID.String(), "m.room.topic", map[string]string{"topic": "carol's topic"})
	r2 := ssOK(t, alice.c, r1.Pos, 5000, body)
	if rs := r2.Rooms[roomID.String()].RequiredState; len(rs) != 1 || rs[0].Content["topic"] != "carol's topic" {
		t.Fatalf("topic before the reset: %+v", rs)
	}
	var pl map[string]any
	if err := bob.c.StateEvent(ctx, roomID, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	pl["users"].(map[string]any)[carol.c.UserID.String()] = 0
	demotion := write(b, bob.c.UserID.String(), "m.room.power_levels", pl)
	var resp struct {
		PDUs map[string]struct {
			Error string `json:"error"`
		} `json:"pdus"`
	}
	txn := map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{demotion}}
	if err := b.Fed.Client.Put(ctx, a.Name, "/_matrix/federation/v1/send/reset-1", txn, &resp); err != nil {
		t.Fatal(err)
	}
	for id, r := range resp.PDUs {
		if r.Error != "" {
			t.Fatalf("A refused %s: %s", id, r.Error)
		}
	}
	r3 := ssOK(t, alice.c, r2.Pos, 5000, body)
	var raw struct {
		Rooms map[string]struct {
			RequiredState []map[string]json.RawMessage `json:"required_state"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(r3.raw, &raw); err != nil {
		t.Fatal(err)
	}
	stub := false
	for _, ev := range raw.Rooms[roomID.String()].RequiredState {
		if string(ev["type"]) == `"m.room.topic"` && string(ev["state_key"]) == `""` {
			if _, has := ev["content"]; has {
				t.Fatalf("the reset topic came back with content: %s", r3.raw)
			}
			stub = true
		}
	}
	if !stub {
		t.Fatalf("no stub for the reset topic: %s", r3.raw)
	}
}

// TestSlidingSyncRequiredStateAnyKeyOfType: Element X's required_state
// names types with any state key (["m.call.member", "*"]) beside exact
// pairs: every event of those types comes, each once, and no other state.
func TestSlidingSyncRequiredStateAnyKeyOfType(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "calls", Topic: "not asked for"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"_call_a", "_call_b"} {
		if _, err := alice.SendStateEvent(ctxT(t), roomID, event.Type{Type: "m.call.member", Class: event.StateEventType}, key, map[string]any{"k": key}); err != nil {
			t.Fatal(err)
		}
	}
	body := map[string]any{"lists": map[string]any{"all": ssList([][]int{{0, 9}}, 1, [][]string{
		{"m.room.name", ""}, {"m.call.member", "*"}, {"m.call.member", "_call_a"}, {"m.room.member", "$ME"}, {"m.space.child", "*"},
	})}}
	r := ssOK(t, alice, "", 0, body)
	got := map[string]int{}
	for _, ev := range r.Rooms[roomID.String()].RequiredState {
		got[ev.Type+"|"+*ev.StateKey]++
	}
	want := map[string]int{"m.room.name|": 1, "m.call.member|_call_a": 1, "m.call.member|_call_b": 1, "m.room.member|" + alice.UserID.String(): 1}
	if len(got) != len(want) {
		t.Fatalf("required_state = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("required_state = %v, want %v", got, want)
		}
	}
}
