package filter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"
)

// Sentinel errors returned (wrapped) by Parse.
var (
	// ErrBadJSON: 400 M_BAD_JSON (M_NOT_JSON if the body is not JSON at all
	// is also acceptable): syntax errors and fields of the wrong JSON type.
	ErrBadJSON = errors.New("filter: malformed JSON")
	// ErrInvalidParam: 400 M_INVALID_PARAM: well-typed but invalid values
	// (negative limit, unknown event_format, room/user IDs without sigil).
	ErrInvalidParam = errors.New("filter: invalid parameter")
)

// Filter is the top-level filter of POST /user/{userId}/filter and of the
// /sync filter parameter (the spec's "Filter" in sync_filter.yaml).
type Filter struct {
	EventFields []string     `json:"event_fields,omitzero"`
	EventFormat string       `json:"event_format,omitempty"`
	Presence    *EventFilter `json:"presence,omitempty"`
	AccountData *EventFilter `json:"account_data,omitempty"`
	Room        *RoomFilter  `json:"room,omitempty"`
}

// Event formats.
const (
	FormatClient     = "client"
	FormatFederation = "federation"
)

// RoomFilter filters room data in /sync. Its rooms/not_rooms apply before
// the per-section filters.
type RoomFilter struct {
	Rooms        []string         `json:"rooms,omitzero"`
	NotRooms     []string         `json:"not_rooms,omitzero"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitempty"`
	IncludeLeave bool             `json:"include_leave,omitempty"`
	State        *StateFilter     `json:"state,omitempty"`
	Timeline     *RoomEventFilter `json:"timeline,omitempty"`
	AccountData  *RoomEventFilter `json:"account_data,omitempty"`
}

// EventFilter filters non-room events (presence, account data) and is the
// base of RoomEventFilter. Lists are nil when absent from the JSON and
// non-nil (maybe empty) when present: an absent list lets everything
// through, an empty one nothing.
type EventFilter struct {
	Limit      *int     `json:"limit,omitempty"`
	NotSenders []string `json:"not_senders,omitzero"`
	NotTypes   []string `json:"not_types,omitzero"`
	Senders    []string `json:"senders,omitzero"`
	Types      []string `json:"types,omitzero"`
}

// RoomEventFilter filters room events (timeline, state, ephemeral, room
// account data, /messages).
type RoomEventFilter struct {
	EventFilter
	UnreadThreadNotifications bool     `json:"unread_thread_notifications,omitempty"`
	LazyLoadMembers           bool     `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers   bool     `json:"include_redundant_members,omitempty"`
	NotRooms                  []string `json:"not_rooms,omitzero"`
	Rooms                     []string `json:"rooms,omitzero"`
	// ContainsURL: nil ignores url; true keeps only events whose content has
	// a url key; false drops them.
	ContainsURL *bool `json:"contains_url,omitempty"`
}

// StateFilter is the filter for room state. Older spec versions named it
// separately; it has exactly the RoomEventFilter fields.
type StateFilter = RoomEventFilter

// IsInline reports whether a filter query parameter is inline JSON rather
// than a filter ID (filter IDs cannot start with "{").
func IsInline(param string) bool { return strings.HasPrefix(param, "{") }

// Parse decodes and validates a filter definition. Unknown keys are
// ignored so newer clients keep working.
func Parse(data []byte) (*Filter, error) {
	t := bytes.TrimSpace(data)
	if len(t) == 0 || t[0] != '{' {
		return nil, fmt.Errorf("%w: filter must be a JSON object", ErrBadJSON)
	}
	if !json.Valid(t) {
		return nil, fmt.Errorf("%w: not valid JSON", ErrBadJSON)
	}
	var f Filter
	if err := json.Unmarshal(t, &f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Validate checks values Parse cannot check by type. It is exported for
// filters built in code.
func (f *Filter) Validate() error {
	if f == nil {
		return nil
	}
	switch f.EventFormat {
	case "", FormatClient, FormatFederation:
	default:
		return fmt.Errorf("%w: event_format must be %q or %q", ErrInvalidParam, FormatClient, FormatFederation)
	}
	if err := f.Presence.validate("presence"); err != nil {
		return err
	}
	if err := f.AccountData.validate("account_data"); err != nil {
		return err
	}
	if r := f.Room; r != nil {
		if err := checkIDs("room.rooms", r.Rooms, '!'); err != nil {
			return err
		}
		if err := checkIDs("room.not_rooms", r.NotRooms, '!'); err != nil {
			return err
		}
		subs := []struct {
			name string
			f    *RoomEventFilter
		}{
			{"room.ephemeral", r.Ephemeral}, {"room.state", r.State},
			{"room.timeline", r.Timeline}, {"room.account_data", r.AccountData},
		}
		for _, sub := range subs {
			if err := sub.f.validate(sub.name); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *EventFilter) validate(name string) error {
	if f == nil {
		return nil
	}
	// The spec says limit "must be an integer greater than 0"; 0 is still
	// accepted because clients send it to ask for no timeline events.
	if f.Limit != nil && *f.Limit < 0 {
		return fmt.Errorf("%w: %s.limit must not be negative", ErrInvalidParam, name)
	}
	if err := checkIDs(name+".senders", f.Senders, '@'); err != nil {
		return err
	}
	return checkIDs(name+".not_senders", f.NotSenders, '@')
}

func (f *RoomEventFilter) validate(name string) error {
	if f == nil {
		return nil
	}
	if err := f.EventFilter.validate(name); err != nil {
		return err
	}
	if err := checkIDs(name+".rooms", f.Rooms, '!'); err != nil {
		return err
	}
	return checkIDs(name+".not_rooms", f.NotRooms, '!')
}

// checkIDs enforces the schemas' "^@" / "^!" patterns.
func checkIDs(name string, ids []string, sigil byte) error {
	for _, id := range ids {
		if len(id) < 2 || id[0] != sigil {
			return fmt.Errorf("%w: %s entry %q must start with %q", ErrInvalidParam, name, id, string(sigil))
		}
	}
	return nil
}

// EventView is what matching needs to know about an event. For presence
// Sender is the user whose presence it is; for account data it is empty.
type EventView struct {
	Type   string
	Sender string
	RoomID string
	// HasURL is whether the content has a "url" key (contains_url).
	HasURL bool
}

// ViewJSON builds an EventView from event JSON (client or federation
// format).
func ViewJSON(event []byte) EventView {
	doc := gjson.ParseBytes(event)
	content := doc.Get("content")
	hasURL := false
	if content.IsObject() {
		content.ForEach(func(k, _ gjson.Result) bool {
			hasURL = k.Str == "url"
			return !hasURL
		})
	}
	return EventView{
		Type:   doc.Get("type").String(),
		Sender: doc.Get("sender").String(),
		RoomID: doc.Get("room_id").String(),
		HasURL: hasURL,
	}
}

// Match reports whether the event passes types/not_types and
// senders/not_senders; the not_ lists win over the inclusion lists.
func (f *EventFilter) Match(ev EventView) bool {
	if f == nil {
		return true
	}
	for _, p := range f.NotTypes {
		if wildcardMatch(p, ev.Type) {
			return false
		}
	}
	if f.Types != nil && !anyWildcard(f.Types, ev.Type) {
		return false
	}
	if contains(f.NotSenders, ev.Sender) {
		return false
	}
	if f.Senders != nil && !contains(f.Senders, ev.Sender) {
		return false
	}
	return true
}

// EffectiveLimit returns the filter's limit, or def when unset, capped at
// max when max > 0 (the spec asks servers to impose a maximum).
func (f *EventFilter) EffectiveLimit(def, max int) int {
	n := def
	if f != nil && f.Limit != nil {
		n = *f.Limit
	}
	if max > 0 && n > max {
		n = max
	}
	return n
}

// Match applies the EventFilter checks plus rooms/not_rooms and
// contains_url.
func (f *RoomEventFilter) Match(ev EventView) bool {
	if f == nil {
		return true
	}
	if !f.EventFilter.Match(ev) || !f.AllowsRoom(ev.RoomID) {
		return false
	}
	if f.ContainsURL != nil && *f.ContainsURL != ev.HasURL {
		return false
	}
	return true
}

// AllowsRoom applies rooms/not_rooms; not_rooms wins.
func (f *RoomEventFilter) AllowsRoom(roomID string) bool {
	if f == nil {
		return true
	}
	return allowsRoom(f.Rooms, f.NotRooms, roomID)
}

// EffectiveLimit is EventFilter.EffectiveLimit, safe on a nil filter.
func (f *RoomEventFilter) EffectiveLimit(def, max int) int {
	if f == nil {
		return (*EventFilter)(nil).EffectiveLimit(def, max)
	}
	return f.EventFilter.EffectiveLimit(def, max)
}

// LazyLoad reports lazy_load_members and include_redundant_members; the
// latter only counts when lazy loading is on (spec).
func (f *RoomEventFilter) LazyLoad() (lazy, includeRedundant bool) {
	if f == nil || !f.LazyLoadMembers {
		return false, false
	}
	return true, f.IncludeRedundantMembers
}

// AllowsRoom applies the RoomFilter's rooms/not_rooms; not_rooms wins.
func (f *RoomFilter) AllowsRoom(roomID string) bool {
	if f == nil {
		return true
	}
	return allowsRoom(f.Rooms, f.NotRooms, roomID)
}

func allowsRoom(rooms, notRooms []string, roomID string) bool {
	if contains(notRooms, roomID) {
		return false
	}
	return rooms == nil || contains(rooms, roomID)
}

// The accessors below return sub-filters that may be nil; their methods
// treat nil as "everything passes".

// AllowsRoom applies room.rooms / room.not_rooms.
func (f *Filter) AllowsRoom(roomID string) bool { return f.room().AllowsRoom(roomID) }

// RoomTimeline returns room.timeline.
func (f *Filter) RoomTimeline() *RoomEventFilter { return f.room().timeline() }

// RoomState returns room.state.
func (f *Filter) RoomState() *StateFilter { return f.room().state() }

// RoomEphemeral returns room.ephemeral.
func (f *Filter) RoomEphemeral() *RoomEventFilter { return f.room().ephemeral() }

// RoomAccountData returns room.account_data.
func (f *Filter) RoomAccountData() *RoomEventFilter { return f.room().accountData() }

// PresenceFilter returns presence.
func (f *Filter) PresenceFilter() *EventFilter {
	if f == nil {
		return nil
	}
	return f.Presence
}

// AccountDataFilter returns account_data (global account data).
func (f *Filter) AccountDataFilter() *EventFilter {
	if f == nil {
		return nil
	}
	return f.AccountData
}

// IncludeLeave reports room.include_leave.
func (f *Filter) IncludeLeave() bool { r := f.room(); return r != nil && r.IncludeLeave }

// TimelineLimit is room.timeline's limit with the caller's default and max.
func (f *Filter) TimelineLimit(def, max int) int { return f.RoomTimeline().EffectiveLimit(def, max) }

// LazyLoadMembers reports lazy loading for /sync, which reads it from the
// state filter (where membership events are sent).
func (f *Filter) LazyLoadMembers() (lazy, includeRedundant bool) { return f.RoomState().LazyLoad() }

// UnreadThreadNotifications reports room.timeline.unread_thread_notifications.
func (f *Filter) UnreadThreadNotifications() bool {
	t := f.RoomTimeline()
	return t != nil && t.UnreadThreadNotifications
}

// Format returns event_format, defaulting to "client".
func (f *Filter) Format() string {
	if f == nil || f.EventFormat == "" {
		return FormatClient
	}
	return f.EventFormat
}

func (f *Filter) room() *RoomFilter {
	if f == nil {
		return nil
	}
	return f.Room
}

func (r *RoomFilter) timeline() *RoomEventFilter {
	if r == nil {
		return nil
	}
	return r.Timeline
}

func (r *RoomFilter) state() *StateFilter {
	if r == nil {
		return nil
	}
	return r.State
}

func (r *RoomFilter) ephemeral() *RoomEventFilter {
	if r == nil {
		return nil
	}
	return r.Ephemeral
}

func (r *RoomFilter) accountData() *RoomEventFilter {
	if r == nil {
		return nil
	}
	return r.AccountData
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func anyWildcard(patterns []string, s string) bool {
	for _, p := range patterns {
		if wildcardMatch(p, s) {
			return true
		}
	}
	return false
}

// wildcardMatch matches s against a pattern where "*" is any sequence of
// characters (the only wildcard the filter schemas define); the rest is
// compared case-sensitively. Iterative with single backtrack point, so it
// stays linear-ish on hostile patterns.
func wildcardMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
