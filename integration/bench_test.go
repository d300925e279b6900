package integration

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// BenchmarkSendWake measures, in one process over loopback, the time from
// a client's send to a long-polling /sync of another user returning it:
// the "send → long-poll /sync wake". It reports p50/p99 besides
// the mean ns/op.
func BenchmarkSendWake(b *testing.B) {
	n := startNode(b)
	alice := n.register(b, "")
	bob := n.register(b, "")
	ctx := context.Background()
	roomID := mustCreateRoom(b, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		b.Fatal(err)
	}
	resp, err := bob.SyncRequest(ctx, 0, "", "", false, event.PresenceOnline)
	if err != nil {
		b.Fatal(err)
	}
	since := resp.NextBatch
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got := make(chan string, 1)
		go func(since string) {
			r, err := bob.SyncRequest(ctx, 30000, since, "", false, event.PresenceOnline)
			if err != nil {
				got <- ""
				return
			}
			got <- r.NextBatch
		}(since)
		time.Sleep(2 * time.Millisecond) // let the long-poll park
		start := time.Now()
		if _, err := alice.SendText(ctx, roomID, fmt.Sprint("m", i)); err != nil {
			b.Fatal(err)
		}
		since = <-got
		lat = append(lat, time.Since(start))
		if since == "" {
			b.Fatal("sync failed")
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
