package pushgw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"edge/edge/room"
	"edge/edge/store"
	"edge/wellknown"
)

// ErrRestricted means a gateway's address is loopback, private,
// link-local or otherwise not public, and Options.AllowPrivate is off.
var ErrRestricted = wellknown.ErrPrivateAddress

// Options configure a Pusher. Zero numbers take the defaults in New.
type Options struct {
	// AllowPrivate lets gateways on loopback, private and link-local
	// addresses be reached (a gateway on the LAN; tests).
	AllowPrivate bool
	// Workers bounds concurrent evaluations and requests (default 4).
	Workers int
	// QueueSize bounds queued jobs and, separately, scheduled retries
	// (default 1024); beyond it new work is dropped and counted.
	QueueSize int
	// MaxAttempts bounds tries per request (default 8).
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the wait between tries, doubling
	// from the first to the second (defaults 2s and 10m).
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one request, connection included (default 15s).
	Timeout time.Duration
	Log     *slog.Logger
	// Targets tells whom ev notifies and what the notification says about
	// it. It runs on a worker, never on the caller of Submit.
	Targets func(ev *room.Event) (Event, []Target, error)
	// Rejected removes the pusher a gateway named in "rejected".
	Rejected func(userID, appID, pushKey string) error
}

// Stats count what a Pusher did since it started.
type Stats struct {
	Sent     int64 // requests the gateway accepted
	Retried  int64 // failed tries scheduled again
	Failed   int64 // requests given up on
	Refused  int64 // requests not made: the gateway's address is not public
	Rejected int64 // pushers removed on the gateway's word
	Dropped  int64 // jobs dropped because the queue was full or closed
}

// Pusher delivers notifications in the background. Safe for concurrent use.
type Pusher struct {
	opts   Options
	client *http.Client
	dialer net.Dialer
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	queue   []job
	workers int
	timers  map[*time.Timer]struct{}
	closed  bool
	wg      sync.WaitGroup

	sent, retried, failed, refused, rejected, dropped atomic.Int64
}

// job is an event to evaluate or a request to send (one of the two).
type job struct {
	ev      *room.Event
	req     *Request
	attempt int
}

// New starts a Pusher; its workers run only while there is work.
func New(opts Options) *Pusher {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1024
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 2 * time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(opts.MinBackoff, 10*time.Minute)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 15 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	p := &Pusher{opts: opts, timers: map[*time.Timer]struct{}{}, dialer: net.Dialer{Timeout: 10 * time.Second}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.client = &http.Client{
		Timeout: opts.Timeout,
		Transport: &http.Transport{
			Proxy:                 nil, // a proxy would dial for us, past the address check
			DialContext:           p.dial,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: opts.Timeout,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
		},
		// A redirect is the gateway's mistake, not an instruction to follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return p
}

// Submit queues ev for push evaluation without blocking; false means it
// was dropped (queue full or Pusher closed).
func (p *Pusher) Submit(ev *room.Event) bool {
	if ev == nil || ev.Flags&(store.FlagRejected|store.FlagSoftFailed|store.FlagOutlier) != 0 {
		return false
	}
	return p.enqueue(job{ev: ev})
}

// Stats returns the counters.
func (p *Pusher) Stats() Stats {
	return Stats{Sent: p.sent.Load(), Retried: p.retried.Load(), Failed: p.failed.Load(),
		Refused: p.refused.Load(), Rejected: p.rejected.Load(), Dropped: p.dropped.Load()}
}

// Close drops queued work and pending retries, aborts requests in flight
// and waits for the workers to stop.
func (p *Pusher) Close() {
	p.mu.Lock()
	p.closed = true
	p.queue = nil
	for t := range p.timers {
		t.Stop()
	}
	clear(p.timers)
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	p.client.CloseIdleConnections()
}

func (p *Pusher) enqueue(j job) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.queue) >= p.opts.QueueSize {
		p.dropped.Add(1)
		return false
	}
	p.queue = append(p.queue, j)
	if p.workers < p.opts.Workers {
		p.workers++
		p.wg.Add(1)
		go p.work()
	}
	return true
}

// work runs jobs until the queue is empty, then exits.
func (p *Pusher) work() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if len(p.queue) == 0 || p.closed {
			p.workers--
			p.mu.Unlock()
			return
		}
		j := p.queue[0]
		p.queue[0] = job{}
		p.queue = p.queue[1:]
		p.mu.Unlock()
		if j.ev != nil {
			p.evaluate(j.ev)
		} else {
			p.send(j.req, j.attempt)
		}
	}
}

// evaluate turns an event into one request per pusher of each target.
func (p *Pusher) evaluate(ev *room.Event) {
	if p.opts.Targets == nil {
		return
	}
	info, targets, err := p.opts.Targets(ev)
	if err != nil {
		p.opts.Log.Warn("push evaluation failed", "event_id", ev.ID, "room_id", ev.RoomID, "err", err)
		return
	}
	for _, t := range targets {
		for _, raw := range t.Pushers {
			req, err := Build(info, t, raw)
			if err != nil {
				p.opts.Log.Warn("pusher skipped", "user_id", t.UserID, "err", err)
				continue
			}
			p.enqueue(job{req: req, attempt: 1})
		}
	}
}

// send makes one try at req and schedules the next one on failure.
func (p *Pusher) send(req *Request, attempt int) {
	rejected, err := p.post(req)
	switch {
	case err == nil:
		p.sent.Add(1)
		for _, k := range rejected {
			if k != req.PushKey || p.opts.Rejected == nil {
				continue // only what we sent: one device per request
			}
			if err := p.opts.Rejected(req.UserID, req.AppID, req.PushKey); err != nil {
				p.opts.Log.Warn("removing rejected pusher failed", "user_id", req.UserID, "app_id", req.AppID, "err", err)
				continue
			}
			p.rejected.Add(1)
			p.opts.Log.Info("pusher removed: gateway rejected its pushkey", "user_id", req.UserID, "app_id", req.AppID)
		}
	case errors.Is(err, ErrRestricted):
		p.refused.Add(1)
		p.opts.Log.Warn("push gateway refused", "user_id", req.UserID, "app_id", req.AppID, "err", err)
	case attempt >= p.opts.MaxAttempts || p.ctx.Err() != nil:
		p.failed.Add(1)
		p.opts.Log.Warn("push gave up", "user_id", req.UserID, "app_id", req.AppID, "attempts", attempt, "err", err)
	default:
		p.retry(req, attempt+1, err)
	}
}

// retry schedules try number attempt after the backoff: MinBackoff
// doubled per try so far, capped at MaxBackoff, with jitter so retries
// to one gateway spread out.
func (p *Pusher) retry(req *Request, attempt int, cause error) {
	wait := p.opts.MinBackoff << min(attempt-2, 30)
	if wait <= 0 || wait > p.opts.MaxBackoff {
		wait = p.opts.MaxBackoff
	}
	wait = wait/2 + rand.N(wait/2+1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.timers) >= p.opts.QueueSize {
		p.dropped.Add(1)
		return
	}
	p.retried.Add(1)
	p.opts.Log.Debug("push failed, will retry", "user_id", req.UserID, "app_id", req.AppID, "in", wait, "err", cause)
	var t *time.Timer
	t = time.AfterFunc(wait, func() {
		p.mu.Lock()
		delete(p.timers, t)
		p.mu.Unlock()
		p.enqueue(job{req: req, attempt: attempt})
	})
	p.timers[t] = struct{}{}
}

// post sends req and returns the pushkeys the gateway rejected. Any
// answer but 200 with a JSON body is an error worth retrying.
func (p *Pusher) post(req *Request) ([]string, error) {
	hr, err := http.NewRequestWithContext(p.ctx, http.MethodPost, req.URL, bytes.NewReader(req.Body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("gateway answered %s", resp.Status)
	}
	var out struct {
		Rejected []string `json:"rejected"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("gateway answer is not JSON: %w", err)
	}
	return out.Rejected, nil
}

// dial connects to a gateway on an address the policy allows: it resolves
// the name itself and dials the checked IP literal, so what is checked is
// what is connected to (no second lookup to rebind).
func (p *Pusher) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := wellknown.PublicDialer{Dialer: &p.dialer, AllowPrivate: p.opts.AllowPrivate}
	return d.DialContext(ctx, network, addr)
}
