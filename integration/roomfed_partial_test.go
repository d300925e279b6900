package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
	"edge/edge/room"
	"edge/edge/roomfed"
	"edge/edge/store"
	"edge/federation"
)

// Faster joins (MSC3706/MSC3902): send_join with omit_members, the joining
// server's partial-state room and its background resync.

// partialRoom has alice create a named public room with a topic and
// members local users join it; it returns the room and the members.
func partialRoom(t *testing.T, reg func(name string) *mautrix.Client, members int) (alice *rfSyncer, roomID id.RoomID, users []*mautrix.Client) {
	t.Helper()
	alice = &rfSyncer{c: reg("alice")}
	roomID = mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "partial", Topic: "faster joins", RoomVersion: "12"})
	for i := range members {
		u := reg(fmt.Sprintf("member%02d", i))
		if _, err := u.JoinRoom(ctxT(t), roomID.String(), nil); err != nil {
			t.Fatalf("member %d joins: %v", i, err)
		}
		users = append(users, u)
	}
	return alice, roomID, users
}

// roomIsPartial reads a node's partial-state flag for a room.
func roomIsPartial(t *testing.T, st *store.Store, roomID id.RoomID) bool {
	t.Helper()
	var partial bool
	if err := st.View(func(tx *store.Tx) error {
		_, err := tx.PartialState(roomID.String())
		partial = err == nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return partial
}

// partialStateIDs is a room's current state as GET /rooms/{id}/state shows it:
// "type|state_key" → event ID.
func partialStateIDs(t *testing.T, c *mautrix.Client, roomID id.RoomID) map[string]id.EventID {
	t.Helper()
	st, err := c.State(ctxT(t), roomID)
	if err != nil {
		t.Fatalf("%s reads the state: %v", c.UserID, err)
	}
	out := map[string]id.EventID{}
	for typ, byKey := range st {
		for sk, ev := range byKey {
			out[typ.Type+"|"+sk] = ev.ID
		}
	}
	return out
}

func joinedIDs(t *testing.T, c *mautrix.Client, roomID id.RoomID) []string {
	t.Helper()
	resp, err := c.JoinedMembers(ctxT(t), roomID)
	if err != nil {
		t.Fatalf("%s reads joined members: %v", c.UserID, err)
	}
	var out []string
	for u := range resp.Joined {
		out = append(out, u.String())
	}
	slices.Sort(out)
	return out
}

// sendJoinAs joins userID (a user of b) to roomID on a by a hand-made
// make_join and send_join from b, with or without omit_members, and
// returns the raw answer.
func sendJoinAs(t *testing.T, a, b *rfNode, userID string, roomID id.RoomID, omit bool) (answer struct {
	State          []json.RawMessage `json:"state"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	MembersOmitted bool              `json:"members_omitted"`
	ServersInRoom  []string          `json:"servers_in_room"`
}, joinID string) {
	t.Helper()
	var mj struct {
		RoomVersion string                     `json:"room_version"`
		Event       map[string]json.RawMessage `json:"event"`
	}
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape(userID) + "?ver=12"
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &mj); err != nil {
		t.Fatalf("make_join: %v", err)
	}
	mj.Event["origin_server_ts"], _ = json.Marshal(time.Now().UnixMilli())
	raw, _ := json.Marshal(mj.Event)
	signed, eventID, err := b.Rooms.SignPDU(mj.RoomVersion, raw)
	if err != nil {
		t.Fatal(err)
	}
	path = "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape(eventID)
	if omit {
		path += "?omit_members=true"
	}
	if err := b.Fed.Client.Put(ctxT(t), a.Name, path, json.RawMessage(signed), &answer); err != nil {
		t.Fatalf("send_join: %v", err)
	}
	return answer, eventID
}

// partialMemberKeys lists the state keys of the member events among raws.
func partialMemberKeys(t *testing.T, raws []json.RawMessage) []string {
	t.Helper()
	var out []string
	for _, raw := range raws {
		ev, err := room.ParseEvent("12", raw, "")
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type == "m.room.member" {
			out = append(out, *ev.StateKey)
		}
	}
	return out
}

// TestRoomFedPartialSendJoin: A answers send_join with omit_members=true
// without the member events (the room has a name: no heroes) and with the
// servers in the room; without the flag the answer is the full state.
func TestRoomFedPartialSendJoin(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	_, roomID, users := partialRoom(t, func(name string) *mautrix.Client { return a.register(t, name) }, 8)

	light, _ := sendJoinAs(t, a, b, "@carol:"+b.Name, roomID, true)
	if !light.MembersOmitted {
		t.Fatal("members_omitted is false with omit_members=true")
	}
	if got := partialMemberKeys(t, light.State); len(got) != 0 {
		t.Fatalf("omit_members answer's state has member events %v", got)
	}
	if !slices.Contains(light.ServersInRoom, a.Name) || slices.Contains(light.ServersInRoom, b.Name) {
		t.Fatalf("servers_in_room %v: want A (%s) and not B", light.ServersInRoom, a.Name)
	}
	// The auth chain holds no event already in the state, and none of
	// the members' joins (they authorise no state event).
	inState := map[string]bool{}
	for _, raw := range light.State {
		ev, _ := room.ParseEvent("12", raw, "")
		inState[ev.ID] = true
	}
	for _, raw := range light.AuthChain {
		ev, _ := room.ParseEvent("12", raw, "")
		if inState[ev.ID] {
			t.Fatalf("auth_chain repeats state event %s", ev.ID)
		}
		if ev.Type == "m.room.member" && strings.HasPrefix(*ev.StateKey, "@member") {
			t.Fatalf("auth_chain has %s's member event", *ev.StateKey)
		}
	}
	types := map[string]bool{}
	for _, raw := range light.State {
		ev, _ := room.ParseEvent("12", raw, "")
		types[ev.Type] = true
	}
	for _, want := range []string{"m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.name", "m.room.topic"} {
		if !types[want] {
			t.Fatalf("omit_members answer lacks %s: %v", want, types)
		}
	}

	full, _ := sendJoinAs(t, a, b, "@dave:"+b.Name, roomID, false)
	if full.MembersOmitted {
		t.Fatal("members_omitted is true without omit_members")
	}
	got := partialMemberKeys(t, full.State)
	// alice, the members and carol, joined before dave.
	if len(got) != len(users)+2 || !slices.Contains(got, "@carol:"+b.Name) || !slices.Contains(got, users[3].UserID.String()) {
		t.Fatalf("full answer's members %v: want alice, %d members and carol", got, len(users))
	}
	if len(full.State) != len(light.State)+len(got) {
		t.Fatalf("full state %d events, light %d + %d members", len(full.State), len(light.State), len(got))
	}
}

// TestRoomFedPartialJoin: bob on B joins a room of A with 30 members. The
// join is a faster join: B has the room at once with a partial state, bob
// reads and sends messages (to and from a member B has never heard of)
// while the members are being fetched, B refuses to serve the room's
// state and joins meanwhile, and once the resync is done B's members and
// state are A's.
func TestRoomFedPartialJoin(t *testing.T) {
	roomfed.PartialResyncDelay = 5 * time.Second
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice, roomID, users := partialRoom(t, func(name string) *mautrix.Client { return a.register(t, name) }, 30)
	bob := &rfSyncer{c: b.register(t, "bob"), filter: rfLazySyncFilter}

	joins := roomfed.PartialStats.Joins.Load()
	start := time.Now()
	if _, err := bob.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if roomfed.PartialStats.Joins.Load() != joins+1 {
		t.Fatal("the join was not a members-omitted one")
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's room is not flagged partial right after the join")
	}
	// The gauge is process-wide: other tests' nodes may still be closing.
	during := roomfed.PartialStats.Rooms.Load()
	if during < 1 || !strings.Contains(roomfed.PartialMetrics(), fmt.Sprintf("edge_partial_state_rooms %d\n", during)) {
		t.Fatalf("metrics do not show the partial room:\n%s", roomfed.PartialMetrics())
	}
	resyncs := partialResyncCount(t)
	bob.until(t, "his own join", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == bob.c.UserID.String()
	}))
	if state, _ := rfRoomSnapshot(t, b, roomID); len(state) >= len(users) {
		t.Fatalf("B already holds %d state entries with partial state, for %d members", len(state), len(users))
	}

	// While partial: a member B has never seen speaks, bob answers.
	if _, err := users[7].SendText(ctxT(t), roomID, "from member07"); err != nil {
		t.Fatal(err)
	}
	bob.until(t, "member07's message", func(evs []*event.Event) bool { return slices.Contains(rfBodies(evs, roomID), "from member07") })
	if _, err := bob.c.SendText(ctxT(t), roomID, "bob while partial"); err != nil {
		t.Fatalf("bob sends while partial: %v", err)
	}
	alice.until(t, "bob's message", func(evs []*event.Event) bool { return slices.Contains(rfBodies(evs, roomID), "bob while partial") })
	if took := time.Since(start); !roomIsPartial(t, b.Store, roomID) {
		t.Fatalf("resync finished within %s, before the partial checks were done", took)
	}

	// B will not vouch for the room's state nor take joins meanwhile.
	c := startRFNode(t, ca)
	var re *federation.RemoteError
	path := "/_matrix/federation/v1/state_ids/" + url.PathEscape(roomID.String()) + "?event_id=x"
	if err := a.Fed.Client.Get(ctxT(t), b.Name, path, nil); !errors.As(err, &re) || re.Status != http.StatusForbidden ||
		re.Code != "ORG.MATRIX.MSC3895_UNABLE_DUE_TO_PARTIAL_STATE" {
		t.Fatalf("state_ids of a partial room: %v, want 403 MSC3895_UNABLE_DUE_TO_PARTIAL_STATE", err)
	}
	path = "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape("@carl:"+c.Name) + "?ver=12"
	if err := c.Fed.Client.Get(ctxT(t), b.Name, path, nil); !errors.As(err, &re) || re.Status != http.StatusNotFound {
		t.Fatalf("make_join of a partial room: %v, want 404", err)
	}
	path = "/_matrix/federation/v1/make_knock/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape("@carl:"+c.Name) + "?ver=12"
	if err := c.Fed.Client.Get(ctxT(t), b.Name, path, nil); !errors.As(err, &re) || re.Status != http.StatusNotFound {
		t.Fatalf("make_knock of a partial room: %v, want 404", err)
	}

	// /members and /joined_members wait for the full state (as in
	// Synapse) rather than answering with the members B happens to know.
	type membersAnswer struct {
		n       int
		partial bool
		err     error
	}
	early := make(chan membersAnswer, 2)
	go func() {
		resp, err := bob.c.Members(ctxT(t), roomID)
		a := membersAnswer{err: err, partial: roomIsPartial(t, b.Store, roomID)}
		if resp != nil {
			a.n = len(resp.Chunk)
		}
		early <- a
	}()
	go func() {
		resp, err := bob.c.JoinedMembers(ctxT(t), roomID)
		a := membersAnswer{err: err, partial: roomIsPartial(t, b.Store, roomID)}
		if resp != nil {
			a.n = len(resp.Joined)
		}
		early <- a
	}()

	// The resync completes the state: B's members and state are A's.
	waitFor(t, 30*time.Second, "B's full state", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	for range 2 {
		select {
		case a := <-early:
			if a.err != nil || a.partial || a.n != len(users)+2 {
				t.Fatalf("members asked while partial: %d, answered while still partial %v, %v; want all %d after the resync", a.n, a.partial, a.err, len(users)+2)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("members asked while partial never answered")
		}
	}
	if want, got := joinedIDs(t, alice.c, roomID), joinedIDs(t, bob.c, roomID); !slices.Equal(want, got) {
		t.Fatalf("joined members: A %d %v, B %d %v", len(want), want, len(got), got)
	}
	want, got := partialStateIDs(t, alice.c, roomID), partialStateIDs(t, bob.c, roomID)
	if len(want) < len(users)+5 || len(want) != len(got) {
		t.Fatalf("state: A %d entries, B %d", len(want), len(got))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("state %s: A %s, B %s", k, v, got[k])
		}
	}
	members, err := bob.c.Members(ctxT(t), roomID)
	if err != nil || len(members.Chunk) != len(users)+2 {
		t.Fatalf("B's /members after resync: %v, %d events, want %d", err, len(members.Chunk), len(users)+2)
	}
	waitFor(t, 5*time.Second, "the partial-room gauge to drop", func() bool { return roomfed.PartialStats.Rooms.Load() < during })
	if got := partialResyncCount(t); got != resyncs+1 {
		t.Fatalf("edge_partial_state_resync_seconds_count went %d → %d, want one more", resyncs, got)
	}

	// Messages both ways afterwards.
	if _, err := users[20].SendText(ctxT(t), roomID, "after resync from A"); err != nil {
		t.Fatal(err)
	}
	bob.until(t, "A's message", func(evs []*event.Event) bool { return slices.Contains(rfBodies(evs, roomID), "after resync from A") })
	if _, err := bob.c.SendText(ctxT(t), roomID, "after resync from B"); err != nil {
		t.Fatal(err)
	}
	alice.until(t, "B's message", func(evs []*event.Event) bool { return slices.Contains(rfBodies(evs, roomID), "after resync from B") })
}

// partialResyncCount reads the resync histogram's count from the metrics.
func partialResyncCount(t *testing.T) int {
	t.Helper()
	for _, line := range strings.Split(roomfed.PartialMetrics(), "\n") {
		if v, ok := strings.CutPrefix(line, "edge_partial_state_resync_seconds_count "); ok {
			var n int
			if _, err := fmt.Sscan(v, &n); err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no edge_partial_state_resync_seconds_count in the metrics")
	return 0
}

// fedRegister registers a user on a fedNode's client listener.
func fedRegister(t *testing.T, n *fedNode, name string) *mautrix.Client {
	t.Helper()
	return (&testNode{URL: "http://" + n.ClientAddr}).register(t, name)
}

// TestRoomFedPartialResume: B stops while its room is partial and A is
// down; started again, B resumes the resync, retries while A is away and
// completes the state once A is back.
func TestRoomFedPartialResume(t *testing.T) {
	roomfed.PartialResyncDelay = 1500 * time.Millisecond
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newFedCA(t)
	a, b := newFedNode(t, ca, fedOpts{}), newFedNode(t, ca, fedOpts{})
	alice, roomID, users := partialRoom(t, func(name string) *mautrix.Client { return fedRegister(t, a, name) }, 10)
	bob := fedRegister(t, b, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's room is not partial after the join")
	}
	a.stop()
	b.stop()

	failures := roomfed.PartialStats.Failures.Load()
	b.start(t)
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's partial flag did not survive the restart")
	}
	waitFor(t, 15*time.Second, "a failed resync attempt while A is down", func() bool {
		return roomfed.PartialStats.Failures.Load() > failures
	})
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's room lost its flag without A")
	}
	// The admin listener exposes the resync's metrics.
	resp, err := http.Get(b.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"edge_partial_state_rooms ", "edge_partial_state_resync_failures_total ", "edge_partial_state_resync_seconds_bucket"} {
		if !strings.Contains(string(body), name) {
			t.Fatalf("B's /metrics lacks %s", name)
		}
	}
	a.start(t)
	waitFor(t, 30*time.Second, "B's full state after A is back", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	if want, got := joinedIDs(t, alice.c, roomID), joinedIDs(t, bob, roomID); !slices.Equal(want, got) || len(got) != len(users)+2 {
		t.Fatalf("joined members: A %v, B %v", want, got)
	}
}

// BenchmarkPartialJoinFirstEvent: the time from a remote join's start to
// the joining user's first timeline event (his join, in /sync) in a room
// of 5000 members, and (reported as full-state-ms) until the resync has
// fetched them all. Each iteration joins from a fresh server.
func BenchmarkPartialJoinFirstEvent(b *testing.B) {
	const members = 5000
	ca := newRFCA(b)
	a := startRFNode(b, ca)
	alice := a.register(b, "alice")
	roomID := mustCreateRoom(b, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "big", RoomVersion: "12"})
	// Members written straight through the room service: registering
	// 5000 accounts would time the password hash, not the join.
	content, _ := json.Marshal(map[string]string{"membership": "join"})
	for i := 0; i < members; i += 500 {
		err := a.Store.Write(func(tx *store.Tx) error {
			for j := i; j < min(i+500, members); j++ {
				u := fmt.Sprintf("@m%05d:%s", j, a.Name)
				if _, err := a.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &u, Sender: u, Content: content}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	var full time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		n := startRFNode(b, ca)
		bob := n.register(b, "bob")
		b.StartTimer()
		start := time.Now()
		if _, err := bob.JoinRoom(ctxT(b), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			b.Fatalf("join: %v", err)
		}
		for seen := false; !seen; {
			resp, err := bob.SyncRequest(ctxT(b), 1000, "", "", false, "")
			if err != nil {
				b.Fatal(err)
			}
			seen = len(resp.Rooms.Join[roomID].Timeline.Events) > 0
		}
		b.StopTimer()
		waitFor(b, 2*time.Minute, "the full state", func() bool {
			var partial bool
			_ = n.Store.View(func(tx *store.Tx) error { _, err := tx.PartialState(roomID.String()); partial = err == nil; return nil })
			return !partial
		})
		full += time.Since(start)
		n.stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(full.Milliseconds())/float64(b.N), "full-state-ms")
}

// TestRoomFedFullJoinSwitch: with federation.faster_joins off, a join
// waits for the whole state: no partial-state flag, every member known as
// soon as the join returns.
func TestRoomFedFullJoinSwitch(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca)
	b := startRFNode(t, ca, func(c *config.Config) { c.Federation.FasterJoins = false })
	_, roomID, users := partialRoom(t, func(name string) *mautrix.Client { return a.register(t, name) }, 10)
	bob := b.register(t, "bob")
	joins := roomfed.PartialStats.Joins.Load()
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if roomfed.PartialStats.Joins.Load() != joins || roomIsPartial(t, b.Store, roomID) {
		t.Fatal("a join with faster_joins off was a partial-state one")
	}
	if got := joinedIDs(t, bob, roomID); len(got) != len(users)+2 {
		t.Fatalf("B knows %d joined members right after a full join, want %d", len(got), len(users)+2)
	}
}

// TestRoomFedSendJoinV1: the deprecated v1 send_join answers [200, {state,
// auth_chain}], and refuses with 400 an event that is not a join, as v2
// does.
func TestRoomFedSendJoinV1(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "12"})
	userID := "@v1joiner:" + b.Name
	var mj struct {
		RoomVersion string                     `json:"room_version"`
		Event       map[string]json.RawMessage `json:"event"`
	}
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape(userID) + "?ver=12"
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &mj); err != nil {
		t.Fatalf("make_join: %v", err)
	}
	sign := func(mutate func(map[string]json.RawMessage)) (json.RawMessage, string) {
		ev := maps.Clone(mj.Event)
		if mutate != nil {
			mutate(ev)
		}
		raw, _ := json.Marshal(ev)
		signed, eventID, err := b.Rooms.SignPDU(mj.RoomVersion, raw)
		if err != nil {
			t.Fatal(err)
		}
		return signed, eventID
	}
	// Not a join: a message through send_join.
	bad, badID := sign(func(ev map[string]json.RawMessage) {
		ev["type"], _ = json.Marshal("m.room.message")
		ev["content"], _ = json.Marshal(map[string]string{"msgtype": "m.text", "body": "sneaky"})
		delete(ev, "state_key")
	})
	var re *federation.RemoteError
	err := b.Fed.Client.Put(ctxT(t), a.Name, "/_matrix/federation/v1/send_join/"+url.PathEscape(roomID.String())+"/"+url.PathEscape(badID), bad, nil)
	if !errors.As(err, &re) || re.Status != http.StatusBadRequest {
		t.Fatalf("a message through v1 send_join: %v, want 400", err)
	}
	good, goodID := sign(nil)
	var answer []json.RawMessage
	if err := b.Fed.Client.Put(ctxT(t), a.Name, "/_matrix/federation/v1/send_join/"+url.PathEscape(roomID.String())+"/"+url.PathEscape(goodID), good, &answer); err != nil {
		t.Fatalf("v1 send_join: %v", err)
	}
	var body struct {
		State     []json.RawMessage `json:"state"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if len(answer) != 2 || string(answer[0]) != "200" || json.Unmarshal(answer[1], &body) != nil || len(body.State) == 0 {
		t.Fatalf("v1 send_join answered %s, want [200, {state, auth_chain}]", answer)
	}
}

// TestRoomFedPartialStreamedResync: bob on B faster-joins a room of A
// with 120 members, more than a resync fetches one by one: B reads A's
// /state answer as a stream, and completes its state from what that
// stored (streamState hands the state events' keys to completeState) and
// from the records of the partial state it already had. B's state and
// members are then A's.
func TestRoomFedPartialStreamedResync(t *testing.T) {
	ca := newRFCA(t)
	var stateAnswers atomic.Int32
	a := startRFNodeWrapped(t, ca, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/state/") {
				stateAnswers.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	b := startRFNode(t, ca)
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "streamed", Topic: "resync", RoomVersion: "12"})
	const members = 120
	fillState(t, a, roomID, members)
	bob := b.register(t, "bob")

	joins := roomfed.PartialStats.Joins.Load()
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if roomfed.PartialStats.Joins.Load() != joins+1 {
		t.Fatal("the join was not a members-omitted one")
	}
	waitFor(t, 60*time.Second, "B's full state", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	if stateAnswers.Load() == 0 {
		t.Fatal("the resync never asked A for /state: the streamed path was not taken")
	}
	if want, got := joinedIDs(t, alice, roomID), joinedIDs(t, bob, roomID); len(want) != members+2 || !slices.Equal(want, got) {
		t.Fatalf("joined members: A %d, B %d, want %d on both", len(want), len(got), members+2)
	}
	want, got := partialStateIDs(t, alice, roomID), partialStateIDs(t, bob, roomID)
	if len(want) < members+5 || len(want) != len(got) {
		t.Fatalf("state: A %d entries, B %d", len(want), len(got))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("state %s: A %s, B %s", k, v, got[k])
		}
	}
	// And the room works on from the completed state.
	if _, err := bob.SendText(ctxT(t), roomID, "after the streamed resync"); err != nil {
		t.Fatalf("bob sends after the resync: %v", err)
	}
}
