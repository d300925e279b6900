// Package edsig verifies ed25519 signatures exactly as crypto/ed25519
// does, faster for keys that sign many messages.
//
// Joining a big room means checking one signature per event of its state
// — 100k of them, nearly all by the resident server's one key. Verifying
// computes R' = [S]B − [k]A and compares it with the signature's R;
// crypto/ed25519 gets [k]A with ~250 point doublings per signature. For a
// key seen often, edsig precomputes j·256ⁱ·(−A) for every byte position
// i and byte value j (32×256 points, 1.3 MB, built in about the time of
// 40 verifications), after which [k]A is at most 32 additions; [S]B
// likewise from one such table of the base point. The point computed is
// the same, so is every verdict: the same checks on the key, the scalar S
// and the encoding of R, in the same order. A verification then costs
// about 0.4 of crypto/ed25519's.
package edsig

import (
	"crypto/ed25519"
	"crypto/sha512"
	"crypto/subtle"
	"sync"
	"sync/atomic"

	"filippo.io/edwards25519"
	lru "github.com/hashicorp/golang-lru/v2"
)

const (
	// tableAfter is how many verifications with one key come before its
	// table is built (a build costs about 40).
	tableAfter = 256
	// maxTables bounds the tables held (1.3 MB each).
	maxTables = 8
	// maxCounted bounds the keys whose uses are counted.
	maxCounted = 4096
)

// table holds j·256ⁱ·P at [i][j]: P is −A for a key's table, B for the
// base point's.
type table [32][256]edwards25519.Point

// multiples returns the table of p.
func multiples(p *edwards25519.Point) *table {
	step := new(edwards25519.Point).Set(p)
	t := new(table)
	for i := range t {
		t[i][0].Set(edwards25519.NewIdentityPoint())
		for j := 1; j < 256; j++ {
			t[i][j].Add(&t[i][j-1], step)
		}
		step.Add(&t[i][255], step) // 256·step
	}
	return t
}

// mulAdd adds the multiple of t's point by the little-endian scalar s to
// r: at most 32 additions, variable time (s is public here).
func (t *table) mulAdd(r *edwards25519.Point, s []byte) {
	for i, b := range s {
		if b != 0 {
			r.Add(r, &t[i][b])
		}
	}
}

// base is the base point's table, built with the first key table: the
// standard library's constant-time [S]B costs as much as the rest.
var base = sync.OnceValue(func() *table { return multiples(edwards25519.NewGeneratorPoint()) })

var (
	uses, _   = lru.New[[32]byte, *atomic.Int64](maxCounted)
	tables, _ = lru.New[[32]byte, *table](maxTables)
	counting  sync.Mutex // makes a key's counter creation atomic
)

// Verify reports whether sig is pub's valid signature of msg, as
// crypto/ed25519.Verify does (without its panic on a malformed key: a
// key of the wrong length verifies nothing).
func Verify(pub ed25519.PublicKey, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize {
		return false
	}
	key := [32]byte(pub)
	if t, ok := tables.Get(key); ok {
		return t.verify(pub, msg, sig)
	}
	if n := count(key); n%tableAfter == 0 {
		// Built here, by the caller that crossed the mark; the others
		// go on the standard way meanwhile. An evicted table is built
		// again at the next mark.
		if t := newTable(pub); t != nil {
			tables.Add(key, t)
			return t.verify(pub, msg, sig)
		}
	}
	return ed25519.Verify(pub, msg, sig)
}

func count(key [32]byte) int64 {
	c, ok := uses.Get(key)
	if !ok {
		counting.Lock()
		if c, ok = uses.Get(key); !ok {
			c = new(atomic.Int64)
			uses.Add(key, c)
		}
		counting.Unlock()
	}
	return c.Add(1)
}

// newTable precomputes pub's multiples; nil if pub is not a point, which
// crypto/ed25519 refuses too.
func newTable(pub []byte) *table {
	a, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil
	}
	base() // built once, before it is needed
	return multiples(new(edwards25519.Point).Negate(a))
}

// verify is RFC 8032's cofactorless check as crypto/ed25519 makes it: S
// canonical, k = SHA-512(R ‖ A ‖ M) mod ℓ, and the encoding of
// [S]B − [k]A equal to R's bytes.
func (t *table) verify(pub, msg, sig []byte) bool {
	if len(sig) != ed25519.SignatureSize || sig[63]&224 != 0 {
		return false
	}
	h := sha512.New()
	h.Write(sig[:32])
	h.Write(pub)
	h.Write(msg)
	var digest [64]byte
	k, err := new(edwards25519.Scalar).SetUniformBytes(h.Sum(digest[:0]))
	if err != nil {
		return false
	}
	s, err := new(edwards25519.Scalar).SetCanonicalBytes(sig[32:])
	if err != nil {
		return false
	}
	r := edwards25519.NewIdentityPoint()
	base().mulAdd(r, s.Bytes())
	t.mulAdd(r, k.Bytes())
	return subtle.ConstantTimeCompare(r.Bytes(), sig[:32]) == 1
}
