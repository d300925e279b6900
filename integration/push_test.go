package integration

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"
)

// pushRuleIDs lists the rule IDs of a kind in priority order.
func pushRuleIDs(rules pushrules.PushRuleArray) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.RuleID)
	}
	return out
}

// pushUserIDs keeps the IDs that are not server defaults (no leading ".").
func pushUserIDs(ids []string) []string {
	return slices.DeleteFunc(slices.Clone(ids), func(s string) bool { return len(s) > 0 && s[0] == '.' })
}

func pushNotify() []*pushrules.PushAction {
	return []*pushrules.PushAction{{Action: pushrules.ActionNotify}}
}

func pushMatch(pattern string) []*pushrules.PushCondition {
	return []*pushrules.PushCondition{{Kind: pushrules.KindEventMatch, Key: "content.body", Pattern: pattern}}
}

// pushAccountData returns the content of m.push_rules in a sync's global
// account data, or nil.
func pushAccountData(resp *ephSyncResp) *pushrules.PushRuleset {
	ev := ephFind(resp.AccountData.Events, "m.push_rules")
	if ev == nil {
		return nil
	}
	var c struct {
		Global *pushrules.PushRuleset `json:"global"`
	}
	if json.Unmarshal(ev.Content, &c) != nil {
		return nil
	}
	return c.Global
}

func TestPushRulesDefaultsAndSync(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ctx := ctxT(t)

	rs, err := alice.GetPushRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	override := pushRuleIDs(rs.Override)
	if len(override) == 0 || override[0] != ".m.rule.master" {
		t.Errorf("override rules = %v, want .m.rule.master first", override)
	}
	for _, want := range []string{".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.roomnotif"} {
		if !slices.Contains(override, want) {
			t.Errorf("override rules lack %s: %v", want, override)
		}
	}
	if !slices.Contains(pushRuleIDs(rs.Content), ".m.rule.contains_user_name") {
		t.Errorf("content rules = %v, want the legacy username rule", pushRuleIDs(rs.Content))
	}
	if !slices.Contains(pushRuleIDs(rs.Underride), ".m.rule.message") {
		t.Errorf("underride rules = %v", pushRuleIDs(rs.Underride))
	}
	// GET /pushrules/ wraps the same ruleset in "global".
	var all struct {
		Global *pushrules.PushRuleset `json:"global"`
	}
	u := alice.BuildClientURL("v3", "pushrules") + "/"
	if _, err := alice.MakeRequest(ctx, http.MethodGet, u, nil, &all); err != nil || all.Global == nil || len(all.Global.Override) != len(rs.Override) {
		t.Errorf("GET /pushrules/ = %+v, %v", all.Global, err)
	}

	// An initial sync carries m.push_rules though alice never changed a rule.
	resp := ephSync(t, alice, "", 0)
	ad := pushAccountData(resp)
	if ad == nil || !slices.Contains(pushRuleIDs(ad.Underride), ".m.rule.message") {
		t.Fatalf("initial sync m.push_rules = %+v", ad)
	}

	// A change reaches the incremental sync, and later initial syncs.
	if err := alice.SetPushRuleEnabled(ctx, "global", pushrules.UnderrideRule, ".m.rule.message", false); err != nil {
		t.Fatal(err)
	}
	resp = ephSync(t, alice, resp.NextBatch, 5*time.Second)
	ad = pushAccountData(resp)
	if ad == nil {
		t.Fatal("incremental sync lacks m.push_rules after a change")
	}
	for _, r := range ad.Underride {
		if r.RuleID == ".m.rule.message" && r.Enabled {
			t.Error("m.push_rules still shows .m.rule.message enabled")
		}
	}
	var count int
	for _, ev := range ephSync(t, alice, "", 0).AccountData.Events {
		if ev.Type == "m.push_rules" {
			count++
		}
	}
	if count != 1 {
		t.Errorf("initial sync has %d m.push_rules events, want 1", count)
	}
}

func TestPushRulesCRUD(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ctx := ctxT(t)
	put := func(id string, before, after string) error {
		return alice.PutPushRule(ctx, "global", pushrules.OverrideRule, id, &mautrix.ReqPutPushRule{
			Before: before, After: after, Actions: pushNotify(), Conditions: pushMatch(id),
		})
	}
	order := func() []string {
		t.Helper()
		rs, err := alice.GetPushRules(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids := pushRuleIDs(rs.Override)
		if ids[0] != ".m.rule.master" {
			t.Errorf("master is not first: %v", ids)
		}
		return pushUserIDs(ids)
	}
	if err := put("a", "", ""); err != nil {
		t.Fatal(err)
	}
	if err := put("b", "", ""); err != nil { // new rules go first
		t.Fatal(err)
	}
	if got := order(); !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("order = %v, want [b a]", got)
	}
	if err := put("c", "", "b"); err != nil {
		t.Fatal(err)
	}
	if err := put("d", "b", ""); err != nil {
		t.Fatal(err)
	}
	if got := order(); !slices.Equal(got, []string{"d", "b", "c", "a"}) {
		t.Errorf("order = %v, want [d b c a]", got)
	}
	if err := put("a", "d", "c"); err != nil { // before wins over after; moves an existing rule
		t.Fatal(err)
	}
	if got := order(); !slices.Equal(got, []string{"a", "d", "b", "c"}) {
		t.Errorf("order = %v, want [a d b c]", got)
	}

	rule, err := alice.GetPushRule(ctx, "global", pushrules.OverrideRule, "b")
	if err != nil {
		t.Fatal(err)
	}
	if rule.RuleID != "b" || rule.Default || !rule.Enabled || len(rule.Conditions) != 1 || rule.Conditions[0].Pattern != "b" {
		t.Errorf("rule b = %+v", rule)
	}
	// Content rule with a pattern.
	if err := alice.PutPushRule(ctx, "global", pushrules.ContentRule, "cake", &mautrix.ReqPutPushRule{Actions: pushNotify(), Pattern: "cake*lie"}); err != nil {
		t.Fatal(err)
	}
	if r, err := alice.GetPushRule(ctx, "global", pushrules.ContentRule, "cake"); err != nil || r.Pattern != "cake*lie" {
		t.Errorf("content rule = %+v, %v", r, err)
	}

	// enabled and actions, on a user rule and on a server default.
	var en struct {
		Enabled bool `json:"enabled"`
	}
	for _, ruleID := range []string{"b", ".m.rule.suppress_notices"} {
		if err := alice.SetPushRuleEnabled(ctx, "global", pushrules.OverrideRule, ruleID, false); err != nil {
			t.Fatal(err)
		}
		if _, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildClientURL("v3", "pushrules", "global", "override", ruleID, "enabled"), nil, &en); err != nil || en.Enabled {
			t.Errorf("%s enabled = %v, %v; want false", ruleID, en.Enabled, err)
		}
		highlight := []*pushrules.PushAction{{Action: pushrules.ActionNotify}, {Action: pushrules.ActionSetTweak, Tweak: pushrules.TweakHighlight, Value: true}}
		if err := alice.PutPushRuleActions(ctx, "global", pushrules.OverrideRule, ruleID, highlight); err != nil {
			t.Fatal(err)
		}
		var acts struct {
			Actions []json.RawMessage `json:"actions"`
		}
		if _, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildClientURL("v3", "pushrules", "global", "override", ruleID, "actions"), nil, &acts); err != nil || len(acts.Actions) != 2 || string(acts.Actions[0]) != `"notify"` {
			t.Errorf("%s actions = %s, %v", ruleID, acts.Actions, err)
		}
	}
	// Updating a rule keeps its place and enabled state.
	if err := put("b", "", ""); err != nil {
		t.Fatal(err)
	}
	if got := order(); !slices.Equal(got, []string{"a", "d", "b", "c"}) {
		t.Errorf("order after update = %v", got)
	}
	if r, _ := alice.GetPushRule(ctx, "global", pushrules.OverrideRule, "b"); r == nil || r.Enabled {
		t.Errorf("updated rule b = %+v, want still disabled", r)
	}
	// The kind listing Synapse also serves.
	var list []pushrules.PushRule
	if _, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildClientURL("v3", "pushrules", "global", "override")+"/", nil, &list); err != nil || len(list) < 5 {
		t.Errorf("GET /pushrules/global/override/ = %d rules, %v", len(list), err)
	}

	if err := alice.DeletePushRule(ctx, "global", pushrules.OverrideRule, "b"); err != nil {
		t.Fatal(err)
	}
	_, err = alice.GetPushRule(ctx, "global", pushrules.OverrideRule, "b")
	ephWantErr(t, "GET deleted rule", err, 404, "M_NOT_FOUND")
	if got := order(); !slices.Equal(got, []string{"a", "d", "c"}) {
		t.Errorf("order after delete = %v", got)
	}
}

func TestPushRulesErrors(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	ctx := ctxT(t)
	if err := alice.PutPushRule(ctx, "global", pushrules.OverrideRule, "mine", &mautrix.ReqPutPushRule{Actions: pushNotify(), Conditions: pushMatch("x")}); err != nil {
		t.Fatal(err)
	}
	url := func(parts ...any) string {
		return alice.BuildClientURL(append([]any{"v3", "pushrules"}, parts...)...)
	}
	cases := []struct {
		name, method, url, body string
		status                  int
		errcode                 string
	}{
		{"rule ID starting with a dot", "PUT", url("global", "override", ".mine"), `{"actions":["notify"]}`, 400, "M_INVALID_PARAM"},
		{"rule ID with a slash", "PUT", url("global", "override", "a/b"), `{"actions":["notify"]}`, 400, "M_INVALID_PARAM"},
		{"before an unknown rule", "PUT", url("global", "override", "x") + "?before=nope", `{"actions":["notify"]}`, 400, "M_UNKNOWN"},
		{"after a server default", "PUT", url("global", "override", "x") + "?after=.m.rule.master", `{"actions":["notify"]}`, 400, "M_UNKNOWN"},
		{"unknown kind", "PUT", url("global", "bogus", "x"), `{"actions":["notify"]}`, 400, "M_INVALID_PARAM"},
		{"unknown scope", "PUT", url("device", "override", "x"), `{"actions":["notify"]}`, 400, "M_INVALID_PARAM"},
		{"missing actions", "PUT", url("global", "override", "x"), `{"conditions":[]}`, 400, "M_INVALID_PARAM"},
		{"unknown action", "PUT", url("global", "override", "x"), `{"actions":["explode"]}`, 400, "M_INVALID_PARAM"},
		{"content rule without pattern", "PUT", url("global", "content", "x"), `{"actions":["notify"]}`, 400, "M_INVALID_PARAM"},
		{"body not an object", "PUT", url("global", "override", "x"), `["notify"]`, 400, "M_BAD_JSON"},
		{"body not JSON", "PUT", url("global", "override", "x"), `{actions`, 400, "M_NOT_JSON"},
		{"GET unknown rule", "GET", url("global", "override", "nope"), ``, 404, "M_NOT_FOUND"},
		// GET answers only 200 or 404 in the spec: a kind this server does
		// not have (MSC4306's postcontent) holds no such rule.
		{"GET unknown kind", "GET", url("global", "postcontent", "x"), ``, 404, "M_NOT_FOUND"},
		{"DELETE unknown rule", "DELETE", url("global", "override", "nope"), ``, 404, "M_NOT_FOUND"},
		{"DELETE server default", "DELETE", url("global", "override", ".m.rule.master"), ``, 404, "M_NOT_FOUND"},
		{"enabled of unknown rule", "PUT", url("global", "override", "nope", "enabled"), `{"enabled":true}`, 404, "M_NOT_FOUND"},
		{"enabled missing", "PUT", url("global", "override", "mine", "enabled"), `{}`, 400, "M_BAD_JSON"},
		{"enabled not a boolean", "PUT", url("global", "override", "mine", "enabled"), `{"enabled":"yes"}`, 400, "M_BAD_JSON"},
		{"GET enabled of unknown rule", "GET", url("global", "override", "nope", "enabled"), ``, 404, "M_NOT_FOUND"},
		{"actions of unknown rule", "PUT", url("global", "override", "nope", "actions"), `{"actions":["notify"]}`, 404, "M_NOT_FOUND"},
		{"actions missing", "PUT", url("global", "override", "mine", "actions"), `{}`, 400, "M_INVALID_PARAM"},
		{"actions not a list", "PUT", url("global", "override", "mine", "actions"), `{"actions":"notify"}`, 400, "M_BAD_JSON"},
		{"GET actions of unknown rule", "GET", url("global", "override", "nope", "actions"), ``, 404, "M_NOT_FOUND"},
	}
	for _, c := range cases {
		ephWantErr(t, c.name, ephRaw(t, alice, c.method, c.url, c.body), c.status, c.errcode)
	}
	// None of the failures changed anything.
	rs, err := alice.GetPushRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := pushUserIDs(pushRuleIDs(rs.Override)); !slices.Equal(got, []string{"mine"}) {
		t.Errorf("override user rules after errors = %v", got)
	}
}

// pushUnreadOf returns a room's unread counts in a sync.
func pushUnreadOf(t *testing.T, resp *ephSyncResp, roomID id.RoomID) (notif, highlight int) {
	t.Helper()
	jr, ok := resp.Rooms.Join[roomID]
	if !ok {
		t.Fatalf("room %s not in sync", roomID)
	}
	return jr.UnreadNotifications["notification_count"], jr.UnreadNotifications["highlight_count"]
}

func TestUnreadCounts(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := ephRoom(t, alice, bob)
	ctx := ctxT(t)
	if _, err := alice.SendText(ctx, roomID, "alice's own message does not count"); err != nil {
		t.Fatal(err)
	}
	if nc, hc := pushUnreadOf(t, ephSync(t, alice, "", 0), roomID); nc != 0 || hc != 0 {
		t.Errorf("before bob writes: %d/%d", nc, hc)
	}
	for _, body := range []string{"one", "two", "three"} {
		if _, err := bob.SendText(ctx, roomID, body); err != nil {
			t.Fatal(err)
		}
	}
	resp := ephSync(t, alice, "", 0)
	if nc, hc := pushUnreadOf(t, resp, roomID); nc != 3 || hc != 0 {
		t.Errorf("after 3 messages: notification_count %d highlight_count %d, want 3/0", nc, hc)
	}
	mention, err := bob.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{
		"msgtype": "m.text", "body": "hey you",
		"m.mentions": map[string]any{"user_ids": []string{alice.UserID.String()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp = ephSync(t, alice, resp.NextBatch, 5*time.Second)
	if nc, hc := pushUnreadOf(t, resp, roomID); nc != 4 || hc != 1 {
		t.Errorf("after a mention: %d/%d, want 4/1", nc, hc)
	}
	// A reaction notifies nobody (.m.rule.reaction).
	if _, err := bob.SendMessageEvent(ctx, roomID, event.EventReaction, map[string]any{
		"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": mention.EventID, "key": "👍"},
	}); err != nil {
		t.Fatal(err)
	}
	if nc, _ := pushUnreadOf(t, ephSync(t, alice, "", 0), roomID); nc != 4 {
		t.Errorf("after a reaction: notification_count %d, want 4", nc)
	}

	// Without m.mentions, the legacy username rule still highlights.
	legacy, err := bob.SendText(ctx, roomID, "ping "+alice.UserID.Localpart()+"!")
	if err != nil {
		t.Fatal(err)
	}
	if nc, hc := pushUnreadOf(t, ephSync(t, alice, "", 0), roomID); nc != 5 || hc != 2 {
		t.Errorf("after a legacy mention: %d/%d, want 5/2", nc, hc)
	}

	// Reading the last message clears both counts.
	if err := alice.SendReceipt(ctx, roomID, legacy.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	resp = ephSync(t, alice, resp.NextBatch, 5*time.Second)
	if nc, hc := pushUnreadOf(t, resp, roomID); nc != 0 || hc != 0 {
		t.Errorf("after the receipt: %d/%d, want 0/0", nc, hc)
	}

	// A private receipt clears them too.
	last, err := bob.SendText(ctx, roomID, "again")
	if err != nil {
		t.Fatal(err)
	}
	if nc, _ := pushUnreadOf(t, ephSync(t, alice, "", 0), roomID); nc != 1 {
		t.Errorf("after one more message: %d, want 1", nc)
	}
	if err := alice.SendReceipt(ctx, roomID, last.EventID, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	if nc, hc := pushUnreadOf(t, ephSync(t, alice, "", 0), roomID); nc != 0 || hc != 0 {
		t.Errorf("after a private receipt: %d/%d, want 0/0", nc, hc)
	}

	// Muting with the master rule stops counting.
	if err := alice.SetPushRuleEnabled(ctx, "global", pushrules.OverrideRule, ".m.rule.master", true); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendText(ctx, roomID, "muted"); err != nil {
		t.Fatal(err)
	}
	if nc, _ := pushUnreadOf(t, ephSync(t, alice, "", 0), roomID); nc != 0 {
		t.Errorf("with .m.rule.master enabled: %d, want 0", nc)
	}
}
