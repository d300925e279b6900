package federation

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"edge/edge/config"
	"edge/wellknown"
)

// ClientOptions configures the outbound federation client.
type ClientOptions struct {
	// ServerName is our name: the origin of every request.
	ServerName string
	// Key signs every request (X-Matrix).
	Key config.SigningKey
	// Resolver finds where a destination lives; nil means IPLiteralResolver.
	Resolver Resolver
	// AllowPrivate lets requests reach loopback, private, link-local, CGNAT
	// and other non-public addresses (wellknown.Restricted).
	AllowPrivate bool
	// RootCAs verifies destinations' certificates; nil means the system roots.
	RootCAs *x509.CertPool
	// Timeout bounds one request, reading the body included (default 60s).
	Timeout time.Duration
	// MaxResponseBytes caps a response body (default 64 MiB).
	MaxResponseBytes int64
	Log              *slog.Logger
}

// resolveTTL is how long a destination's resolution is reused. wellknown
// caches the .well-known itself but not DNS answers.
const resolveTTL = 10 * time.Minute

// Client is the one HTTP client for federation: it resolves destinations,
// dials only permitted addresses (checked on the IP actually dialled, so a
// DNS answer cannot smuggle in a private address), verifies TLS, keeps
// connections per destination (HTTP/2 when offered), signs every request
// and caps every response.
type Client struct {
	opts   ClientOptions
	dialer *net.Dialer
	dests  *lru.Cache[string, *destConn]
	mu     sync.Mutex
	// onAnswer is called after a 2xx answer: the destination is up.
	onAnswer func(destination string)
}

// destConn is one destination's transport and resolution.
type destConn struct {
	name      string
	c         *Client
	transport *http.Transport

	mu       sync.Mutex
	target   *wellknown.Result
	resolved time.Time

	// HTTP/3, once the destination advertised it (Alt-Svc h3 on its own
	// host): the UDP port, until when the advertisement holds, and until
	// when not to try after a failure. h3 is made on first use.
	h3Port   uint16
	h3Until  time.Time
	h3Broken time.Time
	h3       *http3.Transport
}

// h3RetryAfter is how long a destination whose HTTP/3 failed is spoken
// to over TCP only (UDP blocked by a firewall is the usual cause).
const h3RetryAfter = 30 * time.Minute

// NewClient makes the federation client.
func NewClient(opts ClientOptions) (*Client, error) {
	if len(opts.Key.Priv) != ed25519.PrivateKeySize || opts.Key.ID == "" {
		return nil, errors.New("federation: the client needs a signing key")
	}
	if opts.Resolver == nil {
		opts.Resolver = IPLiteralResolver{}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = 64 << 20
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts}
	c.dialer = &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second, ControlContext: c.control}
	var err error
	c.dests, err = lru.NewWithEvict(512, func(_ string, d *destConn) { d.close() })
	if err != nil {
		return nil, err
	}
	return c, nil
}

// LoadRootCAs returns the system roots plus the PEM certificates in file
// (config federation.trust_ca_file); an empty file name is the system roots.
func LoadRootCAs(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", file)
	}
	return pool, nil
}

// refused reports whether the policy forbids dialling a, and why.
func (c *Client) refused(a netip.Addr) (string, bool) {
	if c.opts.AllowPrivate {
		return "", false
	}
	return wellknown.Restricted(a)
}

// control is the dialer's last check before connect(2), on the literal
// address being dialled.
func (c *Client) control(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", ErrAddressRefused, address)
	}
	if why, bad := c.refused(ap.Addr()); bad {
		return fmt.Errorf("%w: %s is %s", ErrAddressRefused, ap.Addr(), why)
	}
	return nil
}

func (c *Client) dest(name string) *destConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.dests.Get(name); ok {
		return d
	}
	d := &destConn{name: name, c: c}
	d.transport = &http.Transport{
		Proxy:                  nil, // a proxy would dial for us, past the address policy
		DialTLSContext:         d.dialTLS,
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    8,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  c.opts.Timeout,
		MaxResponseHeaderBytes: 64 << 10,
	}
	c.dests.Add(name, d)
	return d
}

// resolve returns the destination's resolution, reusing a recent one.
func (d *destConn) resolve(ctx context.Context) (*wellknown.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.target != nil && time.Since(d.resolved) < resolveTTL {
		return d.target, nil
	}
	t, err := d.c.opts.Resolver.Resolve(ctx, d.name)
	if err != nil {
		return nil, err
	}
	d.target, d.resolved = t, time.Now()
	return t, nil
}

func (d *destConn) forget() {
	d.mu.Lock()
	d.target = nil
	d.mu.Unlock()
}

// dialTLS connects to the first endpoint of the resolution that the policy
// permits and that completes a verified TLS handshake. addr (the URL's
// host) is ignored: the resolution decides.
func (d *destConn) dialTLS(ctx context.Context, _, _ string) (net.Conn, error) {
	t, err := d.resolve(ctx)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, ep := range t.Endpoints {
		if why, bad := d.c.refused(ep.Addr.Addr()); bad {
			errs = append(errs, fmt.Errorf("%w: %s is %s", ErrAddressRefused, ep.Addr.Addr(), why))
			continue
		}
		conn, err := d.c.dialer.DialContext(ctx, "tcp", ep.Addr.String())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tc := tls.Client(conn, &tls.Config{
			ServerName: t.TLSServerName, // an IP: verified against IP SANs, no SNI sent
			RootCAs:    d.c.opts.RootCAs,
			NextProtos: []string{"h2", "http/1.1"},
			MinVersion: tls.VersionTLS12,
		})
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			errs = append(errs, fmt.Errorf("%s: %w", ep.Addr, err))
			continue
		}
		return tc, nil
	}
	d.forget()
	if len(errs) == 0 {
		return nil, fmt.Errorf("%w: %s resolved to no address", wellknown.ErrNoAddress, d.name)
	}
	return nil, errors.Join(errs...)
}

// close drops the destination's idle connections.
func (d *destConn) close() {
	d.transport.CloseIdleConnections()
	d.mu.Lock()
	h3 := d.h3
	d.h3 = nil
	d.mu.Unlock()
	if h3 != nil {
		_ = h3.Close()
	}
}

// noteAltSvc remembers (or forgets) HTTP/3 from a TCP answer's Alt-Svc
// header (RFC 7838). Only an alternative on the same host is taken: one
// on another host would need its own resolution and policy check.
func (d *destConn) noteAltSvc(header string) {
	if header == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if strings.TrimSpace(header) == "clear" {
		d.h3Port, d.h3Until = 0, time.Time{}
		return
	}
	for _, alt := range strings.Split(header, ",") {
		params := strings.Split(alt, ";")
		proto, authority, ok := strings.Cut(strings.TrimSpace(params[0]), "=")
		if !ok || proto != "h3" {
			continue
		}
		authority = strings.Trim(authority, `"`)
		if !strings.HasPrefix(authority, ":") {
			continue
		}
		port, err := strconv.ParseUint(authority[1:], 10, 16)
		if err != nil || port == 0 {
			continue
		}
		maxAge := 24 * time.Hour
		for _, p := range params[1:] {
			if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && k == "ma" {
				if secs, err := strconv.ParseInt(strings.Trim(v, `"`), 10, 64); err == nil && secs >= 0 {
					maxAge = time.Duration(min(secs, 7*86400)) * time.Second
				}
			}
		}
		d.h3Port, d.h3Until = uint16(port), time.Now().Add(maxAge)
		return
	}
}

// http3 returns the destination's HTTP/3 transport when it advertised
// HTTP/3 and that has not failed lately, else nil.
func (d *destConn) http3() *http3.Transport {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if d.h3Port == 0 || now.After(d.h3Until) || now.Before(d.h3Broken) {
		return nil
	}
	if d.h3 == nil {
		d.h3 = &http3.Transport{
			TLSClientConfig: &tls.Config{RootCAs: d.c.opts.RootCAs, MinVersion: tls.VersionTLS13},
			// A blocked UDP path must not eat the request's whole timeout
			// before the TCP fallback.
			QUICConfig:             &quic.Config{HandshakeIdleTimeout: 3 * time.Second, MaxIdleTimeout: 90 * time.Second},
			Dial:                   d.dialQUIC,
			MaxResponseHeaderBytes: 64 << 10,
		}
	}
	return d.h3
}

// h3Failed stops HTTP/3 to the destination for h3RetryAfter.
func (d *destConn) h3Failed() {
	d.mu.Lock()
	d.h3Broken = time.Now().Add(h3RetryAfter)
	h3 := d.h3
	d.h3 = nil
	d.mu.Unlock()
	if h3 != nil {
		_ = h3.Close()
	}
}

// dialQUIC is dialTLS over QUIC: the same resolution, address policy and
// certificate verification, on the advertised UDP port.
func (d *destConn) dialQUIC(ctx context.Context, _ string, tlsCfg *tls.Config, qc *quic.Config) (*quic.Conn, error) {
	t, err := d.resolve(ctx)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	port := d.h3Port
	d.mu.Unlock()
	var errs []error
	for _, ep := range t.Endpoints {
		if why, bad := d.c.refused(ep.Addr.Addr()); bad {
			errs = append(errs, fmt.Errorf("%w: %s is %s", ErrAddressRefused, ep.Addr.Addr(), why))
			continue
		}
		cfg := tlsCfg.Clone()
		cfg.ServerName = t.TLSServerName
		conn, err := quic.DialAddr(ctx, netip.AddrPortFrom(ep.Addr.Addr(), port).String(), cfg, qc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return conn, nil
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%w: %s resolved to no address", wellknown.ErrNoAddress, d.name)
	}
	return nil, errors.Join(errs...)
}

// roundTrip sends req over HTTP/3 when the destination offers it, falling
// back to TCP (HTTP/2 or 1.1) when that fails.
func (d *destConn) roundTrip(req *http.Request) (*http.Response, error) {
	if h3 := d.http3(); h3 != nil {
		resp, err := h3.RoundTrip(req)
		if err == nil {
			return resp, nil
		}
		d.h3Failed()
		d.c.opts.Log.Info("federation: HTTP/3 failed; using TCP", "destination", d.name, "retry_h3_after", h3RetryAfter, "err", err)
		if req.Context().Err() != nil {
			return nil, err
		}
		retry, gerr := retryRequest(req)
		if gerr != nil {
			return nil, err
		}
		req = retry
	}
	resp, err := d.transport.RoundTrip(req)
	if err != nil && staleConnection(err) && req.GetBody != nil {
		// A pooled connection the peer closed (it restarted) fails the
		// write. Federation requests are idempotent (GETs, and PUTs named by
		// a transaction or event ID), so one resend on a fresh connection
		// is safe and spares the destination a round of backoff.
		if retry, gerr := retryRequest(req); gerr == nil {
			resp, err = d.transport.RoundTrip(retry)
		}
	}
	if err == nil {
		d.noteAltSvc(resp.Header.Get("Alt-Svc"))
	}
	return resp, err
}

// Get sends a signed GET and decodes the JSON answer into out (if non-nil).
func (c *Client) Get(ctx context.Context, destination, path string, out any) error {
	return c.Do(ctx, http.MethodGet, destination, path, nil, out)
}

// Put sends a signed PUT with body as JSON.
func (c *Client) Put(ctx context.Context, destination, path string, body, out any) error {
	return c.Do(ctx, http.MethodPut, destination, path, body, out)
}

// Post sends a signed POST with body as JSON.
func (c *Client) Post(ctx context.Context, destination, path string, body, out any) error {
	return c.Do(ctx, http.MethodPost, destination, path, body, out)
}

// Do sends a signed request. path is the escaped path with any query
// ("/_matrix/federation/v1/state/%21room%3Aexample.org?event_id=…"); body is
// marshalled as JSON unless it is nil, []byte or json.RawMessage. A non-2xx
// answer is a *RemoteError.
func (c *Client) Do(ctx context.Context, method, destination, path string, body, out any) error {
	raw, err := c.do(ctx, method, destination, path, body)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s from %s: invalid JSON: %w", method, path, destination, err)
	}
	return nil
}

// GetRaw is Get returning the body unparsed (key responses are verified
// over their exact bytes).
func (c *Client) GetRaw(ctx context.Context, destination, path string) ([]byte, error) {
	return c.do(ctx, http.MethodGet, destination, path, nil)
}

// GetRawHeader is GetRaw that also returns the answer's headers, for
// answers that are not JSON (legacy media downloads).
func (c *Client) GetRawHeader(ctx context.Context, destination, path string) ([]byte, http.Header, error) {
	return c.doHeader(ctx, http.MethodGet, destination, path, nil)
}

func (c *Client) do(ctx context.Context, method, destination, path string, body any) ([]byte, error) {
	data, _, err := c.doHeader(ctx, method, destination, path, body)
	return data, err
}

func (c *Client) doHeader(ctx context.Context, method, destination, path string, body any) ([]byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.send(ctx, method, destination, path, body)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxResponseBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s from %s: reading body: %w", method, path, destination, err)
	}
	if int64(len(data)) > c.opts.MaxResponseBytes {
		return nil, nil, fmt.Errorf("%w: %s %s from %s is over %d bytes", ErrResponseTooLarge, method, path, destination, c.opts.MaxResponseBytes)
	}
	return data, resp.Header, nil
}

// DoStream sends a signed request and hands a 2xx answer's body to read
// as it arrives, for answers too big to hold whole (a big room's
// send_join). The answer must begin within the client's timeout; reading
// it is bound by ctx and by limit bytes, past which read fails with
// ErrResponseTooLarge. A non-2xx answer is a *RemoteError.
func (c *Client) DoStream(ctx context.Context, method, destination, path string, body any, limit int64, read func(io.Reader) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	slow := time.AfterFunc(c.opts.Timeout, cancel)
	resp, err := c.send(ctx, method, destination, path, body)
	if !slow.Stop() && err == nil {
		resp.Body.Close()
		return fmt.Errorf("%s %s to %s: %w", method, path, destination, context.DeadlineExceeded)
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return read(&limitedReader{r: resp.Body, left: limit, err: fmt.Errorf("%w: %s %s from %s is over %d bytes", ErrResponseTooLarge, method, path, destination, limit)})
}

// limitedReader fails, rather than ends, past its limit: a truncated
// answer must not parse as a complete one.
type limitedReader struct {
	r    io.Reader
	left int64
	err  error
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, l.err
	}
	p = p[:min(int64(len(p)), l.left)]
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// send signs and sends a request and returns a 2xx answer with its body
// unread; any other answer is read (bounded) into a *RemoteError.
func (c *Client) send(ctx context.Context, method, destination, path string, body any) (*http.Response, error) {
	if destination == c.opts.ServerName {
		return nil, fmt.Errorf("%w: %s %s", ErrSelf, method, path)
	}
	var content []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		content = b
	case json.RawMessage:
		content = b
	default:
		var err error
		if content, err = json.Marshal(body); err != nil {
			return nil, err
		}
	}
	u, err := url.Parse(path)
	if err != nil || u.Scheme != "" || u.Host != "" || len(path) == 0 || path[0] != '/' {
		return nil, fmt.Errorf("federation: %q is not an absolute path", path)
	}
	u.Scheme, u.Host = "https", destination
	d := c.dest(destination)
	t, err := d.resolve(ctx)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", destination, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(content))
	if err != nil {
		return nil, err
	}
	req.Host = t.Host
	auth, err := signRequest(c.opts.ServerName, destination, c.opts.Key, method, req.URL.RequestURI(), content)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("User-Agent", "edge")
	if content != nil {
		req.Header.Set("Content-Type", "application/json")
	} else {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	start := time.Now()
	resp, err := d.roundTrip(req)
	if err != nil {
		c.opts.Log.DebugContext(ctx, "federation request failed", "destination", destination, "method", method, "path", u.Path, "err", err)
		return nil, fmt.Errorf("%s %s to %s: %w", method, path, destination, err)
	}
	c.opts.Log.DebugContext(ctx, "federation request", "destination", destination, "method", method, "path", u.Path,
		"status", resp.StatusCode, "proto", resp.Proto, "took", time.Since(start))
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxResponseBytes))
		if err != nil {
			return nil, fmt.Errorf("%s %s from %s: reading body: %w", method, path, destination, err)
		}
		re := &RemoteError{Destination: destination, Status: resp.StatusCode}
		var e struct {
			Code        string `json:"errcode"`
			Message     string `json:"error"`
			RoomVersion string `json:"room_version"`
		}
		if json.Unmarshal(data, &e) == nil {
			re.Code, re.Message, re.RoomVersion = e.Code, e.Message, e.RoomVersion
		}
		return nil, re
	}
	if c.onAnswer != nil {
		c.onAnswer(destination)
	}
	return resp, nil
}

// Close drops idle connections.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.dests.Values() {
		d.close()
	}
}

// staleConnection tells whether err is a write to, or read from, a
// connection the peer had already closed.
func staleConnection(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)
}

// retryRequest clones req with a fresh body.
func retryRequest(req *http.Request) (*http.Request, error) {
	r := req.Clone(req.Context())
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	r.Body = body
	return r, nil
}
