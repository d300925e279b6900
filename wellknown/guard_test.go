package wellknown

import (
	"net/netip"
	"testing"
)

func TestRestricted(t *testing.T) {
	cases := []struct {
		addr   string
		reason string // "" = allowed
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.0.9", "loopback"},
		{"::1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"172.32.0.1", ""},
		{"192.168.1.1", "private"},
		{"fc00::1", "private"},
		{"fd12:3456::1", "private"},
		{"169.254.0.1", "link-local"},
		{"fe80::1", "link-local"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"239.1.2.3", "multicast"},
		{"ff02::1", "multicast"},
		{"ff0e::1", "multicast"},
		{"100.64.0.1", "CGNAT"},
		{"100.127.255.255", "CGNAT"},
		{"100.63.255.255", ""},
		{"100.128.0.1", ""},
		{"::ffff:10.0.0.1", "private"},
		{"::ffff:127.0.0.1", "loopback"},
		{"0.1.2.3", "reserved"},
		{"255.255.255.255", "reserved"},
		{"240.0.0.1", "reserved"},
		{"192.0.0.8", "reserved"},
		{"198.18.0.1", "reserved"},
		{"192.0.2.1", "documentation"},
		{"203.0.113.9", "documentation"},
		{"2001:db8::1", "documentation"},
		{"fec0::1", "reserved"},
		{"2002:7f00:1::", "6to4 of loopback"},
		{"2002:0808:0808::", ""},
		{"64:ff9b::a00:1", "NAT64 of private"},
		{"64:ff9b::808:808", ""},
		{"8.8.8.8", ""},
		{"93.184.216.34", ""},
		{"2606:4700::1111", ""},
	}
	for _, tc := range cases {
		why, bad := Restricted(netip.MustParseAddr(tc.addr))
		if why != tc.reason || bad != (tc.reason != "") {
			t.Errorf("%s: got %q %v, want %q", tc.addr, why, bad, tc.reason)
		}
	}
	if _, bad := Restricted(netip.Addr{}); !bad {
		t.Error("the zero Addr is allowed")
	}
}
