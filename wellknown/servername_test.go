package wellknown

import (
	"errors"
	"strings"
	"testing"
)

func TestParseServerName(t *testing.T) {
	valid := []struct {
		in   string
		host string
		port int
		ip   bool
	}{
		// The spec's own examples (appendices, "Server Name").
		{"matrix.org", "matrix.org", 0, false},
		{"matrix.org:8888", "matrix.org", 8888, false},
		{"1.2.3.4", "1.2.3.4", 0, true},
		{"1.2.3.4:1234", "1.2.3.4", 1234, true},
		{"[1234:5678::abcd]", "1234:5678::abcd", 0, true},
		{"[1234:5678::abcd]:5678", "1234:5678::abcd", 5678, true},
		// More.
		{"localhost", "localhost", 0, false},
		{"a-b.Example.ORG:65535", "a-b.Example.ORG", 65535, false},
		{"[::1]", "::1", 0, true},
		{"[::ffff:1.2.3.4]:1", "::ffff:1.2.3.4", 1, true},
		{"123", "123", 0, false}, // digits alone are a DNS name, not an IPv4 literal
		{"1.2.3", "1.2.3", 0, false},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", 0, false},
	}
	for _, tc := range valid {
		n, err := ParseServerName(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if n.Host != tc.host || n.Port != tc.port || n.IsIP() != tc.ip || n.String() != tc.in {
			t.Errorf("%q: got %+v (String %q)", tc.in, n, n.String())
		}
	}

	invalid := []string{
		"", ":8448", "matrix.org:", "matrix.org:0", "matrix.org:65536", "matrix.org:123456", "matrix.org:-1",
		"matrix.org:+80", "matrix.org:80:80", "1.2.3.256", "1.2.3.4.", "[::1", "[::1]x", "[::1]:", "[fe80::1%eth0]",
		"[1.2.3.4]", "[]", "[:]:80", "::1", "exa mple.org", "ex_ample.org", "a..b", ".a", "a.", "bücher.example",
		strings.Repeat("a", 64) + ".example", strings.Repeat("a.", 128) + "a", "[" + strings.Repeat("1", 46) + "]",
	}
	for _, in := range invalid {
		if n, err := ParseServerName(in); !errors.Is(err, ErrInvalidServerName) {
			t.Errorf("%q: accepted as %+v", in, n)
		}
	}
}
