package federation

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
)

// errShutdown is returned by a group after shutdown.
var errShutdown = errors.New("federation: shutting down")

// group runs one call per key at a time; callers that arrive while it runs
// wait for its result instead of starting their own (concurrent key
// lookups for one server become one fetch). Each caller may stop waiting
// when its own ctx ends; the call itself runs on, under its own deadline,
// and shutdown waits for it, so nothing writes to the store after Close.
type group[K comparable, V any] struct {
	mu     sync.Mutex
	calls  map[K]*flightCall[V]
	closed bool
	wg     sync.WaitGroup
}

type flightCall[V any] struct {
	done chan struct{}
	val  V
	err  error
}

func (g *group[K, V]) do(ctx context.Context, key K, fn func() (V, error)) (V, error) {
	var zero V
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return zero, errShutdown
	}
	if g.calls == nil {
		g.calls = map[K]*flightCall[V]{}
	}
	c, ok := g.calls[key]
	if !ok {
		c = &flightCall[V]{done: make(chan struct{})}
		g.calls[key] = c
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer func() {
				// No caller's goroutine runs fn, so no handler's recover
				// would catch a panic: turn it into the call's error.
				if p := recover(); p != nil {
					c.err = fmt.Errorf("federation: panic: %v\n%s", p, debug.Stack())
				}
				g.mu.Lock()
				delete(g.calls, key)
				g.mu.Unlock()
				close(c.done)
			}()
			c.val, c.err = fn()
		}()
	}
	g.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// shutdown refuses new calls and waits for running ones.
func (g *group[K, V]) shutdown() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
