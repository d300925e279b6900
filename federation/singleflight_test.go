package federation

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFederationSingleflight(t *testing.T) {
	var g group[string, int]
	var runs atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	results := make(chan int, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := g.do(context.Background(), "k", func() (int, error) {
				runs.Add(1)
				<-release
				return 42, nil
			})
			if err == nil {
				results <- v
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(results)
	n := 0
	for v := range results {
		if v != 42 {
			t.Fatalf("got %d", v)
		}
		n++
	}
	if n != 10 || runs.Load() != 1 {
		t.Fatalf("%d results from %d runs, want 10 from 1", n, runs.Load())
	}
	// A waiter may give up; a panic becomes an error, not a crash.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.do(ctx, "slow", func() (int, error) { time.Sleep(10 * time.Millisecond); return 0, nil }); err == nil {
		t.Fatal("a cancelled waiter got no error")
	}
	if _, err := g.do(context.Background(), "p", func() (int, error) { panic("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("panic: %v", err)
	}
}
