package client

import (
	"net"
	"net/http"
	"sync"
	"time"

	"edge/edge/config"
)

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// limiter keeps one token bucket per key (client IP or user).
type limiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// allow takes a token for key, or returns how long until one is available.
func (l *limiter) allow(key string) (ok bool, retryAfter time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buckets) > 100000 {
		// Full buckets carry no information; dropping them bounds memory.
		for k, b := range l.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
				delete(l.buckets, k)
			}
		}
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

type limiters struct {
	login, register, send *limiter
	delayed               *limiter // unauthenticated delayed-event actions, per address
}

func newLimiters(c config.RateLimits) *limiters {
	return &limiters{
		login:    newLimiter(c.LoginPerSecond, c.LoginBurst),
		register: newLimiter(c.RegisterPerSecond, c.RegisterBurst),
		send:     newLimiter(c.SendPerSecond, c.SendBurst),
		delayed:  newLimiter(c.SendPerSecond, c.SendBurst),
	}
}

// check returns M_LIMIT_EXCEEDED when key has no token left.
func check(l *limiter, key string) error {
	if ok, wait := l.allow(key); !ok {
		e := newErr(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many requests")
		e.RetryAfterMS = max(wait.Milliseconds(), 1)
		return e
	}
	return nil
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
