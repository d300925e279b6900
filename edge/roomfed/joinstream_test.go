package roomfed

import (
	"strings"
	"testing"
	"testing/iotest"
)

// TestDecodeJoinAnswer: a send_join answer read a byte at a time (the
// worst a network can do) hands over each event of state and auth_chain
// intact and marked by its list, picks up the other members, and refuses
// what is not a whole answer.
func TestDecodeJoinAnswer(t *testing.T) {
	type got struct {
		raw   string
		state bool
	}
	decode := func(body string, stopAfter int) ([]got, *joinAnswer, error) {
		var out []got
		ans := &joinAnswer{}
		err := decodeJoinAnswer(iotest.OneByteReader(strings.NewReader(body)), ans, "state", func(raw []byte, state bool) bool {
			out = append(out, got{string(raw), state})
			return stopAfter == 0 || len(out) < stopAfter
		})
		return out, ans, err
	}
	body := `{"origin":"a.test","auth_chain":[{"type":"m.room.create","n":1},{"type":"x","s":"]}\""}],
	  "state" : [ {"type":"m.room.member","nested":{"a":[1,2,{"b":"}"}]}} ],
	  "event":{"type":"m.room.member","me":true},"members_omitted":true,"servers_in_room":["a.test","b.test"],"extra":{"ignored":[1]}}`
	evs, ans, err := decode(body, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []got{
		{`{"type":"m.room.create","n":1}`, false},
		{`{"type":"x","s":"]}\""}`, false},
		{`{"type":"m.room.member","nested":{"a":[1,2,{"b":"}"}]}}`, true},
	}
	if len(evs) != len(want) {
		t.Fatalf("events = %v, want %v", evs, want)
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Errorf("event %d = %v, want %v", i, evs[i], want[i])
		}
	}
	if string(ans.Event) != `{"type":"m.room.member","me":true}` || !ans.MembersOmitted || strings.Join(ans.ServersInRoom, ",") != "a.test,b.test" {
		t.Errorf("other members: event %s, omitted %v, servers %v", ans.Event, ans.MembersOmitted, ans.ServersInRoom)
	}
	if evs, _, err := decode(body, 2); err != nil || len(evs) != 2 {
		t.Errorf("stopping after 2 events: %d events, %v", len(evs), err)
	}
	if evs, _, err := decode(`{"state":null,"auth_chain":[]}`, 0); err != nil || len(evs) != 0 {
		t.Errorf("null and empty lists: %d events, %v", len(evs), err)
	}
	for _, bad := range []string{
		body[:len(body)/2], // cut off mid-answer
		`[200,{"state":[]}]`,
		`{"state":[{"type":"a"},]}`,
		`{"state":[],"state":[]}`,
		"{\"state\":[{\"type\":\"\xff\"}]}",
		``,
	} {
		if _, _, err := decode(bad, 0); err == nil {
			t.Errorf("decoding %q: no error", bad)
		}
	}
}
