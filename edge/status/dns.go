package status

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"edge/wellknown"
)

// lookup asks the configured nameservers directly (not the host's stub),
// so `edge status` sees what the node's resolver sees. It is separate from
// the resolver's lookups because the report wants both SRV names, which
// discovery itself stops short of.
type lookup struct {
	servers []string
	timeout time.Duration
	dns     *DNS
	seen    map[string]bool // hosts already in dns.Hosts
}

// ask sends one question to each nameserver in turn until one answers.
func (l *lookup) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	var errs []error
	for _, s := range l.servers {
		c := &dns.Client{Net: "udp", Timeout: l.timeout}
		resp, _, err := c.ExchangeContext(ctx, m, s)
		if err == nil && resp.Truncated {
			c.Net = "tcp"
			resp, _, err = c.ExchangeContext(ctx, m, s)
		}
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
		case resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError:
			return resp, nil
		default:
			errs = append(errs, fmt.Errorf("%s: %s", s, dns.RcodeToString[resp.Rcode]))
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no nameservers")
	}
	return nil, errors.Join(errs...)
}

// records returns name's records of qtype, following CNAMEs (recorded in
// the report) within answers and by asking again.
func (l *lookup) records(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	cur := dns.Fqdn(name)
	for range 8 {
		resp, err := l.ask(ctx, cur, qtype)
		if err != nil {
			return nil, err
		}
		asked := cur
		for {
			next := ""
			for _, rr := range resp.Answer {
				if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, cur) {
					next = c.Target
				}
			}
			if next == "" || strings.EqualFold(next, cur) {
				break
			}
			l.cname(cur, next)
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
	}
	return nil, fmt.Errorf("more than 8 CNAME hops from %s", name)
}

func (l *lookup) cname(from, to string) {
	s := strings.TrimSuffix(from, ".") + " → " + strings.TrimSuffix(to, ".")
	if !slices.Contains(l.dns.CNAMEs, s) {
		l.dns.CNAMEs = append(l.dns.CNAMEs, s)
	}
}

// addrs resolves host to AAAA then A addresses, recording it once in the report.
func (l *lookup) addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	var out []netip.Addr
	var errs []error
	for _, qt := range []uint16{dns.TypeAAAA, dns.TypeA} {
		rrs, err := l.records(ctx, host, qt)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", dns.TypeToString[qt], host, err))
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
				out = append(out, a)
			}
		}
	}
	var err error
	if len(out) == 0 {
		if err = errors.Join(errs...); err == nil {
			err = fmt.Errorf("%s has no A or AAAA record", host)
		}
	}
	key := strings.ToLower(strings.TrimSuffix(host, "."))
	if !l.seen[key] {
		l.seen[key] = true
		ha := HostAddrs{Host: key}
		for _, a := range out {
			ha.Addrs = append(ha.Addrs, a.String())
		}
		if err != nil {
			ha.Error = err.Error()
		}
		l.dns.Hosts = append(l.dns.Hosts, ha)
	}
	return out, err
}

// srv looks up both SRV names on host, and the addresses of every target.
func (l *lookup) srv(ctx context.Context, host string) {
	for _, svc := range []string{"matrix-fed", "matrix"} {
		set := SRVSet{Name: "_" + svc + "._tcp." + host, Deprecated: svc == "matrix"}
		rrs, err := l.records(ctx, set.Name, dns.TypeSRV)
		if err != nil {
			set.Error = err.Error()
		}
		for _, rr := range rrs {
			s := rr.(*dns.SRV)
			target := strings.TrimSuffix(dns.CanonicalName(s.Target), ".")
			set.Records = append(set.Records, wellknown.SRVRecord{Target: target, Port: s.Port, Priority: s.Priority, Weight: s.Weight})
		}
		l.dns.SRV = append(l.dns.SRV, set)
		for _, r := range set.Records {
			if r.Target != "" {
				_, _ = l.addrs(ctx, r.Target)
			}
		}
	}
}
