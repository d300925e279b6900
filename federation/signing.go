package federation

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/crypto/canonicaljson"

	"edge/edge/config"
	"edge/edge/edsig"
)

// signedObject is a JSON object split the way the appendix "Signing JSON"
// needs it: the canonical form of everything but signatures and unsigned,
// and the signatures themselves.
type signedObject struct {
	fields     map[string]json.RawMessage
	canonical  []byte
	signatures map[string]map[string]string
}

// parseSigned splits obj. Signature values that are not strings are
// dropped (they can never verify), so a malformed entry cannot make an
// otherwise valid object unreadable.
func parseSigned(obj []byte) (*signedObject, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(obj, &fields); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if fields == nil {
		return nil, errors.New("not a JSON object")
	}
	so := &signedObject{fields: fields, signatures: map[string]map[string]string{}}
	if raw, ok := fields["signatures"]; ok {
		var sigs map[string]map[string]json.RawMessage
		if err := json.Unmarshal(raw, &sigs); err != nil {
			return nil, fmt.Errorf("signatures: %w", err)
		}
		for server, byKey := range sigs {
			so.signatures[server] = map[string]string{}
			for keyID, v := range byKey {
				var s string
				if json.Unmarshal(v, &s) == nil {
					so.signatures[server][keyID] = s
				}
			}
		}
	}
	rest := make(map[string]json.RawMessage, len(fields))
	for k, v := range fields {
		if k != "signatures" && k != "unsigned" {
			rest[k] = v
		}
	}
	plain, err := json.Marshal(rest)
	if err != nil {
		return nil, err
	}
	if so.canonical, err = canonicaljson.CanonicalJSON(plain); err != nil {
		return nil, fmt.Errorf("not canonicalisable: %w", err)
	}
	return so, nil
}

// verify checks server's signature with keyID against pub. A missing
// signature and a wrong one are both false.
func (so *signedObject) verify(server, keyID string, pub ed25519.PublicKey) bool {
	sig, ok := so.signatures[server][keyID]
	if !ok {
		return false
	}
	return verifyCanonical(so.canonical, sig, pub)
}

func verifyCanonical(canonical []byte, sig string, pub ed25519.PublicKey) bool {
	raw, err := base64.RawStdEncoding.DecodeString(sig)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return false
	}
	// Peers sign every request with the same key: edsig is quicker then.
	return edsig.Verify(pub, canonical, raw)
}

// sign adds server's signatures by keys and returns the object re-encoded
// (its other fields byte-for-byte as they were).
func (so *signedObject) sign(server string, keys []config.SigningKey) ([]byte, error) {
	if so.signatures[server] == nil {
		so.signatures[server] = map[string]string{}
	}
	for _, k := range keys {
		so.signatures[server][k.ID] = base64.RawStdEncoding.EncodeToString(ed25519.Sign(k.Priv, so.canonical))
	}
	sigs, err := json.Marshal(so.signatures)
	if err != nil {
		return nil, err
	}
	so.fields["signatures"] = sigs
	return json.Marshal(so.fields)
}

// signJSON returns the JSON object obj signed by server's keys.
func signJSON(obj []byte, server string, keys []config.SigningKey) ([]byte, error) {
	so, err := parseSigned(obj)
	if err != nil {
		return nil, err
	}
	return so.sign(server, keys)
}

// canonicalOf returns the canonical JSON of v.
func canonicalOf(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return canonicaljson.CanonicalJSON(b)
}

// decodeKey parses an unpadded base64 ed25519 public key.
func decodeKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.RawStdEncoding.DecodeString(string(bytes.TrimRight([]byte(s), "=")))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("not an unpadded base64 ed25519 key")
	}
	return ed25519.PublicKey(b), nil
}

// EncodeKey renders a public key as the spec writes keys: unpadded base64.
func EncodeKey(pub ed25519.PublicKey) string { return base64.RawStdEncoding.EncodeToString(pub) }
