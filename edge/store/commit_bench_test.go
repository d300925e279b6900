package store

import (
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkWriteSmall measures one durable transaction holding one small
// put: the floor under every acknowledged client write (bbolt's commit and
// its fdatasyncs).
func BenchmarkWriteSmall(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "edge.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Write(func(tx *Tx) error {
			tx.PutKV("bench", fmt.Sprint(i), []byte("value"))
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}
