package room

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"encoding/json/jsontext"
	jsonv2 "encoding/json/v2"

	"maunium.net/go/mautrix/federation/eventauth"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

const (
	alice   = "@alice:example.com"
	bob     = "@bob:example.com"
	charlie = "@charlie:example.com"
	dan     = "@dan:example.com"
	zoe     = "@zoe:other.example"
	henry   = "@henry:example.com"
)

func sk(s string) *string { return &s }

// eventSeq numbers test events across rooms so their IDs never collide.
var eventSeq atomic.Int64

// testRoom builds rooms event by event, each citing the auth events the
// selection algorithm picks from the room's current state.
type testRoom struct {
	t       testing.TB
	version string
	rv      id.RoomVersion
	roomID  string
	events  map[string]*Event
	state   map[StateKeyPair]*Event
	last    string
	n       int
}

// newTestRoom makes the standard room: alice creates and joins, power
// levels {alice 100 (not listed in v12), bob 50}, join rule public, bob,
// charlie and zoe (another server) join.
func newTestRoom(t testing.TB, version string) *testRoom {
	r := newBareRoom(t, version, nil)
	users := map[string]any{bob: 50}
	if !r.rv.PrivilegedRoomCreators() {
		users[alice] = 100
	}
	r.send("m.room.power_levels", sk(""), alice, plContent(users))
	r.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "public"})
	for _, u := range []string{bob, charlie, zoe} {
		r.send("m.room.member", sk(u), u, map[string]any{"membership": "join"})
	}
	return r
}

func plContent(users map[string]any) map[string]any {
	return map[string]any{
		"users": users, "users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": 50,
		"events": map[string]any{"m.room.power_levels": 100, "m.room.history_visibility": 100},
	}
}

// newBareRoom has only the create event (with extra content) and alice's join.
func newBareRoom(t testing.TB, version string, createExtra map[string]any) *testRoom {
	r := &testRoom{t: t, version: version, rv: id.RoomVersion(version), events: map[string]*Event{}, state: map[StateKeyPair]*Event{}}
	content := map[string]any{"room_version": version}
	if r.rv.CreatorInContent() {
		content["creator"] = alice
	}
	for k, v := range createExtra {
		content[k] = v
	}
	if !r.rv.RoomIDIsCreateEventID() {
		r.roomID = "!room:example.com"
	}
	create := r.build("m.room.create", sk(""), alice, content, nil)
	if r.rv.RoomIDIsCreateEventID() {
		r.roomID = "!" + strings.TrimPrefix(create.ID, "$")
		create.RoomID = r.roomID
	}
	if err := authorizeEvent(create, r.lookup, nil); err != nil {
		t.Fatalf("create: %v", err)
	}
	r.apply(create)
	r.send("m.room.member", sk(alice), alice, map[string]any{"membership": "join"})
	return r
}

func (r *testRoom) lookup(eventID string) (*Event, error) {
	if ev, ok := r.events[eventID]; ok {
		return ev, nil
	}
	return nil, ErrEventNotFound
}

// build makes an event with a real PDU in Raw (so signatures can be checked
// and mautrix can read it), citing the given auth events.
func (r *testRoom) build(evType string, stateKey *string, sender string, content any, authEvents []string) *Event {
	r.t.Helper()
	r.n++
	raw, ok := content.(json.RawMessage)
	if !ok {
		var err error
		if raw, err = json.Marshal(content); err != nil {
			r.t.Fatal(err)
		}
	}
	w := map[string]any{
		"type": evType, "sender": sender, "content": raw, "origin_server_ts": 1000 + r.n, "depth": r.n,
		"prev_events": []string{}, "auth_events": authEvents,
	}
	if r.roomID != "" {
		w["room_id"] = r.roomID
	}
	if r.last != "" {
		w["prev_events"] = []string{r.last}
	}
	if stateKey != nil {
		w["state_key"] = *stateKey
	}
	eventID := fmt.Sprintf("$e%d:example.com", eventSeq.Add(1))
	if r.rv.EventIDFormat() == id.EventIDFormatCustom {
		w["event_id"] = eventID
	}
	if evType == "m.room.redaction" {
		if c, ok := content.(map[string]any); ok && c["redacts"] != nil {
			w["redacts"] = c["redacts"]
		}
	}
	pduJSON, err := json.Marshal(w)
	if err != nil {
		r.t.Fatal(err)
	}
	ev, err := ParseEvent(r.version, pduJSON, eventID)
	if err != nil {
		r.t.Fatal(err)
	}
	return ev
}

// cite is the auth events selection of the server-server spec, over the
// room's current state, plus extra state slots.
func (r *testRoom) cite(evType string, stateKey *string, sender string, content any, extra ...StateKeyPair) []string {
	keys := []StateKeyPair{{"m.room.power_levels", ""}, {"m.room.member", sender}}
	if !r.rv.RoomIDIsCreateEventID() {
		keys = append(keys, StateKeyPair{"m.room.create", ""})
	}
	if c, ok := content.(map[string]any); ok && evType == "m.room.member" && stateKey != nil {
		keys = append(keys, StateKeyPair{"m.room.member", *stateKey})
		switch c["membership"] {
		case "join", "invite", "knock":
			keys = append(keys, StateKeyPair{"m.room.join_rules", ""})
		}
	}
	keys = append(keys, extra...)
	var ids []string
	seen := map[string]bool{}
	for _, k := range keys {
		if ev := r.state[k]; ev != nil && !seen[ev.ID] {
			seen[ev.ID] = true
			ids = append(ids, ev.ID)
		}
	}
	return ids
}

// candidate is an event on top of the current state, not yet applied.
func (r *testRoom) candidate(evType string, stateKey *string, sender string, content any, extra ...StateKeyPair) *Event {
	return r.build(evType, stateKey, sender, content, r.cite(evType, stateKey, sender, content, extra...))
}

func (r *testRoom) try(evType string, stateKey *string, sender string, content any, extra ...StateKeyPair) error {
	return authorizeEvent(r.candidate(evType, stateKey, sender, content, extra...), r.lookup, nil)
}

func (r *testRoom) send(evType string, stateKey *string, sender string, content any, extra ...StateKeyPair) *Event {
	r.t.Helper()
	ev := r.candidate(evType, stateKey, sender, content, extra...)
	if err := authorizeEvent(ev, r.lookup, nil); err != nil {
		r.t.Fatalf("%s from %s: %v", evType, sender, err)
	}
	r.apply(ev)
	return ev
}

func (r *testRoom) apply(ev *Event) {
	r.events[ev.ID] = ev
	r.last = ev.ID
	if ev.StateKey != nil {
		r.state[StateKeyPair{ev.Type, *ev.StateKey}] = ev
	}
}

// wantRule asserts a rejection by exactly the given rule.
func wantRule(t *testing.T, err error, ruleIndex string) {
	t.Helper()
	var ae *AuthError
	if !errors.As(err, &ae) || !errors.Is(err, ErrForbidden) {
		t.Fatalf("got %v, want a rejection by rule %s", err, ruleIndex)
	}
	if ae.Rule != ruleIndex {
		t.Fatalf("rejected by rule %s (%s), want rule %s", ae.Rule, ae.Msg, ruleIndex)
	}
}

func wantAllow(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("rejected: %v", err)
	}
}

// TestAuthRuleNumbers replays the shared vectors and checks that each
// rejection names the rule the vector names (numbered per room version).
func TestAuthRuleNumbers(t *testing.T) {
	checked := 0
	forEachAuthVector(t, func(v authVector) {
		err := authorizeEvent(v.Event, v.Lookup, v.GetKey)
		if (err == nil) != (v.Expected == "allow") {
			t.Errorf("%s/%s: got %v, want %s", v.File, v.ID, err, v.Expected)
			return
		}
		if err == nil {
			return
		}
		var ae *AuthError
		if !errors.As(err, &ae) {
			t.Errorf("%s/%s: %v is not an AuthError", v.File, v.ID, err)
			return
		}
		// "room v10 auth rule 9.1 / 2" names either of two rules; "4.2"
		// names the rule whose only sub-rule 4.2.1 rejects.
		want := v.Rule[strings.LastIndex(v.Rule, "rule ")+len("rule "):]
		ok := false
		for _, alt := range strings.Split(want, " / ") {
			if !strings.Contains(alt, ".") && strings.Contains(want, ".") {
				alt = want[:strings.LastIndex(want[:strings.Index(want, " ")], ".")+1] + alt
			}
			ok = ok || ae.Rule == alt || strings.HasPrefix(ae.Rule, alt+".")
		}
		if !ok {
			t.Errorf("%s/%s: rejected by rule %s (%s), vector says %s", v.File, v.ID, ae.Rule, ae.Msg, v.Rule)
		}
		checked++
	})
	if checked < 200 {
		t.Fatalf("only %d rejections checked", checked)
	}
}

// TestAuthMalformedContent: wrong JSON types follow the rules instead of
// crashing or being read leniently.
func TestAuthMalformedContent(t *testing.T) {
	r := newTestRoom(t, "10")
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }

	t.Run("membership not a string", func(t *testing.T) {
		wantRule(t, r.try("m.room.member", sk(henry), henry, raw(`{"membership":7}`)), "4.8")
	})
	t.Run("membership missing", func(t *testing.T) {
		wantRule(t, r.try("m.room.member", sk(henry), henry, raw(`{"displayname":"h"}`)), "4.1")
	})
	t.Run("membership key is case-sensitive", func(t *testing.T) {
		wantRule(t, r.try("m.room.member", sk(henry), henry, raw(`{"Membership":"join"}`)), "4.1")
	})
	t.Run("member without state_key", func(t *testing.T) {
		wantRule(t, r.try("m.room.member", nil, henry, map[string]any{"membership": "join"}), "4.1")
	})
	t.Run("content not an object", func(t *testing.T) {
		ev := r.candidate("m.room.message", nil, bob, map[string]any{})
		ev.Content = raw(`[1,2]`)
		wantRule(t, authorizeEvent(ev, r.lookup, nil), "event format")
	})
	t.Run("users not an object", func(t *testing.T) {
		for _, users := range []string{`[]`, `"@bob:example.com"`, `null`, `5`} {
			c := raw(`{"users":` + users + `}`)
			wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), "9.3")
		}
	})
	t.Run("users key not a user ID", func(t *testing.T) {
		for _, key := range []string{"bob", "@bob", "@bob:", "@bob:exa mple.com", "@bob:[::1"} {
			c := plContent(map[string]any{alice: 100, key: 10})
			wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), "9.3")
		}
	})
	t.Run("users value a bool", func(t *testing.T) {
		wantRule(t, r.try("m.room.power_levels", sk(""), alice, plContent(map[string]any{alice: 100, bob: true})), "9.3")
	})
	t.Run("named level a float", func(t *testing.T) {
		c := plContent(map[string]any{alice: 100})
		c["kick"] = 50.5
		wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), "9.1")
	})
	t.Run("named level null", func(t *testing.T) {
		c := plContent(map[string]any{alice: 100})
		c["ban"] = nil
		wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), "9.1")
	})
	t.Run("events not an object", func(t *testing.T) {
		c := plContent(map[string]any{alice: 100})
		c["events"] = []any{1}
		wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), "9.2")
	})
	t.Run("huge numbers", func(t *testing.T) {
		for _, n := range []string{"99999999999999999999", "9007199254740992", "-9007199254740992", "1e400"} {
			c := raw(`{"users":{"@alice:example.com":100,"@bob:example.com":` + n + `}}`)
			wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), "9.3")
		}
	})
	t.Run("largest safe integer is an integer", func(t *testing.T) {
		// alice (100) may not grant 2^53-1, but the value itself is valid.
		c := raw(`{"users":{"@alice:example.com":100,"@bob:example.com":9007199254740991}}`)
		wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), "9.9.1")
	})
	t.Run("third_party_invite not an object", func(t *testing.T) {
		c := map[string]any{"membership": "invite", "third_party_invite": "yes"}
		wantRule(t, r.try("m.room.member", sk(henry), alice, c), "4.4.1.2")
	})
	t.Run("third_party_invite null is present", func(t *testing.T) {
		c := map[string]any{"membership": "invite", "third_party_invite": nil}
		wantRule(t, r.try("m.room.member", sk(henry), alice, c), "4.4.1.2")
	})
	t.Run("signed mxid not a string", func(t *testing.T) {
		c := map[string]any{"membership": "invite", "third_party_invite": map[string]any{"signed": map[string]any{"mxid": 5, "token": "t"}}}
		wantRule(t, r.try("m.room.member", sk(henry), alice, c), "4.4.1.4")
	})
	t.Run("join_authorised_via_users_server not a user", func(t *testing.T) {
		for _, via := range []any{5, "bob", []any{bob}, nil} {
			c := map[string]any{"membership": "join", "join_authorised_via_users_server": via}
			wantRule(t, r.try("m.room.member", sk(henry), henry, c), "4.2.1")
		}
	})
	t.Run("join rule not a string", func(t *testing.T) {
		r2 := newBareRoom(t, "10", nil)
		r2.send("m.room.join_rules", sk(""), alice, raw(`{"join_rule":["public"]}`))
		wantRule(t, r2.try("m.room.member", sk(henry), henry, map[string]any{"membership": "join"}), "4.3.7")
	})
	t.Run("m.federate must be the boolean false", func(t *testing.T) {
		r2 := newBareRoom(t, "10", map[string]any{"m.federate": "false"})
		r2.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "public"})
		wantAllow(t, r2.try("m.room.member", sk(zoe), zoe, map[string]any{"membership": "join"}))
		r3 := newBareRoom(t, "10", map[string]any{"m.federate": false})
		r3.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "public"})
		wantRule(t, r3.try("m.room.member", sk(zoe), zoe, map[string]any{"membership": "join"}), "3")
	})
	t.Run("create room_version of the wrong type", func(t *testing.T) {
		for _, v := range []string{`10`, `""`, `null`, `"v10"`} {
			ev := r.build("m.room.create", sk(""), alice, raw(`{"creator":"@alice:example.com","room_version":`+v+`}`), nil)
			ev.PrevEvents = nil
			wantRule(t, authorizeEvent(ev, r.lookup, nil), "1.3")
		}
	})
	t.Run("additional_creators of the wrong type", func(t *testing.T) {
		r12 := newBareRoom(t, "12", nil)
		for _, v := range []string{`"@bob:example.com"`, `[5]`, `["@bob:example.com", null]`, `{}`} {
			ev := &Event{ID: "$c", Type: "m.room.create", StateKey: sk(""), Sender: alice, Version: "12",
				Content: raw(`{"room_version":"12","additional_creators":` + v + `}`)}
			wantRule(t, authorizeEvent(ev, r12.lookup, nil), "1.4")
		}
	})
	t.Run("v1 redaction without redacts", func(t *testing.T) {
		r1 := newTestRoom(t, "1")
		wantRule(t, r1.try("m.room.redaction", nil, charlie, map[string]any{}), "11.3")
	})
}

// TestAuthV12UsersRemoval: removing users entries in a v12 room; removing
// one equal to the sender's level crashes mautrix v0.32.0's eventauth.
func TestAuthV12UsersRemoval(t *testing.T) {
	r := newBareRoom(t, "12", map[string]any{"additional_creators": []string{charlie}})
	r.send("m.room.power_levels", sk(""), alice, plContent(map[string]any{bob: 100, dan: 100, zoe: 50}))
	r.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "public"})
	for _, u := range []string{bob, charlie, dan, zoe} {
		r.send("m.room.member", sk(u), u, map[string]any{"membership": "join"})
	}
	t.Run("admin removes a lower entry", func(t *testing.T) {
		wantAllow(t, r.try("m.room.power_levels", sk(""), bob, plContent(map[string]any{bob: 100, dan: 100})))
	})
	t.Run("admin removes an equal entry", func(t *testing.T) {
		wantRule(t, r.try("m.room.power_levels", sk(""), bob, plContent(map[string]any{bob: 100, zoe: 50})), "10.9.1")
	})
	t.Run("admin removes every entry but his own", func(t *testing.T) {
		wantRule(t, r.try("m.room.power_levels", sk(""), bob, plContent(map[string]any{bob: 100})), "10.9.1")
	})
	t.Run("additional creator removes everyone", func(t *testing.T) {
		wantAllow(t, r.try("m.room.power_levels", sk(""), charlie, plContent(map[string]any{})))
	})
	t.Run("users omitted entirely", func(t *testing.T) {
		c := plContent(nil)
		delete(c, "users")
		wantAllow(t, r.try("m.room.power_levels", sk(""), alice, c))
		wantRule(t, r.try("m.room.power_levels", sk(""), bob, c), "10.9.1")
	})
	t.Run("creator may not be listed", func(t *testing.T) {
		wantRule(t, r.try("m.room.power_levels", sk(""), alice, plContent(map[string]any{bob: 100, charlie: 0})), "10.4")
	})
	t.Run("same verdicts against a state map", func(t *testing.T) {
		ev := r.candidate("m.room.power_levels", sk(""), bob, plContent(map[string]any{bob: 100, dan: 100}))
		wantAllow(t, AuthorizeAgainst(ev, r.state, nil))
		ev = r.candidate("m.room.power_levels", sk(""), bob, plContent(map[string]any{bob: 100}))
		wantRule(t, AuthorizeAgainst(ev, r.state, nil), "10.9.1")
	})
}

// TestAuthUsersEntryRemovalEqualLevel: removing a users entry equal to the
// sender's own level, in every room version (mautrix v0.32.0 dereferences a
// nil there).
func TestAuthUsersEntryRemovalEqualLevel(t *testing.T) {
	for _, tc := range []struct{ version, rule string }{{"1", "10.6.1"}, {"6", "9.6.1"}, {"11", "9.8.1"}, {"12", "10.9.1"}} {
		t.Run("v"+tc.version, func(t *testing.T) {
			r := newTestRoom(t, tc.version)
			users := map[string]any{bob: 50, charlie: 50}
			if !r.rv.PrivilegedRoomCreators() {
				users[alice] = 100
			}
			c := plContent(users)
			c["events"] = map[string]any{"m.room.power_levels": 50}
			r.send("m.room.power_levels", sk(""), alice, c)
			delete(users, charlie)
			wantRule(t, r.try("m.room.power_levels", sk(""), bob, c), tc.rule)
			wantRule(t, AuthorizeAgainst(r.candidate("m.room.power_levels", sk(""), bob, c), r.state, nil), tc.rule)
		})
	}
}

// TestAuthStringyPowerLevels: rooms v1-v9 read integer strings (and v1-v5
// floats) in power levels as their integers; v10 rejects them.
func TestAuthStringyPowerLevels(t *testing.T) {
	for _, tc := range []struct {
		version, plRule string
	}{{"1", "10"}, {"5", "10"}, {"6", "9"}, {"9", "9"}} {
		t.Run("v"+tc.version, func(t *testing.T) {
			r := newBareRoom(t, tc.version, nil)
			rv := id.RoomVersion(tc.version)
			users := map[string]any{alice: " +0100 ", bob: "50", charlie: "060"}
			c := plContent(users)
			c["state_default"] = "50"
			c["kick"] = " 50"
			r.send("m.room.power_levels", sk(""), alice, c)
			r.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "public"})
			for _, u := range []string{bob, charlie} {
				r.send("m.room.member", sk(u), u, map[string]any{"membership": "join"})
			}
			// charlie's "060" is 60, above state_default "50".
			wantAllow(t, r.try("m.room.topic", sk(""), charlie, map[string]any{"topic": "t"}))
			// bob resends the same levels as integers: nothing changed.
			same := plContent(map[string]any{alice: 100, bob: 50, charlie: 60})
			same["events"] = map[string]any{"m.room.power_levels": 50}
			r.send("m.room.power_levels", sk(""), alice, func() map[string]any {
				c := plContent(map[string]any{alice: "100", bob: "50", charlie: "60"})
				c["events"] = map[string]any{"m.room.power_levels": "50"}
				return c
			}())
			wantAllow(t, r.try("m.room.power_levels", sk(""), bob, same))
			// "0075" is 75, above bob's 50.
			raised := plContent(map[string]any{alice: 100, bob: 50, charlie: 60})
			raised["events"] = map[string]any{"m.room.power_levels": 50}
			raised["ban"] = "0075"
			wantRule(t, r.try("m.room.power_levels", sk(""), bob, raised), tc.plRule+".3.2")
			// Not integers, even as strings.
			for _, bad := range []any{"5x", "5.0", "", " ", "+-5", "1_000", "99999999999999999999"} {
				c := plContent(map[string]any{alice: 100, bob: bad})
				wantRule(t, r.try("m.room.power_levels", sk(""), alice, c), tc.plRule+".1")
			}
			// Floats: truncated in v1-v5, not integers from v6.
			fl := plContent(map[string]any{alice: 100, bob: 50.9, charlie: 60})
			fl["events"] = map[string]any{"m.room.power_levels": 50}
			if rv.ForbidFloatsAndBigInts() {
				wantRule(t, r.try("m.room.power_levels", sk(""), alice, fl), tc.plRule+".1")
			} else {
				wantAllow(t, r.try("m.room.power_levels", sk(""), bob, fl))
			}
			// An unparsable named level in a new event cannot be compared.
			junk := plContent(map[string]any{alice: 100, bob: 50, charlie: 60})
			junk["events"] = map[string]any{"m.room.power_levels": 50}
			junk["invite"] = "lots"
			wantRule(t, r.try("m.room.power_levels", sk(""), alice, junk), tc.plRule+".3.2")
		})
	}
	t.Run("v10 rejects strings", func(t *testing.T) {
		r := newTestRoom(t, "10")
		wantRule(t, r.try("m.room.power_levels", sk(""), alice, plContent(map[string]any{alice: 100, bob: "50"})), "9.3")
	})
}

// TestAuthNotificationsBeforeV6: v1-v5 have no notifications checks.
func TestAuthNotificationsBeforeV6(t *testing.T) {
	for _, tc := range []struct {
		version, rule string
	}{{"5", ""}, {"6", "9.5.1"}, {"10", "9.7.1"}, {"12", "10.8.1"}} {
		r := newTestRoom(t, tc.version)
		users := map[string]any{bob: 50}
		if !r.rv.PrivilegedRoomCreators() {
			users[alice] = 100
		}
		c := plContent(users)
		c["notifications"] = map[string]any{"room": 1000}
		err := r.try("m.room.power_levels", sk(""), alice, c)
		if tc.rule == "" {
			wantAllow(t, err)
		} else if !r.rv.PrivilegedRoomCreators() {
			wantRule(t, err, tc.rule)
		} else {
			wantAllow(t, err) // alice is a creator: infinitely powerful
			c = plContent(map[string]any{bob: 100})
			r.send("m.room.power_levels", sk(""), alice, c)
			c["notifications"] = map[string]any{"room": 101}
			wantRule(t, r.try("m.room.power_levels", sk(""), bob, c), tc.rule)
		}
	}
}

// TestAuthorizeAgainst: the state map replaces auth_events, whose
// structural checks are skipped; everything else applies.
func TestAuthorizeAgainst(t *testing.T) {
	for _, v := range []string{"1", "6", "10", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			r := newTestRoom(t, v)
			n := numbering(r.rv)
			msg := map[string]any{"body": "hi"}

			wantAllow(t, AuthorizeAgainst(r.candidate("m.room.message", nil, charlie, msg), r.state, nil))
			wantRule(t, AuthorizeAgainst(r.candidate("m.room.message", nil, henry, msg), r.state, nil), rule(n.joined))

			// Citing nothing, the wrong events, or a rejected one fails on
			// receipt but not against a state map.
			bare := r.build("m.room.message", nil, charlie, msg, nil)
			wantAllow(t, AuthorizeAgainst(bare, r.state, nil))
			if err := authorizeEvent(bare, r.lookup, nil); err == nil {
				t.Fatal("an event citing no auth events passed on receipt")
			}
			extra := r.candidate("m.room.message", nil, charlie, msg, StateKeyPair{"m.room.join_rules", ""})
			wantRule(t, authorizeEvent(extra, r.lookup, nil), rule(n.authEvents, 2))
			wantAllow(t, AuthorizeAgainst(extra, r.state, nil))

			join := r.state[StateKeyPair{"m.room.member", charlie}]
			join.Flags |= store.FlagRejected
			wantRule(t, authorizeEvent(r.candidate("m.room.message", nil, charlie, msg), r.lookup, nil), rule(n.authEvents, 3))
			join.Flags &^= store.FlagRejected

			// Membership transitions read the map.
			wantAllow(t, AuthorizeAgainst(r.candidate("m.room.member", sk(henry), henry, map[string]any{"membership": "join"}), r.state, nil))
			wantRule(t, AuthorizeAgainst(r.candidate("m.room.member", sk(bob), charlie, map[string]any{"membership": "ban"}), r.state, nil), rule(n.member, n.join+3, 3))

			// No create event in the map.
			noCreate := map[StateKeyPair]*Event{}
			for k, e := range r.state {
				if k.Type != "m.room.create" {
					noCreate[k] = e
				}
			}
			want := rule(n.authEvents, 4)
			if r.rv.RoomIDIsCreateEventID() {
				want = rule(n.roomID)
			}
			wantRule(t, AuthorizeAgainst(r.candidate("m.room.message", nil, charlie, msg), noCreate, nil), want)
			wantRule(t, AuthorizeAgainst(r.candidate("m.room.message", nil, charlie, msg), nil, nil), want)
		})
	}
	t.Run("v12 create of another room", func(t *testing.T) {
		r := newTestRoom(t, "12")
		other := newBareRoom(t, "12", map[string]any{"topic": "other"})
		st := map[StateKeyPair]*Event{}
		for k, e := range r.state {
			st[k] = e
		}
		st[StateKeyPair{"m.room.create", ""}] = other.state[StateKeyPair{"m.room.create", ""}]
		wantRule(t, AuthorizeAgainst(r.candidate("m.room.message", nil, charlie, map[string]any{"body": "x"}), st, nil), "2")
	})
}

// TestAuthReceiptErrors: missing data is not a rejection.
func TestAuthReceiptErrors(t *testing.T) {
	r := newTestRoom(t, "10")
	ev := r.candidate("m.room.message", nil, charlie, map[string]any{"body": "x"})
	ev.AuthEvents = append(ev.AuthEvents[:len(ev.AuthEvents):len(ev.AuthEvents)], "$unknown:example.com")
	ev.AuthEvents = ev.AuthEvents[1:]
	err := authorizeEvent(ev, r.lookup, nil)
	if !errors.Is(err, ErrEventNotFound) || errors.Is(err, ErrForbidden) {
		t.Fatalf("unknown auth event: %v", err)
	}
	ev = r.candidate("m.room.message", nil, charlie, map[string]any{"body": "x"})
	ev.Version = "13"
	if err := authorizeEvent(ev, r.lookup, nil); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("unknown version: %v", err)
	}
	ev = r.candidate("m.room.message", nil, charlie, map[string]any{"body": "x"})
	for len(ev.AuthEvents) <= maxAuthEvents {
		ev.AuthEvents = append(ev.AuthEvents, ev.AuthEvents[0])
	}
	wantRule(t, authorizeEvent(ev, r.lookup, nil), "2.2")
	ev = r.candidate("m.room.message", nil, charlie, map[string]any{"body": "x"})
	ev.AuthEvents = append(ev.AuthEvents, ev.AuthEvents[0])
	wantRule(t, authorizeEvent(ev, r.lookup, nil), "2.1")
	if err := authorizeEvent(nil, r.lookup, nil); !errors.Is(err, ErrForbidden) {
		t.Fatalf("nil event: %v", err)
	}
}

// TestAuthMemberships covers transitions the vectors leave out.
func TestAuthMemberships(t *testing.T) {
	t.Run("knock then leave, v7+", func(t *testing.T) {
		r := newTestRoom(t, "7")
		r.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "knock"})
		r.send("m.room.member", sk(henry), henry, map[string]any{"membership": "knock"})
		wantAllow(t, r.try("m.room.member", sk(henry), henry, map[string]any{"membership": "leave"}))
		// Knocking again is allowed: knock is not ban, invite or join.
		wantAllow(t, r.try("m.room.member", sk(henry), henry, map[string]any{"membership": "knock"}))
		r.send("m.room.member", sk(henry), alice, map[string]any{"membership": "invite"})
		wantRule(t, r.try("m.room.member", sk(henry), henry, map[string]any{"membership": "knock"}), "4.6.4")
		wantRule(t, r.try("m.room.member", sk(dan), dan, map[string]any{"membership": "join"}), "4.2.6")
	})
	t.Run("self-leave needs invite or join", func(t *testing.T) {
		r := newTestRoom(t, "10")
		wantRule(t, r.try("m.room.member", sk(henry), henry, map[string]any{"membership": "leave"}), "4.5.1")
	})
	t.Run("unban needs ban and kick levels", func(t *testing.T) {
		r := newTestRoom(t, "10")
		c := plContent(map[string]any{alice: 100, bob: 50, charlie: 40})
		c["kick"] = 30
		r.send("m.room.power_levels", sk(""), alice, c)
		r.send("m.room.member", sk(zoe), alice, map[string]any{"membership": "ban"})
		wantRule(t, r.try("m.room.member", sk(zoe), charlie, map[string]any{"membership": "leave"}), "4.5.3")
		wantAllow(t, r.try("m.room.member", sk(zoe), bob, map[string]any{"membership": "leave"}))
	})
	t.Run("no join rules means invite-only", func(t *testing.T) {
		r := newBareRoom(t, "10", nil)
		r.send("m.room.member", sk(henry), alice, map[string]any{"membership": "invite"})
		wantAllow(t, r.try("m.room.member", sk(henry), henry, map[string]any{"membership": "join"}))
		wantRule(t, r.try("m.room.member", sk(bob), bob, map[string]any{"membership": "join"}), "4.3.7")
	})
	t.Run("restricted join signatures", func(t *testing.T) {
		seed := make([]byte, ed25519.SeedSize)
		key := ed25519.NewKeyFromSeed(seed)
		r := newTestRoom(t, "10")
		r.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "restricted", "allow": []any{}})
		c := map[string]any{"membership": "join", "join_authorised_via_users_server": bob}
		ev := r.candidate("m.room.member", sk(henry), henry, c, StateKeyPair{"m.room.member", bob})
		var p pdu.PDU
		if err := jsonv2.Unmarshal(ev.Raw, &p); err != nil {
			t.Fatal(err)
		}
		if err := p.Sign(r.rv, "example.com", "ed25519:k", key); err != nil {
			t.Fatal(err)
		}
		signed, err := jsonv2.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		ev, err = ParseEvent("10", signed, ev.ID)
		if err != nil {
			t.Fatal(err)
		}
		pub := base64.RawStdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
		keyFunc := func(k string) pdu.GetKeyFunc {
			return func(string, id.KeyID, time.Time) (id.SigningKey, time.Time, error) {
				return id.SigningKey(k), time.Now().Add(time.Hour), nil
			}
		}
		wantAllow(t, authorizeEvent(ev, r.lookup, keyFunc(pub)))
		wantRule(t, authorizeEvent(ev, r.lookup, nil), "4.2.1")
		// A malformed key from a remote server must not crash us.
		wantRule(t, authorizeEvent(ev, r.lookup, keyFunc("AAAA")), "4.2.1")
		wantRule(t, authorizeEvent(ev, r.lookup, keyFunc("%%%")), "4.2.1")
		failing := func(string, id.KeyID, time.Time) (id.SigningKey, time.Time, error) {
			return "", time.Time{}, errors.New("key server down")
		}
		wantRule(t, authorizeEvent(ev, r.lookup, failing), "4.2.1")
	})
}

// TestAuthThirdPartyInvite: signatures over signed with either key form.
func TestAuthThirdPartyInvite(t *testing.T) {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	other := ed25519.NewKeyFromSeed(append(make([]byte, ed25519.SeedSize-1), 1))
	pubStd := base64.RawStdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	pubURL := base64.URLEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	// Canonical JSON of signed without signatures, written out by hand.
	msg := []byte(`{"mxid":"@henry:example.com","token":"tok"}`)
	sig := func(k ed25519.PrivateKey) string { return base64.RawStdEncoding.EncodeToString(ed25519.Sign(k, msg)) }

	setup := func(t *testing.T, invite map[string]any) *testRoom {
		r := newTestRoom(t, "10")
		r.send("m.room.third_party_invite", sk("tok"), bob, invite)
		return r
	}
	tpi := func(keyID, s string) map[string]any {
		return map[string]any{"membership": "invite", "third_party_invite": map[string]any{
			"display_name": "h", "signed": map[string]any{"mxid": henry, "token": "tok",
				"signatures": map[string]any{"id.example": map[string]any{keyID: s}}}}}
	}
	cite := StateKeyPair{"m.room.third_party_invite", "tok"}
	for _, tc := range []struct {
		name    string
		invite  map[string]any
		sender  string
		content map[string]any
		rule    string
	}{
		{"public_keys only", map[string]any{"public_keys": []any{map[string]any{"public_key": pubStd}}}, bob, tpi("ed25519:0", sig(key)), ""},
		{"url-safe padded public_key", map[string]any{"public_key": pubURL}, bob, tpi("ed25519:0", sig(key)), ""},
		{"bad public_key, good public_keys", map[string]any{"public_key": "pubkey", "public_keys": []any{map[string]any{"public_key": pubStd}}}, bob, tpi("ed25519:0", sig(key)), ""},
		{"public_keys not a list", map[string]any{"public_key": pubStd, "public_keys": "x"}, bob, tpi("ed25519:0", sig(key)), ""},
		{"signed by another key", map[string]any{"public_key": pubStd}, bob, tpi("ed25519:0", sig(other)), "4.4.1.8"},
		{"not an ed25519 key ID", map[string]any{"public_key": pubStd}, bob, tpi("curve25519:0", sig(key)), "4.4.1.8"},
		{"signature not base64", map[string]any{"public_key": pubStd}, bob, tpi("ed25519:0", "!!"), "4.4.1.8"},
		{"sender did not invite", map[string]any{"public_key": pubStd}, alice, tpi("ed25519:0", sig(key)), "4.4.1.6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := setup(t, tc.invite)
			err := r.try("m.room.member", sk(henry), tc.sender, tc.content, cite)
			if tc.rule == "" {
				wantAllow(t, err)
			} else {
				wantRule(t, err, tc.rule)
			}
		})
	}
	t.Run("target banned", func(t *testing.T) {
		r := setup(t, map[string]any{"public_key": pubStd})
		r.send("m.room.member", sk(henry), alice, map[string]any{"membership": "ban"})
		wantRule(t, r.try("m.room.member", sk(henry), bob, tpi("ed25519:0", sig(key)), cite), "4.4.1.1")
	})
	t.Run("unknown token", func(t *testing.T) {
		r := setup(t, map[string]any{"public_key": pubStd})
		wantRule(t, r.try("m.room.member", sk(henry), bob, tpi("ed25519:0", sig(key))), "4.4.1.5")
	})
}

// FuzzAuthorize feeds arbitrary content into member and power-levels events
// over fixed rooms: the rules must never panic and only ever reject with
// ErrForbidden (or report an unknown auth event).
func FuzzAuthorize(f *testing.F) {
	for _, s := range []string{
		`{"membership":"join"}`, `{"membership":"invite","third_party_invite":{"signed":{"mxid":"@henry:example.com","token":"tok","signatures":{"a":{"ed25519:0":"AAAA"}}}}}`,
		`{"membership":"join","join_authorised_via_users_server":"@bob:example.com"}`, `{"membership":"ban"}`, `{"membership":"knock"}`,
		`{"users":{"@alice:example.com":"100","@bob:example.com":1e3},"ban":null,"events":{"x":"5"},"notifications":{"room":[]}}`,
		`{"users":{"@bob:example.com":-9223372036854775808}}`, `{"users_default":1.5e308}`, `[]`, `{`, `{"membership":{"x":1}}`,
	} {
		for kind := uint8(0); kind < 16; kind += 3 {
			f.Add(kind, kind*7, []byte(s))
		}
	}
	var rooms []*testRoom
	for _, v := range []string{"1", "5", "9", "10", "12"} {
		r := newTestRoom(f, v)
		r.send("m.room.third_party_invite", sk("tok"), bob, map[string]any{"public_key": "AAAA", "public_keys": []any{5, map[string]any{"public_key": 7}}})
		rooms = append(rooms, r)
	}
	getKey := func(string, id.KeyID, time.Time) (id.SigningKey, time.Time, error) {
		return "AAAA", time.Now().Add(time.Hour), nil
	}
	senders := []string{alice, bob, charlie, henry, zoe}
	f.Fuzz(func(t *testing.T, kind, who uint8, content []byte) {
		r := rooms[int(kind)%len(rooms)]
		sender := senders[int(who)%len(senders)]
		evType, stateKey := "m.room.member", sk(senders[int(who/8)%len(senders)])
		if (kind/8)%2 == 1 {
			evType, stateKey = "m.room.power_levels", sk("")
		}
		var authIDs []string
		for _, k := range []StateKeyPair{{"m.room.create", ""}, {"m.room.power_levels", ""}, {"m.room.member", sender},
			{"m.room.member", *stateKey}, {"m.room.join_rules", ""}, {"m.room.third_party_invite", "tok"}} {
			if e := r.state[k]; e != nil && (k.Type != "m.room.create" || !r.rv.RoomIDIsCreateEventID()) && !contains(authIDs, e.ID) {
				authIDs = append(authIDs, e.ID)
			}
		}
		ev := &Event{ID: "$fuzz:example.com", RoomID: r.roomID, Type: evType, StateKey: stateKey, Sender: sender,
			Content: content, PrevEvents: []string{r.last}, AuthEvents: authIDs, Version: r.version}
		if json.Valid(content) {
			ev.Raw, _ = json.Marshal(map[string]any{"room_id": r.roomID, "type": evType, "state_key": *stateKey,
				"sender": sender, "content": json.RawMessage(content), "prev_events": ev.PrevEvents,
				"auth_events": authIDs, "depth": 9, "origin_server_ts": 9, "signatures": map[string]any{"example.com": map[string]string{"ed25519:1": "AAAA"}}})
		}
		for _, err := range []error{authorizeEvent(ev, r.lookup, getKey), AuthorizeAgainst(ev, r.state, getKey)} {
			if err != nil && !errors.Is(err, ErrForbidden) {
				t.Fatalf("error of an unexpected kind: %v", err)
			}
		}
		// The content scanner must read valid JSON as the decoder does.
		var m map[string]jsontext.Value
		if jsonv2.Unmarshal(content, &m, jsontext.AllowDuplicateNames(true)) == nil && m != nil {
			n := 0
			if !scanObject(content, func(name, val []byte) {
				n++
				if key := unquoteName(name); string(field(content, key)) != string(m[key]) {
					t.Fatalf("scanner reads %q as %q, the decoder as %q", key, field(content, key), m[key])
				}
			}) || n < len(m) {
				t.Fatalf("scanner rejects the object %q", content)
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// benchRoom is a v10 room of realistic size: 40 members, Synapse's default
// power levels with a few admins and moderators.
func benchRoom(b *testing.B) *testRoom {
	r := newBareRoom(b, "10", nil)
	users := map[string]any{alice: 100}
	for i := 0; i < 6; i++ {
		users[fmt.Sprintf("@mod%d:example.com", i)] = 50
	}
	c := plContent(users)
	c["events"] = map[string]any{"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
		"m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100, "m.room.server_acl": 100, "m.room.encryption": 100}
	c["notifications"] = map[string]any{"room": 50}
	r.send("m.room.power_levels", sk(""), alice, c)
	r.send("m.room.join_rules", sk(""), alice, map[string]any{"join_rule": "public"})
	r.send("m.room.history_visibility", sk(""), alice, map[string]any{"history_visibility": "shared"})
	for i := 0; i < 40; i++ {
		u := fmt.Sprintf("@user%d:example.com", i)
		r.send("m.room.member", sk(u), u, map[string]any{"membership": "join", "displayname": u})
	}
	return r
}

func benchCases(b *testing.B) (*testRoom, map[string]*Event) {
	r := benchRoom(b)
	u := "@user7:example.com"
	return r, map[string]*Event{
		"message": r.candidate("m.room.message", nil, u, map[string]any{"msgtype": "m.text", "body": "hello there"}),
		"join":    r.candidate("m.room.member", sk(henry), henry, map[string]any{"membership": "join", "displayname": "Henry"}),
	}
}

// BenchmarkAuthorize is edge's own auth rules on a message and a join.
func BenchmarkAuthorize(b *testing.B) {
	r, cases := benchCases(b)
	for _, name := range []string{"message", "join"} {
		ev := cases[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := authorizeEvent(ev, r.lookup, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAuthorizeMautrix is mautrix's eventauth on the same events, given
// already converted PDUs (the old Authorize also converted every event, see
// the "+convert" runs).
func BenchmarkAuthorizeMautrix(b *testing.B) {
	r, cases := benchCases(b)
	pdus := map[string]*pdu.PDU{}
	for eid, ev := range r.events {
		p, err := ev.PDU()
		if err != nil {
			b.Fatal(err)
		}
		pdus[eid] = p
	}
	getEvents := func(ids []id.EventID) ([]*pdu.PDU, error) {
		out := make([]*pdu.PDU, 0, len(ids))
		for _, eid := range ids {
			out = append(out, pdus[string(eid)])
		}
		return out, nil
	}
	convert := func(ids []id.EventID) ([]*pdu.PDU, error) {
		out := make([]*pdu.PDU, 0, len(ids))
		for _, eid := range ids {
			p, err := r.events[string(eid)].PDU()
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		return out, nil
	}
	for _, name := range []string{"message", "join"} {
		ev := cases[name]
		p, err := ev.PDU()
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := eventauth.Authorize(r.rv, p, nil, getEvents, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"+convert", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p, err := ev.PDU()
				if err != nil {
					b.Fatal(err)
				}
				if err := eventauth.Authorize(r.rv, p, nil, convert, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
