package integration

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Client API details Complement checks (docs/complement.md, "Fixed since
// the recorded run"): push rules kept as set and carried over upgrades,
// the user directory's global names, unsigned.membership, presence of new
// members, the room summary in incremental syncs, archived rooms' state
// filter and /search's next_batch.

// cdSync is one /sync with the given query (timeout 0 unless set), as gjson.
func cdSync(t *testing.T, c *mautrix.Client, q url.Values) gjson.Result {
	t.Helper()
	if q.Get("timeout") == "" {
		q.Set("timeout", "0")
	}
	u := c.BuildClientURL("v3", "sync") + "?" + q.Encode()
	r := doRaw(t, c, "GET", u, nil, nil)
	if r.Status != 200 {
		t.Fatalf("sync: HTTP %d %s", r.Status, r.Raw)
	}
	return gjson.ParseBytes(r.Raw)
}

// cdEsc escapes a room or user ID for a gjson path.
func cdEsc(s string) string {
	return strings.NewReplacer(".", `\.`, "*", `\*`, "?", `\?`).Replace(s)
}

// cdDo sends a JSON body and returns the raw response, failing on non-200.
func cdDo(t *testing.T, c *mautrix.Client, method, u string, body any) gjson.Result {
	t.Helper()
	var raw []byte
	if body != nil {
		var err error
		if raw, err = jsonBytes(body); err != nil {
			t.Fatal(err)
		}
	}
	r := doRaw(t, c, method, u, raw, nil)
	if r.Status != 200 {
		t.Fatalf("%s %s: HTTP %d %s", method, u, r.Status, r.Raw)
	}
	return gjson.ParseBytes(r.Raw)
}

// A push rule's dont_notify action is stored and returned as set, and it
// does not make the rule notify.
func TestClientDetailsPushRuleKeepsDontNotify(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ruleURL := alice.BuildClientURL("v3", "pushrules", "global", "sender", alice.UserID)
	cdDo(t, alice, "PUT", ruleURL, map[string]any{"actions": []string{"dont_notify"}})
	for i := 0; i < 2; i++ {
		all := cdDo(t, alice, "GET", alice.BuildClientURL("v3", "pushrules")+"/", nil)
		if got := all.Get("global.sender.0.actions").Raw; got != `["dont_notify"]` {
			t.Fatalf("read %d: sender rule actions %s, want [\"dont_notify\"]", i, got)
		}
	}
	// The actions endpoint keeps it too.
	cdDo(t, alice, "PUT", ruleURL+"/actions", map[string]any{"actions": []any{"dont_notify", map[string]any{"set_tweak": "sound", "value": "x"}}})
	if got := cdDo(t, alice, "GET", ruleURL+"/actions", nil).Get("actions.0").Str; got != "dont_notify" {
		t.Fatalf("actions after PUT .../actions: %s", got)
	}
	// An unknown action is still refused.
	raw, _ := jsonBytes(map[string]any{"actions": []string{"explode"}})
	doRaw(t, alice, "PUT", ruleURL, raw, nil).want(t, 400, "M_INVALID_PARAM")
}

// Joining the replacement of an upgraded room copies the user's push
// rules for the old room: for the upgrader (who joins by creating it) and
// for another member who joins later.
func TestClientDetailsPushRulesFollowUpgrade(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	oldRoom := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if _, err := bob.JoinRoomByID(ctxT(t), oldRoom); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{alice, bob} {
		cdDo(t, c, "PUT", c.BuildClientURL("v3", "pushrules", "global", "room", oldRoom), map[string]any{"actions": []string{"dont_notify"}})
	}
	// An override rule naming the room (Element's "mentions only") moves too.
	cdDo(t, alice, "PUT", alice.BuildClientURL("v3", "pushrules", "global", "override", oldRoom), map[string]any{
		"actions":    []string{"dont_notify"},
		"conditions": []any{map[string]any{"kind": "event_match", "key": "room_id", "pattern": oldRoom}},
	})
	newRoom := cdDo(t, alice, "POST", alice.BuildClientURL("v3", "rooms", oldRoom, "upgrade"), map[string]any{"new_version": "11"}).Get("replacement_room").Str
	if newRoom == "" {
		t.Fatal("no replacement_room")
	}
	if _, err := bob.JoinRoomByID(ctxT(t), id.RoomID(newRoom)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{alice, bob} {
		var rules gjson.Result
		deadline := time.Now().Add(10 * time.Second)
		for {
			rules = cdDo(t, c, "GET", c.BuildClientURL("v3", "pushrules")+"/", nil)
			if rules.Get(`global.room.#(rule_id=="` + newRoom + `")`).Exists() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no room rule for %s: %s", c.UserID, newRoom, rules.Get("global.room").Raw)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, rid := range []string{string(oldRoom), newRoom} {
			if got := rules.Get(`global.room.#(rule_id=="` + rid + `").actions.0`).Str; got != "dont_notify" {
				t.Fatalf("%s: room rule %s actions.0 = %q", c.UserID, rid, got)
			}
		}
		// The rules reach the client's sync too.
		ad := cdSync(t, c, url.Values{}).Get(`account_data.events.#(type=="m.push_rules").content.global.room.#(rule_id=="` + newRoom + `")`)
		if !ad.Exists() {
			t.Fatalf("%s: m.push_rules in sync lacks the copied rule", c.UserID)
		}
	}
	over := cdDo(t, alice, "GET", alice.BuildClientURL("v3", "pushrules", "global", "override", newRoom), nil)
	if got := over.Get("conditions.0.pattern").Str; got != newRoom {
		t.Fatalf("copied override rule %s", over.Raw)
	}
	// The rules stay on the old room as well.
	if got := cdDo(t, bob, "GET", bob.BuildClientURL("v3", "pushrules", "global", "room", oldRoom), nil).Get("actions.0").Str; got != "dont_notify" {
		t.Fatalf("old room rule lost: %q", got)
	}
}

// The user directory shows local users by their global display name: a
// per-room name stays in its room.
func TestClientDetailsUserDirectoryGlobalName(t *testing.T) {
	n := startNode(t)
	alice, bob, eve := n.register(t, ""), n.register(t, ""), n.register(t, "")
	if err := alice.SetDisplayName(ctxT(t), "Alice Cooper"); err != nil {
		t.Fatal(err)
	}
	mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat"})
	private := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.UserID}})
	if _, err := alice.JoinRoomByID(ctxT(t), private); err != nil {
		t.Fatal(err)
	}
	cdDo(t, alice, "PUT", alice.BuildClientURL("v3", "rooms", private, "state", "m.room.member", alice.UserID),
		map[string]any{"membership": "join", "displayname": "Freddy"})
	search := func(c *mautrix.Client, term string) gjson.Result {
		return cdDo(t, c, "POST", c.BuildClientURL("v3", "user_directory", "search"), map[string]any{"search_term": term})
	}
	for _, c := range []*mautrix.Client{eve, bob} {
		res := search(c, "Alice Cooper")
		if res.Get("results.#").Int() != 1 || res.Get("results.0.display_name").Str != "Alice Cooper" || res.Get("results.0.user_id").Str != alice.UserID.String() {
			t.Fatalf("%s searching the public name: %s", c.UserID, res.Raw)
		}
	}
	if res := search(eve, "Freddy"); res.Get("results.#").Int() != 0 {
		t.Fatalf("eve finds alice by a per-room name: %s", res.Raw)
	}
	// A term matching both alice and bob finds only alice for bob.
	if res := search(bob, "user"); res.Get("results.#").Int() != 1 || res.Get("results.0.user_id").Str != alice.UserID.String() {
		t.Fatalf("bob searching a term that matches himself too: %s", res.Raw)
	}
}

// Events served to a client carry the client's membership at the event
// (MSC4115): leave before their join, join from it on.
func TestClientDetailsMembershipOnEvents(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	pre := sendText(t, alice, roomID, "prejoin")
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	post := sendText(t, alice, roomID, "postjoin")
	evs := cdSync(t, bob, url.Values{}).Get("rooms.join." + cdEsc(roomID.String()) + ".timeline.events").Array()
	if len(evs) == 0 || evs[0].Get("type").Str != "m.room.create" || evs[0].Get("unsigned.membership").Str != "leave" {
		t.Fatalf("the create event heads the timeline with membership leave: %v", evs)
	}
	want := map[string]string{pre.String(): "leave", post.String(): "join"}
	seen := 0
	for _, ev := range evs {
		if w, ok := want[ev.Get("event_id").Str]; ok {
			seen++
			if got := ev.Get("unsigned.membership").Str; got != w {
				t.Errorf("%s: unsigned.membership %q, want %q", ev.Get("content.body").Str, got, w)
			}
		}
		if ev.Get("type").Str == "m.room.member" && ev.Get("state_key").Str == bob.UserID.String() && ev.Get("unsigned.membership").Str != "join" {
			t.Errorf("bob's join: unsigned.membership %q", ev.Get("unsigned.membership").Str)
		}
	}
	if seen != 2 {
		t.Fatalf("timeline lacks the messages: %d of 2", seen)
	}
	// The same on /event for the sender, who was joined throughout.
	ev := cdDo(t, alice, "GET", alice.BuildClientURL("v3", "rooms", roomID, "event", pre), nil)
	if ev.Get("unsigned.membership").Str != "join" {
		t.Fatalf("alice's view: %s", ev.Raw)
	}
}

// An incremental sync that brings a new member also brings their presence,
// though it did not change after the since token.
func TestClientDetailsNewMemberPresence(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	cdDo(t, bob, "PUT", bob.BuildClientURL("v3", "presence", bob.UserID, "status"), map[string]any{"presence": "online"})
	since := cdSync(t, alice, url.Values{}).Get("next_batch").Str
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	res := cdSync(t, alice, url.Values{"since": {since}})
	if !res.Get(`presence.events.#(sender=="` + bob.UserID.String() + `")`).Exists() {
		t.Fatalf("no presence for the new member bob: %s", res.Get("presence").Raw)
	}
	// Not again in the next one.
	res = cdSync(t, alice, url.Values{"since": {res.Get("next_batch").Str}})
	if res.Get(`presence.events.#(sender=="` + bob.UserID.String() + `")`).Exists() {
		t.Fatalf("bob's unchanged presence sent twice: %s", res.Get("presence").Raw)
	}
}

// The room summary comes again when members change, and its heroes never
// name the requester.
func TestClientDetailsRoomSummary(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Invite: []id.UserID{bob.UserID}})
	path := "rooms.join." + cdEsc(roomID.String()) + ".summary"
	first := cdSync(t, alice, url.Values{})
	sum := first.Get(path)
	if sum.Get(`m\.joined_member_count`).Int() != 1 || sum.Get(`m\.invited_member_count`).Int() != 1 || sum.Get(`m\.heroes`).Raw != `["`+bob.UserID.String()+`"]` {
		t.Fatalf("initial summary %s", sum.Raw)
	}
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	sum = cdSync(t, alice, url.Values{"since": {first.Get("next_batch").Str}}).Get(path)
	if sum.Get(`m\.joined_member_count`).Int() != 2 || sum.Get(`m\.invited_member_count`).Int() != 0 {
		t.Fatalf("summary after bob's join: %s", sum.Raw)
	}
	if sum = cdSync(t, bob, url.Values{}).Get(path); sum.Get(`m\.heroes`).Raw != `["`+alice.UserID.String()+`"]` {
		t.Fatalf("bob's heroes: %s", sum.Raw)
	}
}

// A left room in sync keeps to the filter's state types, like a joined one.
func TestClientDetailsArchivedRoomStateFilter(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	f := `{"room":{"timeline":{"types":["m.room.message","a.madeup"]},"state":{"types":["a.madeup"]},"include_leave":true}}`
	since := cdSync(t, bob, url.Values{"filter": {f}}).Get("next_batch").Str
	sendText(t, alice, roomID, "before")
	cdDo(t, alice, "PUT", alice.BuildClientURL("v3", "rooms", roomID, "state", "a.madeup", ""), map[string]any{"k": "before"})
	if _, err := bob.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	sendText(t, alice, roomID, "after")
	cdDo(t, alice, "PUT", alice.BuildClientURL("v3", "rooms", roomID, "state", "a.madeup", ""), map[string]any{"k": "after"})
	for name, q := range map[string]url.Values{"initial": {"filter": {f}}, "incremental": {"filter": {f}, "since": {since}}} {
		lr := cdSync(t, bob, q).Get("rooms.leave." + cdEsc(roomID.String()))
		if n := lr.Get("state.events.#").Int(); n != 0 {
			t.Errorf("%s: state of a left room ignores the filter: %s", name, lr.Get("state").Raw)
		}
		tl := lr.Get("timeline.events").Array()
		if len(tl) != 2 || tl[0].Get("content.body").Str != "before" || tl[1].Get("content.k").Str != "before" {
			t.Errorf("%s: timeline %s", name, lr.Get("timeline").Raw)
		}
	}
}

// /search in recent order pages with next_batch: a full page has one, the
// empty page after the last has none.
func TestClientDetailsSearchNextBatch(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	var ids []string
	for i := 0; i < 4; i++ {
		ids = append(ids, sendText(t, alice, roomID, "findme number").String())
	}
	body := map[string]any{"search_categories": map[string]any{"room_events": map[string]any{
		"search_term": "findme", "order_by": "recent", "filter": map[string]any{"limit": 2, "rooms": []string{roomID.String()}},
	}}}
	u := alice.BuildClientURL("v3", "search")
	var got []string
	nb := ""
	for page := 0; page < 3; page++ {
		q := u
		if nb != "" {
			q += "?next_batch=" + url.QueryEscape(nb)
		}
		re := cdDo(t, alice, "POST", q, body).Get("search_categories.room_events")
		if re.Get("count").Int() != 4 {
			t.Fatalf("page %d: count %s", page, re.Get("count").Raw)
		}
		for _, r := range re.Get("results").Array() {
			got = append(got, r.Get("result.event_id").Str)
		}
		nb = re.Get("next_batch").Str
		if page < 2 && nb == "" {
			t.Fatalf("page %d (full) has no next_batch: %s", page, re.Raw)
		}
		if page == 2 && (re.Get("next_batch").Exists() || len(re.Get("results").Array()) != 0) {
			t.Fatalf("page after the last: %s", re.Raw)
		}
	}
	want := []string{ids[3], ids[2], ids[1], ids[0]}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("results %v, want newest first %v", got, want)
	}
}

// /members?at= with the prev_batch of a timeline that starts at the room's
// creation gives the members as the room was created, not today's.
func TestClientDetailsMembersAtRoomStart(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	sendText(t, alice, roomID, "Hello world!")
	tl := cdSync(t, alice, url.Values{}).Get("rooms.join." + cdEsc(roomID.String()) + ".timeline")
	if tl.Get("events.0.type").Str != "m.room.create" {
		t.Fatalf("timeline does not start at the creation: %s", tl.Raw)
	}
	at := tl.Get("prev_batch").Str
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	sendText(t, bob, roomID, "Hello back")
	res := cdDo(t, alice, "GET", alice.BuildClientURL("v3", "rooms", roomID, "members")+"?at="+url.QueryEscape(at), nil)
	var members []string
	for _, ev := range res.Get("chunk").Array() {
		members = append(members, ev.Get("state_key").Str)
	}
	if strings.Join(members, ",") != alice.UserID.String() {
		t.Fatalf("members at the room's start: %v, want only %s", members, alice.UserID)
	}
	// Now, bob is there.
	if n := cdDo(t, alice, "GET", alice.BuildClientURL("v3", "rooms", roomID, "members"), nil).Get("chunk.#").Int(); n != 2 {
		t.Fatalf("current members: %d, want 2", n)
	}
}
