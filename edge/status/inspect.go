package status

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"edge/wellknown"
)

// Options configures Inspect. The zero value checks like a public server:
// system nameservers and roots, no private addresses, no notaries.
type Options struct {
	// Nameservers are "ip:port" DNS servers; empty: /etc/resolv.conf.
	Nameservers []string
	// RootCAs verifies certificates; nil means the system roots.
	RootCAs *x509.CertPool
	// AllowPrivate permits loopback and private addresses (LANs, tests).
	AllowPrivate bool
	// Notaries are the key servers asked for the server's keys.
	Notaries []Notary
	// WellKnownPort, when non-zero, is dialled instead of 443 for both
	// well-known documents. Only for tests.
	WellKnownPort int
	// Timeout bounds each network step (default 10s).
	Timeout time.Duration
	// ExpiryWarning is how close a certificate's NotAfter may come before
	// it is warned about (default 14 days).
	ExpiryWarning time.Duration
	// AdminURL is the local node's admin listener ("http://127.0.0.1:8010"),
	// asked for its queue to the server; empty skips that. With AdminToken
	// it is admin_listen (GET /_edge/admin/status), without it
	// metrics_listen (GET /federation/queues).
	AdminURL   string
	AdminToken string
	// KeyExpiryWarning is how close valid_until_ts may come before it is
	// warned about (default 1 hour).
	KeyExpiryWarning time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Notary is a key server to cross-check against; VerifyKeys (key ID →
// unpadded base64) authenticate its answer when given.
type Notary struct {
	ServerName string
	VerifyKeys map[string]string
}

const maxBody = 1 << 20

// maxSkew is the clock difference worth a warning: key validity and event
// timestamps are judged against the receiver's clock.
const maxSkew = time.Minute

// Inspect checks serverName and returns the report. The error is only for
// unusable options; everything the server does wrong is in the report.
func Inspect(ctx context.Context, serverName string, opts Options) (*Report, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.ExpiryWarning <= 0 {
		opts.ExpiryWarning = 14 * 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.KeyExpiryWarning <= 0 {
		opts.KeyExpiryWarning = time.Hour
	}
	res, err := wellknown.New(wellknown.Options{
		Nameservers: opts.Nameservers, RootCAs: opts.RootCAs, AllowPrivate: opts.AllowPrivate,
		WellKnownPort: opts.WellKnownPort, DNSTimeout: opts.Timeout, FetchTimeout: opts.Timeout, Now: opts.Now,
	})
	if err != nil {
		return nil, err
	}
	in := &inspector{opts: opts, resolver: res, rep: &Report{ServerName: serverName, CheckedAt: opts.Now().UTC()}}
	in.rep.DNS.Nameservers = res.Nameservers()
	in.rep.DNS.Addrs = []string{}
	in.rep.Connections = []Connection{}
	in.run(ctx)
	return in.rep, nil
}

type inspector struct {
	opts     Options
	resolver *wellknown.Resolver
	rep      *Report
}

func (in *inspector) fail(check, addr, reason, fix string) {
	in.rep.Failures = append(in.rep.Failures, Finding{Check: check, Addr: addr, Reason: reason, Fix: fix})
}

func (in *inspector) warn(check, addr, reason, fix string) {
	in.rep.Warnings = append(in.rep.Warnings, Finding{Check: check, Addr: addr, Reason: reason, Fix: fix})
}

func (c *Connection) fail(check, reason, fix string) {
	c.Checks.Failed = append(c.Checks.Failed, Finding{Check: check, Addr: c.Addr, Reason: reason, Fix: fix})
}

func (in *inspector) run(ctx context.Context) {
	rep := in.rep
	result, rrep, rerr := in.resolver.ResolveReport(ctx, rep.ServerName)
	rep.Resolution = rrep
	in.wellKnownSection(rrep)
	in.dnsSection(ctx, rrep)
	if rerr != nil {
		in.fail("Resolution", "", rerr.Error(), resolutionFix(rerr))
	} else {
		rep.Host, rep.TLSServerName = result.Host, result.TLSServerName
		for _, ep := range result.Endpoints {
			rep.DNS.Addrs = append(rep.DNS.Addrs, ep.Addr.String())
		}
		for _, ep := range result.Endpoints {
			c := in.connection(ctx, result, ep)
			rep.Connections = append(rep.Connections, c)
			if c.Error != "" {
				in.fail("Connection", c.Addr, c.Error, "make sure the server listens with TLS on this address and port and no firewall is in the way")
			}
			rep.Failures = append(rep.Failures, c.Checks.Failed...)
			if rep.Version == nil && c.Version != nil && c.Version.Error == "" {
				rep.Version = c.Version
			}
		}
	}
	in.clientWellKnown(ctx)
	in.notaries(ctx)
	in.localView(ctx)
	rep.FederationOK = len(rep.Failures) == 0 && len(rep.Connections) > 0
}

// resolutionFix is the one-sentence fix for a discovery failure.
func resolutionFix(err error) string {
	switch {
	case errors.Is(err, wellknown.ErrInvalidServerName):
		return "a server name is a hostname or IP literal with an optional :port"
	case errors.Is(err, wellknown.ErrPrivateAddress):
		return "the server resolves only to private addresses: publish a public address, or pass --allow-private for a LAN"
	case errors.Is(err, wellknown.ErrSRVNoService):
		return "the SRV record's target \".\" says there is no federation service: remove it or point it at the server"
	case errors.Is(err, wellknown.ErrNoAddress):
		return "add an A or AAAA record for the host federation is sent to"
	case errors.Is(err, wellknown.ErrSRVLookup), errors.Is(err, wellknown.ErrDNSLookup):
		return "DNS did not answer: check the nameservers (--nameserver) and the zone's delegation"
	}
	return "check the server's DNS records and /.well-known/matrix/server"
}

// wellKnownSection fills rep.WellKnown from step 3 of discovery.
func (in *inspector) wellKnownSection(rrep *wellknown.Report) {
	wk := &in.rep.WellKnown
	for _, st := range rrep.Steps {
		switch {
		case (st.Step == "1" || st.Step == "2") && st.Outcome != wellknown.OutcomeSkipped:
			wk.Skipped = "step " + st.Step + " (" + st.Tried + "): the spec skips the well-known"
		case st.Step == "parse" && st.Outcome == wellknown.OutcomeFailed:
			wk.Skipped = "invalid server name"
		}
		if st.Step != "3" || st.WellKnown == nil {
			continue
		}
		f := st.WellKnown
		wk.URL, wk.Status, wk.MServer, wk.CacheExpires, wk.Error = f.URL, f.Status, f.MServer, f.Expires.UTC(), f.Error
		wk.Found = st.Outcome == wellknown.OutcomeFound
		if errors.Is(st.Err, wellknown.ErrInvalidWellKnown) || errors.Is(st.Err, wellknown.ErrWellKnownRedirect) {
			in.warn("WellKnown", "", f.Error, `serve {"m.server": "host:port"} as JSON, or remove the file (404) if there is no delegation`)
		}
	}
}

// dnsSection looks up what discovery looks up, but both SRV names always.
func (in *inspector) dnsSection(ctx context.Context, rrep *wellknown.Report) {
	d := &in.rep.DNS
	l := newLookup(d.Nameservers, in.opts.Timeout, d)
	name, err := wellknown.ParseServerName(in.rep.ServerName)
	if err != nil {
		return
	}
	if in.rep.WellKnown.Found {
		if dn, err := wellknown.ParseServerName(in.rep.WellKnown.MServer); err == nil {
			name = dn
		}
	}
	if name.IsIP() {
		return
	}
	if name.Port == 0 {
		d.Host = name.Host
		l.srv(ctx, name.Host)
		fed, old := d.SRV[0], d.SRV[1]
		if len(fed.Records) == 0 && len(old.Records) > 0 {
			in.warn("SRV", "", "only the deprecated "+old.Name+" record exists",
				"add "+fed.Name+" with the same target and port: newer servers no longer look up _matrix._tcp")
		}
	}
	_, _ = l.addrs(ctx, name.Host)
}

// connection inspects one address: handshake, certificates, keys, version.
func (in *inspector) connection(ctx context.Context, res *wellknown.Result, ep wellknown.Endpoint) Connection {
	c := Connection{Addr: ep.Addr.String(), Target: ep.Target}
	now := in.opts.Now()
	tlsConf := &tls.Config{
		ServerName: res.TLSServerName, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, so a bad certificate is reported instead of hiding the rest
	}
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := &net.Dialer{Timeout: in.opts.Timeout}
		raw, err := d.DialContext(ctx, "tcp", c.Addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(raw, tlsConf)
		hctx, cancel := context.WithTimeout(ctx, in.opts.Timeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		return tc, nil
	}
	start := time.Now()
	conn, err := dial(ctx, "", "")
	if err != nil {
		c.Error = err.Error()
		return c
	}
	c.HandshakeMS = time.Since(start).Milliseconds()
	state := conn.(*tls.Conn).ConnectionState()
	conn.Close()
	c.TLSVersion, c.CipherSuite, c.ALPN = tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite), state.NegotiatedProtocol
	c.HTTP2 = c.ALPN == "h2"
	if !c.HTTP2 {
		in.warn("HTTP2", c.Addr, "the server did not choose h2 by ALPN (got "+cmp.Or(c.ALPN, "none")+")",
			"enable HTTP/2 on the TLS listener or the reverse proxy in front: federation works over HTTP/1.1 but opens more connections")
	}
	in.certificates(&c, state.PeerCertificates, res.TLSServerName, now)

	hc := &http.Client{Timeout: in.opts.Timeout, Transport: &http.Transport{
		Proxy: nil, DialTLSContext: dial, ForceAttemptHTTP2: true, TLSClientConfig: tlsConf,
	}}
	defer hc.CloseIdleConnections()
	start = time.Now()
	body, hdr, err := get(ctx, hc, "https://"+res.Host+"/_matrix/key/v2/server")
	if hdr != nil {
		c.KeysMS = time.Since(start).Milliseconds()
		c.AltSvc = hdr.Get("Alt-Svc")
	}
	if err != nil {
		c.Checks.Ed25519Checks = map[string]Ed25519Checks{}
		c.fail("HasEd25519Key", "GET /_matrix/key/v2/server: "+err.Error(), "the federation listener must answer /_matrix/key/v2/server with the server's signed keys")
	} else {
		checkKeys(&c, body, in.rep.ServerName, now)
		if c.Keys != nil && c.Checks.FutureValidUntilTS {
			if left := time.UnixMilli(c.Keys.ValidUntilTS).Sub(now); left < in.opts.KeyExpiryWarning {
				in.warn("KeyExpiry", c.Addr, fmt.Sprintf("the key response expires in %s (valid_until_ts %s)", left.Round(time.Second),
					time.UnixMilli(c.Keys.ValidUntilTS).UTC().Format(time.RFC3339)),
					"publish keys valid for a day or more (edge: federation.key_validity): peers refetch expiring keys constantly and cannot check new signatures while the server is down")
			}
		}
		if t, err := http.ParseTime(hdr.Get("Date")); err == nil {
			skew := math.Round(t.Sub(now).Seconds())
			c.ClockSkewSeconds = &skew
			if math.Abs(skew) > maxSkew.Seconds() {
				in.warn("ClockSkew", c.Addr, fmt.Sprintf("the server's clock is %+.0fs off ours", skew), "run NTP (e.g. systemd-timesyncd or chrony) on the server, or on this machine")
			}
		}
	}
	in.http3Check(ctx, &c, res.TLSServerName, res.Host)
	ch := &c.Checks
	ch.AllChecksOK = ch.MatchingServerName && ch.FutureValidUntilTS && ch.HasEd25519Key && ch.AllEd25519ChecksOK &&
		ch.ValidCertificates && ch.MatchingKeyServerName

	c.Version = &Version{}
	if body, _, err := get(ctx, hc, "https://"+res.Host+"/_matrix/federation/v1/version"); err != nil {
		c.Version.Error = err.Error()
	} else {
		var v struct {
			Server struct{ Name, Version string } `json:"server"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			c.Version.Error = "not JSON: " + err.Error()
		} else {
			c.Version.Name, c.Version.Version = v.Server.Name, v.Server.Version
		}
	}
	if c.Version.Error != "" {
		in.warn("Version", c.Addr, "GET /_matrix/federation/v1/version: "+c.Version.Error, "the federation listener should answer /_matrix/federation/v1/version")
	}
	return c
}

// certificates records the chain and runs the certificate checks.
func (in *inspector) certificates(c *Connection, chain []*x509.Certificate, tlsName string, now time.Time) {
	for _, cert := range chain {
		sum := sha256.Sum256(cert.Raw)
		ci := Certificate{
			Subject: cert.Subject.String(), Issuer: cert.Issuer.String(),
			SHA256Fingerprint: strings.ToUpper(hex.EncodeToString(sum[:])),
			DNSNames:          cert.DNSNames, NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(),
			DaysLeft: int(math.Floor(cert.NotAfter.Sub(now).Hours() / 24)),
		}
		for _, ip := range cert.IPAddresses {
			ci.IPAddresses = append(ci.IPAddresses, ip.String())
		}
		c.Certificates = append(c.Certificates, ci)
	}
	if len(chain) == 0 {
		c.fail("ValidCertificates", "the server sent no certificate", "configure a certificate on the federation listener")
		return
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, cert := range chain[1:] {
		inter.AddCert(cert)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: in.opts.RootCAs, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	c.Checks.ValidCertificates = err == nil
	if err != nil {
		fix := "use a certificate from a public CA (e.g. Let's Encrypt) and serve the full chain"
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			fix = "the certificate has expired (or is not yet valid): renew it and reload the server"
		}
		c.fail("ValidCertificates", err.Error(), fix)
	}
	c.Checks.MatchingServerName = leaf.VerifyHostname(tlsName) == nil
	if !c.Checks.MatchingServerName {
		names := append(slices.Clone(leaf.DNSNames), c.Certificates[0].IPAddresses...)
		c.fail("MatchingServerName", fmt.Sprintf("the certificate is for %v, not %s", names, tlsName),
			"get a certificate whose SANs include "+tlsName+" (the server name, or the name it delegates to)")
	}
	if left := leaf.NotAfter.Sub(now); left > 0 && left < in.opts.ExpiryWarning {
		in.warn("CertificateExpiry", c.Addr, fmt.Sprintf("the certificate expires %s (%d days left)", leaf.NotAfter.UTC().Format(time.RFC3339), c.Certificates[0].DaysLeft),
			"renew the certificate now; check that automatic renewal works")
	}
}

// get fetches url and returns the body of a 200 answer.
func get(ctx context.Context, hc *http.Client, u string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("User-Agent", "edge-status")
	resp, err := hc.Do(req)
	if ue, ok := err.(*url.Error); ok {
		err = ue.Err // the URL is in the report already
	}
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, resp.Header, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, resp.Header, &statusError{resp.StatusCode}
	}
	return body, resp.Header, nil
}

type statusError struct{ code int }

func (e *statusError) Error() string {
	return "HTTP " + strconv.Itoa(e.code) + " " + http.StatusText(e.code)
}

// dialer dials hostnames through the configured nameservers and refuses
// restricted addresses unless allowed; port, when non-zero, replaces the
// URL's port (tests' well-known servers).
func (in *inspector) dialer(port int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, p, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if port != 0 {
			p = strconv.Itoa(port)
		}
		l := newLookup(in.rep.DNS.Nameservers, in.opts.Timeout, &DNS{})
		addrs, err := l.addrs(ctx, host)
		if err != nil {
			return nil, err
		}
		var errs []error
		d := &net.Dialer{Timeout: in.opts.Timeout}
		for _, a := range addrs {
			if why, bad := wellknown.Restricted(a); bad && !in.opts.AllowPrivate {
				errs = append(errs, fmt.Errorf("refusing %s address %s (pass --allow-private for a LAN)", why, a))
				continue
			}
			conn, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), p))
			if err == nil {
				return conn, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
}

func (in *inspector) httpClient(port int) *http.Client {
	return &http.Client{Timeout: in.opts.Timeout, Transport: &http.Transport{
		Proxy: nil, DialContext: in.dialer(port), ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{RootCAs: in.opts.RootCAs, MinVersion: tls.VersionTLS12},
	}}
}

// urlHost brackets IPv6 literals for URLs.
func urlHost(host string) string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		return "[" + host + "]"
	}
	return host
}

// clientWellKnown checks client discovery: the document, its CORS header,
// and that base_url answers /_matrix/client/versions.
func (in *inspector) clientWellKnown(ctx context.Context) {
	cw := &in.rep.ClientWellKnown
	name, err := wellknown.ParseServerName(in.rep.ServerName)
	if err != nil {
		return
	}
	cw.URL = "https://" + urlHost(name.Host) + "/.well-known/matrix/client"
	hc := in.httpClient(in.opts.WellKnownPort)
	defer hc.CloseIdleConnections()
	body, hdr, err := get(ctx, hc, cw.URL)
	if hdr != nil {
		cw.CORS = hdr.Get("Access-Control-Allow-Origin")
	}
	var se *statusError
	if errors.As(err, &se) {
		cw.Status = se.code
	}
	if err != nil {
		cw.Error = err.Error()
		in.warn("ClientWellKnown", "", "GET "+cw.URL+": "+err.Error(),
			`publish {"m.homeserver": {"base_url": "https://…"}} there so clients find the server from a user ID`)
		return
	}
	cw.Status, cw.Found = http.StatusOK, true
	if cw.CORS != "*" {
		in.warn("ClientWellKnownCORS", "", fmt.Sprintf("Access-Control-Allow-Origin is %q", cw.CORS),
			`send "Access-Control-Allow-Origin: *" with the file, or web clients cannot read it`)
	}
	var doc struct {
		HS struct {
			BaseURL string `json:"base_url"`
		} `json:"m.homeserver"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.HS.BaseURL == "" {
		cw.Error = "no m.homeserver.base_url in the document"
		in.warn("ClientWellKnown", "", cw.Error, `the document must be JSON with {"m.homeserver": {"base_url": "https://…"}}`)
		return
	}
	cw.BaseURL = doc.HS.BaseURL
	u, err := url.Parse(cw.BaseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		cw.Error = fmt.Sprintf("base_url %q is not an absolute http(s) URL", cw.BaseURL)
		in.warn("ClientWellKnown", "", cw.Error, "set base_url to the client API's URL, e.g. https://matrix.example.org")
		return
	}
	probe := in.httpClient(0)
	defer probe.CloseIdleConnections()
	body, _, err = get(ctx, probe, strings.TrimRight(cw.BaseURL, "/")+"/_matrix/client/versions")
	var v struct {
		Versions []string `json:"versions"`
	}
	if err == nil {
		if err = json.Unmarshal(body, &v); err == nil && len(v.Versions) == 0 {
			err = errors.New("no versions listed")
		}
	}
	if err != nil {
		cw.Error = "GET base_url/_matrix/client/versions: " + err.Error()
		in.warn("ClientWellKnown", "", cw.Error, "base_url must be where the client API answers; check the reverse proxy and the URL")
		return
	}
	cw.Versions, cw.Reachable = v.Versions, true
}

// notaries asks each notary for the server's keys and compares them with
// what the server served itself.
func (in *inspector) notaries(ctx context.Context) {
	var direct map[string]string
	for _, c := range in.rep.Connections {
		if c.Keys != nil {
			direct = c.Keys.VerifyKeys
			break
		}
	}
	for _, n := range in.opts.Notaries {
		nc := in.notary(ctx, n)
		switch {
		case nc.Error != "":
			in.warn("Notary", "", n.ServerName+": "+nc.Error, "check the notary's name and that it can reach the server")
		case direct == nil:
			nc.Error = "the server served no keys to compare"
		default:
			for id, k := range direct {
				if nc.Keys[id] != k {
					nc.Mismatch = append(nc.Mismatch, id)
				}
			}
			for id := range nc.Keys {
				if _, ok := direct[id]; !ok {
					nc.Mismatch = append(nc.Mismatch, id)
				}
			}
			slices.Sort(nc.Mismatch)
			nc.Match = len(nc.Mismatch) == 0
			if !nc.Match {
				in.fail("NotaryKeys", "", fmt.Sprintf("notary %s holds different keys for %v than the server serves", n.ServerName, nc.Mismatch),
					"if the server changed its key, its old key must stay in old_verify_keys; otherwise someone is answering in the server's name")
			}
		}
		in.rep.Notaries = append(in.rep.Notaries, nc)
	}
}

func (in *inspector) notary(ctx context.Context, n Notary) NotaryCheck {
	nc := NotaryCheck{Notary: n.ServerName}
	res, err := in.resolver.Resolve(ctx, n.ServerName)
	if err != nil {
		nc.Error = err.Error()
		return nc
	}
	tlsConf := &tls.Config{ServerName: res.TLSServerName, RootCAs: in.opts.RootCAs, MinVersion: tls.VersionTLS12}
	hc := &http.Client{Timeout: in.opts.Timeout, Transport: &http.Transport{
		Proxy: nil, ForceAttemptHTTP2: true, TLSClientConfig: tlsConf,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var errs []error
			for _, ep := range res.Endpoints {
				conn, err := (&net.Dialer{Timeout: in.opts.Timeout}).DialContext(ctx, network, ep.Addr.String())
				if err == nil {
					return conn, nil
				}
				errs = append(errs, err)
			}
			return nil, errors.Join(errs...)
		},
	}}
	defer hc.CloseIdleConnections()
	body, _, err := get(ctx, hc, "https://"+res.Host+"/_matrix/key/v2/query/"+url.PathEscape(in.rep.ServerName))
	if err != nil {
		nc.Error = err.Error()
		return nc
	}
	var out struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		nc.Error = "answer is not JSON: " + err.Error()
		return nc
	}
	for _, raw := range out.ServerKeys {
		var doc keyDoc
		if json.Unmarshal(raw, &doc) != nil || doc.ServerName != in.rep.ServerName {
			continue
		}
		nc.Keys = map[string]string{}
		for id, k := range doc.VerifyKeys {
			nc.Keys[id] = k.Key
		}
		if len(n.VerifyKeys) > 0 {
			s, err := parseSigned(raw)
			for id, k := range n.VerifyKeys {
				if pub, ok := decodeKey(k); ok && err == nil && s.verify(n.ServerName, id, pub) {
					nc.SignatureChecked = true
				}
			}
			if !nc.SignatureChecked {
				nc.Error = "the answer carries no valid signature by the notary's configured keys"
			}
		}
		return nc
	}
	nc.Error = "the notary returned no keys for " + in.rep.ServerName
	return nc
}

// localView reads the local node's queue status for the server.
func (in *inspector) localView(ctx context.Context) {
	if in.opts.AdminURL == "" {
		return
	}
	lv := &LocalView{}
	in.rep.LocalView = lv
	var peers []Peer
	var err error
	if in.opts.AdminToken != "" {
		var ns *NodeStatus
		if ns, err = FetchNodeStatus(ctx, in.opts.AdminURL, in.opts.AdminToken); err == nil {
			peers = ns.Peers
		}
	} else {
		hc := &http.Client{Timeout: in.opts.Timeout}
		var body []byte
		body, _, err = get(ctx, hc, strings.TrimRight(in.opts.AdminURL, "/")+"/federation/queues")
		var out struct {
			Destinations []Peer `json:"destinations"`
		}
		if err == nil {
			err = json.Unmarshal(body, &out)
		}
		peers = out.Destinations
	}
	if err != nil {
		lv.Error = "local node's admin listener: " + err.Error()
		return
	}
	for _, d := range peers {
		if d.Destination == in.rep.ServerName {
			*lv = LocalView{Known: true, Pending: d.Pending, InFlight: d.InFlight, Failures: d.Failures, RetryAt: d.RetryAt,
				LastError: d.LastError, LastSuccess: d.LastSuccess, SentTransactions: d.SentTransactions, Dropped: d.Dropped,
				LastLatencyMS: d.LastLatencyMS}
		}
	}
	if lv.Known && lv.Failures > 0 {
		in.warn("LocalQueue", "", fmt.Sprintf("this node's last %d sends to the server failed: %s", lv.Failures, lv.LastError),
			"fix the failures above; the queue retries by itself (a message from the server retries at once)")
	}
}
