package status

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"maunium.net/go/mautrix/crypto/canonicaljson"
)

// signed is a JSON object split for signature checks (appendix "Signing
// JSON"): the canonical form without signatures and unsigned, and the
// signatures.
type signed struct {
	canonical  []byte
	signatures map[string]map[string]string
}

func parseSigned(raw []byte) (*signed, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	s := &signed{signatures: map[string]map[string]string{}}
	if sigs, ok := fields["signatures"]; ok {
		var m map[string]map[string]json.RawMessage
		if err := json.Unmarshal(sigs, &m); err != nil {
			return nil, fmt.Errorf("signatures: %w", err)
		}
		for server, byKey := range m {
			s.signatures[server] = map[string]string{}
			for id, v := range byKey {
				var sig string
				if json.Unmarshal(v, &sig) == nil {
					s.signatures[server][id] = sig
				}
			}
		}
	}
	delete(fields, "signatures")
	delete(fields, "unsigned")
	plain, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	if s.canonical, err = canonicaljson.CanonicalJSON(plain); err != nil {
		return nil, fmt.Errorf("not canonicalisable: %w", err)
	}
	return s, nil
}

func (s *signed) verify(server, keyID string, pub ed25519.PublicKey) bool {
	sig, ok := s.signatures[server][keyID]
	if !ok || len(pub) != ed25519.PublicKeySize {
		return false
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(sig, "="))
	return err == nil && ed25519.Verify(pub, s.canonical, raw)
}

func decodeKey(s string) (ed25519.PublicKey, bool) {
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	return ed25519.PublicKey(b), err == nil && len(b) == ed25519.PublicKeySize
}

// keyDoc is GET /_matrix/key/v2/server as the spec defines it.
type keyDoc struct {
	ServerName    string              `json:"server_name"`
	ValidUntilTS  int64               `json:"valid_until_ts"`
	VerifyKeys    map[string]keyEntry `json:"verify_keys"`
	OldVerifyKeys map[string]keyEntry `json:"old_verify_keys"`
}

type keyEntry struct {
	Key string `json:"key"`
}

// checkKeys fills the key checks of c from a key response body.
func checkKeys(c *Connection, body []byte, serverName string, now time.Time) {
	ch := &c.Checks
	ch.Ed25519Checks = map[string]Ed25519Checks{}
	var doc keyDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		c.fail("HasEd25519Key", "the key response is not valid JSON: "+err.Error(),
			"make /_matrix/key/v2/server return the signed key document")
		return
	}
	kr := &KeyResponse{ServerName: doc.ServerName, ValidUntilTS: doc.ValidUntilTS, VerifyKeys: map[string]string{}}
	for id, k := range doc.VerifyKeys {
		kr.VerifyKeys[id] = k.Key
	}
	for id, k := range doc.OldVerifyKeys {
		if kr.OldVerifyKeys == nil {
			kr.OldVerifyKeys = map[string]string{}
		}
		kr.OldVerifyKeys[id] = k.Key
	}
	c.Keys = kr

	ch.MatchingKeyServerName = doc.ServerName == serverName
	if !ch.MatchingKeyServerName {
		c.fail("MatchingKeyServerName", fmt.Sprintf("the key response is for %q, not %q", doc.ServerName, serverName),
			"set server_name in the server's config to the name peers use, or fix the delegation that points here")
	}
	ch.FutureValidUntilTS = time.UnixMilli(doc.ValidUntilTS).After(now)
	if !ch.FutureValidUntilTS {
		c.fail("FutureValidUntilTS", fmt.Sprintf("valid_until_ts %s is not in the future", time.UnixMilli(doc.ValidUntilTS).UTC().Format(time.RFC3339)),
			"the server must re-sign its key response; check its clock and restart it")
	}
	sig, err := parseSigned(body)
	ids := make([]string, 0, len(doc.VerifyKeys))
	for id := range doc.VerifyKeys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	ch.AllEd25519ChecksOK = true
	for _, id := range ids {
		if !strings.HasPrefix(id, "ed25519:") {
			continue
		}
		ch.HasEd25519Key = true
		pub, ok := decodeKey(doc.VerifyKeys[id].Key)
		kc := Ed25519Checks{ValidEd25519: ok, MatchingSignature: ok && err == nil && sig.verify(serverName, id, pub)}
		ch.Ed25519Checks[id] = kc
		if !kc.ValidEd25519 {
			c.fail("ValidEd25519", id+" is not 32 bytes of unpadded base64", "regenerate the signing key; the published key is corrupt")
		} else if !kc.MatchingSignature {
			c.fail("MatchingSignature", "the key response carries no valid signature by "+id+" for "+serverName,
				"the key response must be signed by the key it publishes; the server's signing key file and what it serves disagree")
		}
		ch.AllEd25519ChecksOK = ch.AllEd25519ChecksOK && kc.ValidEd25519 && kc.MatchingSignature
	}
	if !ch.HasEd25519Key {
		ch.AllEd25519ChecksOK = false
		c.fail("HasEd25519Key", "verify_keys holds no ed25519 key", "give the server an ed25519 signing key (edge init makes one)")
	}
}
