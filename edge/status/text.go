package status

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// WriteText prints r for people: short lines, each check ✓ or ✗ with its
// reason, and the fix for every failure and warning.
func WriteText(w io.Writer, r *Report) {
	// Joined errors span lines; keep one line per item.
	p := func(format string, a ...any) {
		fmt.Fprintln(w, strings.ReplaceAll(fmt.Sprintf(format, a...), "\n", "; "))
	}
	mark := func(ok bool) string {
		if ok {
			return "✓"
		}
		return "✗"
	}
	p("edge status %s (%s)", r.ServerName, r.CheckedAt.Format(time.RFC3339))

	wk := r.WellKnown
	switch {
	case wk.Skipped != "":
		p("  well-known: not consulted, %s", wk.Skipped)
	case wk.Found:
		p("  well-known: ✓ m.server %s (cached until %s)", wk.MServer, wk.CacheExpires.Format(time.RFC3339))
	case wk.URL != "":
		p("  well-known: none, %s (cached until %s)", wk.Error, wk.CacheExpires.Format(time.RFC3339))
	}

	d := r.DNS
	p("  DNS via %s", strings.Join(d.Nameservers, ", "))
	for _, s := range d.SRV {
		dep := ""
		if s.Deprecated {
			dep = " (deprecated)"
		}
		recs := []string{}
		for _, rec := range s.Records {
			recs = append(recs, fmt.Sprintf("%d %d %d %s", rec.Priority, rec.Weight, rec.Port, rec.Target))
		}
		switch {
		case s.Error != "":
			p("    SRV %s%s: error %s", s.Name, dep, s.Error)
		case len(recs) == 0:
			p("    SRV %s%s: none", s.Name, dep)
		default:
			p("    SRV %s%s: %s", s.Name, dep, strings.Join(recs, "; "))
		}
	}
	for _, c := range d.CNAMEs {
		p("    CNAME %s", c)
	}
	for _, h := range d.Hosts {
		if h.Error != "" {
			p("    %s: %s", h.Host, h.Error)
		} else {
			p("    %s: %s", h.Host, strings.Join(h.Addrs, ", "))
		}
	}
	if res := r.Resolution; res != nil && res.Result != nil {
		p("  discovery: step %s, Host %s, TLS name %s → %s", res.Result.Step, r.Host, r.TLSServerName, strings.Join(d.Addrs, ", "))
	}

	for _, c := range r.Connections {
		p("  %s", c.Addr)
		if c.Error != "" {
			p("    ✗ connection: %s", c.Error)
			continue
		}
		alpn := c.ALPN
		if alpn == "" {
			alpn = "no ALPN"
		}
		p("    %s %s %s, handshake %dms, key request %dms", c.TLSVersion, c.CipherSuite, alpn, c.HandshakeMS, c.KeysMS)
		p("    %s HTTP/2, HTTP/3 %s", mark(c.HTTP2), c.HTTP3)
		if c.AltSvc != "" {
			p("    Alt-Svc: %s", c.AltSvc)
		}
		for i, ce := range c.Certificates {
			role := "cert"
			if i > 0 {
				role = "chain"
			}
			sans := slices.Concat(ce.DNSNames, ce.IPAddresses)
			p("    %s %s, issuer %s, SANs %v, expires %s (%d days), SHA-256 %s", role, ce.Subject, ce.Issuer, sans,
				ce.NotAfter.Format("2006-01-02"), ce.DaysLeft, ce.SHA256Fingerprint)
		}
		ch := c.Checks
		failed := map[string]string{}
		for _, f := range ch.Failed {
			failed[f.Check] = f.Reason
		}
		for _, name := range []struct {
			n  string
			ok bool
		}{
			{"ValidCertificates", ch.ValidCertificates}, {"MatchingServerName", ch.MatchingServerName},
			{"MatchingKeyServerName", ch.MatchingKeyServerName}, {"FutureValidUntilTS", ch.FutureValidUntilTS},
			{"HasEd25519Key", ch.HasEd25519Key},
		} {
			line := "    " + mark(name.ok) + " " + name.n
			if why := failed[name.n]; !name.ok && why != "" {
				line += ": " + why
			}
			p("%s", line)
		}
		ids := make([]string, 0, len(ch.Ed25519Checks))
		for id := range ch.Ed25519Checks {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			k := ch.Ed25519Checks[id]
			p("    %s %s ValidEd25519, %s MatchingSignature", mark(k.ValidEd25519), id, mark(k.MatchingSignature))
		}
		if c.Version != nil && c.Version.Error == "" {
			p("    version: %s %s", c.Version.Name, c.Version.Version)
		}
		if c.ClockSkewSeconds != nil {
			p("    clock skew: %+.0fs", *c.ClockSkewSeconds)
		}
	}

	cw := r.ClientWellKnown
	switch {
	case cw.Reachable:
		p("  client well-known: ✓ base_url %s answers (%s), CORS %q", cw.BaseURL, strings.Join(cw.Versions, " "), cw.CORS)
	case cw.URL != "":
		p("  client well-known: ✗ %s", cw.Error)
	}
	for _, n := range r.Notaries {
		switch {
		case n.Error != "":
			p("  notary %s: ✗ %s", n.Notary, n.Error)
		case n.Match:
			p("  notary %s: ✓ same keys", n.Notary)
		default:
			p("  notary %s: ✗ keys differ: %v", n.Notary, n.Mismatch)
		}
	}
	if lv := r.LocalView; lv != nil {
		switch {
		case lv.Error != "":
			p("  this node: %s", lv.Error)
		case !lv.Known:
			p("  this node: has not sent to %s", r.ServerName)
		default:
			line := fmt.Sprintf("  this node: %d pending, %d transactions sent, %d failures", lv.Pending, lv.SentTransactions, lv.Failures)
			if !lv.LastSuccess.IsZero() {
				line += ", last success " + lv.LastSuccess.UTC().Format(time.RFC3339)
				if lv.LastLatencyMS > 0 {
					line += fmt.Sprintf(" (%.1f ms)", lv.LastLatencyMS)
				}
			}
			if lv.LastError != "" {
				line += ", last error " + lv.LastError
			}
			if !lv.RetryAt.IsZero() {
				line += ", next try " + lv.RetryAt.UTC().Format(time.RFC3339)
			}
			p("%s", line)
		}
	}
	for _, f := range r.Failures {
		p("✗ %s: %s", where(f), f.Reason)
		if f.Fix != "" {
			p("  fix: %s", f.Fix)
		}
	}
	for _, f := range r.Warnings {
		p("! %s: %s", where(f), f.Reason)
		if f.Fix != "" {
			p("  fix: %s", f.Fix)
		}
	}
	if r.FederationOK {
		p("FederationOK: ✓ yes")
	} else {
		p("FederationOK: ✗ no")
	}
}

func where(f Finding) string {
	if f.Addr != "" {
		return f.Check + " (" + f.Addr + ")"
	}
	return f.Check
}
