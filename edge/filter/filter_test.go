package filter

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func mustParse(t *testing.T, s string) *Filter {
	t.Helper()
	f, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse(%s): %v", s, err)
	}
	return f
}

func TestParseSpecExample(t *testing.T) {
	f := mustParse(t, `{
	  "room": {
	    "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"], "lazy_load_members": true},
	    "timeline": {"limit": 10, "types": ["m.room.message"], "not_rooms": ["!726s6s6q:example.com"],
	                 "not_senders": ["@spam:example.com"], "unread_thread_notifications": true},
	    "ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"],
	                  "not_senders": ["@spam:example.com"]},
	    "include_leave": true
	  },
	  "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
	  "event_format": "client",
	  "event_fields": ["type", "content", "sender"],
	  "some_future_key": {"x": 1}
	}`)
	if f.TimelineLimit(20, 100) != 10 || !f.IncludeLeave() || !f.UnreadThreadNotifications() || f.Format() != FormatClient {
		t.Errorf("parsed wrong: %+v", f)
	}
	if lazy, red := f.LazyLoadMembers(); !lazy || red {
		t.Errorf("lazy=%v redundant=%v", lazy, red)
	}
	if !reflect.DeepEqual(f.EventFields, []string{"type", "content", "sender"}) {
		t.Errorf("event_fields %v", f.EventFields)
	}
	if f.PresenceFilter().Match(EventView{Type: "m.presence", Sender: "@alice:example.com"}) {
		t.Errorf("presence not_senders ignored")
	}
	// Round trip keeps present-but-empty lists distinct from absent ones.
	g := mustParse(t, `{"room":{"rooms":[],"timeline":{"types":[]}}}`)
	out, _ := json.Marshal(g)
	if string(out) != `{"room":{"rooms":[],"timeline":{"types":[]}}}` {
		t.Errorf("marshal %s", out)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		in   string
		want error
	}{
		{``, ErrBadJSON},
		{`null`, ErrBadJSON},
		{`[]`, ErrBadJSON},
		{`{"room":`, ErrBadJSON},
		{`{"account_data":"Hello World"}`, ErrBadJSON},
		{`{"room":{"timeline":{"limit":"10"}}}`, ErrBadJSON},
		{`{"room":{"timeline":{"limit":1.5}}}`, ErrBadJSON},
		{`{"room":{"timeline":{"types":"m.room.message"}}}`, ErrBadJSON},
		{`{"room":{"timeline":{"types":[1]}}}`, ErrBadJSON},
		{`{"room":{"state":{"lazy_load_members":"yes"}}}`, ErrBadJSON},
		{`{"room":{"include_leave":1}}`, ErrBadJSON},
		{`{"event_fields":"type"}`, ErrBadJSON},
		{`{"room":{"timeline":{"contains_url":"true"}}}`, ErrBadJSON},
		{`{"room":{"timeline":{"limit":-1}}}`, ErrInvalidParam},
		{`{"presence":{"limit":-5}}`, ErrInvalidParam},
		{`{"room":{"ephemeral":{"limit":-1}}}`, ErrInvalidParam},
		{`{"event_format":"other"}`, ErrInvalidParam},
		{`{"room":{"not_rooms":["#foo:example.com"]}}`, ErrInvalidParam},
		{`{"room":{"state":{"rooms":["foo"]}}}`, ErrInvalidParam},
		{`{"presence":{"senders":["bar:example.com"]}}`, ErrInvalidParam},
		{`{"room":{"account_data":{"not_senders":[""]}}}`, ErrInvalidParam},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.in))
		if !errors.Is(err, tc.want) {
			t.Errorf("Parse(%s) = %v, want %v", tc.in, err, tc.want)
		}
	}
	// Allowed edge cases.
	for _, ok := range []string{`{}`, ` {"room":{"timeline":{"limit":0}}} `, `{"room":{"rooms":null}}`, `{"event_format":"federation"}`} {
		if _, err := Parse([]byte(ok)); err != nil {
			t.Errorf("Parse(%s): %v", ok, err)
		}
	}
}

func TestEventFilterMatch(t *testing.T) {
	msg := EventView{Type: "m.room.message", Sender: "@bob:x", RoomID: "!a:x"}
	cases := []struct {
		name   string
		filter string
		ev     EventView
		want   bool
	}{
		{"empty filter passes", `{}`, msg, true},
		{"exact type", `{"types":["m.room.message"]}`, msg, true},
		{"other type", `{"types":["m.room.member"]}`, msg, false},
		{"trailing wildcard", `{"types":["m.room.*"]}`, msg, true},
		{"wildcard needs prefix", `{"types":["m.call.*"]}`, msg, false},
		{"inner wildcard", `{"types":["m.*.message"]}`, msg, true},
		{"star alone", `{"types":["*"]}`, msg, true},
		{"wildcard is case-sensitive", `{"types":["M.room.*"]}`, msg, false},
		{"empty types list passes nothing", `{"types":[]}`, msg, false},
		{"not_types", `{"not_types":["m.room.message"]}`, msg, false},
		{"not_types wildcard", `{"not_types":["m.*"]}`, msg, false},
		{"not_types beats types", `{"types":["m.room.*"],"not_types":["m.room.message"]}`, msg, false},
		{"not_types other", `{"not_types":["m.room.member"]}`, msg, true},
		{"senders", `{"senders":["@bob:x"]}`, msg, true},
		{"senders other", `{"senders":["@carol:x"]}`, msg, false},
		{"senders no wildcard", `{"senders":["@bob:*"]}`, msg, false},
		{"not_senders", `{"not_senders":["@bob:x"]}`, msg, false},
		{"not_senders beats senders", `{"senders":["@bob:x"],"not_senders":["@bob:x"]}`, msg, false},
	}
	for _, tc := range cases {
		var f EventFilter
		if err := json.Unmarshal([]byte(tc.filter), &f); err != nil {
			t.Fatal(err)
		}
		if got := f.Match(tc.ev); got != tc.want {
			t.Errorf("%s: got %v want %v", tc.name, got, tc.want)
		}
		// A RoomEventFilter with the same content agrees.
		var rf RoomEventFilter
		_ = json.Unmarshal([]byte(tc.filter), &rf)
		if got := rf.Match(tc.ev); got != tc.want {
			t.Errorf("%s (room filter): got %v want %v", tc.name, got, tc.want)
		}
	}
}

func TestRoomEventFilterMatch(t *testing.T) {
	withURL := EventView{Type: "m.room.message", Sender: "@bob:x", RoomID: "!a:x", HasURL: true}
	noURL := EventView{Type: "m.room.message", Sender: "@bob:x", RoomID: "!a:x"}
	cases := []struct {
		name   string
		filter string
		ev     EventView
		want   bool
	}{
		{"contains_url true keeps url", `{"contains_url":true}`, withURL, true},
		{"contains_url true drops no url", `{"contains_url":true}`, noURL, false},
		{"contains_url false drops url", `{"contains_url":false}`, withURL, false},
		{"contains_url false keeps no url", `{"contains_url":false}`, noURL, true},
		{"contains_url absent", `{}`, withURL, true},
		{"rooms", `{"rooms":["!a:x"]}`, noURL, true},
		{"rooms other", `{"rooms":["!b:x"]}`, noURL, false},
		{"empty rooms", `{"rooms":[]}`, noURL, false},
		{"not_rooms", `{"not_rooms":["!a:x"]}`, noURL, false},
		{"not_rooms beats rooms", `{"rooms":["!a:x"],"not_rooms":["!a:x"]}`, noURL, false},
		{"all together", `{"rooms":["!a:x"],"types":["m.room.*"],"senders":["@bob:x"],"contains_url":true}`, withURL, true},
	}
	for _, tc := range cases {
		var f RoomEventFilter
		if err := json.Unmarshal([]byte(tc.filter), &f); err != nil {
			t.Fatal(err)
		}
		if got := f.Match(tc.ev); got != tc.want {
			t.Errorf("%s: got %v want %v", tc.name, got, tc.want)
		}
	}
}

func TestAllowsRoomAndNil(t *testing.T) {
	f := mustParse(t, `{"room":{"rooms":["!a:x","!b:x"],"not_rooms":["!b:x"]}}`)
	for room, want := range map[string]bool{"!a:x": true, "!b:x": false, "!c:x": false} {
		if got := f.AllowsRoom(room); got != want {
			t.Errorf("AllowsRoom(%s) = %v", room, got)
		}
	}
	// Nil filters and missing sections let everything through.
	var nf *Filter
	ev := EventView{Type: "t", RoomID: "!a:x"}
	if !nf.AllowsRoom("!z:x") || !nf.RoomTimeline().Match(ev) || !nf.RoomState().Match(ev) ||
		!nf.RoomEphemeral().Match(ev) || !nf.RoomAccountData().Match(ev) ||
		!nf.PresenceFilter().Match(ev) || !nf.AccountDataFilter().Match(ev) || nf.IncludeLeave() ||
		nf.UnreadThreadNotifications() || nf.Format() != FormatClient {
		t.Errorf("nil filter should allow everything")
	}
	if lazy, _ := nf.LazyLoadMembers(); lazy {
		t.Errorf("nil filter lazy loads")
	}
	if !mustParse(t, `{}`).RoomTimeline().AllowsRoom("!z:x") {
		t.Errorf("empty filter")
	}
}

func TestLimits(t *testing.T) {
	cases := []struct {
		filter   string
		def, max int
		want     int
	}{
		{`{}`, 20, 100, 20},
		{`{"room":{"timeline":{}}}`, 20, 100, 20},
		{`{"room":{"timeline":{"limit":5}}}`, 20, 100, 5},
		{`{"room":{"timeline":{"limit":0}}}`, 20, 100, 0},
		{`{"room":{"timeline":{"limit":5000}}}`, 20, 100, 100},
		{`{"room":{"timeline":{"limit":5000}}}`, 20, 0, 5000},
		{`{"room":{"state":{"limit":3}}}`, 20, 100, 20},
	}
	for _, tc := range cases {
		if got := mustParse(t, tc.filter).TimelineLimit(tc.def, tc.max); got != tc.want {
			t.Errorf("%s: TimelineLimit(%d,%d) = %d want %d", tc.filter, tc.def, tc.max, got, tc.want)
		}
	}
	f := mustParse(t, `{"presence":{"limit":2}}`)
	if f.PresenceFilter().EffectiveLimit(10, 0) != 2 || (*EventFilter)(nil).EffectiveLimit(10, 5) != 5 {
		t.Errorf("EventFilter.EffectiveLimit")
	}
}

func TestLazyLoad(t *testing.T) {
	cases := []struct {
		filter          string
		lazy, redundant bool
	}{
		{`{"room":{"state":{"lazy_load_members":true,"include_redundant_members":true}}}`, true, true},
		{`{"room":{"state":{"include_redundant_members":true}}}`, false, false},
		{`{"room":{"timeline":{"lazy_load_members":true}}}`, false, false},
	}
	for _, tc := range cases {
		lazy, red := mustParse(t, tc.filter).LazyLoadMembers()
		if lazy != tc.lazy || red != tc.redundant {
			t.Errorf("%s: %v %v", tc.filter, lazy, red)
		}
	}
	// /messages passes its RoomEventFilter directly.
	var rf RoomEventFilter
	_ = json.Unmarshal([]byte(`{"lazy_load_members":true}`), &rf)
	if lazy, red := rf.LazyLoad(); !lazy || red {
		t.Errorf("RoomEventFilter.LazyLoad %v %v", lazy, red)
	}
}

func TestViewJSON(t *testing.T) {
	v := ViewJSON([]byte(`{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"msgtype":"m.image","url":"mxc://x/y"}}`))
	if v != (EventView{Type: "m.room.message", Sender: "@a:x", RoomID: "!r:x", HasURL: true}) {
		t.Errorf("%+v", v)
	}
	// A url key deeper down, or a dotted key, is not content.url.
	v = ViewJSON([]byte(`{"type":"t","content":{"info":{"url":"x"},"url.x":1}}`))
	if v.HasURL {
		t.Errorf("nested url counted")
	}
}

func TestApplyEventFields(t *testing.T) {
	ev := []byte(`{"type":"m.room.message","sender":"@a:x","content":{"body":"hi","msgtype":"m.text",` +
		`"m.relates_to":{"rel_type":"m.thread","event_id":"$t"},"info":"str"},"unsigned":{"age":5},"origin_server_ts":1}`)
	cases := []struct {
		fields []string
		want   string
	}{
		{nil, string(ev)},
		{[]string{}, string(ev)},
		{[]string{"type", "sender"}, `{"type":"m.room.message","sender":"@a:x"}`},
		{[]string{"sender", "type"}, `{"type":"m.room.message","sender":"@a:x"}`},
		{[]string{"content.body"}, `{"content":{"body":"hi"}}`},
		{[]string{`content.m\.relates_to.rel_type`}, `{"content":{"m.relates_to":{"rel_type":"m.thread"}}}`},
		{[]string{"content.m.relates_to"}, `{}`},
		{[]string{"content.body", "content"}, `{"content":{"body":"hi","msgtype":"m.text","m.relates_to":{"rel_type":"m.thread","event_id":"$t"},"info":"str"}}`},
		{[]string{"content", "content.body"}, `{"content":{"body":"hi","msgtype":"m.text","m.relates_to":{"rel_type":"m.thread","event_id":"$t"},"info":"str"}}`},
		{[]string{"content.info.url"}, `{}`},
		{[]string{"content.missing", "unsigned.age"}, `{"unsigned":{"age":5}}`},
		{[]string{"nothing"}, `{}`},
	}
	for _, tc := range cases {
		got, err := ApplyEventFields(ev, tc.fields)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.fields, got, tc.want)
		}
		if !json.Valid(got) {
			t.Errorf("%q: invalid JSON %s", tc.fields, got)
		}
	}
	f := mustParse(t, `{"event_fields":["type"]}`)
	if got, _ := f.ApplyEventFields(ev); string(got) != `{"type":"m.room.message"}` {
		t.Errorf("Filter.ApplyEventFields %s", got)
	}
	if _, err := ApplyEventFields([]byte(`[1]`), []string{"a"}); err == nil {
		t.Errorf("non-object event accepted")
	}
}

func TestWildcardMatch(t *testing.T) {
	cases := []struct {
		p, s string
		want bool
	}{
		{"*", "", true},
		{"", "", true},
		{"", "a", false},
		{"a*", "a", true},
		{"a*c", "abbbc", true},
		{"a*c", "abbbd", false},
		{"*b*", "abc", true},
		{"a**", "a", true},
		{"m.room.*", "m.room", false},
		{"a*b*c", "aXbYbZc", true},
	}
	for _, tc := range cases {
		if got := wildcardMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("wildcardMatch(%q,%q) = %v", tc.p, tc.s, got)
		}
	}
}

func TestIsInline(t *testing.T) {
	if !IsInline(`{"room":{}}`) || IsInline("66696p746572") {
		t.Errorf("IsInline")
	}
}
