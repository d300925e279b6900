package room

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/edsig"
)

// A received PDU is checked three ways (event ID from its reference hash,
// content hash, signatures), and each check is a canonical-JSON encoding
// of a slightly different object. Going through mautrix's PDU type costs
// three decodes and three encodes per event; here the PDU's top-level
// members are split once, without copying, and the two objects the checks
// need are encoded once each: the event without unsigned, signatures and
// hashes (content hash) and its redacted form without signatures and
// unsigned (reference hash and signatures — the same bytes). A join into
// a 100k-member room does this 100k times on top of one ed25519 check.

// member is one top-level member of a PDU: its name, and its value and
// whole "name":value text as slices of the PDU's bytes.
type member struct {
	name  string
	value []byte
	text  []byte
}

// splitMembers splits a JSON object into its top-level members with the
// auth rules' scanner. It only finds their bounds: every member a hash or
// a signature covers is then validated by its canonical encoding, and the
// rest by json.Unmarshal. What is not one object, or repeats a name, is
// refused.
func splitMembers(raw []byte) ([]member, error) {
	offset := func(b []byte) int { return cap(raw) - cap(b) } // b is a slice of raw
	out := make([]member, 0, 16)
	var bad string
	ok := scanObject(raw, func(name, val []byte) {
		n := string(name[1 : len(name)-1])
		if bytes.IndexByte(name, '\\') >= 0 && json.Unmarshal(name, &n) != nil {
			bad = "malformed member name"
		}
		for _, m := range out {
			if m.name == n {
				bad = "duplicate member " + n
			}
		}
		out = append(out, member{name: n, value: val, text: raw[offset(name) : offset(val)+len(val)]})
	})
	if !ok {
		bad = "not a JSON object"
	}
	if bad == "" {
		// Nothing may follow the object's closing brace.
		i := skipSpace(raw, 0) + 1
		if len(out) > 0 {
			last := out[len(out)-1].value
			i = offset(last) + len(last)
		}
		if i = skipSpace(raw, skipSpace(raw, i)+1); i != len(raw) {
			bad = "data after the event object"
		}
	}
	if bad != "" {
		return nil, fmt.Errorf("%w: %s", ErrBadEvent, bad)
	}
	return out, nil
}

// joinMembers writes an object of the members kept by keep, with
// replace's values swapped in by name.
func joinMembers(buf []byte, ms []member, keep func(string) bool, replace map[string][]byte) []byte {
	buf = append(buf, '{')
	first := true
	for _, m := range ms {
		if !keep(m.name) {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		if v, ok := replace[m.name]; ok {
			// The member's own name text, then the new value.
			buf = append(buf, m.text[:len(m.text)-len(m.value)]...)
			buf = append(buf, v...)
			continue
		}
		buf = append(buf, m.text...)
	}
	return append(buf, '}')
}

// Checked is a PDU parsed and checked in one pass by CheckPDU.
type Checked struct {
	*Event
	// ContentHashOK tells whether hashes.sha256 matched the content;
	// when not, the caller keeps the redacted event (spec: a PDU whose
	// content hash fails is redacted before it is used).
	ContentHashOK bool
	// signed is the canonical redacted form, the bytes the signatures
	// cover; sigs the event's signatures.
	signed []byte
	sigs   map[string]map[string]string
}

// CheckPDU parses a received PDU of the given room version, drops its
// unsigned member (the sender's, not covered by any hash), computes its
// event ID (v3+) and checks its content hash. Signatures are checked by
// VerifySignature on the result.
func CheckPDU(version string, raw []byte) (*Checked, error) {
	rv := id.RoomVersion(version)
	ms, err := splitMembers(raw)
	if err != nil {
		return nil, err
	}
	var unsigned bool
	var hashes, content, sigs, evType []byte
	for _, m := range ms {
		switch m.name {
		case "unsigned":
			unsigned = true
		case "hashes":
			hashes = m.value
		case "content":
			content = m.value
		case "signatures":
			sigs = m.value
		case "type":
			evType = m.value
		}
	}
	if unsigned {
		raw = joinMembers(make([]byte, 0, len(raw)), ms, func(n string) bool { return n != "unsigned" }, nil)
		if ms, err = splitMembers(raw); err != nil {
			return nil, err
		}
	}
	c := &Checked{}
	// Content hash: the event without unsigned, signatures and hashes.
	body, err := canonicalFor(rv, joinMembers(make([]byte, 0, len(raw)), ms, func(n string) bool {
		return n != "signatures" && n != "hashes"
	}, nil))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	var h struct {
		SHA256 string `json:"sha256"`
	}
	if len(hashes) > 0 {
		if err := json.Unmarshal(hashes, &h); err != nil {
			return nil, fmt.Errorf("%w: hashes: %v", ErrBadEvent, err)
		}
		want, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(h.SHA256, "="))
		sum := sha256.Sum256(body)
		c.ContentHashOK = err == nil && hmac.Equal(sum[:], want)
	}
	// Redacted form without signatures: the reference hash and the bytes
	// every signature covers.
	keep := redactionKeepsTopLevel
	if rv.UpdatedRedactionRules() {
		keep = redactionKeepsTopLevelV11
	}
	var typ string
	_ = json.Unmarshal(evType, &typ)
	var replace map[string][]byte
	if content != nil {
		replace = map[string][]byte{"content": pdu.RedactContent(typ, content, rv)}
	}
	redacted := joinMembers(make([]byte, 0, len(raw)), ms, func(n string) bool {
		return n != "signatures" && (n == "content" || slices.Contains(keep, n))
	}, replace)
	if c.signed, err = canonicalFor(rv, redacted); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	if len(sigs) > 0 {
		if err := json.Unmarshal(sigs, &c.sigs); err != nil {
			return nil, fmt.Errorf("%w: signatures: %v", ErrBadEvent, err)
		}
	}
	eventID := ""
	if rv.EventIDFormat() != id.EventIDFormatCustom {
		sum := sha256.Sum256(c.signed)
		enc := base64.RawURLEncoding
		if rv.EventIDFormat() == id.EventIDFormatBase64 {
			enc = base64.RawStdEncoding
		}
		eventID = "$" + enc.EncodeToString(sum[:])
	}
	if c.Event, err = ParseEvent(version, raw, eventID); err != nil {
		return nil, err
	}
	return c, nil
}

// VerifySignature checks serverName's signatures on the event, as
// mautrix's pdu.VerifySignature does: every signature whose key is known
// must verify, at least one must, and from room v5 on a key must have
// been valid when the event was sent.
func (c *Checked) VerifySignature(serverName string, getKey pdu.GetKeyFunc) error {
	sigs := c.sigs[serverName]
	if len(sigs) == 0 {
		return fmt.Errorf("no signatures found for server %s", serverName)
	}
	rv := id.RoomVersion(c.Version)
	ts := time.UnixMilli(c.OriginServerTS)
	var errs []error
	verified := false
	for keyID, sig := range sigs {
		key, validUntil, err := getKey(serverName, id.KeyID(keyID), ts)
		switch {
		case err != nil:
			return fmt.Errorf("failed to get key %s for %s: %w", keyID, serverName, err)
		case key == "":
			errs = append(errs, fmt.Errorf("key %s not found for %s", keyID, serverName))
		case validUntil.Before(ts) && rv.EnforceSigningKeyValidity():
			errs = append(errs, fmt.Errorf("key %s for %s is only valid until %s, but event is from %s", keyID, serverName, validUntil, ts))
		default:
			sigBytes, err1 := base64.RawStdEncoding.DecodeString(strings.TrimRight(sig, "="))
			keyBytes, err2 := base64.RawStdEncoding.DecodeString(strings.TrimRight(string(key), "="))
			if err1 != nil || err2 != nil || len(keyBytes) != ed25519.PublicKeySize || !edsig.Verify(keyBytes, c.signed, sigBytes) {
				return fmt.Errorf("failed to verify signature from key %s: invalid signature", keyID)
			}
			verified = true
		}
	}
	if !verified {
		return fmt.Errorf("no verifiable signatures found for server %s: %w", serverName, errors.Join(errs...))
	}
	return nil
}

// AuthEventIDs reads only the auth_events of a stored PDU: serving a big
// room's send_join walks the auth chain of 100k events, and parsing each
// whole would cost the resident more than the walk.
func AuthEventIDs(version string, raw []byte) ([]string, error) {
	ms, err := splitMembers(raw)
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.name != "auth_events" {
			continue
		}
		if id.RoomVersion(version).EventIDFormat() == id.EventIDFormatCustom {
			return parseV1Refs(m.value)
		}
		var ids []string
		if err := json.Unmarshal(m.value, &ids); err != nil {
			return nil, fmt.Errorf("%w: auth_events: %v", ErrBadEvent, err)
		}
		return ids, nil
	}
	return nil, nil
}
