package store

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkWriteSmall measures one durable transaction holding one small
// put: the floor under every acknowledged client write (bbolt's commit and
// its fdatasyncs).
//
// With -benchtime 200x, the "after-idle" case sleeps 20 ms before each
// write (untimed), as a chat server's writes arrive: on this project's VM a
// lone commit after an idle gap costs ~3× one in a busy loop.
func BenchmarkWriteSmall(b *testing.B) {
	b.Run("busy", func(b *testing.B) { benchWriteSmall(b, 0) })
	b.Run("after-idle", func(b *testing.B) { benchWriteSmall(b, 20*time.Millisecond) })
}

func benchWriteSmall(b *testing.B, gap time.Duration) {
	s, err := Open(filepath.Join(b.TempDir(), "edge.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if gap > 0 {
			b.StopTimer()
			time.Sleep(gap)
			b.StartTimer()
		}
		if err := s.Write(func(tx *Tx) error {
			tx.PutKV("bench", fmt.Sprint(i), []byte("value"))
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}
