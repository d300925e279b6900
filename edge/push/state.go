package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// State is everything a user changed: their own rules and their enabled /
// actions overrides of server-default rules. Server defaults themselves are
// not stored, so a server upgrade that changes them reaches every user. The
// JSON form (Marshal / LoadState) is the storage format.
type State struct {
	// User holds the user-defined rules in priority order per kind.
	User Ruleset `json:"user"`
	// Defaults holds overrides of server-default rules keyed by
	// "kind/rule_id" (rule IDs are only unique within a kind).
	Defaults map[string]DefaultChange `json:"defaults,omitempty"`
}

// DefaultChange is what a user set on one server-default rule; nil fields
// keep the server's value.
type DefaultChange struct {
	Enabled *bool    `json:"enabled,omitempty"`
	Actions *Actions `json:"actions,omitempty"`
}

func defaultKey(kind Kind, ruleID string) string { return string(kind) + "/" + ruleID }

// LoadState decodes a stored blob; an empty blob is a user with no changes.
func LoadState(blob []byte) (*State, error) {
	s := &State{}
	if len(bytes.TrimSpace(blob)) == 0 {
		return s, nil
	}
	if err := json.Unmarshal(blob, s); err != nil {
		return nil, fmt.Errorf("push: decoding stored state: %w", err)
	}
	return s, nil
}

// Marshal encodes the state for storage.
func (s *State) Marshal() ([]byte, error) { return json.Marshal(s) }

// Rules binds a user's State to the server-default rules for that user
// (from DefaultRuleset). Mutating methods change State in place; the caller
// stores State afterwards.
type Rules struct {
	State    *State
	Defaults *Ruleset
}

// NewRules returns a Rules; a nil state or defaults is treated as empty.
func NewRules(state *State, defaults *Ruleset) *Rules {
	if state == nil {
		state = &State{}
	}
	if defaults == nil {
		defaults = &Ruleset{}
	}
	return &Rules{State: state, Defaults: defaults}
}

// Ruleset merges user rules and defaults into the ruleset GET /pushrules/
// returns and Evaluate consumes. Per the spec, server-default rules have
// lower priority than user-defined ones except .m.rule.master, which comes
// before everything; so each kind is [master] + user rules + other defaults.
func (r *Rules) Ruleset() *Ruleset {
	out := &Ruleset{}
	for _, k := range kinds {
		var head, tail []PushRule
		for _, d := range r.Defaults.Rules(k) {
			d = r.applyChange(k, d.Clone())
			if k == KindOverride && d.RuleID == RuleMaster {
				head = append(head, d)
			} else {
				tail = append(tail, d)
			}
		}
		merged := make([]PushRule, 0, len(head)+len(tail)+len(r.State.User.Rules(k)))
		merged = append(merged, head...)
		for _, u := range r.State.User.Rules(k) {
			merged = append(merged, u.Clone())
		}
		merged = append(merged, tail...)
		*out.list(k) = merged
	}
	return out
}

func (r *Rules) applyChange(kind Kind, d PushRule) PushRule {
	ch, ok := r.State.Defaults[defaultKey(kind, d.RuleID)]
	if !ok {
		return d
	}
	if ch.Enabled != nil {
		d.Enabled = *ch.Enabled
	}
	if ch.Actions != nil {
		d.Actions = append(Actions{}, (*ch.Actions)...)
	}
	return d
}

// Get returns one rule of the merged ruleset (GET /pushrules/{scope}/{kind}/{ruleId}).
func (r *Rules) Get(scope string, kind Kind, ruleID string) (PushRule, error) {
	if err := CheckScope(scope); err != nil {
		return PushRule{}, err
	}
	if err := checkKind(kind); err != nil {
		return PushRule{}, err
	}
	if u := r.State.User.Find(kind, ruleID); u != nil {
		return u.Clone(), nil
	}
	if d := r.Defaults.Find(kind, ruleID); d != nil {
		return r.applyChange(kind, d.Clone()), nil
	}
	return PushRule{}, notFound(kind, ruleID)
}

func notFound(kind Kind, ruleID string) error {
	return fmt.Errorf("%w: %s/%s", ErrRuleNotFound, kind, ruleID)
}

// putBody is the PUT /pushrules body; pointers tell absent from empty.
type putBody struct {
	Actions    *Actions     `json:"actions"`
	Conditions *[]Condition `json:"conditions"`
	Pattern    *string      `json:"pattern"`
}

// Put creates or updates a user-defined rule from the PUT request body.
// before wins over after when both are given (spec: "the new or updated rule
// must be the next most important rule with respect to the rule identified
// by before"). A new rule without before/after becomes the most important
// user rule of its kind; an updated one keeps its place and enabled state.
func (r *Rules) Put(kind Kind, ruleID string, body []byte, before, after string) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	if err := checkUserRuleID(ruleID); err != nil {
		return err
	}
	var b putBody
	if err := strictObject(body, &b); err != nil {
		return err
	}
	if b.Actions == nil {
		return fmt.Errorf("%w: missing actions", ErrInvalidRule)
	}
	actions, err := validateActions(*b.Actions)
	if err != nil {
		return err
	}
	rule := PushRule{RuleID: ruleID, Enabled: true, Actions: actions}
	switch kind {
	case KindOverride, KindUnderride:
		rule.Conditions = []Condition{}
		if b.Conditions != nil {
			for _, c := range *b.Conditions {
				if c.Kind == "" {
					return fmt.Errorf("%w: condition without kind", ErrInvalidRule)
				}
			}
			rule.Conditions = append(rule.Conditions, *b.Conditions...)
		}
	case KindContent:
		if b.Pattern == nil || *b.Pattern == "" {
			return fmt.Errorf("%w: content rules need a pattern", ErrInvalidRule)
		}
		p := *b.Pattern
		rule.Pattern = &p
	}
	// room and sender rules take their condition from rule_id; extra body
	// keys are ignored.

	anchor, placeBefore := after, false
	if before != "" {
		anchor, placeBefore = before, true
	}
	if anchor != "" && (strings.HasPrefix(anchor, ".") || anchor == ruleID) {
		// The spec forbids positioning relative to server-default rules.
		return fmt.Errorf("%w: %s", ErrBadBeforeAfter, anchor)
	}

	list := r.State.User.list(kind)
	cur := indexOf(*list, ruleID)
	if cur >= 0 {
		rule.Enabled = (*list)[cur].Enabled
		if anchor == "" {
			(*list)[cur] = rule
			return nil
		}
	}
	rest := make([]PushRule, 0, len(*list)+1)
	for i := range *list {
		if i != cur {
			rest = append(rest, (*list)[i])
		}
	}
	at := 0
	if anchor != "" {
		ai := indexOf(rest, anchor)
		if ai < 0 {
			return fmt.Errorf("%w: %s", ErrBadBeforeAfter, anchor)
		}
		at = ai
		if !placeBefore {
			at = ai + 1
		}
	}
	rest = append(rest, PushRule{})
	copy(rest[at+1:], rest[at:])
	rest[at] = rule
	*list = rest
	return nil
}

// checkUserRuleID applies the PUT path rules: "." is reserved for server
// defaults, "/" and "\" are not allowed.
func checkUserRuleID(ruleID string) error {
	switch {
	case ruleID == "":
		return fmt.Errorf("%w: empty rule ID", ErrInvalidRule)
	case strings.HasPrefix(ruleID, "."):
		return fmt.Errorf("%w: rule IDs starting with '.' are reserved for server-default rules", ErrInvalidRule)
	case strings.ContainsAny(ruleID, `/\`):
		return fmt.Errorf("%w: rule IDs may not contain '/' or '\\'", ErrInvalidRule)
	}
	return nil
}

// strictObject decodes a JSON object body, mapping syntax and type errors to
// ErrBadJSON.
func strictObject(body []byte, v any) error {
	t := bytes.TrimSpace(body)
	if len(t) == 0 || t[0] != '{' {
		return fmt.Errorf("%w: body must be a JSON object", ErrBadJSON)
	}
	if err := json.Unmarshal(t, v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	return nil
}

// Delete removes a user-defined rule. Server-default rules cannot be
// deleted; that is reported as ErrRuleNotFound since DELETE only documents
// 404 (they can be disabled instead).
func (r *Rules) Delete(kind Kind, ruleID string) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	list := r.State.User.list(kind)
	if i := indexOf(*list, ruleID); i >= 0 {
		*list = append((*list)[:i:i], (*list)[i+1:]...)
		return nil
	}
	if r.Defaults.Find(kind, ruleID) != nil {
		return fmt.Errorf("%w: %s/%s is a server-default rule and cannot be deleted", ErrRuleNotFound, kind, ruleID)
	}
	return notFound(kind, ruleID)
}

// GetEnabled serves GET .../enabled.
func (r *Rules) GetEnabled(kind Kind, ruleID string) (bool, error) {
	rule, err := r.Get(ScopeGlobal, kind, ruleID)
	return rule.Enabled, err
}

// GetActions serves GET .../actions.
func (r *Rules) GetActions(kind Kind, ruleID string) (Actions, error) {
	rule, err := r.Get(ScopeGlobal, kind, ruleID)
	if err != nil {
		return nil, err
	}
	return rule.Actions, nil
}

// SetEnabled serves PUT .../enabled, for user and server-default rules.
func (r *Rules) SetEnabled(kind Kind, ruleID string, enabled bool) error {
	return r.modify(kind, ruleID, func(u *PushRule) { u.Enabled = enabled },
		func(ch *DefaultChange) { ch.Enabled = &enabled })
}

// SetActions serves PUT .../actions, for user and server-default rules
// ("This can be used to change the actions of builtin rules").
func (r *Rules) SetActions(kind Kind, ruleID string, actions Actions) error {
	if actions == nil {
		return fmt.Errorf("%w: missing actions", ErrInvalidRule)
	}
	clean, err := validateActions(actions)
	if err != nil {
		return err
	}
	return r.modify(kind, ruleID, func(u *PushRule) { u.Actions = clean },
		func(ch *DefaultChange) { ch.Actions = &clean })
}

func (r *Rules) modify(kind Kind, ruleID string, user func(*PushRule), def func(*DefaultChange)) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	if u := r.State.User.Find(kind, ruleID); u != nil {
		user(u)
		return nil
	}
	if r.Defaults.Find(kind, ruleID) == nil {
		return notFound(kind, ruleID)
	}
	if r.State.Defaults == nil {
		r.State.Defaults = map[string]DefaultChange{}
	}
	key := defaultKey(kind, ruleID)
	ch := r.State.Defaults[key]
	def(&ch)
	r.State.Defaults[key] = ch
	return nil
}

// CopyRoomRules gives newRoom a copy of the user's rules for oldRoom, as
// Synapse does when a user joins the replacement of an upgraded room: the
// room rule named after oldRoom, and override/underride rules that match
// room_id == oldRoom, with the room ID replaced in rule ID and condition.
// Each copy sits right after its original; a rule newRoom already has is
// left alone (the user set it). It reports whether anything was added.
func (r *Rules) CopyRoomRules(oldRoom, newRoom string) bool {
	if oldRoom == "" || newRoom == "" || oldRoom == newRoom {
		return false
	}
	changed := false
	for _, k := range kinds {
		list := r.State.User.list(k)
		var out []PushRule
		for _, rule := range *list {
			out = append(out, rule)
			cp, ok := copyForRoom(k, rule, oldRoom, newRoom)
			if ok && indexOf(*list, cp.RuleID) < 0 {
				out = append(out, cp)
				changed = true
			}
		}
		if changed {
			*list = out
		}
	}
	return changed
}

// copyForRoom returns rule moved to newRoom, if it concerns oldRoom.
func copyForRoom(k Kind, rule PushRule, oldRoom, newRoom string) (PushRule, bool) {
	switch k {
	case KindRoom:
		if rule.RuleID != oldRoom {
			return PushRule{}, false
		}
		cp := rule.Clone()
		cp.RuleID = newRoom
		return cp, true
	case KindOverride, KindUnderride:
		cp := rule.Clone()
		found := false
		for i, c := range cp.Conditions {
			if c.Kind == CondEventMatch && c.Key == "room_id" && c.Pattern != nil && *c.Pattern == oldRoom {
				p := newRoom
				cp.Conditions[i].Pattern = &p
				found = true
			}
		}
		cp.RuleID = strings.ReplaceAll(rule.RuleID, oldRoom, newRoom)
		if !found || cp.RuleID == rule.RuleID {
			return PushRule{}, false
		}
		return cp, true
	}
	return PushRule{}, false
}
