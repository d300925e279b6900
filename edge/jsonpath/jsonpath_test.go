package jsonpath

import (
	"reflect"
	"testing"
)

func TestSplit(t *testing.T) {
	cases := map[string][]string{
		"content.body":              {"content", "body"},
		`content.m\.relates_to.rel`: {"content", "m.relates_to", "rel"},
		`content.m\\foo`:            {"content", `m\foo`},
		`content.m\x`:               {"content", `m\x`},
		`a\\.b`:                     {`a\`, "b"},
		"":                          {""},
	}
	for in, want := range cases {
		if got := Split(in); !reflect.DeepEqual(got, want) {
			t.Errorf("Split(%q) = %q want %q", in, got, want)
		}
	}
}
