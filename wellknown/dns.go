package wellknown

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// maxCNAMEHops bounds CNAME chains (and loops) per lookup.
const maxCNAMEHops = 8

// dnsClient asks the configured recursive nameservers directly, so the
// resolver's view of DNS is explicit (and a loopback test server in tests)
// rather than whatever the host's stub resolver does.
type dnsClient struct {
	servers []string
	// hosts answers before DNS (see hosts.go); nil: none.
	hosts   map[string][]netip.Addr
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client
	now     func() time.Time

	mu    sync.Mutex
	cache map[dnsKey]dnsEntry
}

// dnsKey and dnsEntry cache answers for their TTL, as the spec asks of
// SRV and address lookups.
type dnsKey struct {
	name  string
	qtype uint16
}

type dnsEntry struct {
	msg     *dns.Msg
	server  string
	expires time.Time
}

const (
	// maxDNSCacheTTL caps how long an answer is reused, whatever its TTL.
	maxDNSCacheTTL = time.Hour
	// negativeDNSTTL is used for empty answers without an SOA minimum.
	negativeDNSTTL = time.Minute
	// negativeAddrTTL caps how long an empty A/AAAA answer is reused: a
	// server that was down, so had no address (a container's name), must
	// be reachable at the next retry once it is back.
	negativeAddrTTL = 5 * time.Second
	// maxDNSCacheEntries bounds the cache; when full it starts over.
	maxDNSCacheEntries = 4096
)

func newDNSClient(servers []string, timeout time.Duration, now func() time.Time) *dnsClient {
	return &dnsClient{
		servers: servers,
		timeout: timeout,
		udp:     &dns.Client{Net: "udp", Timeout: timeout},
		tcp:     &dns.Client{Net: "tcp", Timeout: timeout},
		now:     now,
		cache:   map[dnsKey]dnsEntry{},
	}
}

// answerTTL is how long a usable answer may be reused: the smallest TTL
// of its records (or the SOA minimum of a negative answer), capped.
func answerTTL(resp *dns.Msg) time.Duration {
	ttl := time.Duration(-1)
	for _, rr := range resp.Answer {
		if t := time.Duration(rr.Header().Ttl) * time.Second; ttl < 0 || t < ttl {
			ttl = t
		}
	}
	if ttl < 0 {
		ttl = negativeDNSTTL
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = time.Duration(min(soa.Minttl, soa.Hdr.Ttl)) * time.Second
			}
		}
	}
	return min(ttl, maxDNSCacheTTL)
}

// exchange answers from the TTL cache, or asks the nameservers.
func (d *dnsClient) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, string, error) {
	key := dnsKey{strings.ToLower(name), qtype}
	now := d.now()
	d.mu.Lock()
	e, ok := d.cache[key]
	d.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.msg, e.server + " (cached)", nil
	}
	resp, server, err := d.ask(ctx, name, qtype)
	if err != nil {
		return nil, server, err
	}
	ttl := answerTTL(resp)
	if len(resp.Answer) == 0 && (qtype == dns.TypeA || qtype == dns.TypeAAAA) {
		ttl = min(ttl, negativeAddrTTL)
	}
	if ttl > 0 {
		d.mu.Lock()
		if len(d.cache) >= maxDNSCacheEntries {
			d.cache = map[dnsKey]dnsEntry{}
		}
		d.cache[key] = dnsEntry{msg: resp, server: server, expires: now.Add(ttl)}
		d.mu.Unlock()
	}
	return resp, server, nil
}

// ask asks each nameserver in turn until one gives a usable answer
// (NOERROR or NXDOMAIN), retrying over TCP when the UDP answer is truncated.
func (d *dnsClient) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, string, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false) // the DNS flag day 2020 size: no fragmentation
	var errs []error
	for _, server := range d.servers {
		qctx, cancel := context.WithTimeout(ctx, d.timeout)
		resp, _, err := d.udp.ExchangeContext(qctx, m, server)
		if err == nil && resp.Truncated {
			resp, _, err = d.tcp.ExchangeContext(qctx, m, server)
		}
		cancel()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", server, err))
		case resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError:
			return resp, server, nil
		default:
			errs = append(errs, fmt.Errorf("%s: %s", server, dns.RcodeToString[resp.Rcode]))
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, "", errors.New("no nameservers configured")
	}
	return nil, strings.Join(d.servers, ","), errors.Join(errs...)
}

// lookup returns name's records of type qtype, following CNAMEs both inside
// one answer (as recursive resolvers usually send them) and by asking again
// when a chain ends without data. No records is (nil, nil).
func (d *dnsClient) lookup(ctx context.Context, name string, qtype uint16, trace *[]DNSQuery) ([]dns.RR, error) {
	cur := dns.Fqdn(name)
	seen := map[string]bool{}
	for range maxCNAMEHops {
		seen[strings.ToLower(cur)] = true
		resp, server, err := d.exchange(ctx, cur, qtype)
		q := DNSQuery{Name: cur, Type: dns.TypeToString[qtype], Server: server}
		if err != nil {
			q.Error = err.Error()
			*trace = append(*trace, q)
			return nil, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], cur, err)
		}
		q.Rcode, q.Answers = dns.RcodeToString[resp.Rcode], dnsRecords(resp.Answer)
		*trace = append(*trace, q)
		asked := cur
		for {
			next := ""
			for _, rr := range resp.Answer {
				if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, cur) {
					next = c.Target
					break
				}
			}
			if next == "" {
				break
			}
			if seen[strings.ToLower(next)] {
				return nil, fmt.Errorf("%s %s: CNAME loop at %s", dns.TypeToString[qtype], name, next)
			}
			seen[strings.ToLower(next)] = true
			cur = next
		}
		var out []dns.RR
		for _, rr := range resp.Answer {
			if h := rr.Header(); h.Rrtype == qtype && strings.EqualFold(h.Name, cur) {
				out = append(out, rr)
			}
		}
		if len(out) > 0 || cur == asked || resp.Rcode == dns.RcodeNameError {
			return out, nil
		}
		// The chain left this answer without data for its end: ask for it.
	}
	return nil, fmt.Errorf("%s %s: more than %d CNAME hops", dns.TypeToString[qtype], name, maxCNAMEHops)
}

// lookupIP resolves host to its AAAA then A addresses. One family failing
// is tolerated when the other gives addresses.
func (d *dnsClient) lookupIP(ctx context.Context, host string, trace *[]DNSQuery) ([]netip.Addr, error) {
	if a := d.hosts[strings.ToLower(strings.TrimSuffix(host, "."))]; len(a) > 0 {
		return slices.Clone(a), nil
	}
	var addrs []netip.Addr
	var errs []error
	for _, qtype := range []uint16{dns.TypeAAAA, dns.TypeA} {
		rrs, err := d.lookup(ctx, host, qtype, trace)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rr := range rrs {
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.AAAA:
				ip = rr.AAAA
			case *dns.A:
				ip = rr.A.To4()
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) == 0 && len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrDNSLookup, errors.Join(errs...))
	}
	return addrs, nil
}

// lookupSRV returns the SRV records for _<service>._tcp.<host>; none is
// (nil, nil).
func (d *dnsClient) lookupSRV(ctx context.Context, service, host string, trace *[]DNSQuery) ([]*dns.SRV, error) {
	name := "_" + service + "._tcp." + host
	rrs, err := d.lookup(ctx, name, dns.TypeSRV, trace)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSRVLookup, err)
	}
	out := make([]*dns.SRV, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, rr.(*dns.SRV))
	}
	return out, nil
}

// orderSRV puts records in RFC 2782 order: ascending priority, and within a
// priority a weighted random draw (weight-0 records first in the running
// sum, so they are picked rarely but not never). randIntN(n) is in [0, n).
func orderSRV(recs []*dns.SRV, randIntN func(int) int) []*dns.SRV {
	sorted := slices.Clone(recs)
	slices.SortStableFunc(sorted, func(a, b *dns.SRV) int {
		if c := cmp.Compare(a.Priority, b.Priority); c != 0 {
			return c
		}
		// Weight 0 first, as RFC 2782 asks for the selection list.
		return cmp.Compare(min(a.Weight, 1), min(b.Weight, 1))
	})
	out := make([]*dns.SRV, 0, len(sorted))
	for len(sorted) > 0 {
		n := 1
		for n < len(sorted) && sorted[n].Priority == sorted[0].Priority {
			n++
		}
		group := sorted[:n]
		for len(group) > 0 {
			total := 0
			for _, s := range group {
				total += int(s.Weight)
			}
			pick := randIntN(total + 1) // 0 … total inclusive, per the RFC
			i, sum := 0, 0
			for i = range group {
				sum += int(group[i].Weight)
				if sum >= pick {
					break
				}
			}
			out = append(out, group[i])
			group = slices.Delete(group, i, i+1)
		}
		sorted = sorted[n:]
	}
	return out
}
