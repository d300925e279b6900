package wellknown

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
)

// Never-public ranges beyond what netip's predicates cover; the list
// follows Synapse's default federation IP blacklist.
var (
	cgnat     = netip.MustParsePrefix("100.64.0.0/10")  // RFC 6598 shared address space
	thisNet   = netip.MustParsePrefix("0.0.0.0/8")      // RFC 1122 "this network"
	reserved4 = netip.MustParsePrefix("240.0.0.0/4")    // RFC 1112 reserved, incl. broadcast
	ietfV4    = netip.MustParsePrefix("192.0.0.0/24")   // RFC 6890 protocol assignments
	relay6to4 = netip.MustParsePrefix("192.88.99.0/24") // RFC 7526 deprecated 6to4 relays
	benchV4   = netip.MustParsePrefix("198.18.0.0/15")  // RFC 2544 benchmarking
	docV4     = []netip.Prefix{                         // RFC 5737 documentation
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
	}
	siteLocal = netip.MustParsePrefix("fec0::/10")     // deprecated site-local
	docV6     = netip.MustParsePrefix("2001:db8::/32") // RFC 3849 documentation
	nat64     = netip.MustParsePrefix("64:ff9b::/96")  // RFC 6052: judge the embedded IPv4
	sixToFour = netip.MustParsePrefix("2002::/16")     // RFC 3056: judge the embedded IPv4
)

// Restricted reports whether a is an address a federation peer must not
// make this server connect to, and why: loopback, private (RFC 1918, ULA
// fc00::/7), link-local, unspecified, multicast, CGNAT 100.64.0.0/10, and a
// few other never-public ranges (0/8, 240/4 and broadcast, benchmarking,
// IETF protocol space, documentation, 6to4/NAT64 wrapping one of those).
// IPv4-mapped IPv6 addresses are judged as IPv4.
func Restricted(a netip.Addr) (reason string, restricted bool) {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return "invalid", true
	case a.IsUnspecified():
		return "unspecified", true
	case a.IsLoopback():
		return "loopback", true
	case a.IsPrivate():
		return "private", true
	case a.IsLinkLocalUnicast():
		return "link-local", true
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast", true
	case cgnat.Contains(a):
		return "CGNAT", true
	case thisNet.Contains(a), reserved4.Contains(a), ietfV4.Contains(a), relay6to4.Contains(a), benchV4.Contains(a),
		siteLocal.Contains(a):
		return "reserved", true
	case docV6.Contains(a), docV4[0].Contains(a), docV4[1].Contains(a), docV4[2].Contains(a):
		return "documentation", true
	case nat64.Contains(a):
		b := a.As16()
		if why, bad := Restricted(netip.AddrFrom4([4]byte(b[12:]))); bad {
			return "NAT64 of " + why, true
		}
	case sixToFour.Contains(a):
		b := a.As16()
		if why, bad := Restricted(netip.AddrFrom4([4]byte(b[2:6]))); bad {
			return "6to4 of " + why, true
		}
	}
	return "", false
}

// refuse reports whether the policy forbids a, and why.
func (r *Resolver) refuse(a netip.Addr) (string, bool) {
	if r.opts.AllowPrivate {
		return "", false
	}
	return Restricted(a)
}

// admit splits addrs into those the policy allows and notes the refused
// ones on the step.
func (r *Resolver) admit(addrs []netip.Addr, st *Step) []netip.Addr {
	var ok []netip.Addr
	for _, a := range addrs {
		if why, bad := r.refuse(a); bad {
			st.Refused = append(st.Refused, a.String()+" ("+why+")")
			continue
		}
		ok = append(ok, a)
	}
	return ok
}

// controlDial is the last check before connect(2): it sees the literal
// address about to be dialled, so no name resolution in between (DNS
// rebinding) can slip a private address past the policy.
func (r *Resolver) controlDial(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dial address %q", ErrPrivateAddress, address)
	}
	if why, bad := r.refuse(ap.Addr()); bad {
		return fmt.Errorf("%w: %s is %s", ErrPrivateAddress, ap.Addr(), why)
	}
	return nil
}

// dialTrace collects what the well-known dialer did, for the report. The
// transport may dial on another goroutine, hence the lock.
type dialTrace struct {
	mu      sync.Mutex
	dns     []DNSQuery
	refused []string
	dialed  []string
}

type dialTraceKey struct{}

func (t *dialTrace) add(f func(t *dialTrace)) {
	if t == nil {
		return
	}
	t.mu.Lock()
	f(t)
	t.mu.Unlock()
}

// dialWellKnown is the well-known client's DialContext: it resolves the
// name through the resolver's own nameservers, drops refused addresses and
// dials the rest in order. Port 443 is swapped for Options.WellKnownPort
// when set (tests only), so the request itself — URL, Host, SNI — stays
// exactly what production sends.
func (r *Resolver) dialWellKnown(ctx context.Context, _, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if port == "443" && r.opts.WellKnownPort != 0 {
		port = strconv.Itoa(r.opts.WellKnownPort)
	}
	tr, _ := ctx.Value(dialTraceKey{}).(*dialTrace)
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		var qs []DNSQuery
		addrs, err = r.dns.lookupIP(ctx, host, &qs)
		tr.add(func(t *dialTrace) { t.dns = append(t.dns, qs...) })
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("%w: %s has no A or AAAA record", ErrNoAddress, host)
		}
	}
	var errs []error
	for _, a := range addrs {
		if why, bad := r.refuse(a); bad {
			tr.add(func(t *dialTrace) { t.refused = append(t.refused, a.String()+" ("+why+")") })
			errs = append(errs, fmt.Errorf("%w: %s is %s", ErrPrivateAddress, a, why))
			continue
		}
		target := net.JoinHostPort(a.String(), port)
		tr.add(func(t *dialTrace) { t.dialed = append(t.dialed, target) })
		c, err := r.dialer.DialContext(ctx, "tcp", target)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}
