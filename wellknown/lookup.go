package wellknown

import (
	"context"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// Lookup asks given nameservers directly, with the resolver's own DNS
// client (CNAME chains, TCP on truncation), for tools that report on DNS
// rather than connect: `edge status` shows what the node's resolver sees.
// Each Lookup has its own cache, so a fresh one sees fresh answers.
type Lookup struct{ c *dnsClient }

// NewLookup asks servers ("host:port") in turn, each with timeout.
func NewLookup(servers []string, timeout time.Duration) *Lookup {
	return &Lookup{c: newDNSClient(servers, timeout, time.Now)}
}

// Records returns name's records of type qtype, following CNAMEs, and
// every question it asked on the way. No records is (nil, trace, nil).
func (l *Lookup) Records(ctx context.Context, name string, qtype uint16) ([]dns.RR, []DNSQuery, error) {
	var trace []DNSQuery
	rrs, err := l.c.lookup(ctx, name, qtype, &trace)
	return rrs, trace, err
}

// Addrs resolves host to its AAAA then A addresses (an IP literal is its
// own address). No address and no error means neither family has records.
func (l *Lookup) Addrs(ctx context.Context, host string) ([]netip.Addr, []DNSQuery, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil, nil
	}
	var trace []DNSQuery
	addrs, err := l.c.lookupIP(ctx, host, &trace)
	return addrs, trace, err
}
