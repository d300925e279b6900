package status

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"edge/wellknown"
)

// lookup asks the configured nameservers directly (not the host's stub),
// through wellknown's DNS client, so `edge status` sees what the node's
// resolver sees; unlike discovery, which stops at the first SRV name that
// answers, the report asks both SRV names and every target's addresses.
type lookup struct {
	wk   *wellknown.Lookup
	dns  *DNS
	seen map[string]bool // hosts already in dns.Hosts
}

func newLookup(servers []string, timeout time.Duration, d *DNS) *lookup {
	return &lookup{wk: wellknown.NewLookup(servers, timeout), dns: d, seen: map[string]bool{}}
}

// records returns name's records of qtype, following CNAMEs (recorded in
// the report).
func (l *lookup) records(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	rrs, trace, err := l.wk.Records(ctx, name, qtype)
	l.cnames(trace)
	return rrs, err
}

// cnames records every CNAME the questions met, once each.
func (l *lookup) cnames(trace []wellknown.DNSQuery) {
	for _, q := range trace {
		for _, a := range q.Answers {
			if a.Type != "CNAME" {
				continue
			}
			s := strings.TrimSuffix(a.Name, ".") + " → " + strings.TrimSuffix(strings.TrimSpace(a.Value), ".")
			if !slices.Contains(l.dns.CNAMEs, s) {
				l.dns.CNAMEs = append(l.dns.CNAMEs, s)
			}
		}
	}
}

// addrs resolves host to AAAA then A addresses, recording it once in the report.
func (l *lookup) addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	out, trace, err := l.wk.Addrs(ctx, host)
	l.cnames(trace)
	if len(out) == 0 && err == nil {
		err = fmt.Errorf("%s has no A or AAAA record", host)
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
