package integration

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/store"
)

// The hostile-peer suite: server B, a real edge node, is turned into an
// attacker that signs whatever the test asks (its own key, so signatures
// are valid) and sends it to A over /send. Each attack must end rejected
// or soft-failed as the spec says, with A's room state unharmed.

// hostile forges events as server b and sends them to a.
type hostile struct {
	t      *testing.T
	a, b   *rfNode
	roomID id.RoomID
	n      int
}

// forge builds p on B's current state (p must pass B's auth rules: use a
// message and rewrite its type for events B would refuse), lets mutate
// rewrite any field of the unsigned PDU (type, prev_events, auth_events,
// depth, content …), then hashes and signs it with B's key. Nothing is
// stored on B.
func (h *hostile) forge(p room.Proto, mutate func(m map[string]any)) (json.RawMessage, string) {
	h.t.Helper()
	var version string
	var tmpl json.RawMessage
	err := h.b.Store.View(func(tx *store.Tx) error {
		var err error
		version, tmpl, err = h.b.Rooms.Template(tx, h.roomID.String(), p)
		return err
	})
	if err != nil {
		h.t.Fatalf("template for %s: %v", p.Type, err)
	}
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(string(tmpl)))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		h.t.Fatal(err)
	}
	if mutate != nil {
		mutate(m)
	}
	raw, _ := json.Marshal(m)
	signed, evID, err := h.b.Rooms.SignPDU(version, raw)
	if err != nil {
		h.t.Fatalf("signing a forged %s: %v", p.Type, err)
	}
	return signed, evID
}

// message is the Proto of a text message from sender.
func hostileMessage(sender, body string) room.Proto {
	content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	return room.Proto{Type: "m.room.message", Sender: sender, Content: content}
}

// send delivers one PDU to A in its own transaction and returns A's
// verdict on it ("" when accepted).
func (h *hostile) send(pdu json.RawMessage, evID string) string {
	h.t.Helper()
	verdict, ok := h.sendMaybe(pdu, evID)
	if !ok {
		h.t.Fatalf("A gave no result for %s", evID)
	}
	return verdict
}

// sendMaybe is send for PDUs A may drop without a verdict (one it cannot
// even parse has no event ID to answer for; Synapse drops those too).
func (h *hostile) sendMaybe(pdu json.RawMessage, evID string) (verdict string, answered bool) {
	h.t.Helper()
	h.n++
	var resp struct {
		PDUs map[string]struct {
			Error string `json:"error"`
		} `json:"pdus"`
	}
	body := map[string]any{"origin": h.b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{pdu}}
	txn := "hostile-" + h.roomID.String() + "-" + time.Now().Format("150405.000000000")
	if err := h.b.Fed.Client.Put(ctxT(h.t), h.a.Name, "/_matrix/federation/v1/send/"+url.PathEscape(txn), body, &resp); err != nil {
		h.t.Fatalf("send: %v", err)
	}
	r, ok := resp.PDUs[evID]
	return r.Error, ok
}

// stateOf returns A's current state event (type, key) as raw JSON content
// and event ID.
func rfStateEvent(t *testing.T, n *rfNode, roomID id.RoomID, evType, key string) (*room.Event, []string) {
	t.Helper()
	var ev *room.Event
	var extremities []string
	err := n.Store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID.String())
		if err != nil {
			return err
		}
		st, err := n.Rooms.State(tx, r.State)
		if err != nil {
			return err
		}
		if ev, err = n.Rooms.StateEvent(tx, st, evType, key); err != nil {
			return err
		}
		for _, nid := range r.Extremities {
			x, err := n.Rooms.Event(tx, nid)
			if err != nil {
				return err
			}
			extremities = append(extremities, x.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ev, extremities
}

// rfStoredFlags tells whether n stored eventID and with which flags.
func rfStoredFlags(n *rfNode, eventID string) (store.EventFlags, bool) {
	var flags store.EventFlags
	var ok bool
	_ = n.Store.View(func(tx *store.Tx) error {
		ev, err := n.Rooms.EventByID(tx, eventID)
		if err == nil {
			flags, ok = ev.Flags, true
		}
		return nil
	})
	return flags, ok
}

func TestRoomFedHostilePeer(t *testing.T) {
	for _, version := range []string{"10", "12"} {
		t.Run("v"+version, func(t *testing.T) { testHostilePeer(t, version) })
	}
}

func testHostilePeer(t *testing.T, version string) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, version)
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	ctx := ctxT(t)
	bobID := bob.c.UserID.String()
	plOnA := func() *room.Event {
		ev, _ := rfStateEvent(t, a, roomID, "m.room.power_levels", "")
		return ev
	}
	// setPL has alice change the power levels and waits until B has them.
	setPL := func(users map[string]any) string {
		var pl map[string]any
		if err := alice.c.StateEvent(ctx, roomID, event.StatePowerLevels, "", &pl); err != nil {
			t.Fatal(err)
		}
		if version != "12" {
			users[alice.c.UserID.String()] = 100 // v12 creators are not listed
		}
		pl["users"] = users
		events, _ := pl["events"].(map[string]any)
		if events == nil {
			events = map[string]any{}
		}
		events["m.room.power_levels"] = 50
		pl["events"] = events
		resp, err := alice.c.SendStateEvent(ctx, roomID, event.StatePowerLevels, "", pl)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "B applies the power levels", func() bool {
			ev, _ := rfStateEvent(t, b, roomID, "m.room.power_levels", "")
			return ev.ID == resp.EventID.String()
		})
		return resp.EventID.String()
	}
	// plWith is A's current power levels with users replaced.
	plWith := func(users map[string]any) map[string]any {
		var c map[string]any
		if err := json.Unmarshal(plOnA().Content, &c); err != nil {
			t.Fatal(err)
		}
		c["users"] = users
		return c
	}
	asPowerLevels := func(content map[string]any) func(m map[string]any) {
		return func(m map[string]any) {
			m["type"], m["state_key"], m["content"] = "m.room.power_levels", "", content
		}
	}

	// 1. An event that fails auth: bob, at power 0, makes himself 100.
	pl0 := plOnA()
	pdu, evID := h.forge(hostileMessage(bobID, "x"), asPowerLevels(map[string]any{"users": map[string]any{bobID: 100}}))
	// Processed, so answered without an error (as Synapse), and stored
	// as rejected.
	if verdict := h.send(pdu, evID); verdict != "" {
		t.Errorf("a power grab by a user without power: verdict %q, want none (stored rejected)", verdict)
	}
	if flags, ok := rfStoredFlags(a, evID); !ok || flags&store.FlagRejected == 0 {
		t.Errorf("the power grab is stored (%v) with flags %v, not as rejected", ok, flags)
	}
	if plOnA().ID != pl0.ID {
		t.Fatal("a rejected event changed the power levels")
	}

	// 2. Room v12's power-levels change that removes an entry from users:
	// mautrix-go v0.32.0's eventauth dereferences nil on it. Bob, now at
	// 50 (enough to change power levels), drops the ghost's entry: a legal
	// change A must take calmly.
	ghost := "@ghost:" + b.Name
	setPL(map[string]any{bobID: 50, ghost: 25})
	users := map[string]any{bobID: 50}
	if version != "12" {
		users[alice.c.UserID.String()] = 100
	}
	pdu, p1b := h.forge(hostileMessage(bobID, "x"), asPowerLevels(plWith(users)))
	if verdict := h.send(pdu, p1b); verdict != "" {
		t.Fatalf("bob's legal removal of a users entry was refused: %q", verdict)
	}
	if plOnA().ID != p1b {
		t.Fatal("bob's legal power-levels change is not A's current state")
	}

	// 3. The "Project Hydra" class: bob is demoted, then forges a power
	// levels event on a fork from before his demotion, restoring himself
	// and muting everyone. It passes auth against its auth_events and the
	// state before it, but not the current state: soft-failed, and the
	// current state keeps alice's demotion.
	demotion := setPL(map[string]any{bobID: 0})
	p1bEv, _ := rfStateEventByID(t, a, p1b)
	grab := plWith(users)
	grab["events_default"], grab["state_default"] = 50, 50
	pdu, hydra := h.forge(hostileMessage(bobID, "x"), func(m map[string]any) {
		asPowerLevels(grab)(m)
		m["prev_events"] = []string{p1b}
		m["depth"] = p1bEv.Depth + 1
		auth := []string{}
		for _, x := range m["auth_events"].([]any) {
			if x.(string) == demotion {
				auth = append(auth, p1b)
			} else {
				auth = append(auth, x.(string))
			}
		}
		m["auth_events"] = auth
	})
	if verdict := h.send(pdu, hydra); verdict != "" {
		t.Errorf("the backdated fork: verdict %q", verdict)
	}
	if flags, ok := rfStoredFlags(a, hydra); ok && flags&(store.FlagSoftFailed|store.FlagRejected) == 0 {
		t.Errorf("the backdated power grab is stored with flags %v, neither soft-failed nor rejected", flags)
	}
	if cur, ext := rfStateEvent(t, a, roomID, "m.room.power_levels", ""); cur.ID != demotion || slices.Contains(ext, hydra) {
		t.Fatalf("after the backdated fork A's power levels are %s (want the demotion %s), extremities %v", cur.ID, demotion, ext)
	}
	// Bob's server then merges its fork into the room: a message citing
	// both the hydra event and A's head. State resolution must keep the
	// demotion (alice's change and bob's are ordered by the auth DAG and
	// bob's fails the iterative auth check).
	_, headsA := rfStateEvent(t, a, roomID, "m.room.power_levels", "")
	pdu, merge := h.forge(hostileMessage(bobID, "merging my fork"), func(m map[string]any) {
		m["prev_events"] = append(append([]string{}, headsA...), hydra)
	})
	h.send(pdu, merge)
	if cur, _ := rfStateEvent(t, a, roomID, "m.room.power_levels", ""); cur.ID != demotion {
		t.Fatalf("merging the hydra fork changed A's power levels to %s (want the demotion %s)", cur.ID, demotion)
	}
	if _, err := alice.c.SendText(ctx, roomID, "alice still speaks"); err != nil {
		t.Fatalf("alice can no longer send after the attack: %v", err)
	}

	// 4. The largest depth canonical JSON allows: a valid event, after
	// which A's next event cannot go deeper; A caps it instead of failing
	// to sign every later event of the room (a denial of service).
	pdu, deep := h.forge(hostileMessage(bobID, "deep"), func(m map[string]any) { m["depth"] = int64(1)<<53 - 1 })
	if verdict := h.send(pdu, deep); verdict != "" {
		t.Fatalf("an event at the largest depth: %q", verdict)
	}
	if _, err := alice.c.SendText(ctx, roomID, "after the deepest event"); err != nil {
		t.Fatalf("alice cannot send after an event at the largest depth: %v", err)
	}

	// 5. A negative depth and an unknown prev_event: refused, not stored.
	for name, mutate := range map[string]func(m map[string]any){
		"negative depth": func(m map[string]any) { m["depth"] = -5 },
		"unknown prev":   func(m map[string]any) { m["prev_events"] = []string{"$nonexistent" + strings.Repeat("x", 32)} },
	} {
		pdu, evID := h.forge(hostileMessage(bobID, name), mutate)
		if verdict := h.send(pdu, evID); verdict == "" {
			t.Errorf("%s: accepted", name)
		}
		if _, ok := rfStoredFlags(a, evID); ok {
			t.Errorf("%s: stored", name)
		}
	}

	// 6. Over the size limit (the PDU, unsigned data included): refused.
	pdu, evID = h.forge(hostileMessage(bobID, "big"), nil)
	var m map[string]any
	_ = json.Unmarshal(pdu, &m)
	m["unsigned"] = map[string]any{"padding": strings.Repeat("p", 70_000)}
	pdu, _ = json.Marshal(m)
	if verdict, answered := h.sendMaybe(pdu, evID); answered && verdict == "" {
		t.Error("a 70 KB PDU was accepted")
	}
	if _, ok := rfStoredFlags(a, evID); ok {
		t.Error("a 70 KB PDU was stored")
	}

	// Through all of it A kept serving and its state is the demotion.
	if cur := plOnA(); cur.ID != demotion {
		t.Fatalf("A's power levels ended as %s, want %s", cur.ID, demotion)
	}
}

// rfStateEventByID loads an event n stored.
func rfStateEventByID(t *testing.T, n *rfNode, eventID string) (*room.Event, error) {
	t.Helper()
	var ev *room.Event
	err := n.Store.View(func(tx *store.Tx) error {
		var err error
		ev, err = n.Rooms.EventByID(tx, eventID)
		return err
	})
	if err != nil {
		t.Fatalf("%s lacks %s: %v", n.Name, eventID, err)
	}
	return ev, err
}

// TestRoomFedHostileGap: B sends A the last of 10,000 events A never saw.
// get_missing_events (20 at a time) cannot close such a gap; A takes the
// state at the missing prev event from B (/state_ids, /event) instead and
// accepts the event with a gap in its timeline, storing a handful of
// events rather than walking 10,000 back.
func TestRoomFedHostileGap(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "12")
	hook := b.Rooms.InTx
	b.Rooms.InTx = nil // B stores without queueing to A
	const gap = 10_000
	var last json.RawMessage
	var lastID string
	for done := 0; done < gap; done += 2000 {
		err := b.Store.Write(func(tx *store.Tx) error {
			for i := range 2000 {
				content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": fmt.Sprint("unseen ", done+i)})
				ev, err := b.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.message", Sender: bob.c.UserID.String(), Content: content})
				if err != nil {
					return err
				}
				last, lastID = ev.Raw, ev.ID
			}
			return nil
		})
		if err != nil {
			b.Rooms.InTx = hook
			t.Fatal(err)
		}
	}
	b.Rooms.InTx = hook

	stored := room.Stats.RemoteEvents.Load()
	h := &hostile{t: t, a: a, b: b, roomID: roomID}
	if verdict := h.send(last, lastID); verdict != "" {
		t.Fatalf("the event after a 10,000-event gap: %q", verdict)
	}
	if flags, ok := rfStoredFlags(a, lastID); !ok || flags&(store.FlagRejected|store.FlagSoftFailed|store.FlagOutlier) != 0 {
		t.Fatalf("A holds the event after the gap: %v, flags %v; want it in the timeline", ok, flags)
	}
	if n := room.Stats.RemoteEvents.Load() - stored; n > 50 {
		t.Errorf("A stored %d events to take one event after the gap", n)
	}
	alice.until(t, "the event after the gap", func(evs []*event.Event) bool {
		return slices.Contains(rfBodies(evs, roomID), fmt.Sprint("unseen ", gap-1))
	})
	// The room goes on: alice's next message reaches B.
	if _, err := alice.c.SendText(ctxT(t), roomID, "after the gap"); err != nil {
		t.Fatal(err)
	}
	bob.until(t, "alice's message after the gap", func(evs []*event.Event) bool {
		return slices.Contains(rfBodies(evs, roomID), "after the gap")
	})
}
