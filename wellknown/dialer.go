package wellknown

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// PublicDialer connects only to public addresses (unless AllowPrivate):
// it resolves a name itself, checks every address with Restricted, and
// dials the checked IP literal, so DNS cannot answer differently between
// the check and the connection. Outbound fetches whose target a remote
// party chooses (push gateways, URL previews) dial through it.
type PublicDialer struct {
	Dialer       *net.Dialer
	AllowPrivate bool
	// Restricted overrides the address policy (tests); nil means Restricted.
	Restricted func(netip.Addr) (reason string, restricted bool)
}

// DialContext dials addr ("host:port") on the first allowed address that
// answers. A refusal wraps ErrPrivateAddress; when an allowed address was
// tried and failed, that error is returned instead (worth a retry).
func (d *PublicDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, err
	}
	restricted := d.Restricted
	if restricted == nil {
		restricted = Restricted
	}
	dialer := d.Dialer
	if dialer == nil {
		dialer = &net.Dialer{}
	}
	var refused, failed []error
	for _, ip := range ips {
		if why, bad := restricted(ip); bad && !d.AllowPrivate {
			refused = append(refused, fmt.Errorf("%w: %s is %s", ErrPrivateAddress, ip, why))
			continue
		}
		c, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		failed = append(failed, err)
	}
	switch {
	case len(failed) > 0:
		return nil, errors.Join(failed...)
	case len(refused) > 0:
		return nil, errors.Join(refused...)
	}
	return nil, fmt.Errorf("%s has no address", host)
}
