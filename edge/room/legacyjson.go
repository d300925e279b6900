package room

import (
	"bytes"
	"encoding/json/jsontext"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/id"
)

// canonicalFor encodes b in the room version's canonical JSON. Rooms v6
// and later forbid floats and integers beyond ±(2^53−1), so such a value
// is an error. Earlier versions allowed them and their servers signed
// whatever their encoder wrote (Synapse: Python's repr of the number), so
// there a number that canonical JSON cannot express is kept as written:
// the event's sender put those bytes there and signed them.
func canonicalFor(rv id.RoomVersion, b []byte) ([]byte, error) {
	out, err := canonicaljson.CanonicalJSON(b)
	if err == nil || rv.ForbidFloatsAndBigInts() {
		return out, err
	}
	return legacyCanonicalJSON(b)
}

// legacyCanonicalJSON is canonical JSON (sorted keys, no insignificant
// whitespace, strings in their shortest escaping) with every number kept
// byte for byte as it appears in b.
func legacyCanonicalJSON(b []byte) ([]byte, error) {
	dec := jsontext.NewDecoder(bytes.NewReader(b))
	out, err := appendLegacyCanonical(nil, dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.ReadToken(); err == nil {
		return nil, errors.New("canonical JSON: trailing data")
	}
	return out, nil
}

// maxLegacyDepth bounds nesting, as every JSON decoder here does.
const maxLegacyDepth = 100

func appendLegacyCanonical(out []byte, dec *jsontext.Decoder, depth int) ([]byte, error) {
	if depth > maxLegacyDepth {
		return nil, errors.New("canonical JSON: nested too deeply")
	}
	switch dec.PeekKind() {
	case '0':
		v, err := dec.ReadValue()
		if err != nil {
			return nil, err
		}
		return append(out, v...), nil
	case '"':
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, err
		}
		return appendCanonicalString(out, tok.String()), nil
	case '[':
		if _, err := dec.ReadToken(); err != nil {
			return nil, err
		}
		out = append(out, '[')
		for i := 0; dec.PeekKind() != ']'; i++ {
			if i > 0 {
				out = append(out, ',')
			}
			var err error
			if out, err = appendLegacyCanonical(out, dec, depth+1); err != nil {
				return nil, err
			}
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, err
		}
		return append(out, ']'), nil
	case '{':
		if _, err := dec.ReadToken(); err != nil {
			return nil, err
		}
		type member struct {
			name  string
			value []byte
		}
		var members []member
		for dec.PeekKind() != '}' {
			tok, err := dec.ReadToken()
			if err != nil {
				return nil, err
			}
			name := tok.String() // a token is valid only until the next read
			v, err := appendLegacyCanonical(nil, dec, depth+1)
			if err != nil {
				return nil, err
			}
			members = append(members, member{name, v})
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, err
		}
		// Code point order is UTF-8 byte order.
		slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.name, b.name) })
		out = append(out, '{')
		for i, m := range members {
			if i > 0 {
				out = append(out, ',')
			}
			out = appendCanonicalString(out, m.name)
			out = append(out, ':')
			out = append(out, m.value...)
		}
		return append(out, '}'), nil
	default: // null, true, false, or an error
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, err
		}
		switch tok.Kind() {
		case 'n', 't', 'f':
			return append(out, tok.String()...), nil
		}
		return nil, fmt.Errorf("canonical JSON: unexpected %v", tok.Kind())
	}
}

// appendCanonicalString writes s as canonical JSON does: UTF-8 as is,
// escaping only '"', '\\' and control characters (the short forms where
// JSON has them, else \u00xx in lower case).
func appendCanonicalString(out []byte, s string) []byte {
	const hex = "0123456789abcdef"
	out = append(out, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			_, n := utf8.DecodeRuneInString(s[i:])
			out = append(out, s[i:i+n]...)
			i += n
			continue
		}
		switch c {
		case '"', '\\':
			out = append(out, '\\', c)
		case '\b':
			out = append(out, '\\', 'b')
		case '\f':
			out = append(out, '\\', 'f')
		case '\n':
			out = append(out, '\\', 'n')
		case '\r':
			out = append(out, '\\', 'r')
		case '\t':
			out = append(out, '\\', 't')
		default:
			if c < 0x20 {
				out = append(out, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				out = append(out, c)
			}
		}
		i++
	}
	return append(out, '"')
}
