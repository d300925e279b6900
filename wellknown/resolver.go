package wellknown

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// ServerResolver turns a server name into where to connect. Contract:
// safe for concurrent use; a name that cannot be resolved returns a nil
// Result and an error wrapping one of this package's sentinels; a
// cancelled ctx returns an error matching ctx.Err() under errors.Is; never
// a nil Result with a nil error. Only .well-known answers are cached, so
// callers may keep their own per-destination copy of a Result.
type ServerResolver interface {
	Resolve(ctx context.Context, serverName string) (*Result, error)
}

var _ ServerResolver = (*Resolver)(nil)

// Options configures a Resolver. The zero value is usable: system
// nameservers from /etc/resolv.conf, system roots, spec-recommended cache
// times, and no connections to private addresses.
type Options struct {
	// Nameservers are "host:port" recursive resolvers asked for SRV and
	// A/AAAA. Empty: the nameserver lines of ResolvConf.
	Nameservers []string
	// ResolvConf is read when Nameservers is empty; "" means /etc/resolv.conf.
	ResolvConf string
	// HostsFile answers A/AAAA before DNS when Nameservers is empty, as
	// the system resolver does; "" means /etc/hosts.
	HostsFile string
	// DNSTimeout bounds one DNS query to one server (default 5s).
	DNSTimeout time.Duration

	// RootCAs verifies the well-known host's certificate; nil means the
	// system pool. Tests put their CA here.
	RootCAs *x509.CertPool
	// FetchTimeout bounds the whole well-known fetch, redirects included
	// (default 10s).
	FetchTimeout time.Duration
	// MaxRedirects bounds the redirects followed for the well-known
	// (default 5; negative means none).
	MaxRedirects int
	// MaxBodyBytes bounds the well-known body (default 50 KiB, as Synapse).
	MaxBodyBytes int64
	// UserAgent is sent with the well-known request (default "edge").
	UserAgent string

	// DefaultTTL caches a valid well-known without cache headers (24h).
	DefaultTTL time.Duration
	// MinTTL is the floor for header-given lifetimes, so "max-age=0"
	// cannot force a fetch per request (default 5m, as Synapse).
	MinTTL time.Duration
	// MaxTTL caps every cache lifetime, errors included (default 48h).
	MaxTTL time.Duration
	// ErrorTTL caches a failed well-known fetch (default 1h, capped at MaxTTL).
	ErrorTTL time.Duration
	// MaxCacheEntries bounds the well-known cache (default 4096).
	MaxCacheEntries int

	// AllowPrivate permits loopback, private, link-local, CGNAT … addresses
	// (see Restricted), both for the well-known fetch and in results. Off by
	// default so a remote name cannot point this server at its own LAN.
	AllowPrivate bool

	// WellKnownPort, when non-zero, is dialled instead of 443 for the
	// well-known fetch. Only for tests, whose TLS server cannot bind 443;
	// the request URL, Host header and SNI are unchanged.
	WellKnownPort int

	// Now is the clock for cache lifetimes (default time.Now).
	Now func() time.Time
	// Logger receives debug lines about resolutions (default: discarded).
	Logger *slog.Logger
}

// Resolver resolves server names per the spec and caches .well-known
// responses. Create it with New.
type Resolver struct {
	opts      Options
	dns       *dnsClient
	dialer    *net.Dialer
	transport *http.Transport
	cache     *wkCache
	log       *slog.Logger
	randIntN  func(int) int // SRV weight draws; tests make it deterministic
}

// New builds a Resolver, filling defaults into opts.
func New(opts Options) (*Resolver, error) {
	var hosts map[string][]netip.Addr
	if len(opts.Nameservers) == 0 {
		hostsPath := cmp.Or(opts.HostsFile, "/etc/hosts")
		var err error
		if hosts, err = readHosts(hostsPath); err != nil {
			return nil, fmt.Errorf("wellknown: %w", err)
		}
		path := opts.ResolvConf
		if path == "" {
			path = "/etc/resolv.conf"
		}
		cc, err := dns.ClientConfigFromFile(path)
		if err != nil {
			return nil, fmt.Errorf("wellknown: no nameservers configured and %w", err)
		}
		for _, s := range cc.Servers {
			opts.Nameservers = append(opts.Nameservers, net.JoinHostPort(s, cc.Port))
		}
		if len(opts.Nameservers) == 0 {
			return nil, fmt.Errorf("wellknown: no nameserver lines in %s", path)
		}
	}
	for _, s := range opts.Nameservers {
		if _, err := netip.ParseAddrPort(s); err != nil {
			return nil, fmt.Errorf("wellknown: nameserver %q is not ip:port", s)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.DNSTimeout, 5*time.Second)
	def(&opts.FetchTimeout, 10*time.Second)
	def(&opts.DefaultTTL, 24*time.Hour)
	def(&opts.MinTTL, 5*time.Minute)
	def(&opts.MaxTTL, 48*time.Hour)
	def(&opts.ErrorTTL, time.Hour)
	opts.ErrorTTL = min(opts.ErrorTTL, opts.MaxTTL)
	opts.DefaultTTL = min(opts.DefaultTTL, opts.MaxTTL)
	opts.MinTTL = min(opts.MinTTL, opts.MaxTTL)
	if opts.MaxRedirects == 0 {
		opts.MaxRedirects = 5
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 50 << 10
	}
	if opts.MaxCacheEntries <= 0 {
		opts.MaxCacheEntries = 4096
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "edge"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Resolver{
		opts:     opts,
		dns:      newDNSClient(opts.Nameservers, opts.DNSTimeout, opts.Now),
		cache:    newWKCache(opts.MaxCacheEntries),
		log:      opts.Logger,
		randIntN: rand.IntN,
	}
	r.dns.hosts = hosts
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.dialer = &net.Dialer{Timeout: opts.FetchTimeout, ControlContext: r.controlDial}
	r.transport = &http.Transport{
		Proxy:                  nil, // a proxy would dial for us and bypass the address policy
		DialContext:            r.dialWellKnown,
		TLSClientConfig:        &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    opts.FetchTimeout,
		ResponseHeaderTimeout:  opts.FetchTimeout,
		DisableKeepAlives:      true, // one fetch per host per day: nothing to reuse
		MaxResponseHeaderBytes: 16 << 10,
	}
	return r, nil
}

// Nameservers returns the DNS servers in use, after defaults.
func (r *Resolver) Nameservers() []string { return append([]string(nil), r.opts.Nameservers...) }

// Resolve runs the spec's algorithm for serverName.
func (r *Resolver) Resolve(ctx context.Context, serverName string) (*Result, error) {
	res, _, err := r.ResolveReport(ctx, serverName)
	return res, err
}

// ResolveReport is Resolve plus the step-by-step Report (always non-nil,
// also on error).
func (r *Resolver) ResolveReport(ctx context.Context, serverName string) (*Result, *Report, error) {
	rep := &Report{ServerName: serverName, Started: r.opts.Now()}
	res, err := r.resolve(ctx, serverName, rep)
	if err != nil {
		rep.Error = err.Error()
		r.log.DebugContext(ctx, "server name resolution failed", "server_name", serverName, "err", err)
		return nil, rep, err
	}
	rep.Result = res
	r.log.DebugContext(ctx, "server name resolved", "server_name", serverName,
		"step", res.Step, "host", res.Host, "endpoints", res.Addrs())
	return res, rep, nil
}

func (r *Resolver) resolve(ctx context.Context, serverName string, rep *Report) (*Result, error) {
	name, err := ParseServerName(serverName)
	if err != nil {
		return nil, newStep(rep, "parse", "server name grammar").fail(err)
	}

	// Step 1: IP literal.
	st := newStep(rep, "1", "IP literal")
	if name.IsIP() {
		return r.ipLiteral(name, serverName, "1", st)
	}
	st.Outcome, st.Detail = OutcomeSkipped, "not an IP literal"

	// Step 2: hostname with explicit port.
	st = newStep(rep, "2", "explicit port")
	if name.Port != 0 {
		return r.hostAndPort(ctx, name, serverName, "2", st)
	}
	st.Outcome, st.Detail = OutcomeSkipped, "no explicit port"

	// Step 3: .well-known delegation.
	st = newStep(rep, "3", "GET https://"+name.Host+"/.well-known/matrix/server")
	deleg, rec, err := r.wellKnown(ctx, name.Host)
	st.WellKnown = rec
	if err == nil {
		st.Outcome, st.Detail = OutcomeFound, "delegated to "+deleg.String()
		return r.delegated(ctx, serverName, deleg, rep)
	}
	st.fail(err)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	// Steps 4, 5 and 6 on the server's own hostname.
	return r.srvThenDefault(ctx, serverName, name.Host, [3]string{"4", "5", "6"}, rep)
}

// delegated runs steps 3.1–3.5 on the m.server name.
func (r *Resolver) delegated(ctx context.Context, serverName string, d ServerName, rep *Report) (*Result, error) {
	st := newStep(rep, "3.1", "delegated IP literal")
	if d.IsIP() {
		return r.ipLiteral(d, serverName, "3.1", st)
	}
	st.Outcome, st.Detail = OutcomeSkipped, "not an IP literal"

	st = newStep(rep, "3.2", "delegated explicit port")
	if d.Port != 0 {
		return r.hostAndPort(ctx, d, serverName, "3.2", st)
	}
	st.Outcome, st.Detail = OutcomeSkipped, "no explicit port"

	return r.srvThenDefault(ctx, serverName, d.Host, [3]string{"3.3", "3.4", "3.5"}, rep)
}

// ipLiteral is steps 1 and 3.1: the address itself, the given port or
// 8448, Host = the name as written.
func (r *Resolver) ipLiteral(n ServerName, serverName, step string, st *Step) (*Result, error) {
	if why, bad := r.refuse(n.IP); bad {
		st.Refused = []string{n.IP.String() + " (" + why + ")"}
		return nil, st.fail(fmt.Errorf("%w: %s is %s", ErrPrivateAddress, n.IP, why))
	}
	port := n.Port
	if port == 0 {
		port = DefaultPort
	}
	st.Outcome = OutcomeUsed
	return &Result{
		ServerName:    serverName,
		Step:          step,
		Host:          n.String(),
		TLSServerName: n.IP.String(),
		Endpoints:     []Endpoint{{Addr: netip.AddrPortFrom(n.IP, uint16(port))}},
	}, nil
}

// hostAndPort is steps 2 and 3.2: A/AAAA (via CNAME) for the hostname, the
// explicit port, Host = name with port.
func (r *Resolver) hostAndPort(ctx context.Context, n ServerName, serverName, step string, st *Step) (*Result, error) {
	st.Tried += ": A/AAAA " + n.Host
	eps, err := r.addrEndpoints(ctx, n.Host, n.Port, st)
	if err != nil {
		return nil, st.fail(err)
	}
	st.Outcome = OutcomeUsed
	return &Result{ServerName: serverName, Step: step, Host: n.String(), TLSServerName: n.Host, Endpoints: eps}, nil
}

// srvThenDefault is steps 3.3/3.4/3.5 (on the delegated hostname) and
// 4/5/6 (on the server's hostname): SRV _matrix-fed, deprecated SRV
// _matrix, then the hostname on 8448. Host and TLS name are the hostname.
func (r *Resolver) srvThenDefault(ctx context.Context, serverName, host string, steps [3]string, rep *Report) (*Result, error) {
	for i, service := range []string{"matrix-fed", "matrix"} {
		st := newStep(rep, steps[i], "SRV _"+service+"._tcp."+host)
		srvs, err := r.dns.lookupSRV(ctx, service, host, &st.DNS)
		if err != nil {
			return nil, st.fail(err)
		}
		if len(srvs) == 0 {
			st.Outcome = OutcomeNotFound
			continue
		}
		eps, err := r.srvEndpoints(ctx, srvs, st)
		if err != nil {
			return nil, st.fail(err)
		}
		st.Outcome = OutcomeUsed
		return &Result{ServerName: serverName, Step: steps[i], Host: host, TLSServerName: host, Endpoints: eps}, nil
	}
	st := newStep(rep, steps[2], fmt.Sprintf("A/AAAA %s, port %d", host, DefaultPort))
	eps, err := r.addrEndpoints(ctx, host, DefaultPort, st)
	if err != nil {
		return nil, st.fail(err)
	}
	st.Outcome = OutcomeUsed
	return &Result{ServerName: serverName, Step: steps[2], Host: host, TLSServerName: host, Endpoints: eps}, nil
}

// addrEndpoints resolves host to allowed addresses on port.
func (r *Resolver) addrEndpoints(ctx context.Context, host string, port int, st *Step) ([]Endpoint, error) {
	addrs, err := r.dns.lookupIP(ctx, host, &st.DNS)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: %s has no A or AAAA record", ErrNoAddress, host)
	}
	ok := r.admit(addrs, st)
	if len(ok) == 0 {
		return nil, fmt.Errorf("%w: every address of %s is refused: %v", ErrPrivateAddress, host, st.Refused)
	}
	eps := make([]Endpoint, len(ok))
	for i, a := range ok {
		eps[i] = Endpoint{Addr: netip.AddrPortFrom(a, uint16(port)), Target: host}
	}
	return eps, nil
}

// srvEndpoints orders SRV records and resolves each target to addresses.
// Targets that fail to resolve are skipped while another one works.
func (r *Resolver) srvEndpoints(ctx context.Context, srvs []*dns.SRV, st *Step) ([]Endpoint, error) {
	if len(srvs) == 1 && srvs[0].Target == "." {
		return nil, fmt.Errorf("%w: %s", ErrSRVNoService, srvs[0].Hdr.Name)
	}
	ordered := orderSRV(srvs, r.randIntN)
	var eps []Endpoint
	var errs []error
	for _, s := range ordered {
		target := dns.CanonicalName(s.Target)
		target = target[:len(target)-1] // drop the root dot
		st.SRV = append(st.SRV, SRVRecord{Target: target, Port: s.Port, Priority: s.Priority, Weight: s.Weight})
		if target == "" {
			continue
		}
		addrs, err := r.dns.lookupIP(ctx, target, &st.DNS)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(addrs) == 0 {
			errs = append(errs, fmt.Errorf("%w: SRV target %s has no A or AAAA record", ErrNoAddress, target))
			continue
		}
		ok := r.admit(addrs, st)
		if len(ok) == 0 {
			errs = append(errs, fmt.Errorf("%w: every address of SRV target %s is refused", ErrPrivateAddress, target))
		}
		for _, a := range ok {
			eps = append(eps, Endpoint{Addr: netip.AddrPortFrom(a, s.Port), Target: target})
		}
	}
	if len(eps) == 0 {
		if len(errs) == 0 { // every target was "."
			return nil, fmt.Errorf("%w: %s", ErrSRVNoService, srvs[0].Hdr.Name)
		}
		return nil, errors.Join(errs...)
	}
	return eps, nil
}
