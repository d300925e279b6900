package wellknown

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// WellKnown returns the m.server delegation published at
// https://<hostname>/.well-known/matrix/server (spec step 3), from the cache
// when fresh. The fetch record is always non-nil; the error wraps
// ErrWellKnownFetch, ErrNoWellKnown, ErrInvalidWellKnown or
// ErrWellKnownRedirect (and ErrPrivateAddress when the policy refused the
// host's addresses).
func (r *Resolver) WellKnown(ctx context.Context, hostname string) (ServerName, *WellKnownFetch, error) {
	if why := checkDNSName(hostname); why != "" || looksIPv4(hostname) {
		err := fmt.Errorf("%w: %q is not a DNS hostname", ErrInvalidServerName, hostname)
		return ServerName{}, &WellKnownFetch{Error: err.Error()}, err
	}
	return r.wellKnown(ctx, hostname)
}

// Forget drops hostname's cached well-known, so the next resolution fetches
// it again (for an operator re-checking a fixed delegation).
func (r *Resolver) Forget(hostname string) {
	r.cache.mu.Lock()
	delete(r.cache.entries, strings.ToLower(hostname))
	r.cache.mu.Unlock()
}

// wkEntry is one cached fetch outcome.
type wkEntry struct {
	name    ServerName
	err     error
	rec     WellKnownFetch
	expires time.Time
}

func (e *wkEntry) result(cached bool) (ServerName, *WellKnownFetch, error) {
	rec := e.rec
	rec.Cached = cached
	return e.name, &rec, e.err
}

// wkCall is a fetch in flight that later callers for the same host wait on.
type wkCall struct {
	done  chan struct{}
	entry *wkEntry
}

// wkCache holds well-known outcomes, successes and errors alike, until
// their expiry; it is bounded so that remote names cannot grow it forever.
type wkCache struct {
	mu       sync.Mutex
	entries  map[string]*wkEntry
	inflight map[string]*wkCall
	max      int
}

func newWKCache(max int) *wkCache {
	return &wkCache{entries: map[string]*wkEntry{}, inflight: map[string]*wkCall{}, max: max}
}

// put stores e, evicting expired entries — or else the one expiring
// soonest — when the cache is full. Callers hold mu.
func (c *wkCache) put(key string, e *wkEntry, now time.Time) {
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k, old := range c.entries {
			if !now.Before(old.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= c.max {
			victim, soonest := "", time.Time{}
			for k, old := range c.entries {
				if victim == "" || old.expires.Before(soonest) {
					victim, soonest = k, old.expires
				}
			}
			delete(c.entries, victim)
		}
	}
	c.entries[key] = e
}

// wellKnown serves from the cache, joins a fetch in flight, or starts one.
// The fetch runs detached from ctx (bounded by FetchTimeout), so a caller
// giving up neither aborts it for others nor caches its cancellation as the
// host's error.
func (r *Resolver) wellKnown(ctx context.Context, host string) (ServerName, *WellKnownFetch, error) {
	key := strings.ToLower(host)
	c := r.cache
	c.mu.Lock()
	if e, ok := c.entries[key]; ok && r.opts.Now().Before(e.expires) {
		c.mu.Unlock()
		return e.result(true)
	}
	call, joined := c.inflight[key]
	if !joined {
		call = &wkCall{done: make(chan struct{})}
		c.inflight[key] = call
		go func() {
			e := r.fetch(context.WithoutCancel(ctx), host)
			c.mu.Lock()
			c.put(key, e, r.opts.Now())
			delete(c.inflight, key)
			call.entry = e
			c.mu.Unlock()
			close(call.done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.entry.result(joined)
	case <-ctx.Done():
		err := fmt.Errorf("%w: %w", ErrWellKnownFetch, ctx.Err())
		return ServerName{}, &WellKnownFetch{URL: wellKnownURL(host), Error: err.Error()}, err
	}
}

func wellKnownURL(host string) string { return "https://" + host + "/.well-known/matrix/server" }

// fetch does one GET and turns it into a cache entry.
func (r *Resolver) fetch(ctx context.Context, host string) *wkEntry {
	e := &wkEntry{rec: WellKnownFetch{URL: wellKnownURL(host), FetchedAt: r.opts.Now()}}
	tr := &dialTrace{}
	ctx = context.WithValue(ctx, dialTraceKey{}, tr)
	ctx, cancel := context.WithTimeout(ctx, r.opts.FetchTimeout)
	defer cancel()

	name, ttl, err := r.fetchOnce(ctx, &e.rec)
	tr.mu.Lock()
	e.rec.DNS, e.rec.Dialed, e.rec.Refused = slices.Clone(tr.dns), slices.Clone(tr.dialed), slices.Clone(tr.refused)
	tr.mu.Unlock()
	if err != nil {
		e.err, e.rec.Error, ttl = err, err.Error(), r.opts.ErrorTTL
		r.log.DebugContext(ctx, "well-known fetch failed", "host", host, "err", err)
	}
	e.name, e.rec.Expires = name, e.rec.FetchedAt.Add(ttl)
	e.expires = e.rec.Expires
	return e
}

func (r *Resolver) fetchOnce(ctx context.Context, rec *WellKnownFetch) (ServerName, time.Duration, error) {
	client := &http.Client{
		Transport: r.transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			next := req.URL.String()
			rec.Redirects = append(rec.Redirects, next)
			if req.URL.Scheme != "https" {
				return fmt.Errorf("%w: to non-https URL %s", ErrWellKnownRedirect, next)
			}
			if len(via) > r.opts.MaxRedirects {
				return fmt.Errorf("%w: more than %d redirects", ErrWellKnownRedirect, max(r.opts.MaxRedirects, 0))
			}
			for _, v := range via {
				if v.URL.String() == next {
					return fmt.Errorf("%w: redirect loop back to %s", ErrWellKnownRedirect, next)
				}
			}
			return nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rec.URL, nil)
	if err != nil {
		return ServerName{}, 0, fmt.Errorf("%w: %w", ErrWellKnownFetch, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", r.opts.UserAgent)
	resp, err := client.Do(req)
	if err != nil {
		return ServerName{}, 0, fmt.Errorf("%w: %w", ErrWellKnownFetch, err)
	}
	defer resp.Body.Close()
	rec.Status, rec.CacheControl = resp.StatusCode, resp.Header.Get("Cache-Control")
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, r.opts.MaxBodyBytes+1))
	rec.Body = string(body[:min(len(body), reportBodyMax)])

	// Anything but a 200 with a valid body is "no delegation" (spec step 3:
	// "If the response is invalid … skip to step 4").
	switch {
	case resp.StatusCode != http.StatusOK:
		return ServerName{}, 0, fmt.Errorf("%w: %s answered HTTP %d", ErrNoWellKnown, resp.Request.URL, resp.StatusCode)
	case readErr != nil:
		return ServerName{}, 0, fmt.Errorf("%w: reading body: %w", ErrWellKnownFetch, readErr)
	case int64(len(body)) > r.opts.MaxBodyBytes:
		return ServerName{}, 0, fmt.Errorf("%w: body larger than %d bytes", ErrInvalidWellKnown, r.opts.MaxBodyBytes)
	}
	// The spec says to parse the body as JSON whatever its Content-Type.
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		return ServerName{}, 0, fmt.Errorf("%w: body is not a JSON object", ErrInvalidWellKnown)
	}
	raw, ok := obj["m.server"]
	if !ok {
		return ServerName{}, 0, fmt.Errorf("%w: no m.server property", ErrInvalidWellKnown)
	}
	var ms string
	if err := json.Unmarshal(raw, &ms); err != nil {
		return ServerName{}, 0, fmt.Errorf("%w: m.server is not a string", ErrInvalidWellKnown)
	}
	name, err := ParseServerName(ms)
	if err != nil {
		return ServerName{}, 0, fmt.Errorf("%w: m.server: %w", ErrInvalidWellKnown, err)
	}
	rec.MServer = name.String()
	return name, r.cacheTTL(resp.Header), nil
}

// cacheTTL is how long to keep a valid well-known: the response's own
// freshness lifetime clamped to [MinTTL, MaxTTL], or DefaultTTL without one.
func (r *Resolver) cacheTTL(h http.Header) time.Duration {
	d, ok := freshness(h, r.opts.Now())
	if !ok {
		return r.opts.DefaultTTL
	}
	return min(max(d, r.opts.MinTTL), r.opts.MaxTTL)
}

// freshness reads the lifetime a response grants itself (RFC 9111 §4.2.1):
// no-store/no-cache mean none, max-age wins over Expires, and Expires is
// measured from the response's Date (else now) to avoid clock skew.
func freshness(h http.Header, now time.Time) (time.Duration, bool) {
	maxAge, found := time.Duration(0), false
	for _, v := range h.Values("Cache-Control") {
		for d := range strings.SplitSeq(v, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			if d == "no-store" || d == "no-cache" {
				return 0, true
			}
			if v, ok := strings.CutPrefix(d, "max-age="); ok {
				if n, err := strconv.ParseInt(strings.Trim(v, `"`), 10, 64); err == nil && n >= 0 && !found {
					maxAge, found = time.Duration(min(n, int64(1<<31)))*time.Second, true
				}
			}
		}
	}
	if found {
		return maxAge, true
	}
	exp := h.Get("Expires")
	if exp == "" {
		return 0, false
	}
	t, err := http.ParseTime(exp)
	if err != nil {
		return 0, true // an invalid Expires means "already expired"
	}
	if date, err := http.ParseTime(h.Get("Date")); err == nil {
		now = date
	}
	return max(t.Sub(now), 0), true
}
