package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// SigningKey is this server's ed25519 signing key and its key ID ("ed25519:abc").
type SigningKey struct {
	ID   string
	Priv ed25519.PrivateKey
}

// Public returns the verify key.
func (k SigningKey) Public() ed25519.PublicKey { return k.Priv.Public().(ed25519.PublicKey) }

// GenerateSigningKey makes a fresh key with a random version.
func GenerateSigningKey() (SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, err
	}
	var v [4]byte
	if _, err := rand.Read(v[:]); err != nil {
		return SigningKey{}, err
	}
	ver := strings.Map(func(r rune) rune {
		if r == '+' || r == '/' {
			return 'a'
		}
		return r
	}, base64.RawStdEncoding.EncodeToString(v[:]))
	return SigningKey{ID: "ed25519:" + ver, Priv: priv}, nil
}

// ReadSigningKeys parses a key file in Synapse's format: one key per line,
// "ed25519 <version> <unpadded base64 seed>". The first key signs.
func ReadSigningKeys(path string) ([]SigningKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []SigningKey
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "ed25519" {
			return nil, fmt.Errorf("%s:%d: want \"ed25519 <version> <base64 seed>\"", path, n+1)
		}
		seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(f[2], "="))
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("%s:%d: the seed is not 32 bytes of base64", path, n+1)
		}
		keys = append(keys, SigningKey{ID: "ed25519:" + f[1], Priv: ed25519.NewKeyFromSeed(seed)})
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no signing key in file", path)
	}
	return keys, nil
}

// WriteSigningKey writes k in Synapse's format with owner-only permissions.
func WriteSigningKey(path string, k SigningKey) error {
	line := fmt.Sprintf("ed25519 %s %s\n", strings.TrimPrefix(k.ID, "ed25519:"),
		base64.RawStdEncoding.EncodeToString(k.Priv.Seed()))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
