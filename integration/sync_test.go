package integration

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// syncWith runs one /sync with the given query parameters.
func syncWith(t testing.TB, c *mautrix.Client, query map[string]string) *mautrix.RespSync {
	t.Helper()
	var resp mautrix.RespSync
	if _, err := c.MakeRequest(ctxT(t), "GET", c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, query), nil, &resp); err != nil {
		t.Fatalf("sync %v: %v", query, err)
	}
	return &resp
}

// streamPos reads the position out of edge's sync token; tokens are
// opaque to clients, but the node's own tests may check they only grow.
func streamPos(t testing.TB, token string) uint64 {
	t.Helper()
	num, _, _ := strings.Cut(strings.TrimPrefix(token, "s"), "_")
	v, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		t.Fatalf("sync token %q: %v", token, err)
	}
	return v
}

func eventIDs(evs []*event.Event) []id.EventID {
	var out []id.EventID
	for _, ev := range evs {
		out = append(out, ev.ID)
	}
	return out
}

func memberKeys(evs []*event.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type == event.StateMember {
			out = append(out, ev.GetStateKey())
		}
	}
	slices.Sort(out)
	return out
}

func TestSyncIncremental(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Name: "synced"})
	m1 := sendText(t, alice, roomID, "one")

	first := syncWith(t, alice, nil)
	jr := first.Rooms.Join[roomID]
	if jr == nil {
		t.Fatal("room missing from initial sync")
	}
	if !slices.Contains(eventIDs(jr.Timeline.Events), m1) {
		t.Errorf("initial timeline %v lacks %s", eventIDs(jr.Timeline.Events), m1)
	}
	// State plus timeline together describe the whole room.
	all := append(append([]*event.Event{}, jr.State.Events...), jr.Timeline.Events...)
	for _, want := range []event.Type{event.StateCreate, event.StatePowerLevels, event.StateRoomName, event.StateJoinRules} {
		if !slices.ContainsFunc(all, func(ev *event.Event) bool { return ev.Type == want }) {
			t.Errorf("initial sync lacks %s", want)
		}
	}

	// Nothing new: timeout=0 answers at once, without the room.
	start := time.Now()
	quiet := syncWith(t, alice, map[string]string{"since": first.NextBatch, "timeout": "0"})
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("timeout=0 took %s", took)
	}
	if _, there := quiet.Rooms.Join[roomID]; there {
		t.Errorf("quiet incremental sync lists the room: %+v", quiet.Rooms.Join[roomID].Timeline)
	}
	if streamPos(t, quiet.NextBatch) < streamPos(t, first.NextBatch) {
		t.Errorf("next_batch went backwards: %s → %s", first.NextBatch, quiet.NextBatch)
	}

	m2 := sendText(t, alice, roomID, "two")
	m3 := sendText(t, alice, roomID, "three")
	inc := syncWith(t, alice, map[string]string{"since": quiet.NextBatch, "timeout": "0"})
	jr = inc.Rooms.Join[roomID]
	if jr == nil {
		t.Fatal("room missing from incremental sync")
	}
	if got := eventIDs(jr.Timeline.Events); fmt.Sprint(got) != fmt.Sprint([]id.EventID{m2, m3}) || jr.Timeline.Limited {
		t.Errorf("incremental timeline %v (limited %v), want [%s %s]", got, jr.Timeline.Limited, m2, m3)
	}
	if len(jr.State.Events) != 0 {
		t.Errorf("incremental sync repeats state: %v", jr.State.Events)
	}
	if streamPos(t, inc.NextBatch) <= streamPos(t, quiet.NextBatch) {
		t.Errorf("next_batch did not advance: %s → %s", quiet.NextBatch, inc.NextBatch)
	}
	// An older token gives the newer events again, never fewer.
	again := syncWith(t, alice, map[string]string{"since": first.NextBatch, "timeout": "0"})
	if got := eventIDs(again.Rooms.Join[roomID].Timeline.Events); fmt.Sprint(got) != fmt.Sprint([]id.EventID{m2, m3}) {
		t.Errorf("sync from an older token: %v", got)
	}
	// A state change arrives in the timeline.
	topic, err := alice.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "t"})
	if err != nil {
		t.Fatal(err)
	}
	st := syncWith(t, alice, map[string]string{"since": inc.NextBatch})
	if got := eventIDs(st.Rooms.Join[roomID].Timeline.Events); fmt.Sprint(got) != fmt.Sprint([]id.EventID{topic.EventID}) {
		t.Errorf("state change timeline %v", got)
	}

	for _, bad := range []map[string]string{{"since": "garbage"}, {"timeout": "soon"}, {"filter": "{not json"}, {"filter": "12345"}} {
		var resp map[string]any
		_, err := alice.MakeRequest(ctx, "GET", alice.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, bad), nil, &resp)
		if s, _ := matrixErr(err); s != 400 && s != 404 {
			t.Errorf("sync %v: %v, want 400 (or 404 for an unknown filter)", bad, err)
		}
	}
}

func TestSyncFilters(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	other := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 12 {
		body := fmt.Sprint("m", i)
		want = append(want, body)
		sendText(t, alice, roomID, body)
	}
	if _, err := alice.SendMessageEvent(ctx, roomID, event.NewEventType("org.example.noise"), map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}

	// Stored filters round-trip and are private.
	def := `{"room":{"rooms":["` + roomID.String() + `"],"timeline":{"limit":3,"types":["m.room.message"]}}}`
	var created mautrix.RespCreateFilter
	if _, err := alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "user", alice.UserID, "filter"), json.RawMessage(def), &created); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if _, err := alice.MakeRequest(ctx, "GET", alice.BuildClientURL("v3", "user", alice.UserID, "filter", created.FilterID), nil, &back); err != nil {
		t.Fatal(err)
	}
	var orig map[string]any
	_ = json.Unmarshal([]byte(def), &orig)
	if fmt.Sprint(back) != fmt.Sprint(orig) {
		t.Errorf("stored filter %v, want %v", back, orig)
	}
	_, err := bob.MakeRequest(ctx, "GET", bob.BuildClientURL("v3", "user", alice.UserID, "filter", created.FilterID), nil, &back)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = bob.MakeRequest(ctx, "POST", bob.BuildClientURL("v3", "user", alice.UserID, "filter"), json.RawMessage(`{}`), &created)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.MakeRequest(ctx, "GET", alice.BuildClientURL("v3", "user", alice.UserID, "filter", "999999"), nil, &back)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	_, err = alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "user", alice.UserID, "filter"), json.RawMessage(`{"room":{"timeline":{"limit":-3}}}`), &created)
	wantMatrixErr(t, err, 400, "M_INVALID_PARAM")

	// A stored filter with a timeline limit: limited, with a prev_batch /messages continues from.
	var stored mautrix.RespCreateFilter
	if _, err := alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "user", alice.UserID, "filter"), json.RawMessage(def), &stored); err != nil {
		t.Fatal(err)
	}
	resp := syncWith(t, alice, map[string]string{"filter": stored.FilterID})
	if _, there := resp.Rooms.Join[other]; there {
		t.Error("room.rooms filter let another room through")
	}
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		t.Fatal("filtered room missing")
	}
	if got := bodiesOf(jr.Timeline.Events); fmt.Sprint(got) != "[m9 m10 m11]" || !jr.Timeline.Limited || jr.Timeline.PrevBatch == "" {
		t.Fatalf("limited timeline %v, limited=%v prev_batch=%q", got, jr.Timeline.Limited, jr.Timeline.PrevBatch)
	}
	var earlier []string
	from := jr.Timeline.PrevBatch
	for range 10 {
		page, err := alice.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, &mautrix.FilterPart{Types: []event.Type{event.EventMessage}}, 4)
		if err != nil {
			t.Fatal(err)
		}
		earlier = append(earlier, bodiesOf(page.Chunk)...)
		if page.End == "" {
			break
		}
		from = page.End
	}
	slices.Reverse(earlier)
	if got := append(earlier, bodiesOf(jr.Timeline.Events)...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("prev_batch + timeline = %v, want %v", got, want)
	}

	// Inline filters: not_types, and a limit of 0 for no timeline at all.
	inline := syncWith(t, alice, map[string]string{"filter": `{"room":{"timeline":{"not_types":["m.room.message","m.room.member"],"limit":50}}}`})
	for _, ev := range inline.Rooms.Join[roomID].Timeline.Events {
		if ev.Type == event.EventMessage || ev.Type == event.StateMember {
			t.Errorf("not_types let %s through", ev.Type)
		}
	}
	if !slices.ContainsFunc(inline.Rooms.Join[roomID].Timeline.Events, func(ev *event.Event) bool { return ev.Type.Type == "org.example.noise" }) {
		t.Error("not_types filter dropped org.example.noise")
	}
	none := syncWith(t, alice, map[string]string{"filter": `{"room":{"timeline":{"limit":0},"state":{"types":["m.room.create"]}}}`})
	if jr := none.Rooms.Join[roomID]; jr == nil || len(jr.Timeline.Events) != 0 || len(jr.State.Events) != 1 || jr.State.Events[0].Type != event.StateCreate {
		t.Errorf("limit 0 + state types: %+v", jr)
	}
	senders := syncWith(t, alice, map[string]string{"filter": `{"room":{"timeline":{"senders":["` + bob.UserID.String() + `"]}}}`})
	for _, ev := range senders.Rooms.Join[roomID].Timeline.Events {
		if ev.Sender != bob.UserID {
			t.Errorf("senders filter let %s's %s through", ev.Sender, ev.Type)
		}
	}
	var bad map[string]any
	_, err = alice.MakeRequest(ctx, "GET", alice.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, map[string]string{"filter": `{"room":{"timeline":{"limit":-1}}}`}), nil, &bad)
	wantMatrixErr(t, err, 400, "M_INVALID_PARAM")

	// A gappy incremental sync: the state that changed inside the gap comes
	// in the state section, the timeline is limited and prev_batch reaches
	// back into the gap.
	small := `{"room":{"timeline":{"limit":2}}}`
	base := syncWith(t, alice, map[string]string{"filter": small})
	topic, err := alice.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "in the gap"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		sendText(t, bob, roomID, fmt.Sprint("gap ", i))
	}
	gappy := syncWith(t, alice, map[string]string{"filter": small, "since": base.NextBatch})
	gjr := gappy.Rooms.Join[roomID]
	if gjr == nil || !gjr.Timeline.Limited || fmt.Sprint(bodiesOf(gjr.Timeline.Events)) != "[gap 2 gap 3]" {
		t.Fatalf("gappy sync: %+v", gjr)
	}
	if !slices.ContainsFunc(gjr.State.Events, func(ev *event.Event) bool { return ev.ID == topic.EventID }) {
		t.Errorf("gappy sync state %v lacks the topic change %s", eventIDs(gjr.State.Events), topic.EventID)
	}
	if slices.ContainsFunc(gjr.State.Events, func(ev *event.Event) bool { return ev.Type == event.StateCreate }) {
		t.Error("gappy sync repeats unchanged state")
	}
	gap, err := alice.Messages(ctx, roomID, gjr.Timeline.PrevBatch, "", mautrix.DirectionBackward, nil, 3)
	if err != nil || fmt.Sprint(bodiesOf(gap.Chunk)) != "[gap 1 gap 0]" || gap.Chunk[2].ID != topic.EventID {
		t.Errorf("/messages from prev_batch: %v %v", bodiesOf(gap.Chunk), err)
	}
}

func TestSyncLazyLoadAndFullState(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	var users []*mautrix.Client
	for _, name := range []string{"bob", "carol", "dave", "erin"} {
		c := n.register(t, name)
		if _, err := c.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		users = append(users, c)
	}
	sendText(t, users[0], roomID, "from bob")
	sendText(t, users[1], roomID, "from carol")

	lazy := `{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true}}}`
	resp := syncWith(t, alice, map[string]string{"filter": lazy})
	jr := resp.Rooms.Join[roomID]
	if got := memberKeys(jr.State.Events); fmt.Sprint(got) != "[@alice:localhost @bob:localhost @carol:localhost]" {
		t.Errorf("lazy-loaded state members = %v, want the senders and the syncing user", got)
	}
	if jr.Summary.JoinedMemberCount == nil || *jr.Summary.JoinedMemberCount != 5 || len(jr.Summary.Heroes) == 0 {
		t.Errorf("summary = %+v", jr.Summary)
	}
	full := syncWith(t, alice, map[string]string{"filter": `{"room":{"timeline":{"limit":2}}}`})
	if got := memberKeys(full.Rooms.Join[roomID].State.Events); len(got) != 5 {
		t.Errorf("without lazy loading the state has members %v", got)
	}

	// Incremental + lazy: a new sender's member event comes along, a known one's does not.
	sendText(t, users[3], roomID, "from erin")
	sendText(t, users[0], roomID, "bob again")
	inc := syncWith(t, alice, map[string]string{"filter": lazy, "since": resp.NextBatch})
	if got := memberKeys(inc.Rooms.Join[roomID].State.Events); !slices.Contains(got, "@erin:localhost") {
		t.Errorf("incremental lazy state %v lacks erin", got)
	}

	// full_state: the whole state again on an incremental sync, even with nothing new.
	fs := syncWith(t, alice, map[string]string{"since": inc.NextBatch, "full_state": "true"})
	fjr := fs.Rooms.Join[roomID]
	if fjr == nil {
		t.Fatal("full_state sync lacks the room")
	}
	if got := memberKeys(append(fjr.State.Events, fjr.Timeline.Events...)); len(got) != 5 {
		t.Errorf("full_state members %v", got)
	}
	if !slices.ContainsFunc(fjr.State.Events, func(ev *event.Event) bool { return ev.Type == event.StateCreate }) {
		t.Error("full_state lacks m.room.create")
	}
}

func TestSyncLeave(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	before := syncWith(t, bob, nil)
	sendText(t, alice, roomID, "goodbye bob")
	if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	sendText(t, alice, roomID, "he's gone")

	left := syncWith(t, bob, map[string]string{"since": before.NextBatch})
	if _, there := left.Rooms.Join[roomID]; there {
		t.Error("left room still in join")
	}
	lr := left.Rooms.Leave[roomID]
	if lr == nil {
		t.Fatalf("left room not in leave: %+v", left.Rooms)
	}
	bodies := bodiesOf(lr.Timeline.Events)
	if !slices.Contains(bodies, "goodbye bob") || slices.Contains(bodies, "he's gone") {
		t.Errorf("leave timeline %v", bodies)
	}
	lastEv := lr.Timeline.Events[len(lr.Timeline.Events)-1]
	if lastEv.Type != event.StateMember || lastEv.GetStateKey() != bob.UserID.String() || lastEv.Content.Raw["membership"] != "leave" {
		t.Errorf("leave timeline ends with %s %v", lastEv.Type, lastEv.Content.Raw)
	}
	// Once only.
	after := syncWith(t, bob, map[string]string{"since": left.NextBatch})
	if _, there := after.Rooms.Leave[roomID]; there {
		t.Error("left room repeated in the next sync")
	}
	// An initial sync leaves it out unless include_leave asks for it.
	if _, there := syncWith(t, bob, nil).Rooms.Leave[roomID]; there {
		t.Error("initial sync lists the left room without include_leave")
	}
	inc := syncWith(t, bob, map[string]string{"filter": `{"room":{"include_leave":true}}`})
	if lr := inc.Rooms.Leave[roomID]; lr == nil || slices.Contains(bodiesOf(lr.Timeline.Events), "he's gone") {
		t.Errorf("include_leave initial sync: %+v", lr)
	}
	// Kicked users see it too.
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	mid := syncWith(t, bob, nil)
	if _, err := alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	kicked := syncWith(t, bob, map[string]string{"since": mid.NextBatch})
	if kicked.Rooms.Leave[roomID] == nil {
		t.Error("kick did not show in leave")
	}
	// So does a rejected invite, and only the invitee's own events come with it.
	other := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	sendText(t, alice, other, "private")
	invited := syncWith(t, bob, map[string]string{"since": kicked.NextBatch})
	if invited.Rooms.Invite[other] == nil {
		t.Fatal("invite not delivered")
	}
	if _, err := bob.LeaveRoom(ctx, other); err != nil {
		t.Fatal(err)
	}
	rejected := syncWith(t, bob, map[string]string{"since": invited.NextBatch})
	rl := rejected.Rooms.Leave[other]
	if rl == nil {
		t.Fatal("rejected invite not in leave")
	}
	if _, still := rejected.Rooms.Invite[other]; still {
		t.Error("rejected invite still in invite")
	}
	if slices.Contains(bodiesOf(rl.Timeline.Events), "private") {
		t.Error("rejecting an invite revealed the room's messages")
	}
}

func TestSyncLongPoll(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	base := syncWith(t, bob, nil)

	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	poll := func(c *mautrix.Client, since string) chan result {
		ch := make(chan result, 1)
		go func() {
			var resp mautrix.RespSync
			_, err := c.MakeRequest(ctx, "GET", c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, map[string]string{"since": since, "timeout": "10000"}), nil, &resp)
			ch <- result{&resp, err}
		}()
		return ch
	}
	// A message from someone else wakes the waiting sync.
	ch := poll(bob, base.NextBatch)
	time.Sleep(200 * time.Millisecond)
	sent := sendText(t, alice, roomID, "wake up")
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	jr := r.resp.Rooms.Join[roomID]
	if jr == nil || !slices.Contains(eventIDs(jr.Timeline.Events), sent) {
		t.Fatalf("long-poll returned without the message: %+v", r.resp.Rooms)
	}

	// An invite wakes the invitee, whose room list had no such room.
	carol := n.register(t, "carol")
	cbase := syncWith(t, carol, nil)
	ch = poll(carol, cbase.NextBatch)
	time.Sleep(200 * time.Millisecond)
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r.err != nil || r.resp.Rooms.Invite[roomID] == nil {
		t.Fatalf("long-poll did not deliver the invite: %v %+v", r.err, r.resp)
	}

	// Account data wakes it too.
	bbase := syncWith(t, bob, map[string]string{"since": r.resp.NextBatch})
	ch = poll(bob, bbase.NextBatch)
	time.Sleep(200 * time.Millisecond)
	if err := bob.SetAccountData(ctx, "org.example.pref", map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	ad := <-ch
	if ad.err != nil || !slices.ContainsFunc(ad.resp.AccountData.Events, func(ev *event.Event) bool { return ev.Type.Type == "org.example.pref" }) {
		t.Fatalf("long-poll did not deliver account data: %v %+v", ad.err, ad.resp.AccountData)
	}

	// set_presence is accepted with every value the spec lists.
	for _, p := range []string{"online", "offline", "unavailable"} {
		syncWith(t, bob, map[string]string{"set_presence": p, "timeout": "0", "since": ad.resp.NextBatch})
	}
	var resp map[string]any
	_, err := bob.MakeRequest(ctx, "GET", bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, map[string]string{"set_presence": "dancing"}), nil, &resp)
	wantMatrixErr(t, err, 400, "M_INVALID_PARAM")
}

func TestSyncIgnoredUsers(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	ctx := ctxT(t)
	// Anyone may set state here, so the ignored user can send some.
	roomID := createRoomRaw(t, alice, map[string]any{"preset": "public_chat", "power_level_content_override": map[string]any{"state_default": 0, "events": map[string]any{}}})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{bob.UserID.String(): map[string]any{}}}); err != nil {
		t.Fatal(err)
	}
	base := syncWith(t, alice, nil)
	hidden := sendText(t, bob, roomID, "you can't hear me")
	topic, err := bob.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": "bob's topic"})
	if err != nil {
		t.Fatal(err)
	}
	shown := sendText(t, alice, roomID, "quiet in here")
	// Bob's invite to a new room is not delivered either.
	bobRoom := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Invite: []id.UserID{alice.UserID}})

	inc := syncWith(t, alice, map[string]string{"since": base.NextBatch})
	got := eventIDs(inc.Rooms.Join[roomID].Timeline.Events)
	if slices.Contains(got, hidden) {
		t.Error("ignored user's message delivered")
	}
	if !slices.Contains(got, topic.EventID) || !slices.Contains(got, shown) {
		t.Errorf("timeline %v lacks the ignored user's state event %s or alice's %s", got, topic.EventID, shown)
	}
	if _, there := inc.Rooms.Invite[bobRoom]; there {
		t.Error("invite from an ignored user delivered")
	}
	if _, there := syncWith(t, alice, nil).Rooms.Invite[bobRoom]; there {
		t.Error("invite from an ignored user delivered in an initial sync")
	}
	msgs, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(eventIDs(msgs.Chunk), hidden) {
		t.Error("/messages shows the ignored user's message")
	}

	// Un-ignoring resumes delivery of new events.
	if err := alice.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	mid := syncWith(t, alice, map[string]string{"since": inc.NextBatch})
	audible := sendText(t, bob, roomID, "can you hear me now")
	after := syncWith(t, alice, map[string]string{"since": mid.NextBatch})
	if !slices.Contains(eventIDs(after.Rooms.Join[roomID].Timeline.Events), audible) {
		t.Error("un-ignored user's message not delivered")
	}
	if _, there := syncWith(t, alice, nil).Rooms.Invite[bobRoom]; !there {
		t.Error("invite hidden after un-ignoring")
	}
}
