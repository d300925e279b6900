package push

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

func parse(e RawEvent) gjson.Result { return gjson.ParseBytes(e) }

const alice = "@alice:example.org"

func ids(rules []PushRule) []string {
	out := []string{}
	for _, r := range rules {
		out = append(out, r.RuleID)
	}
	return out
}

func TestDefaultRulesetShape(t *testing.T) {
	rs := DefaultRuleset(alice, "alice")
	wantOverride := []string{RuleMaster, RuleSuppressNotices, RuleInviteForMe, RuleMemberEvent,
		RuleIsUserMention, RuleIsRoomMention, RuleTombstone, RuleReaction, RuleRoomServerACL, RuleSuppressEdits,
		RulePollResponse}
	wantUnderride := []string{RuleCall, RuleEncryptedRoomOneToOne, RuleRoomOneToOne, RuleMessage, RuleEncrypted,
		RulePollStartOneToOne, RulePollStart, RulePollEndOneToOne, RulePollEnd}
	if got := ids(rs.Override); !reflect.DeepEqual(got, wantOverride) {
		t.Errorf("override = %v, want %v", got, wantOverride)
	}
	if got := ids(rs.Underride); !reflect.DeepEqual(got, wantUnderride) {
		t.Errorf("underride = %v, want %v", got, wantUnderride)
	}
	if len(rs.Content)+len(rs.Room)+len(rs.Sender) != 0 {
		t.Errorf("spec defaults have no content/room/sender rules: %+v", rs)
	}
	for _, k := range kinds {
		for _, r := range rs.Rules(k) {
			if !r.Default || !strings.HasPrefix(r.RuleID, ".") {
				t.Errorf("%s: default=%v", r.RuleID, r.Default)
			}
			if r.Enabled != (r.RuleID != RuleMaster) {
				t.Errorf("%s: enabled=%v", r.RuleID, r.Enabled)
			}
		}
	}

	legacy := DefaultRulesetWith(alice, "alice", DefaultOptions{LegacyMentions: true})
	wantLegacy := []string{RuleMaster, RuleSuppressNotices, RuleInviteForMe, RuleMemberEvent,
		RuleIsUserMention, RuleContainsDisplayName, RuleIsRoomMention, RuleRoomNotif,
		RuleTombstone, RuleReaction, RuleRoomServerACL, RuleSuppressEdits, RulePollResponse}
	if got := ids(legacy.Override); !reflect.DeepEqual(got, wantLegacy) {
		t.Errorf("legacy override = %v", got)
	}
	if len(legacy.Content) != 1 || legacy.Content[0].RuleID != RuleContainsUserName || *legacy.Content[0].Pattern != "alice" {
		t.Errorf("legacy content = %+v", legacy.Content)
	}
}

// The wire form of a few defaults, compared with the spec's JSON definitions.
func TestDefaultRulesetJSON(t *testing.T) {
	rs := DefaultRuleset(alice, "alice")
	cases := map[string]string{
		RuleMaster: `{"rule_id":".m.rule.master","default":true,"enabled":false,"conditions":[],"actions":[]}`,
		RuleTombstone: `{"rule_id":".m.rule.tombstone","default":true,"enabled":true,"conditions":[` +
			`{"kind":"event_match","key":"type","pattern":"m.room.tombstone"},` +
			`{"kind":"event_match","key":"state_key","pattern":""}],` +
			`"actions":["notify",{"set_tweak":"highlight"}]}`,
		RuleIsUserMention: `{"rule_id":".m.rule.is_user_mention","default":true,"enabled":true,"conditions":[` +
			`{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@alice:example.org"}],` +
			`"actions":["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]}`,
		RuleCall: `{"rule_id":".m.rule.call","default":true,"enabled":true,"conditions":[` +
			`{"kind":"event_match","key":"type","pattern":"m.call.invite"}],` +
			`"actions":["notify",{"set_tweak":"sound","value":"ring"}]}`,
	}
	for id, want := range cases {
		var r *PushRule
		if r = rs.Find(KindOverride, id); r == nil {
			r = rs.Find(KindUnderride, id)
		}
		got, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s:\n got %s\nwant %s", id, got, want)
		}
	}
	all, _ := json.Marshal(Rulesets{Global: &Ruleset{}})
	if string(all) != `{"global":{"override":[],"content":[],"room":[],"sender":[],"underride":[]}}` {
		t.Errorf("empty ruleset = %s", all)
	}
}

type evalCase struct {
	name      string
	event     string
	ctx       Context
	legacy    bool
	matched   bool
	notify    bool
	highlight bool
	sound     string
}

func TestEvaluateDefaults(t *testing.T) {
	group := Context{MemberCount: 5, DisplayName: "Alice Liddell"}
	oneToOne := Context{MemberCount: 2}
	msg := func(content string) string {
		return `{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:example.org","content":` + content + `}`
	}
	cases := []evalCase{
		{name: "plain message in group notifies", event: msg(`{"msgtype":"m.text","body":"hi"}`),
			ctx: group, matched: true, notify: true},
		{name: "1:1 message notifies with sound", event: msg(`{"msgtype":"m.text","body":"hi"}`),
			ctx: oneToOne, matched: true, notify: true, sound: "default"},
		{name: "1:1 encrypted notifies with sound", ctx: oneToOne, matched: true, notify: true, sound: "default",
			event: `{"type":"m.room.encrypted","sender":"@bob:example.org","content":{}}`},
		{name: "group encrypted notifies", ctx: group, matched: true, notify: true,
			event: `{"type":"m.room.encrypted","sender":"@bob:example.org","content":{}}`},
		{name: "notice is suppressed", event: msg(`{"msgtype":"m.notice","body":"bot says hi"}`),
			ctx: oneToOne, matched: true},
		{name: "user mention highlights", ctx: group, matched: true, notify: true, highlight: true, sound: "default",
			event: msg(`{"msgtype":"m.text","body":"hey","m.mentions":{"user_ids":["@carol:x","@alice:example.org"]}}`)},
		{name: "mention of someone else is a plain message", ctx: group, matched: true, notify: true,
			event: msg(`{"msgtype":"m.text","body":"hey","m.mentions":{"user_ids":["@alice:example.org.evil"]}}`)},
		{name: "room mention with power highlights", matched: true, notify: true, highlight: true,
			ctx:   Context{MemberCount: 5, SenderPowerLevel: 50},
			event: msg(`{"msgtype":"m.text","body":"all","m.mentions":{"room":true}}`)},
		{name: "room mention without power is a plain message", matched: true, notify: true,
			ctx:   Context{MemberCount: 5, SenderPowerLevel: 49},
			event: msg(`{"msgtype":"m.text","body":"all","m.mentions":{"room":true}}`)},
		{name: "room mention uses notifications.room", matched: true, notify: true,
			ctx:   Context{MemberCount: 5, SenderPowerLevel: 50, NotificationPowerLevels: map[string]int64{"room": 100}},
			event: msg(`{"msgtype":"m.text","body":"all","m.mentions":{"room":true}}`)},
		{name: "display name in body: spec defaults do not highlight", event: msg(`{"msgtype":"m.text","body":"ping alice liddell!"}`),
			ctx: group, matched: true, notify: true},
		{name: "display name in body: legacy highlights", legacy: true, matched: true, notify: true, highlight: true, sound: "default",
			event: msg(`{"msgtype":"m.text","body":"ping alice liddell!"}`), ctx: group},
		{name: "display name needs word boundary", legacy: true, matched: true, notify: true,
			event: msg(`{"msgtype":"m.text","body":"xalice liddell"}`), ctx: group},
		{name: "legacy rules skipped when m.mentions present", legacy: true, matched: true, notify: true,
			event: msg(`{"msgtype":"m.text","body":"ping Alice Liddell","m.mentions":{}}`), ctx: group},
		{name: "legacy localpart content rule", legacy: true, matched: true, notify: true, highlight: true, sound: "default",
			event: msg(`{"msgtype":"m.text","body":"is ALICE around?"}`), ctx: group},
		{name: "legacy @room with power", legacy: true, matched: true, notify: true, highlight: true,
			event: msg(`{"msgtype":"m.text","body":"@room meeting"}`), ctx: Context{MemberCount: 5, SenderPowerLevel: 100}},
		{name: "legacy @room without power", legacy: true, matched: true, notify: true,
			event: msg(`{"msgtype":"m.text","body":"@room meeting"}`), ctx: Context{MemberCount: 5}},
		{name: "invite for me", ctx: group, matched: true, notify: true, sound: "default",
			event: `{"type":"m.room.member","state_key":"@alice:example.org","sender":"@bob:example.org","content":{"membership":"invite"}}`},
		{name: "invite for someone else is suppressed", ctx: group, matched: true,
			event: `{"type":"m.room.member","state_key":"@carol:example.org","sender":"@bob:example.org","content":{"membership":"invite"}}`},
		{name: "tombstone highlights", ctx: group, matched: true, notify: true, highlight: true,
			event: `{"type":"m.room.tombstone","state_key":"","sender":"@bob:example.org","content":{"replacement_room":"!n:x"}}`},
		{name: "tombstone with non-empty state_key is not a tombstone", ctx: group,
			event: `{"type":"m.room.tombstone","state_key":"x","sender":"@bob:example.org","content":{}}`},
		{name: "reaction suppressed", ctx: oneToOne, matched: true,
			event: `{"type":"m.reaction","sender":"@bob:example.org","content":{}}`},
		{name: "edit suppressed", ctx: oneToOne, matched: true,
			event: msg(`{"msgtype":"m.text","body":"* fix","m.relates_to":{"rel_type":"m.replace","event_id":"$e"}}`)},
		{name: "server acl suppressed", ctx: oneToOne, matched: true,
			event: `{"type":"m.room.server_acl","state_key":"","sender":"@bob:example.org","content":{}}`},
		{name: "call rings", ctx: group, matched: true, notify: true, sound: "ring",
			event: `{"type":"m.call.invite","sender":"@bob:example.org","content":{}}`},
		{name: "unmatched type", ctx: group,
			event: `{"type":"m.room.topic","state_key":"","sender":"@bob:example.org","content":{"topic":"x"}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := DefaultRulesetWith(alice, "alice", DefaultOptions{LegacyMentions: tc.legacy})
			acts, matched := Evaluate(rs, RawEvent(tc.event), tc.ctx)
			if matched != tc.matched || acts.Notify() != tc.notify || acts.Highlight() != tc.highlight || acts.Sound() != tc.sound {
				t.Errorf("matched=%v notify=%v highlight=%v sound=%q; want %v %v %v %q (actions %s)",
					matched, acts.Notify(), acts.Highlight(), acts.Sound(),
					tc.matched, tc.notify, tc.highlight, tc.sound, mustJSON(acts))
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestEvaluateMasterAndUserRules(t *testing.T) {
	r := NewRules(nil, DefaultRuleset(alice, "alice"))
	ev := RawEvent(`{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:x","content":{"msgtype":"m.text","body":"I like cake"}}`)
	ctx := Context{MemberCount: 3}

	mustNil(t, r.Put(KindContent, "cake", []byte(`{"pattern":"cake","actions":["notify",{"set_tweak":"sound","value":"cakealarm.wav"}]}`), "", ""))
	acts, _ := Evaluate(r.Ruleset(), ev, ctx)
	if acts.Sound() != "cakealarm.wav" {
		t.Errorf("content rule: %s", mustJSON(acts))
	}

	// A room rule ranks below content rules, so it only wins once cake is disabled.
	mustNil(t, r.Put(KindRoom, "!r:x", []byte(`{"actions":[]}`), "", ""))
	mustNil(t, r.SetEnabled(KindContent, "cake", false))
	if acts, m := Evaluate(r.Ruleset(), ev, ctx); !m || acts.Notify() {
		t.Errorf("room rule should silence: %v %s", m, mustJSON(acts))
	}
	// Sync-format events have no room_id; the context supplies it.
	noRoom := RawEvent(`{"type":"m.room.message","sender":"@bob:example.org","content":{"body":"x"}}`)
	if acts, _ := Evaluate(r.Ruleset(), noRoom, Context{RoomID: "!r:x"}); acts.Notify() {
		t.Errorf("room rule via ctx.RoomID: %s", mustJSON(acts))
	}
	mustNil(t, r.Delete(KindRoom, "!r:x"))

	mustNil(t, r.Put(KindSender, "@bob:example.org", []byte(`{"actions":["notify",{"set_tweak":"highlight","value":true}]}`), "", ""))
	if acts, _ := Evaluate(r.Ruleset(), ev, ctx); !acts.Highlight() {
		t.Errorf("sender rule: %s", mustJSON(acts))
	}

	// A user override beats server-default overrides; master beats everything.
	mustNil(t, r.Put(KindOverride, "notices-loud", []byte(`{"conditions":[{"kind":"event_match","key":"content.msgtype","pattern":"m.notice"}],"actions":["notify"]}`), "", ""))
	notice := RawEvent(`{"type":"m.room.message","sender":"@bot:x","content":{"msgtype":"m.notice","body":"n"}}`)
	if acts, _ := Evaluate(r.Ruleset(), notice, ctx); !acts.Notify() {
		t.Errorf("user override should win over suppress_notices: %s", mustJSON(acts))
	}
	mustNil(t, r.SetEnabled(KindOverride, RuleMaster, true))
	if got := ids(r.Ruleset().Override)[:2]; !reflect.DeepEqual(got, []string{RuleMaster, "notices-loud"}) {
		t.Errorf("override order %v", got)
	}
	if acts, m := Evaluate(r.Ruleset(), notice, ctx); !m || acts.Notify() {
		t.Errorf("master should silence everything: %v %s", m, mustJSON(acts))
	}
}

func TestSetActionsOnDefault(t *testing.T) {
	r := NewRules(nil, DefaultRuleset(alice, "alice"))
	mustNil(t, r.SetActions(KindUnderride, RuleMessage, Actions{json.RawMessage(`"dont_notify"`)}))
	acts, err := r.GetActions(KindUnderride, RuleMessage)
	mustNil(t, err)
	if string(mustJSON(acts)) != `["dont_notify"]` {
		t.Errorf("dont_notify should be kept as set, got %s", mustJSON(acts))
	}
	ev := RawEvent(`{"type":"m.room.message","sender":"@bob:x","content":{"body":"x"}}`)
	if acts, m := Evaluate(r.Ruleset(), ev, Context{MemberCount: 4}); !m || acts.Notify() {
		t.Errorf("message should match with no actions: %v %s", m, mustJSON(acts))
	}

	// The change survives a storage round trip, and defaults are not stored.
	blob, err := r.State.Marshal()
	mustNil(t, err)
	if strings.Contains(string(blob), "m.room.message") {
		t.Errorf("state should not contain default rule bodies: %s", blob)
	}
	st, err := LoadState(blob)
	mustNil(t, err)
	r2 := NewRules(st, DefaultRuleset(alice, "alice"))
	if !reflect.DeepEqual(r2.Ruleset(), r.Ruleset()) {
		t.Errorf("round trip changed the ruleset:\n%s\n%s", mustJSON(r2.Ruleset()), mustJSON(r.Ruleset()))
	}
	on, err := r2.GetEnabled(KindOverride, RuleMaster)
	if err != nil || on {
		t.Errorf("master enabled=%v err=%v", on, err)
	}
}

func mustNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPutOrdering(t *testing.T) {
	body := []byte(`{"actions":["notify"]}`)
	type put struct{ id, before, after string }
	cases := []struct {
		name string
		puts []put
		want []string
	}{
		{"new rules go first", []put{{"a", "", ""}, {"b", "", ""}, {"c", "", ""}}, []string{"c", "b", "a"}},
		{"before", []put{{"a", "", ""}, {"b", "", ""}, {"c", "a", ""}}, []string{"b", "c", "a"}},
		{"after", []put{{"a", "", ""}, {"b", "", ""}, {"c", "", "b"}}, []string{"b", "c", "a"}},
		{"after last", []put{{"a", "", ""}, {"b", "", ""}, {"c", "", "a"}}, []string{"b", "a", "c"}},
		{"before wins over after", []put{{"a", "", ""}, {"b", "", ""}, {"c", "a", "b"}}, []string{"b", "c", "a"}},
		{"update keeps place", []put{{"a", "", ""}, {"b", "", ""}, {"c", "", ""}, {"b", "", ""}}, []string{"c", "b", "a"}},
		{"update moves with before", []put{{"a", "", ""}, {"b", "", ""}, {"c", "", ""}, {"c", "", "a"}}, []string{"b", "a", "c"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRules(nil, DefaultRuleset(alice, "alice"))
			for _, p := range tc.puts {
				mustNil(t, r.Put(KindUnderride, p.id, body, p.before, p.after))
			}
			got := ids(r.State.User.Underride)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v want %v", got, tc.want)
			}
			// User underrides precede server-default underrides.
			merged := ids(r.Ruleset().Underride)
			if !reflect.DeepEqual(merged[:len(tc.want)], tc.want) || merged[len(tc.want)] != RuleCall {
				t.Errorf("merged underride %v", merged)
			}
		})
	}
}

func TestPutUpdateKeepsEnabled(t *testing.T) {
	r := NewRules(nil, DefaultRuleset(alice, "alice"))
	mustNil(t, r.Put(KindContent, "x", []byte(`{"pattern":"x","actions":["notify"]}`), "", ""))
	mustNil(t, r.SetEnabled(KindContent, "x", false))
	mustNil(t, r.Put(KindContent, "x", []byte(`{"pattern":"y*","actions":[]}`), "", ""))
	got, err := r.Get(ScopeGlobal, KindContent, "x")
	mustNil(t, err)
	want := `{"rule_id":"x","default":false,"enabled":false,"actions":[],"pattern":"y*"}`
	if mustJSON(got) != want {
		t.Errorf("got %s want %s", mustJSON(got), want)
	}
	// Unknown condition kinds are stored verbatim and never match.
	mustNil(t, r.Put(KindOverride, "future", []byte(`{"conditions":[{"kind":"org.example.future","feature":"f","key":"k"}],"actions":["notify"]}`), "", ""))
	got, _ = r.Get(ScopeGlobal, KindOverride, "future")
	if c := mustJSON(got.Conditions); c != `[{"kind":"org.example.future","key":"k","feature":"f"}]` {
		t.Errorf("conditions %s", c)
	}
	if acts, m := Evaluate(r.Ruleset(), RawEvent(`{"type":"m.room.message","content":{"body":"x"}}`), Context{}); !m || acts.Highlight() {
		t.Errorf("expected .m.rule.message, got %v %s", m, mustJSON(acts))
	}
}

func TestOperationErrors(t *testing.T) {
	r := NewRules(nil, DefaultRuleset(alice, "alice"))
	mustNil(t, r.Put(KindOverride, "mine", []byte(`{"actions":[]}`), "", ""))
	ok := []byte(`{"actions":["notify"]}`)
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"get unknown", get(r, ScopeGlobal, KindOverride, "nope"), ErrRuleNotFound},
		{"get wrong kind", get(r, ScopeGlobal, KindUnderride, "mine"), ErrRuleNotFound},
		{"get bad kind", get(r, ScopeGlobal, "weird", "mine"), ErrUnknownKind},
		{"get device scope", get(r, "device", KindOverride, "mine"), ErrUnknownScope},
		{"put reserved id", r.Put(KindOverride, ".m.rule.master", ok, "", ""), ErrInvalidRule},
		{"put slash", r.Put(KindOverride, "a/b", ok, "", ""), ErrInvalidRule},
		{"put backslash", r.Put(KindOverride, `a\b`, ok, "", ""), ErrInvalidRule},
		{"put no actions", r.Put(KindOverride, "x", []byte(`{}`), "", ""), ErrInvalidRule},
		{"put unknown action", r.Put(KindOverride, "x", []byte(`{"actions":["explode"]}`), "", ""), ErrInvalidRule},
		{"put tweak without name", r.Put(KindOverride, "x", []byte(`{"actions":[{"value":1}]}`), "", ""), ErrInvalidRule},
		{"put content without pattern", r.Put(KindContent, "x", ok, "", ""), ErrInvalidRule},
		{"put condition without kind", r.Put(KindOverride, "x", []byte(`{"actions":[],"conditions":[{"key":"type"}]}`), "", ""), ErrInvalidRule},
		{"put not json", r.Put(KindOverride, "x", []byte(`nope`), "", ""), ErrBadJSON},
		{"put actions not array", r.Put(KindOverride, "x", []byte(`{"actions":"notify"}`), "", ""), ErrBadJSON},
		{"put pattern not string", r.Put(KindContent, "x", []byte(`{"actions":[],"pattern":3}`), "", ""), ErrBadJSON},
		{"put condition key not string", r.Put(KindOverride, "x", []byte(`{"actions":[],"conditions":[{"kind":"event_match","key":1}]}`), "", ""), ErrBadJSON},
		{"put bad kind", r.Put("weird", "x", ok, "", ""), ErrUnknownKind},
		{"put before missing", r.Put(KindOverride, "x", ok, "ghost", ""), ErrBadBeforeAfter},
		{"put after missing", r.Put(KindOverride, "x", ok, "", "ghost"), ErrBadBeforeAfter},
		{"put before default", r.Put(KindOverride, "x", ok, RuleMaster, ""), ErrBadBeforeAfter},
		{"put before other kind", r.Put(KindUnderride, "x", ok, "mine", ""), ErrBadBeforeAfter},
		{"put relative to itself", r.Put(KindOverride, "mine", ok, "mine", ""), ErrBadBeforeAfter},
		{"delete missing", r.Delete(KindOverride, "nope"), ErrRuleNotFound},
		{"delete default", r.Delete(KindOverride, RuleMaster), ErrRuleNotFound},
		{"delete bad kind", r.Delete("weird", "mine"), ErrUnknownKind},
		{"enable missing", r.SetEnabled(KindRoom, "!nope:x", true), ErrRuleNotFound},
		{"actions missing rule", r.SetActions(KindRoom, "!nope:x", Actions{}), ErrRuleNotFound},
		{"actions nil", r.SetActions(KindOverride, "mine", nil), ErrInvalidRule},
		{"actions invalid", r.SetActions(KindOverride, RuleMaster, Actions{json.RawMessage(`3`)}), ErrInvalidRule},
	}
	for _, tc := range cases {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	// None of the failures changed anything.
	if got := ids(r.State.User.Override); !reflect.DeepEqual(got, []string{"mine"}) {
		t.Errorf("state changed by failed calls: %v", got)
	}
	if len(r.State.Defaults) != 0 {
		t.Errorf("defaults changed: %v", r.State.Defaults)
	}
	_, err := r.GetEnabled(KindOverride, "nope")
	if !errors.Is(err, ErrRuleNotFound) {
		t.Errorf("GetEnabled: %v", err)
	}
	_, err = r.GetActions("weird", "nope")
	if !errors.Is(err, ErrUnknownKind) {
		t.Errorf("GetActions: %v", err)
	}
}

func get(r *Rules, scope string, kind Kind, id string) error {
	_, err := r.Get(scope, kind, id)
	return err
}

func TestDeleteAndGet(t *testing.T) {
	r := NewRules(nil, DefaultRuleset(alice, "alice"))
	mustNil(t, r.Put(KindOverride, "a", []byte(`{"actions":["notify"]}`), "", ""))
	mustNil(t, r.Put(KindOverride, "b", []byte(`{"actions":["notify"]}`), "", ""))
	got, err := r.Get(ScopeGlobal, KindOverride, "a")
	mustNil(t, err)
	if mustJSON(got) != `{"rule_id":"a","default":false,"enabled":true,"conditions":[],"actions":["notify"]}` {
		t.Errorf("get a: %s", mustJSON(got))
	}
	mustNil(t, r.Delete(KindOverride, "a"))
	if _, err := r.Get(ScopeGlobal, KindOverride, "a"); !errors.Is(err, ErrRuleNotFound) {
		t.Errorf("a still there: %v", err)
	}
	if got := ids(r.State.User.Override); !reflect.DeepEqual(got, []string{"b"}) {
		t.Errorf("left %v", got)
	}
	// Get returns copies: changing them does not change the state.
	g, _ := r.Get(ScopeGlobal, KindOverride, "b")
	g.Actions[0] = json.RawMessage(`"x"`)
	if g2, _ := r.Get(ScopeGlobal, KindOverride, "b"); !g2.Actions.Notify() {
		t.Errorf("Get leaked internal slice")
	}
}

func TestConditions(t *testing.T) {
	ev := RawEvent(`{"type":"m.room.message","sender":"@bob:x","state_key":"",
		"content":{"body":"An example event.","topic":"Lunch plans","m.federate":true,"n":3,"f":1.5,"nul":null,
		"m\\x":"bs","a.b":{"c":"dot"},
		"list":["#somewhere:example.org","#myroom:example.com",7,false,null,{"x":1}]}}`)
	ctx := Context{MemberCount: 10, DisplayName: "Bob", SenderPowerLevel: 20, NotificationPowerLevels: map[string]int64{"custom": 10}}
	s := func(v string) *string { return &v }
	cases := []struct {
		name string
		c    Condition
		want bool
	}{
		{"glob ? and * case-insensitive", Condition{Kind: CondEventMatch, Key: "content.topic", Pattern: s("lunc?*")}, true},
		{"glob whole value", Condition{Kind: CondEventMatch, Key: "content.topic", Pattern: s("lunch")}, false},
		{"glob ? needs a char", Condition{Kind: CondEventMatch, Key: "content.topic", Pattern: s("lunch plans?")}, false},
		{"glob regexp metachars are literal", Condition{Kind: CondEventMatch, Key: "content.topic", Pattern: s("Lunch.plans")}, false},
		{"missing key never matches *", Condition{Kind: CondEventMatch, Key: "content.nope", Pattern: s("*")}, false},
		{"non-string never matches *", Condition{Kind: CondEventMatch, Key: "content.n", Pattern: s("*")}, false},
		{"body word boundary", Condition{Kind: CondEventMatch, Key: "content.body", Pattern: s("ex*ple")}, true},
		{"body spans words", Condition{Kind: CondEventMatch, Key: "content.body", Pattern: s("an ex*")}, true},
		{"body partial word", Condition{Kind: CondEventMatch, Key: "content.body", Pattern: s("xampl")}, false},
		{"empty pattern on state_key", Condition{Kind: CondEventMatch, Key: "state_key", Pattern: s("")}, true},
		{"nil pattern", Condition{Kind: CondEventMatch, Key: "state_key"}, false},
		{"escaped dot key", Condition{Kind: CondEventMatch, Key: `content.a\.b.c`, Pattern: s("dot")}, true},
		{"unescaped dot is a path", Condition{Kind: CondEventMatch, Key: `content.a.b.c`, Pattern: s("dot")}, false},
		{"escaped backslash key", Condition{Kind: CondEventMatch, Key: `content.m\\x`, Pattern: s("bs")}, true},
		{"is bool", Condition{Kind: CondEventPropertyIs, Key: `content.m\.federate`, Value: json.RawMessage(`true`)}, true},
		{"is bool vs string", Condition{Kind: CondEventPropertyIs, Key: `content.m\.federate`, Value: json.RawMessage(`"true"`)}, false},
		{"is bool vs int", Condition{Kind: CondEventPropertyIs, Key: `content.m\.federate`, Value: json.RawMessage(`1`)}, false},
		{"is int", Condition{Kind: CondEventPropertyIs, Key: "content.n", Value: json.RawMessage(`3`)}, true},
		{"is float never", Condition{Kind: CondEventPropertyIs, Key: "content.f", Value: json.RawMessage(`1.5`)}, false},
		{"is null", Condition{Kind: CondEventPropertyIs, Key: "content.nul", Value: json.RawMessage(`null`)}, true},
		{"is null vs absent", Condition{Kind: CondEventPropertyIs, Key: "content.absent", Value: json.RawMessage(`null`)}, false},
		{"is without value", Condition{Kind: CondEventPropertyIs, Key: "content.nul"}, false},
		{"is compound never", Condition{Kind: CondEventPropertyIs, Key: "content.a\\.b", Value: json.RawMessage(`{"c":"dot"}`)}, false},
		{"contains string", Condition{Kind: CondEventPropertyContains, Key: "content.list", Value: json.RawMessage(`"#myroom:example.com"`)}, true},
		{"contains partial", Condition{Kind: CondEventPropertyContains, Key: "content.list", Value: json.RawMessage(`":example.com"`)}, false},
		{"contains int", Condition{Kind: CondEventPropertyContains, Key: "content.list", Value: json.RawMessage(`7`)}, true},
		{"contains false", Condition{Kind: CondEventPropertyContains, Key: "content.list", Value: json.RawMessage(`false`)}, true},
		{"contains null", Condition{Kind: CondEventPropertyContains, Key: "content.list", Value: json.RawMessage(`null`)}, true},
		{"contains on non-array", Condition{Kind: CondEventPropertyContains, Key: "content.topic", Value: json.RawMessage(`"Lunch plans"`)}, false},
		{"display name", Condition{Kind: CondContainsDisplayName}, false},
		{"count ==", Condition{Kind: CondRoomMemberCount, Is: "10"}, true},
		{"count == explicit", Condition{Kind: CondRoomMemberCount, Is: "==10"}, true},
		{"count <", Condition{Kind: CondRoomMemberCount, Is: "<10"}, false},
		{"count <=", Condition{Kind: CondRoomMemberCount, Is: "<=10"}, true},
		{"count >", Condition{Kind: CondRoomMemberCount, Is: ">9"}, true},
		{"count >=", Condition{Kind: CondRoomMemberCount, Is: ">=11"}, false},
		{"count malformed", Condition{Kind: CondRoomMemberCount, Is: "ten"}, false},
		{"count empty", Condition{Kind: CondRoomMemberCount, Is: ""}, false},
		{"count negative", Condition{Kind: CondRoomMemberCount, Is: "<-1"}, false},
		{"permission room default 50", Condition{Kind: CondSenderNotificationPermission, Key: "room"}, false},
		{"permission custom", Condition{Kind: CondSenderNotificationPermission, Key: "custom"}, true},
		{"permission unknown key", Condition{Kind: CondSenderNotificationPermission, Key: "other"}, false},
		{"unknown kind", Condition{Kind: "org.example.unknown"}, false},
	}
	for _, tc := range cases {
		e := &evalEvent{doc: parse(ev), ctx: ctx}
		if got := e.condMatches(&tc.c); got != tc.want {
			t.Errorf("%s: got %v want %v", tc.name, got, tc.want)
		}
	}

	// contains_display_name with a matching name, case-insensitively and at
	// word boundaries only.
	for body, want := range map[string]bool{"hi bob": true, "BOB!": true, "bobby": false, "hi_bob": false, "(Bob)": true} {
		e := &evalEvent{doc: parse(RawEvent(`{"content":{"body":` + mustJSON(body) + `}}`)), ctx: ctx}
		if got := e.condMatches(&Condition{Kind: CondContainsDisplayName}); got != want {
			t.Errorf("display name in %q: got %v", body, got)
		}
	}
}

func TestActionsHelpers(t *testing.T) {
	cases := []struct {
		acts      string
		notify    bool
		highlight bool
		sound     string
	}{
		{`[]`, false, false, ""},
		{`["notify"]`, true, false, ""},
		{`["notify",{"set_tweak":"highlight"}]`, true, true, ""},
		{`["notify",{"set_tweak":"highlight","value":false}]`, true, false, ""},
		{`[{"set_tweak":"sound","value":"ring"},{"set_tweak":"sound","value":"bell"}]`, false, false, "bell"},
	}
	for _, tc := range cases {
		var a Actions
		mustNil(t, json.Unmarshal([]byte(tc.acts), &a))
		if a.Notify() != tc.notify || a.Highlight() != tc.highlight || a.Sound() != tc.sound {
			t.Errorf("%s: %v %v %q", tc.acts, a.Notify(), a.Highlight(), a.Sound())
		}
	}
	var nilActs Actions
	if mustJSON(nilActs) != "[]" {
		t.Errorf("nil actions marshal as %s", mustJSON(nilActs))
	}
}

func TestConditionJSONRoundTrip(t *testing.T) {
	in := `{"kind":"event_property_is","key":"content.x","value":null}`
	var c Condition
	mustNil(t, json.Unmarshal([]byte(in), &c))
	if string(c.Value) != "null" {
		t.Fatalf("null value lost: %q", c.Value)
	}
	if mustJSON(c) != in {
		t.Errorf("round trip %s", mustJSON(c))
	}
	var st State
	if err := json.Unmarshal([]byte(`{"user":{"override":[{"rule_id":"x","conditions":[{"kind":"k","pattern":null}],"actions":[]}]}}`), &st); err == nil {
		t.Errorf("null pattern should be rejected")
	}
	if _, err := LoadState(nil); err != nil {
		t.Errorf("empty blob: %v", err)
	}
	if _, err := LoadState([]byte(`{"user":3}`)); err == nil {
		t.Errorf("corrupt blob accepted")
	}
}

// The MSC3930 poll rules: responses never notify, starts and ends notify,
// with a sound only in one-to-one rooms.
func TestPollRules(t *testing.T) {
	rs := DefaultRuleset(alice, "alice")
	ev := func(typ string) RawEvent {
		return RawEvent(`{"type":"` + typ + `","sender":"@bob:example.org","content":{}}`)
	}
	for _, tc := range []struct {
		typ     string
		members int
		notify  bool
		sound   string
	}{
		{"org.matrix.msc3381.poll.response", 2, false, ""},
		{"org.matrix.msc3381.poll.start", 2, true, "default"},
		{"org.matrix.msc3381.poll.start", 5, true, ""},
		{"org.matrix.msc3381.poll.end", 2, true, "default"},
		{"org.matrix.msc3381.poll.end", 5, true, ""},
	} {
		acts, matched := Evaluate(rs, ev(tc.typ), Context{MemberCount: tc.members})
		if !matched || acts.Notify() != tc.notify || acts.Sound() != tc.sound {
			t.Errorf("%s in a room of %d: matched=%v notify=%v sound=%q", tc.typ, tc.members, matched, acts.Notify(), acts.Sound())
		}
	}
}
