package wellknown

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
)

func TestPublicDialer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ctx := context.Background()
	for _, addr := range []string{ln.Addr().String(), net.JoinHostPort("localhost", port)} {
		_, err := (&PublicDialer{}).DialContext(ctx, "tcp", addr)
		if !errors.Is(err, ErrPrivateAddress) {
			t.Errorf("%s: %v, want ErrPrivateAddress", addr, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("refused dials still connected %d times", n)
	}
	c, err := (&PublicDialer{AllowPrivate: true}).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("allowed dial: %v", err)
	}
	c.Close()
}
