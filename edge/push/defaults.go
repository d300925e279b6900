package push

import (
	"encoding/json"
)

// Rule IDs of the server-default rules.
const (
	RuleMaster                = ".m.rule.master"
	RuleSuppressNotices       = ".m.rule.suppress_notices"
	RuleInviteForMe           = ".m.rule.invite_for_me"
	RuleMemberEvent           = ".m.rule.member_event"
	RuleIsUserMention         = ".m.rule.is_user_mention"
	RuleIsRoomMention         = ".m.rule.is_room_mention"
	RuleTombstone             = ".m.rule.tombstone"
	RuleReaction              = ".m.rule.reaction"
	RuleRoomServerACL         = ".m.rule.room.server_acl"
	RuleSuppressEdits         = ".m.rule.suppress_edits"
	RuleCall                  = ".m.rule.call"
	RuleEncryptedRoomOneToOne = ".m.rule.encrypted_room_one_to_one"
	RuleRoomOneToOne          = ".m.rule.room_one_to_one"
	RuleMessage               = ".m.rule.message"
	RuleEncrypted             = ".m.rule.encrypted"

	// Poll rules of MSC3930 under its unstable prefix, as Synapse ships
	// them: poll responses are silent, poll starts and ends notify like
	// messages (with a sound in one-to-one rooms).
	RulePollResponse      = ".org.matrix.msc3930.rule.poll_response"
	RulePollStartOneToOne = ".org.matrix.msc3930.rule.poll_start_one_to_one"
	RulePollEndOneToOne   = ".org.matrix.msc3930.rule.poll_end_one_to_one"
	RulePollStart         = ".org.matrix.msc3930.rule.poll_start"
	RulePollEnd           = ".org.matrix.msc3930.rule.poll_end"

	// Legacy mention rules, removed from the spec in v1.17 (MSC4210); only
	// present with DefaultOptions.LegacyMentions.
	RuleContainsDisplayName = ".m.rule.contains_display_name"
	RuleRoomNotif           = ".m.rule.roomnotif"
	RuleContainsUserName    = ".m.rule.contains_user_name"
)

// legacyMentionRules are skipped for events whose content has m.mentions:
// the spec's mentions module says they were disabled in that case.
var legacyMentionRules = map[string]bool{
	RuleContainsDisplayName: true,
	RuleRoomNotif:           true,
	RuleContainsUserName:    true,
}

// DefaultOptions adjusts DefaultRulesetWith.
type DefaultOptions struct {
	// LegacyMentions adds .m.rule.contains_display_name and .m.rule.roomnotif
	// (override) and .m.rule.contains_user_name (content) at the positions
	// they had in spec v1.7-v1.16, for clients that do not send m.mentions.
	LegacyMentions bool
}

// DefaultRuleset returns the spec's server-default rules for userID, in the
// spec's order. localpart is only used by the legacy content rule, see
// DefaultRulesetWith.
func DefaultRuleset(userID, localpart string) *Ruleset {
	return DefaultRulesetWith(userID, localpart, DefaultOptions{})
}

// DefaultRulesetWith is DefaultRuleset with options. Each call returns a
// fresh ruleset the caller may modify.
func DefaultRulesetWith(userID, localpart string, opts DefaultOptions) *Ruleset {
	notify := func() json.RawMessage { return json.RawMessage(`"notify"`) }
	sound := func(v string) json.RawMessage {
		b, _ := json.Marshal(map[string]string{"set_tweak": "sound", "value": v})
		return b
	}
	highlight := func() json.RawMessage { return json.RawMessage(`{"set_tweak":"highlight"}`) }
	match := func(key, pattern string) Condition {
		return Condition{Kind: CondEventMatch, Key: key, Pattern: &pattern}
	}
	rule := func(id string, conds []Condition, actions ...json.RawMessage) PushRule {
		if conds == nil {
			conds = []Condition{}
		}
		if actions == nil {
			actions = Actions{}
		}
		return PushRule{RuleID: id, Default: true, Enabled: true, Conditions: conds, Actions: actions}
	}
	userIDValue, _ := json.Marshal(userID)

	master := rule(RuleMaster, nil)
	master.Enabled = false // the spec ships it disabled; users enable it to mute everything

	rs := &Ruleset{Content: []PushRule{}, Room: []PushRule{}, Sender: []PushRule{}}
	rs.Override = []PushRule{
		master,
		rule(RuleSuppressNotices, []Condition{match("content.msgtype", "m.notice")}),
		rule(RuleInviteForMe, []Condition{
			match("type", "m.room.member"),
			match("content.membership", "invite"),
			match("state_key", userID),
		}, notify(), sound("default")),
		rule(RuleMemberEvent, []Condition{match("type", "m.room.member")}),
		rule(RuleIsUserMention, []Condition{{
			Kind: CondEventPropertyContains, Key: `content.m\.mentions.user_ids`, Value: userIDValue,
		}}, notify(), sound("default"), highlight()),
	}
	if opts.LegacyMentions {
		rs.Override = append(rs.Override, rule(RuleContainsDisplayName,
			[]Condition{{Kind: CondContainsDisplayName}},
			notify(), sound("default"), highlight()))
	}
	rs.Override = append(rs.Override, rule(RuleIsRoomMention, []Condition{
		{Kind: CondEventPropertyIs, Key: `content.m\.mentions.room`, Value: json.RawMessage("true")},
		{Kind: CondSenderNotificationPermission, Key: "room"},
	}, notify(), highlight()))
	if opts.LegacyMentions {
		rs.Override = append(rs.Override, rule(RuleRoomNotif, []Condition{
			match("content.body", "@room"),
			{Kind: CondSenderNotificationPermission, Key: "room"},
		}, notify(), highlight()))
	}
	rs.Override = append(rs.Override,
		rule(RuleTombstone, []Condition{match("type", "m.room.tombstone"), match("state_key", "")},
			notify(), highlight()),
		rule(RuleReaction, []Condition{match("type", "m.reaction")}),
		rule(RuleRoomServerACL, []Condition{match("type", "m.room.server_acl"), match("state_key", "")}),
		rule(RuleSuppressEdits, []Condition{{
			Kind: CondEventPropertyIs, Key: `content.m\.relates_to.rel_type`, Value: json.RawMessage(`"m.replace"`),
		}}),
		rule(RulePollResponse, []Condition{match("type", "org.matrix.msc3381.poll.response")}),
	)

	if opts.LegacyMentions && localpart != "" {
		p := localpart
		rs.Content = append(rs.Content, PushRule{
			RuleID: RuleContainsUserName, Default: true, Enabled: true, Pattern: &p,
			Actions: Actions{notify(), sound("default"), highlight()},
		})
	}

	rs.Underride = []PushRule{
		rule(RuleCall, []Condition{match("type", "m.call.invite")}, notify(), sound("ring")),
		rule(RuleEncryptedRoomOneToOne, []Condition{
			{Kind: CondRoomMemberCount, Is: "2"}, match("type", "m.room.encrypted"),
		}, notify(), sound("default")),
		rule(RuleRoomOneToOne, []Condition{
			{Kind: CondRoomMemberCount, Is: "2"}, match("type", "m.room.message"),
		}, notify(), sound("default")),
		rule(RuleMessage, []Condition{match("type", "m.room.message")}, notify()),
		rule(RuleEncrypted, []Condition{match("type", "m.room.encrypted")}, notify()),
		// The one-to-one poll rules come first: the first matching rule wins.
		rule(RulePollStartOneToOne, []Condition{
			{Kind: CondRoomMemberCount, Is: "2"}, match("type", "org.matrix.msc3381.poll.start"),
		}, notify(), sound("default")),
		rule(RulePollStart, []Condition{match("type", "org.matrix.msc3381.poll.start")}, notify()),
		rule(RulePollEndOneToOne, []Condition{
			{Kind: CondRoomMemberCount, Is: "2"}, match("type", "org.matrix.msc3381.poll.end"),
		}, notify(), sound("default")),
		rule(RulePollEnd, []Condition{match("type", "org.matrix.msc3381.poll.end")}, notify()),
	}
	return rs
}
