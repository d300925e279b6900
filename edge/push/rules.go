package push

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/tidwall/gjson"
)

// Sentinel errors. The comment on each gives the HTTP mapping the spec or
// common practice suggests.
var (
	// ErrRuleNotFound: 404 M_NOT_FOUND.
	ErrRuleNotFound = errors.New("push rule not found")
	// ErrInvalidRule: 400 M_INVALID_PARAM (reserved or malformed rule ID,
	// missing actions or pattern, unknown action).
	ErrInvalidRule = errors.New("invalid push rule")
	// ErrBadBeforeAfter: 400; the spec's example for PUT uses M_UNKNOWN with
	// "before/after rule not found: <id>".
	ErrBadBeforeAfter = errors.New("before/after rule not found")
	// ErrUnknownKind: 400 M_INVALID_PARAM.
	ErrUnknownKind = errors.New("unknown push rule kind")
	// ErrUnknownScope: 400 M_INVALID_PARAM; "global" is the only scope.
	ErrUnknownScope = errors.New("unknown push rule scope")
	// ErrBadJSON: 400 M_BAD_JSON (request body is not the expected JSON shape).
	ErrBadJSON = errors.New("malformed push rule JSON")
)

// ScopeGlobal is the only push rule scope left in the spec (device scopes
// were removed in v1.12).
const ScopeGlobal = "global"

// CheckScope reports ErrUnknownScope for anything but "global".
func CheckScope(scope string) error {
	if scope != ScopeGlobal {
		return fmt.Errorf("%w: %q", ErrUnknownScope, scope)
	}
	return nil
}

// Kind is a push rule kind.
type Kind string

// The kinds, listed in the order they are evaluated.
const (
	KindOverride  Kind = "override"
	KindContent   Kind = "content"
	KindRoom      Kind = "room"
	KindSender    Kind = "sender"
	KindUnderride Kind = "underride"
)

// kinds is the spec's evaluation order.
var kinds = [...]Kind{KindOverride, KindContent, KindRoom, KindSender, KindUnderride}

// Valid reports whether k is one of the five spec kinds.
func (k Kind) Valid() bool {
	for _, v := range kinds {
		if k == v {
			return true
		}
	}
	return false
}

func checkKind(k Kind) error {
	if !k.Valid() {
		return fmt.Errorf("%w: %q", ErrUnknownKind, string(k))
	}
	return nil
}

// Ruleset is the wire shape of a push ruleset ("global" in GET /pushrules/
// and in the m.push_rules account data event).
type Ruleset struct {
	Override  []PushRule `json:"override"`
	Content   []PushRule `json:"content"`
	Room      []PushRule `json:"room"`
	Sender    []PushRule `json:"sender"`
	Underride []PushRule `json:"underride"`
}

// Rulesets is the body of GET /pushrules/ and the content of the
// m.push_rules account data event.
type Rulesets struct {
	Global *Ruleset `json:"global"`
}

// MarshalJSON writes empty lists as [] rather than null: clients iterate
// over every kind.
func (rs Ruleset) MarshalJSON() ([]byte, error) {
	type plain Ruleset
	p := plain(rs)
	for _, l := range []*[]PushRule{&p.Override, &p.Content, &p.Room, &p.Sender, &p.Underride} {
		if *l == nil {
			*l = []PushRule{}
		}
	}
	return json.Marshal(p)
}

// Rules returns the rules of one kind (nil for an unknown kind).
func (rs *Ruleset) Rules(kind Kind) []PushRule {
	if p := rs.list(kind); p != nil {
		return *p
	}
	return nil
}

func (rs *Ruleset) list(kind Kind) *[]PushRule {
	if rs == nil {
		return nil
	}
	switch kind {
	case KindOverride:
		return &rs.Override
	case KindContent:
		return &rs.Content
	case KindRoom:
		return &rs.Room
	case KindSender:
		return &rs.Sender
	case KindUnderride:
		return &rs.Underride
	}
	return nil
}

// Find returns the rule with ruleID in kind, or nil.
func (rs *Ruleset) Find(kind Kind, ruleID string) *PushRule {
	p := rs.list(kind)
	if p == nil {
		return nil
	}
	if i := indexOf(*p, ruleID); i >= 0 {
		return &(*p)[i]
	}
	return nil
}

func indexOf(rules []PushRule, ruleID string) int {
	for i := range rules {
		if rules[i].RuleID == ruleID {
			return i
		}
	}
	return -1
}

// Clone returns a deep copy, so callers can hand out rulesets without
// sharing slices with stored state.
func (rs *Ruleset) Clone() *Ruleset {
	if rs == nil {
		return nil
	}
	out := &Ruleset{}
	for _, k := range kinds {
		src := rs.list(k)
		if *src == nil {
			continue
		}
		dst := make([]PushRule, len(*src))
		for i := range *src {
			dst[i] = (*src)[i].Clone()
		}
		*out.list(k) = dst
	}
	return out
}

// PushRule is the wire shape of one push rule. Conditions is only set for
// override and underride rules (where an empty list is sent as []), Pattern
// only for content rules.
type PushRule struct {
	RuleID     string      `json:"rule_id"`
	Default    bool        `json:"default"`
	Enabled    bool        `json:"enabled"`
	Conditions []Condition `json:"conditions,omitzero"`
	Actions    Actions     `json:"actions"`
	Pattern    *string     `json:"pattern,omitempty"`
}

// Clone returns a deep copy of the rule (raw JSON bytes are shared; they are
// never modified in place).
func (r PushRule) Clone() PushRule {
	if r.Conditions != nil {
		c := make([]Condition, len(r.Conditions))
		for i := range r.Conditions {
			c[i] = r.Conditions[i].clone()
		}
		r.Conditions = c
	}
	if r.Actions != nil {
		r.Actions = append(Actions{}, r.Actions...)
	}
	if r.Pattern != nil {
		p := *r.Pattern
		r.Pattern = &p
	}
	return r
}

// Condition kinds defined by the spec.
const (
	CondEventMatch                   = "event_match"
	CondEventPropertyIs              = "event_property_is"
	CondEventPropertyContains        = "event_property_contains"
	CondContainsDisplayName          = "contains_display_name"
	CondRoomMemberCount              = "room_member_count"
	CondSenderNotificationPermission = "sender_notification_permission"
)

// Condition is one push condition. Pattern is a pointer because "" is a
// meaningful pattern (state_key "" in .m.rule.tombstone); Value is kept raw
// so null can be told apart from absent. Keys the spec does not define are
// kept in Extra so GET returns what the client PUT.
type Condition struct {
	Kind    string
	Key     string
	Pattern *string
	Is      string
	Value   json.RawMessage
	Extra   map[string]json.RawMessage
}

func (c Condition) clone() Condition {
	if c.Pattern != nil {
		p := *c.Pattern
		c.Pattern = &p
	}
	if c.Extra != nil {
		m := make(map[string]json.RawMessage, len(c.Extra))
		for k, v := range c.Extra {
			m[k] = v
		}
		c.Extra = m
	}
	return c
}

// MarshalJSON writes the known keys then Extra in sorted order, so the
// output is deterministic.
func (c Condition) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	n := 0
	put := func(k string, v []byte) {
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(v)
	}
	str := func(s string) []byte { v, _ := json.Marshal(s); return v }
	put("kind", str(c.Kind))
	if c.Key != "" {
		put("key", str(c.Key))
	}
	if c.Pattern != nil {
		put("pattern", str(*c.Pattern))
	}
	if c.Is != "" {
		put("is", str(c.Is))
	}
	if len(c.Value) > 0 {
		if !json.Valid(c.Value) {
			return nil, fmt.Errorf("push: condition value is not valid JSON")
		}
		var cb bytes.Buffer
		if err := json.Compact(&cb, c.Value); err != nil {
			return nil, err
		}
		put("value", cb.Bytes())
	}
	extra := make([]string, 0, len(c.Extra))
	for k := range c.Extra {
		switch k {
		case "kind", "key", "pattern", "is", "value":
			continue // the typed fields win
		}
		extra = append(extra, k)
	}
	sort.Strings(extra)
	for _, k := range extra {
		if !json.Valid(c.Extra[k]) {
			return nil, fmt.Errorf("push: condition key %q is not valid JSON", k)
		}
		put(k, c.Extra[k])
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON requires kind/key/pattern/is to be strings when present.
func (c *Condition) UnmarshalJSON(data []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	if m == nil {
		return fmt.Errorf("push: condition must be an object")
	}
	*c = Condition{}
	str := func(name string, dst *string) error {
		raw, ok := m[name]
		if !ok {
			return nil
		}
		delete(m, name)
		if err := json.Unmarshal(raw, dst); err != nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return fmt.Errorf("push: condition %q must be a string", name)
		}
		return nil
	}
	if err := str("kind", &c.Kind); err != nil {
		return err
	}
	if err := str("key", &c.Key); err != nil {
		return err
	}
	if _, ok := m["pattern"]; ok {
		var p string
		if err := str("pattern", &p); err != nil {
			return err
		}
		c.Pattern = &p
	}
	if err := str("is", &c.Is); err != nil {
		return err
	}
	if v, ok := m["value"]; ok {
		c.Value = append(json.RawMessage(nil), bytes.TrimSpace(v)...)
		delete(m, "value")
	}
	if len(m) > 0 {
		c.Extra = m
	}
	return nil
}

// Actions is a rule's action list in API shape: each element is the raw
// JSON of an action, "notify" or {"set_tweak": ..., "value": ...}.
type Actions []json.RawMessage

// MarshalJSON writes nil as [] because "actions" is required on the wire.
func (a Actions) MarshalJSON() ([]byte, error) {
	if a == nil {
		return []byte("[]"), nil
	}
	return json.Marshal([]json.RawMessage(a))
}

// historical reports the actions the spec says to ignore (dont_notify,
// coalesce).
func historical(raw json.RawMessage) bool {
	r := gjson.ParseBytes(raw)
	return r.Type == gjson.String && (r.Str == "dont_notify" || r.Str == "coalesce")
}

// validateActions checks actions from a client. The historical ones
// (dont_notify, coalesce) are kept as the client set them: clients read
// their rules back (Element shows a muted room by its dont_notify rule, as
// Complement's TestPushRuleCacheHealth checks), and Evaluate ignores them.
func validateActions(a Actions) (Actions, error) {
	out := Actions{}
	for _, raw := range a {
		if !json.Valid(raw) {
			return nil, fmt.Errorf("%w: action is not valid JSON", ErrInvalidRule)
		}
		r := gjson.ParseBytes(raw)
		switch {
		case historical(raw):
		case r.Type == gjson.String && r.Str == "notify":
		case r.IsObject():
			if t := r.Get("set_tweak"); t.Type != gjson.String {
				return nil, fmt.Errorf("%w: action object needs a string set_tweak", ErrInvalidRule)
			}
		default:
			return nil, fmt.Errorf("%w: unrecognised action %s", ErrInvalidRule, r.Raw)
		}
		var cb bytes.Buffer
		_ = json.Compact(&cb, raw)
		out = append(out, json.RawMessage(cb.Bytes()))
	}
	return out, nil
}

// stripHistorical drops dont_notify/coalesce from stored or default actions
// before they reach a caller of Evaluate.
func stripHistorical(a Actions) Actions {
	out := make(Actions, 0, len(a))
	for _, raw := range a {
		if !historical(raw) {
			out = append(out, raw)
		}
	}
	return out
}

// Notify reports whether the actions contain "notify".
func (a Actions) Notify() bool {
	for _, raw := range a {
		if r := gjson.ParseBytes(raw); r.Type == gjson.String && r.Str == "notify" {
			return true
		}
	}
	return false
}

// Tweaks returns the set_tweak actions as tweak name -> raw value; later
// actions win. A highlight tweak without a value means true (spec).
func (a Actions) Tweaks() map[string]json.RawMessage {
	t := map[string]json.RawMessage{}
	for _, raw := range a {
		r := gjson.ParseBytes(raw)
		if !r.IsObject() {
			continue
		}
		name := r.Get("set_tweak")
		if name.Type != gjson.String {
			continue
		}
		if v := r.Get("value"); v.Exists() {
			t[name.Str] = json.RawMessage(v.Raw)
		} else if name.Str == "highlight" {
			t[name.Str] = json.RawMessage("true")
		} else {
			t[name.Str] = nil
		}
	}
	return t
}

// Highlight reports the highlight tweak (false when absent, per spec).
func (a Actions) Highlight() bool {
	v, ok := a.Tweaks()["highlight"]
	return ok && gjson.ParseBytes(v).Type == gjson.True
}

// Sound returns the sound tweak's value, "" when there is none.
func (a Actions) Sound() string {
	v, ok := a.Tweaks()["sound"]
	if !ok {
		return ""
	}
	if r := gjson.ParseBytes(v); r.Type == gjson.String {
		return r.Str
	}
	return ""
}
