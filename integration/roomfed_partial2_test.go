package integration

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/roomfed"
	"edge/edge/store"
)

// What clients see of a room while its state is partial (MSC3902), as
// Synapse shows it: only lazy-loading syncs show the room, with the
// member events of the timeline's senders; typing and receipts of remote
// members arrive; aliases name the servers of the join; and eager syncs
// get the room, as newly joined, once the state is complete.

// rfLazySyncFilter is rfSyncFilter lazy-loading members.
const rfLazySyncFilter = `{"room":{"timeline":{"limit":1000},"state":{"lazy_load_members":true}}}`

// partialSyncResp is the part of a /sync answer these tests read.
type partialSyncResp struct {
	NextBatch   string `json:"next_batch"`
	DeviceLists struct {
		Changed []string `json:"changed"`
	} `json:"device_lists"`
	Rooms struct {
		Join map[string]struct {
			State     struct{ Events []*event.Event } `json:"state"`
			Timeline  struct{ Events []*event.Event } `json:"timeline"`
			Ephemeral struct{ Events []*event.Event } `json:"ephemeral"`
		} `json:"join"`
	} `json:"rooms"`
}

// partialSync runs one /sync with filter (JSON; "" for none).
func partialSync(t *testing.T, c *mautrix.Client, since, filter string, timeoutMS int) *partialSyncResp {
	t.Helper()
	q := map[string]string{"timeout": strconv.Itoa(timeoutMS)}
	if since != "" {
		q["since"] = since
	}
	if filter != "" {
		q["filter"] = filter
	}
	var resp partialSyncResp
	if _, err := c.MakeRequest(ctxT(t), "GET", c.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, q), nil, &resp); err != nil {
		t.Fatalf("%s syncs: %v", c.UserID, err)
	}
	return &resp
}

// memberKeysOf lists the state keys of the member events among evs.
func memberKeysOf(evs []*event.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type == event.StateMember && ev.StateKey != nil {
			out = append(out, *ev.StateKey)
		}
	}
	return out
}

// TestRoomFedPartialClientView: bob on B joins A's room with a faster
// join, the resync held back. Eager syncs (initial and incremental) leave
// the room out; lazy-loading ones show it, with the member event of a
// sender B's partial state lacks; that member's typing and read receipt
// reach bob; an alias bob makes for the room names A as well as B. When
// the resync completes, a waiting eager sync wakes with the room and its
// full membership.
func TestRoomFedPartialClientView(t *testing.T) {
	roomfed.PartialResyncDelay = 6 * time.Second
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	_, roomID, users := partialRoom(t, func(name string) *mautrix.Client { return a.register(t, name) }, 3)
	bob := b.register(t, "bob")
	eagerSince := partialSync(t, bob, "", "", 0).NextBatch

	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's room is not partial after the join")
	}
	rid := roomID.String()
	if _, ok := partialSync(t, bob, "", "", 0).Rooms.Join[rid]; ok {
		t.Error("an eager initial sync shows the partial-state room")
	}
	if _, ok := partialSync(t, bob, eagerSince, "", 0).Rooms.Join[rid]; ok {
		t.Error("an eager incremental sync shows the partial-state room")
	}
	lazy := partialSync(t, bob, "", rfLazySyncFilter, 0)
	if _, ok := lazy.Rooms.Join[rid]; !ok {
		t.Fatal("a lazy-loading initial sync does not show the partial-state room")
	}
	lazySince := lazy.NextBatch

	// member01, whom B's partial state lacks, speaks: lazy syncs carry
	// their member event (taken from the message's auth events).
	speaker := users[1]
	msg, err := speaker.SendText(ctxT(t), roomID, "from a member B does not know")
	if err != nil {
		t.Fatal(err)
	}
	var incrMembers []string
	waitFor(t, 15*time.Second, "the message on B (lazy incremental sync)", func() bool {
		r := partialSync(t, bob, lazySince, rfLazySyncFilter, 500)
		lazySince = r.NextBatch
		jr, ok := r.Rooms.Join[rid]
		if !ok {
			return false
		}
		incrMembers = append(incrMembers, memberKeysOf(jr.State.Events)...)
		return slices.ContainsFunc(jr.Timeline.Events, func(ev *event.Event) bool { return ev.ID == msg.EventID })
	})
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("the resync finished before the partial-state checks")
	}
	if !slices.Contains(incrMembers, speaker.UserID.String()) {
		t.Errorf("lazy incremental sync: state members %v lack the sender %s", incrMembers, speaker.UserID)
	}
	initial := partialSync(t, bob, "", rfLazySyncFilter, 0).Rooms.Join[rid]
	if got := memberKeysOf(initial.State.Events); !slices.Contains(got, speaker.UserID.String()) {
		t.Errorf("lazy initial sync: state members %v lack the sender %s", got, speaker.UserID)
	}

	// Typing and a read receipt from that member reach bob.
	if _, err := speaker.UserTyping(ctxT(t), roomID, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := speaker.SendReceipt(ctxT(t), roomID, msg.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	var typing, receipt bool
	waitFor(t, 15*time.Second, "the member's typing and receipt on B", func() bool {
		r := partialSync(t, bob, lazySince, rfLazySyncFilter, 500)
		lazySince = r.NextBatch
		for _, ev := range r.Rooms.Join[rid].Ephemeral.Events {
			var c map[string]any
			_ = json.Unmarshal(ev.Content.VeryRaw, &c)
			switch ev.Type {
			case event.EphemeralEventTyping:
				if ids, _ := c["user_ids"].([]any); slices.Contains(ids, any(speaker.UserID.String())) {
					typing = true
				}
			case event.EphemeralEventReceipt:
				if _, ok := c[msg.EventID.String()]; ok {
					receipt = true
				}
			}
		}
		return typing && receipt
	})
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("the resync finished before the EDU checks")
	}

	// An alias of B for the room names A too: B's state lacks A's members.
	alias := id.RoomAlias("#partial-" + string(bob.UserID.Localpart()) + ":" + b.Name)
	if _, err := bob.CreateAlias(ctxT(t), alias, roomID); err != nil {
		t.Fatalf("bob creates an alias: %v", err)
	}
	var ans struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	if _, err := bob.MakeRequest(ctxT(t), "GET", bob.BuildClientURL("v3", "directory", "room", alias.String()), nil, &ans); err != nil {
		t.Fatal(err)
	}
	if ans.RoomID != rid || !slices.Contains(ans.Servers, a.Name) || !slices.Contains(ans.Servers, b.Name) {
		t.Errorf("alias answer %+v: want room %s and servers %s and %s", ans, rid, b.Name, a.Name)
	}

	// A long-polling eager sync wakes when the state is complete, with
	// the room and all its members.
	eager := partialSync(t, bob, eagerSince, "", 0)
	if _, ok := eager.Rooms.Join[rid]; ok || !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("an eager sync shows the partial-state room (or the resync ended early)")
	}
	start := time.Now()
	done := partialSync(t, bob, eager.NextBatch, "", 20000)
	jr, ok := done.Rooms.Join[rid]
	if !ok {
		t.Fatalf("the eager long poll returned after %s without the room", time.Since(start))
	}
	if roomIsPartial(t, b.Store, roomID) {
		t.Fatal("the eager long poll returned the room while still partial")
	}
	// Members before the timeline are in state; bob's join may be in the
	// timeline.
	got := append(memberKeysOf(jr.State.Events), memberKeysOf(jr.Timeline.Events)...)
	for _, u := range append(slices.Clone(users), bob) {
		if !slices.Contains(got, u.UserID.String()) {
			t.Errorf("the room's first eager sync lacks %s's member event (has %v)", u.UserID, got)
		}
	}
	// Once shown, the room is not shown again as new.
	if jr, ok := partialSync(t, bob, done.NextBatch, "", 0).Rooms.Join[rid]; ok && len(jr.State.Events) > 0 {
		t.Errorf("the next eager sync repeats the room's state (%d events)", len(jr.State.Events))
	}
}

// TestRoomFedPulledEventGap: B sends A the last of 30 events A never saw.
// get_missing_events brings the 20 before it, the oldest of which cites a
// prev event A lacks: A takes the state at that one (/state_ids, as
// Synapse does for pulled events) and applies the 20 to its timeline,
// rather than refusing them and keeping only the last's prev as an
// outlier (Complement's MSC3902 "half missing grandparents"). That one is
// a state event of a type new to A, whose key A creates then ("Resync
// completes even when events arrive before their prev events").
func TestRoomFedPulledEventGap(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "12")
	rfPromote(t, alice, bob, roomID, 50)
	hook := b.Rooms.InTx
	b.Rooms.InTx = nil // B stores without queueing to A
	const gap = 30
	var raws []json.RawMessage
	var ids []string
	err := b.Store.Write(func(tx *store.Tx) error {
		raws, ids = raws[:0], ids[:0]
		// State A never hears of, more than one /event each is worth:
		// A takes the gap's state with /state.
		for i := range 60 {
			key := "state_" + strconv.Itoa(i)
			content, _ := json.Marshal(map[string]string{"body": key})
			if _, err := b.Rooms.Send(tx, roomID.String(), room.Proto{Type: "org.example.unseen", StateKey: &key, Sender: bob.c.UserID.String(), Content: content}); err != nil {
				return err
			}
		}
		for i := range gap {
			content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": "unseen " + strconv.Itoa(i)})
			p := room.Proto{Type: "m.room.message", Sender: bob.c.UserID.String(), Content: content}
			if i == gap-22 {
				// The event A fetches with its state: a state event of a
				// type A's store has never seen.
				key := "gap"
				p.Type, p.StateKey = "org.example.gap", &key
			}
			ev, err := b.Rooms.Send(tx, roomID.String(), p)
			if err != nil {
				return err
			}
			raws, ids = append(raws, ev.Raw), append(ids, ev.ID)
		}
		return nil
	})
	b.Rooms.InTx = hook
	if err != nil {
		t.Fatal(err)
	}
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	if verdict := h.send(raws[gap-1], ids[gap-1]); verdict != "" {
		t.Fatalf("the event after the gap: %q", verdict)
	}
	for i := gap - 21; i < gap; i++ {
		if flags, ok := rfStoredFlags(a, ids[i]); !ok || flags&(store.FlagRejected|store.FlagSoftFailed|store.FlagOutlier) != 0 {
			t.Errorf("event %d of %d: stored %v, flags %v; want it in A's timeline", i, gap, ok, flags)
		}
	}
	alice.until(t, "the pulled events", func(evs []*event.Event) bool {
		return slices.Contains(rfBodies(evs, roomID), "unseen "+strconv.Itoa(gap-15))
	})
}

// TestRoomFedPartialStateRecheck: derek (on C) joins A's room, is made a
// moderator, sets the topic and leaves. bob on B then joins with partial
// state: B knows derek's join (the topic's auth chain) but not his leave.
// A state event forged as derek, citing his join, is accepted by B during
// the partial window; once the resync brings derek's leave, B checks the
// events since its join again and rejects it (Complement's MSC3902 "State
// accepted incorrectly"). Likewise derek's kick of carol is rejected, and
// carol's message after it, rejected while partial, accepted ("State
// rejected incorrectly").
func TestRoomFedPartialStateRecheck(t *testing.T) {
	mr := newRFModRoom(t, "recheck")
	a, b, c, derek, carol, roomID := mr.a, mr.b, mr.c, mr.derek, mr.carol, mr.roomID
	derekID, carolID := derek.c.UserID.String(), carol.c.UserID.String()
	// Templates of derek's while he is joined (their auth events cite his
	// join): a state event, and a kick of carol; and a message of carol's.
	var version string
	var tmpl, kickTmpl, carolTmpl json.RawMessage
	carolKey := carolID
	leave, _ := json.Marshal(map[string]string{"membership": "leave"})
	if err := c.Store.View(func(tx *store.Tx) error {
		var err error
		if version, tmpl, err = c.Rooms.Template(tx, roomID.String(), hostileMessage(derekID, "x")); err != nil {
			return err
		}
		if _, kickTmpl, err = c.Rooms.Template(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &carolKey, Sender: derekID, Content: leave}); err != nil {
			return err
		}
		_, carolTmpl, err = c.Rooms.Template(tx, roomID.String(), hostileMessage(carolID, "carol while partial"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := derek.c.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("derek leaves: %v", err)
	}
	waitFor(t, 10*time.Second, "derek's leave on A", func() bool {
		ev, _ := rfStateEvent(t, a, roomID, "m.room.member", derekID)
		return ev != nil && ev.Membership() == "leave"
	})

	bob := b.register(t, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B's room is not partial after the join")
	}
	bobJoin, _ := rfStateEvent(t, b, roomID, "m.room.member", bob.UserID.String())
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(string(tmpl)))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	m["type"], m["state_key"], m["content"] = "m.room.test", "", map[string]string{"body": "bad state"}
	m["prev_events"], m["depth"] = []string{bobJoin.ID}, bobJoin.Depth+1
	raw, _ := json.Marshal(m)
	pdu, badID, err := c.Rooms.SignPDU(version, raw)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostile{t: t, a: b, b: c, roomID: roomID}
	if verdict := h.send(pdu, badID); verdict != "" {
		t.Fatalf("B refused the forged state event while partial: %q", verdict)
	}
	if flags, ok := rfStoredFlags(b, badID); !ok || flags&store.FlagRejected != 0 || !roomIsPartial(t, b.Store, roomID) {
		t.Fatalf("while partial, B holds the forged event: %v, flags %v; want it accepted", ok, flags)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.test", ""); ev == nil || ev.ID != badID {
		t.Fatal("the forged event is not in B's state while partial")
	}
	// derek kicks carol (accepted while partial), then carol speaks after
	// the kick: rejected while partial, accepted once the kick is not.
	forge := func(tmpl json.RawMessage, prev string, depth int64) (json.RawMessage, string) {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(string(tmpl)))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		m["prev_events"], m["depth"] = []string{prev}, depth
		raw, _ := json.Marshal(m)
		pdu, evID, err := c.Rooms.SignPDU(version, raw)
		if err != nil {
			t.Fatal(err)
		}
		return pdu, evID
	}
	kick, kickID := forge(kickTmpl, badID, bobJoin.Depth+2)
	said, saidID := forge(carolTmpl, kickID, bobJoin.Depth+3)
	// derek's message after carol's cites it (accepted while partial).
	next, nextID := forge(tmpl, saidID, bobJoin.Depth+4)
	for _, p := range []struct {
		pdu json.RawMessage
		id  string
	}{{kick, kickID}, {said, saidID}, {next, nextID}} {
		if verdict := h.send(p.pdu, p.id); verdict != "" {
			t.Fatalf("B answered %s with %q", p.id, verdict)
		}
	}
	if flags, ok := rfStoredFlags(b, kickID); !ok || flags&store.FlagRejected != 0 {
		t.Fatalf("while partial, derek's kick: stored %v, flags %v; want accepted", ok, flags)
	}
	if flags, ok := rfStoredFlags(b, saidID); !ok || flags&store.FlagRejected == 0 || !roomIsPartial(t, b.Store, roomID) {
		t.Fatalf("while partial, carol's message after the kick: stored %v, flags %v; want rejected", ok, flags)
	}

	waitFor(t, 30*time.Second, "B's full state", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	if flags, _ := rfStoredFlags(b, badID); flags&store.FlagRejected == 0 {
		t.Errorf("after the resync the forged event has flags %v; want rejected", flags)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.test", ""); ev != nil {
		t.Errorf("after the resync B's state still holds %s", ev.ID)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", derekID); ev == nil || ev.Membership() != "leave" {
		t.Errorf("after the resync B's state has derek as %v; want leave", ev)
	}
	if flags, _ := rfStoredFlags(b, kickID); flags&store.FlagRejected == 0 {
		t.Errorf("after the resync derek's kick has flags %v; want rejected", flags)
	}
	if flags, _ := rfStoredFlags(b, saidID); flags&store.FlagRejected != 0 {
		t.Errorf("after the resync carol's message has flags %v; want accepted", flags)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", carolID); ev == nil || ev.Membership() != "join" {
		t.Errorf("after the resync B's state has carol as %v; want join", ev)
	}
	var out map[string]any
	_, err = bob.MakeRequest(ctxT(t), "GET", bob.BuildClientURL("v3", "rooms", roomID, "event", badID), nil, &out)
	if re, ok := err.(mautrix.HTTPError); !ok || re.Response == nil || re.Response.StatusCode != 404 {
		t.Errorf("bob reads the rejected event: %v, want 404", err)
	}
}

// TestRoomFedPartialMissedDeviceLists: bob on B joins a room of A that
// carol on C is in, with partial state, and B takes A for the only server
// in the room (as when the resident's servers_in_room is short). bob
// renames his device meanwhile: C misses the update. Once B's resync shows
// C in the room, B sends C the missed update, and carol's sync lists bob.
func TestRoomFedPartialMissedDeviceLists(t *testing.T) {
	_, b, c, _, carol, bob, roomID := rfPartialCHidden(t, 6*time.Second)
	// carol's sync past bob's join (which lists bob once).
	since := ""
	waitFor(t, 10*time.Second, "bob's join on C", func() bool {
		r := partialSync(t, carol, since, "", 500)
		since = r.NextBatch
		ev, _ := rfStateEvent(t, c, roomID, "m.room.member", bob.UserID.String())
		return ev != nil && ev.Membership() == "join"
	})
	partialSync(t, carol, since, "", 0)
	since = partialSync(t, carol, since, "", 0).NextBatch

	body := map[string]string{"display_name": "bob's renamed device"}
	if _, err := bob.MakeRequest(ctxT(t), "PUT", bob.BuildClientURL("v3", "devices", bob.DeviceID), body, nil); err != nil {
		t.Fatalf("bob renames his device: %v", err)
	}
	r := partialSync(t, carol, since, "", 1500)
	if slices.Contains(r.DeviceLists.Changed, bob.UserID.String()) || !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("C heard of bob's device change while B took A for the only server (or the resync ended early)")
	}
	since = r.NextBatch
	waitFor(t, 30*time.Second, "B's full state", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	waitFor(t, 15*time.Second, "bob in carol's device_lists.changed after the resync", func() bool {
		r := partialSync(t, carol, since, "", 500)
		since = r.NextBatch
		return slices.Contains(r.DeviceLists.Changed, bob.UserID.String())
	})
}

// TestRoomFedPartialPulledGap: TestRoomFedPulledEventGap in a room B
// joined with partial state: the gap's state, fetched with /state, holds
// members B's partial state lacks; and B already holds the event at the
// gap, as an outlier without a state: it gets the fetched state rather
// than making the events after it fail auth on an empty state
// (Complement's MSC3902 "Resync completes even when events arrive before
// their prev events").
func TestRoomFedPartialPulledGap(t *testing.T) {
	roomfed.PartialResyncDelay = 6 * time.Second
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice, roomID, _ := partialRoom(t, func(name string) *mautrix.Client { return a.register(t, name) }, 3)
	bob := b.register(t, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	hook := a.Rooms.InTx
	a.Rooms.InTx = nil // A stores without queueing to B
	const gap = 30
	var raws []json.RawMessage
	var ids []string
	err := a.Store.Write(func(tx *store.Tx) error {
		raws, ids = raws[:0], ids[:0]
		for i := range 60 {
			key := "state_" + strconv.Itoa(i)
			content, _ := json.Marshal(map[string]string{"body": key})
			if _, err := a.Rooms.Send(tx, roomID.String(), room.Proto{Type: "org.example.unseen", StateKey: &key, Sender: alice.c.UserID.String(), Content: content}); err != nil {
				return err
			}
		}
		for i := range gap {
			content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": "unseen " + strconv.Itoa(i)})
			ev, err := a.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.message", Sender: alice.c.UserID.String(), Content: content})
			if err != nil {
				return err
			}
			raws, ids = append(raws, ev.Raw), append(ids, ev.ID)
		}
		return nil
	})
	a.Rooms.InTx = hook
	if err != nil {
		t.Fatal(err)
	}
	// B holds the event before the pulled ones as an outlier without a
	// state, as if it came as one of the state events of a /state answer
	// (a server answering with the state after the event).
	if err := b.Store.Write(func(tx *store.Tx) error {
		r, err := tx.Room(roomID.String())
		if err != nil {
			return err
		}
		return tx.PutEvent(&store.Event{EventID: ids[gap-22], RoomNID: r.NID, Flags: store.FlagOutlier, JSON: raws[gap-22]})
	}); err != nil {
		t.Fatal(err)
	}
	h := &hostile{t: t, a: b, b: a, roomID: roomID}
	if verdict := h.send(raws[gap-1], ids[gap-1]); verdict != "" {
		t.Fatalf("the event after the gap: %q", verdict)
	}
	if !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("the resync ended early")
	}
	for i := gap - 21; i < gap; i++ {
		if flags, ok := rfStoredFlags(b, ids[i]); !ok || flags&(store.FlagRejected|store.FlagSoftFailed|store.FlagOutlier) != 0 {
			t.Errorf("event %d of %d: stored %v, flags %v; want it in B's timeline", i, gap, ok, flags)
		}
	}
}

// TestRoomFedPartialDeviceListsForgotten: derek (on C) sets the topic and
// is banned from A's room; bob on B joins with partial state, and a join
// of derek's after bob's is accepted (B does not know of the ban yet), so
// B tracks derek's device list once bob asks for his keys. The resync
// rejects the join: B stops tracking derek at once, not at its next
// periodic sweep (Complement's MSC3902 device-list tracking of a user
// "incorrectly believed to be in room").
func TestRoomFedPartialDeviceListsForgotten(t *testing.T) {
	roomfed.PartialResyncDelay = 5 * time.Second
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	a, b, c := startRFNode(t, ca), startRFNode(t, ca), startRFNode(t, ca)
	alice := &rfSyncer{c: a.register(t, "alice")}
	roomID := mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "tracking", RoomVersion: "12"})
	derek := &rfSyncer{c: c.register(t, "derek")}
	derekID := derek.c.UserID.String()
	if _, err := derek.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("derek joins: %v", err)
	}
	rfPromote(t, alice, derek, roomID, 50)
	if _, err := derek.c.SendStateEvent(ctxT(t), roomID, event.StateTopic, "", map[string]string{"topic": "derek's topic"}); err != nil {
		t.Fatalf("derek sets the topic: %v", err)
	}
	waitFor(t, 10*time.Second, "derek's topic on A", func() bool {
		ev, _ := rfStateEvent(t, a, roomID, "m.room.topic", "")
		return ev != nil && ev.Sender == derekID
	})
	key := derekID
	join, _ := json.Marshal(map[string]string{"membership": "join"})
	var version string
	var tmpl json.RawMessage
	if err := c.Store.View(func(tx *store.Tx) error {
		var err error
		version, tmpl, err = c.Rooms.Template(tx, roomID.String(), room.Proto{Type: "m.room.member", StateKey: &key, Sender: derekID, Content: join})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.BanUser(ctxT(t), roomID, &mautrix.ReqBanUser{UserID: derek.c.UserID}); err != nil {
		t.Fatalf("alice bans derek: %v", err)
	}
	bob := b.register(t, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	bobJoin, _ := rfStateEvent(t, b, roomID, "m.room.member", bob.UserID.String())
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(string(tmpl)))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	m["prev_events"], m["depth"] = []string{bobJoin.ID}, bobJoin.Depth+1
	raw, _ := json.Marshal(m)
	pdu, joinID, err := c.Rooms.SignPDU(version, raw)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostile{t: t, a: b, b: c, roomID: roomID}
	if verdict := h.send(pdu, joinID); verdict != "" {
		t.Fatalf("B answered derek's join with %q", verdict)
	}
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", derekID); ev == nil || ev.ID != joinID || !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("while partial, B does not take derek for joined")
	}
	tracked := func() bool {
		var ok bool
		_ = b.Store.View(func(tx *store.Tx) error {
			_, err := tx.GetKV("keysfed_devlists", derekID)
			ok = err == nil
			return nil
		})
		return ok
	}
	if _, err := bob.QueryKeys(ctxT(t), &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{derek.c.UserID: {}}}); err != nil {
		t.Fatalf("bob queries derek's keys: %v", err)
	}
	if !tracked() || !roomIsPartial(t, b.Store, roomID) {
		t.Fatal("B does not track derek's device list while it takes him for joined (or the resync ended early)")
	}
	waitFor(t, 30*time.Second, "B's full state", func() bool { return !roomIsPartial(t, b.Store, roomID) })
	if ev, _ := rfStateEvent(t, b, roomID, "m.room.member", derekID); ev == nil || ev.Membership() != "ban" {
		t.Fatalf("after the resync B has derek as %v; want banned", ev)
	}
	waitFor(t, 10*time.Second, "B to stop tracking derek", func() bool { return !tracked() })
}

// rfModRoom is A's v12 room as two partial-state tests need it: derek (on
// C, power 75) has set the topic and carol (on C, power 50) has named the
// room, so both joins are in the auth chain a partial-state joiner gets;
// B is a server of its own to join from. Resyncs wait 5 s, a window for
// the test to act while the room is partial.
type rfModRoom struct {
	a, b, c             *rfNode
	alice, derek, carol *rfSyncer
	roomID              id.RoomID
}

func newRFModRoom(t *testing.T, name string) *rfModRoom {
	t.Helper()
	roomfed.PartialResyncDelay = 5 * time.Second
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	m := &rfModRoom{a: startRFNode(t, ca), b: startRFNode(t, ca), c: startRFNode(t, ca)}
	m.alice = &rfSyncer{c: m.a.register(t, "alice")}
	m.roomID = mustCreateRoom(t, m.alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: name, RoomVersion: "12"})
	for _, u := range []struct {
		who   **rfSyncer
		name  string
		power int
		state event.Type
		body  map[string]string
	}{
		{&m.derek, "derek", 75, event.StateTopic, map[string]string{"topic": "derek's topic"}},
		{&m.carol, "carol", 50, event.StateRoomName, map[string]string{"name": "carol's name"}},
	} {
		*u.who = &rfSyncer{c: m.c.register(t, u.name)}
		if _, err := (*u.who).c.JoinRoom(ctxT(t), m.roomID.String(), &mautrix.ReqJoinRoom{Via: []string{m.a.Name}}); err != nil {
			t.Fatalf("%s joins: %v", u.name, err)
		}
		rfPromote(t, m.alice, *u.who, m.roomID, u.power)
		if _, err := (*u.who).c.SendStateEvent(ctxT(t), m.roomID, u.state, "", u.body); err != nil {
			t.Fatalf("%s sets %s: %v", u.name, u.state.Type, err)
		}
	}
	return m
}

// rfPartialCHidden: carol on C is in A's v12 room; bob on B joins it with
// partial state, and B is made to take A for the only server in the room
// (as when the resident's servers_in_room is short), so C misses what B
// sends until the resync, which waits delay.
func rfPartialCHidden(t *testing.T, delay time.Duration) (a, b, c *rfNode, alice, carol, bob *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	roomfed.PartialResyncDelay = delay
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	ca := newRFCA(t)
	a, b, c = startRFNode(t, ca), startRFNode(t, ca), startRFNode(t, ca)
	alice = a.register(t, "alice")
	roomID = mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "devices", RoomVersion: "12"})
	carol = c.register(t, "carol")
	if _, err := carol.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("carol joins: %v", err)
	}
	bob = b.register(t, "bob")
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	if err := b.Store.Write(func(tx *store.Tx) error {
		ps, err := tx.PartialState(roomID.String())
		if err != nil {
			return err
		}
		ps.Servers = []string{a.Name}
		tx.SetPartialState(ps)
		return nil
	}); err != nil {
		t.Fatalf("B's room is not partial after the join: %v", err)
	}
	return a, b, c, alice, carol, bob, roomID
}
