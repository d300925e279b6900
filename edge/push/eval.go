package push

import (
	"edge/edge/jsonpath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/tidwall/gjson"
)

// Event is the event being evaluated. JSON returns the event in client or
// federation format; conditions read type, sender, state_key, room_id and
// content.* from it.
type Event interface {
	JSON() []byte
}

// RawEvent adapts raw event JSON to Event.
type RawEvent []byte

// JSON returns the event JSON.
func (e RawEvent) JSON() []byte { return e }

// Context is what conditions need beyond the event itself, seen from the
// user whose rules are evaluated.
type Context struct {
	// RoomID is used by room rules when the event JSON has no room_id
	// (e.g. a sync-format event).
	RoomID string
	// MemberCount is the room's current number of joined members.
	MemberCount int
	// DisplayName is the user's display name in the room
	// (contains_display_name); "" never matches.
	DisplayName string
	// SenderPowerLevel is the sender's power level (use math.MaxInt64 for
	// room v12 creators, whose level is infinite).
	SenderPowerLevel int64
	// NotificationPowerLevels is content.notifications of m.room.power_levels.
	NotificationPowerLevels map[string]int64
}

// RequiredNotificationLevel returns the level a sender needs to trigger the
// notification key. "room" defaults to 50 per the m.room.power_levels
// schema; other keys without an entry report false, so the condition fails
// closed.
func (c Context) RequiredNotificationLevel(key string) (int64, bool) {
	if lvl, ok := c.NotificationPowerLevels[key]; ok {
		return lvl, true
	}
	if key == "room" {
		return 50, true
	}
	return 0, false
}

// Evaluate runs the ruleset against ev in the spec's kind order and returns
// the actions of the first enabled rule that matches (historical actions
// stripped). matched is false when no rule matched, in which case the user
// must not be notified. Not notifying users of their own events is the
// caller's job.
func Evaluate(rs *Ruleset, ev Event, ctx Context) (actions Actions, matched bool) {
	if rs == nil {
		return nil, false
	}
	e := &evalEvent{doc: gjson.ParseBytes(ev.JSON()), ctx: ctx}
	hasMentions := lookup(e.doc, `content.m\.mentions`).Exists()
	for _, k := range kinds {
		for i := range *rs.list(k) {
			rule := &(*rs.list(k))[i]
			if !rule.Enabled {
				continue
			}
			if hasMentions && rule.Default && legacyMentionRules[rule.RuleID] {
				continue
			}
			if e.ruleMatches(k, rule) {
				return stripHistorical(rule.Actions), true
			}
		}
	}
	return nil, false
}

type evalEvent struct {
	doc gjson.Result
	ctx Context
}

func (e *evalEvent) ruleMatches(kind Kind, r *PushRule) bool {
	switch kind {
	case KindOverride, KindUnderride:
		for i := range r.Conditions {
			if !e.condMatches(&r.Conditions[i]) {
				return false
			}
		}
		return true
	case KindContent:
		body := lookup(e.doc, "content.body")
		return r.Pattern != nil && body.Type == gjson.String && globMatch(*r.Pattern, body.Str, true, false)
	case KindRoom:
		room := e.doc.Get("room_id")
		if room.Type == gjson.String {
			return room.Str == r.RuleID
		}
		return e.ctx.RoomID != "" && e.ctx.RoomID == r.RuleID
	case KindSender:
		s := e.doc.Get("sender")
		return s.Type == gjson.String && s.Str == r.RuleID
	}
	return false
}

func (e *evalEvent) condMatches(c *Condition) bool {
	switch c.Kind {
	case CondEventMatch:
		if c.Pattern == nil || c.Key == "" {
			return false
		}
		v := lookup(e.doc, c.Key)
		if v.Type != gjson.String {
			return false // absent or non-string never matches, even for "*"
		}
		return globMatch(*c.Pattern, v.Str, c.Key == "content.body", false)
	case CondEventPropertyIs:
		want, ok := conditionScalar(c)
		if !ok || c.Key == "" {
			return false
		}
		got, ok := toScalar(lookup(e.doc, c.Key))
		return ok && got == want
	case CondEventPropertyContains:
		want, ok := conditionScalar(c)
		if !ok || c.Key == "" {
			return false
		}
		arr := lookup(e.doc, c.Key)
		if !arr.IsArray() {
			return false
		}
		found := false
		arr.ForEach(func(_, v gjson.Result) bool {
			if got, ok := toScalar(v); ok && got == want {
				found = true
			}
			return !found
		})
		return found
	case CondContainsDisplayName:
		body := lookup(e.doc, "content.body")
		return e.ctx.DisplayName != "" && body.Type == gjson.String &&
			globMatch(e.ctx.DisplayName, body.Str, true, true)
	case CondRoomMemberCount:
		return memberCountMatches(c.Is, e.ctx.MemberCount)
	case CondSenderNotificationPermission:
		if c.Key == "" {
			return false
		}
		need, ok := e.ctx.RequiredNotificationLevel(c.Key)
		return ok && e.ctx.SenderPowerLevel >= need
	}
	return false // the spec: unrecognised conditions never match
}

// lookup walks the path through nested objects only, comparing keys
// exactly, which sidesteps gjson's own path syntax (wildcards, array
// indexes, modifiers) that Matrix paths do not have.
func lookup(doc gjson.Result, path string) gjson.Result {
	cur := doc
	for _, seg := range jsonpath.Split(path) {
		if !cur.IsObject() {
			return gjson.Result{}
		}
		var next gjson.Result
		cur.ForEach(func(k, v gjson.Result) bool {
			if k.Str == seg {
				next = v
				return false
			}
			return true
		})
		if !next.Exists() {
			return gjson.Result{}
		}
		cur = next
	}
	return cur
}

// scalar is a non-compound canonical JSON value: string, integer in the
// safe range, boolean or null. Comparable with ==.
type scalar struct {
	kind byte // 's', 'i', 'b', 'n'
	s    string
	i    int64
	b    bool
}

const maxSafeInt = 1<<53 - 1

func toScalar(r gjson.Result) (scalar, bool) {
	switch r.Type {
	case gjson.String:
		return scalar{kind: 's', s: r.Str}, true
	case gjson.True:
		return scalar{kind: 'b', b: true}, true
	case gjson.False:
		return scalar{kind: 'b'}, true
	case gjson.Null:
		if !r.Exists() {
			return scalar{}, false
		}
		return scalar{kind: 'n'}, true
	case gjson.Number:
		// Only integer literals; floats are not canonical JSON.
		n, err := strconv.ParseInt(r.Raw, 10, 64)
		if err != nil || n > maxSafeInt || n < -maxSafeInt {
			return scalar{}, false
		}
		return scalar{kind: 'i', i: n}, true
	}
	return scalar{}, false
}

func conditionScalar(c *Condition) (scalar, bool) {
	if len(c.Value) == 0 {
		return scalar{}, false // absent value; gjson would read "" as null
	}
	return toScalar(gjson.ParseBytes(c.Value))
}

// memberCountMatches parses "is": an optional ==, <, >, <=, >= prefix and a
// decimal integer. Malformed values never match.
func memberCountMatches(is string, count int) bool {
	op := "=="
	for _, p := range []string{"==", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(is, p) {
			op, is = p, is[len(p):]
			break
		}
	}
	if is == "" || strings.TrimLeft(is, "0123456789") != "" {
		return false
	}
	n, err := strconv.ParseInt(is, 10, 64)
	if err != nil {
		return false
	}
	c := int64(count)
	switch op {
	case "==":
		return c == n
	case "<":
		return c < n
	case ">":
		return c > n
	case "<=":
		return c <= n
	case ">=":
		return c >= n
	}
	return false
}

// Compiled glob patterns. Patterns come from rules, which are few per user,
// but the cache is still bounded since users choose them.
var (
	globMu    sync.Mutex
	globCache = map[string]*regexp.Regexp{}
)

const globCacheMax = 4096

// globMatch matches a glob-style pattern (appendices: "*" is zero or more
// characters, "?" exactly one) case-insensitively. Without wordBoundary the
// whole value must match; with it, any substring that starts and ends at a
// word boundary (start/end of value or a character outside [A-Za-z0-9_]),
// as the spec asks for content.body. literal disables the wildcards (used
// for display names).
func globMatch(pattern, value string, wordBoundary, literal bool) bool {
	key := string([]byte{boolByte(wordBoundary), boolByte(literal)}) + pattern
	globMu.Lock()
	re, ok := globCache[key]
	globMu.Unlock()
	if !ok {
		var b strings.Builder
		// (?s) lets "*" and "?" span newlines in multi-line bodies.
		b.WriteString("(?is)")
		if wordBoundary {
			b.WriteString(`(?:^|\W)`)
		} else {
			b.WriteString("^")
		}
		if literal {
			b.WriteString(regexp.QuoteMeta(pattern))
		} else {
			for _, r := range pattern {
				switch r {
				case '*':
					b.WriteString(".*")
				case '?':
					b.WriteString(".")
				default:
					b.WriteString(regexp.QuoteMeta(string(r)))
				}
			}
		}
		if wordBoundary {
			b.WriteString(`(?:\W|$)`)
		} else {
			b.WriteString("$")
		}
		var err error
		re, err = regexp.Compile(b.String())
		if err != nil {
			return false
		}
		globMu.Lock()
		if len(globCache) >= globCacheMax {
			globCache = map[string]*regexp.Regexp{}
		}
		globCache[key] = re
		globMu.Unlock()
	}
	return re.MatchString(value)
}

func boolByte(b bool) byte {
	if b {
		return '1'
	}
	return '0'
}
