package edsig

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"math/big"
	"sync"
	"testing"

	"filippo.io/edwards25519"
)

// warm makes pub's table exist, as after many verifications.
func warm(t testing.TB, pub ed25519.PublicKey, msg, sig []byte) {
	for range tableAfter {
		Verify(pub, msg, sig)
	}
	if _, ok := tables.Get([32]byte(pub)); !ok {
		t.Fatal("no table after tableAfter verifications")
	}
}

// TestParity: with a table, every verdict is crypto/ed25519's — on valid
// signatures, on every single-bit change of signature and message, on a
// non-canonical S, on set high bits, and on small-order keys.
func TestParity(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := []byte(`{"type":"m.room.member","content":{"membership":"join"}}`)
	warm(t, pub, msg, ed25519.Sign(priv, msg))
	tab, _ := tables.Get([32]byte(pub))
	check := func(what string, pub ed25519.PublicKey, tab *table, msg, sig []byte) {
		t.Helper()
		if got, want := tab.verify(pub, msg, sig), ed25519.Verify(pub, msg, sig); got != want {
			t.Fatalf("%s: edsig says %v, crypto/ed25519 %v", what, got, want)
		}
	}
	for i := range 300 {
		m := make([]byte, i)
		rand.Read(m)
		sig := ed25519.Sign(priv, m)
		if !Verify(pub, m, sig) {
			t.Fatalf("a valid signature of %d bytes is refused", i)
		}
		check("valid", pub, tab, m, sig)
	}
	sig := ed25519.Sign(priv, msg)
	for bit := range 64 * 8 {
		bad := append([]byte(nil), sig...)
		bad[bit/8] ^= 1 << (bit % 8)
		check("signature bit flipped", pub, tab, msg, bad)
	}
	for bit := range len(msg) * 8 {
		bad := append([]byte(nil), msg...)
		bad[bit/8] ^= 1 << (bit % 8)
		check("message bit flipped", pub, tab, bad, sig)
	}
	// S + ℓ: the same point, refused as non-canonical by both.
	l, _ := new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)
	s := new(big.Int).SetBytes(reverse(sig[32:]))
	nc := append(append([]byte(nil), sig[:32]...), reverse(pad32(new(big.Int).Add(s, l).Bytes()))...)
	if nc[63]&224 == 0 {
		check("S + ℓ", pub, tab, msg, nc)
	}
	// Small-order keys: the identity, and a point of order 8.
	for _, h := range []string{
		"0100000000000000000000000000000000000000000000000000000000000000",
		"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
	} {
		weak, _ := hex.DecodeString(h)
		wt := newTable(weak)
		if wt == nil {
			t.Fatalf("%s is a point", h)
		}
		id := edwards25519.NewIdentityPoint().Bytes()
		forged := append(append([]byte(nil), id...), make([]byte, 32)...) // R = identity, S = 0
		check("small-order key, forged signature", weak, wt, msg, forged)
		check("small-order key, real signature", weak, wt, msg, sig)
	}
	// Not a point: no table, the standard verdict (false).
	notPoint, _ := hex.DecodeString("0200000000000000000000000000000000000000000000000000000000000000")
	if newTable(notPoint) != nil {
		t.Fatal("a table for an encoding that is not a point")
	}
	for range tableAfter + 1 {
		if Verify(notPoint, msg, sig) {
			t.Fatal("a key that is not a point verified a signature")
		}
	}
	if Verify(pub[:31], msg, sig) || Verify(pub, msg, sig[:63]) {
		t.Fatal("wrong lengths verified")
	}
}

// TestConcurrent: many goroutines verifying with keys crossing the mark
// together (run with -race) all get the right verdicts.
func TestConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for range 4 {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		msg := []byte("concurrent")
		sig := ed25519.Sign(priv, msg)
		for range 4 {
			wg.Go(func() {
				for i := range 2 * tableAfter {
					if !Verify(pub, msg, sig) || (i%16 == 0 && Verify(pub, []byte("other"), sig)) {
						t.Error("wrong verdict")
						return
					}
				}
			})
		}
	}
	wg.Wait()
}

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[len(b)-1-i] = c
	}
	return out
}

func pad32(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }

// BenchmarkVerify: one signature of a 600-byte event, by a key seen
// often, through crypto/ed25519 and through edsig.
func BenchmarkVerify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 600)
	sig := ed25519.Sign(priv, msg)
	warm(b, pub, msg, sig)
	b.Run("crypto-ed25519", func(b *testing.B) {
		for b.Loop() {
			ed25519.Verify(pub, msg, sig)
		}
	})
	b.Run("edsig", func(b *testing.B) {
		for b.Loop() {
			Verify(pub, msg, sig)
		}
	})
	b.Run("table-build", func(b *testing.B) {
		for b.Loop() {
			newTable(pub)
		}
	})
}
