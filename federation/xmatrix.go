package federation

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"edge/edge/config"
)

// XMatrix is one X-Matrix Authorization header ("Request Authentication").
type XMatrix struct {
	Origin string
	// Destination is empty when the sender omitted it (servers before v1.3).
	Destination string
	Key         string // key ID, "ed25519:<version>"
	Sig         string // unpadded base64
}

// String formats the header the way the spec asks senders to: one space
// after the scheme, lower-case names, quoted values, no spaces at commas.
func (x XMatrix) String() string {
	return "X-Matrix origin=" + quoteParam(x.Origin) + ",destination=" + quoteParam(x.Destination) +
		",key=" + quoteParam(x.Key) + ",sig=" + quoteParam(x.Sig)
}

func quoteParam(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(v) + `"`
}

// isTchar reports whether b is a token character (RFC 9110 section 5.6.2).
func isTchar(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// ParseXMatrix parses an Authorization header of scheme X-Matrix (RFC 9110
// section 11.4 as the spec profiles it): the scheme (any case), one or more
// spaces, then comma-separated name=value pairs with optional spaces and
// tabs around the commas. Names are case-insensitive; values are tokens
// or quoted strings with backslash escapes. As the spec asks of
// recipients, unquoted values may contain colons (and, as Synapse accepts,
// any visible character but a comma or quote). Unknown parameters are
// ignored; a repeated one is an error. origin, key and sig are required.
func ParseXMatrix(header string) (XMatrix, error) {
	bad := func(format string, a ...any) (XMatrix, error) {
		return XMatrix{}, fmt.Errorf("%w: X-Matrix header: %s", ErrUnauthorized, fmt.Sprintf(format, a...))
	}
	scheme, rest, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "X-Matrix") {
		return bad("scheme is not X-Matrix")
	}
	params := map[string]string{}
	i := 0
	ows := func() {
		for i < len(rest) && (rest[i] == ' ' || rest[i] == '\t') {
			i++
		}
	}
	for {
		ows()
		if i == len(rest) {
			break
		}
		if rest[i] == ',' { // an empty list element
			i++
			continue
		}
		start := i
		for i < len(rest) && isTchar(rest[i]) {
			i++
		}
		if i == start {
			return bad("expected a parameter name at %q", rest[start:])
		}
		name := strings.ToLower(rest[start:i])
		ows()
		if i == len(rest) || rest[i] != '=' {
			return bad("parameter %q has no value", name)
		}
		i++
		ows()
		var value strings.Builder
		if i < len(rest) && rest[i] == '"' {
			i++
			closed := false
			for i < len(rest) {
				c := rest[i]
				if c == '\\' && i+1 < len(rest) {
					value.WriteByte(rest[i+1])
					i += 2
					continue
				}
				i++
				if c == '"' {
					closed = true
					break
				}
				value.WriteByte(c)
			}
			if !closed {
				return bad("unterminated quoted value of %q", name)
			}
		} else {
			start := i
			for i < len(rest) && rest[i] > ' ' && rest[i] < 0x7f && rest[i] != ',' && rest[i] != '"' {
				i++
			}
			if i == start {
				return bad("parameter %q has an empty value", name)
			}
			value.WriteString(rest[start:i])
		}
		if _, dup := params[name]; dup {
			return bad("parameter %q given twice", name)
		}
		params[name] = value.String()
		ows()
		if i < len(rest) {
			if rest[i] != ',' {
				return bad("expected a comma at %q", rest[i:])
			}
			i++
		}
	}
	x := XMatrix{Origin: params["origin"], Destination: params["destination"], Key: params["key"], Sig: params["sig"]}
	switch {
	case x.Origin == "":
		return bad("origin is missing")
	case x.Key == "":
		return bad("key is missing")
	case x.Sig == "":
		return bad("sig is missing")
	}
	if err := config.ValidateServerName(x.Origin); err != nil {
		return bad("origin: %v", err)
	}
	if _, ok := params["destination"]; ok {
		if err := config.ValidateServerName(x.Destination); err != nil || x.Destination == "" {
			return bad("destination %q is not a server name", x.Destination)
		}
	}
	return x, nil
}

// requestJSON is the object an X-Matrix signature covers (step 1 of
// "Request Authentication"), in canonical form. content is the raw body,
// absent when empty.
func requestJSON(method, uri, origin, destination string, content []byte) ([]byte, error) {
	m := map[string]any{"method": method, "uri": uri, "origin": origin, "destination": destination}
	if len(bytes.TrimSpace(content)) > 0 {
		m["content"] = json.RawMessage(content)
	}
	return canonicalOf(m)
}

// signRequest returns the Authorization header for a request.
func signRequest(origin, destination string, key config.SigningKey, method, uri string, content []byte) (string, error) {
	msg, err := requestJSON(method, uri, origin, destination, content)
	if err != nil {
		return "", fmt.Errorf("signing %s %s: body is not JSON: %w", method, uri, err)
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(key.Priv, msg))
	return XMatrix{Origin: origin, Destination: destination, Key: key.ID, Sig: sig}.String(), nil
}

// authenticate verifies an inbound request's X-Matrix header(s) against
// the exact request: method, request target as sent, and raw body. It
// returns the origin and the body, which it has read (within the limit).
// Every X-Matrix header present must verify and name the same origin.
func (s *Server) authenticate(r *http.Request) (string, []byte, error) {
	var headers []XMatrix
	for _, h := range r.Header.Values("Authorization") {
		x, err := ParseXMatrix(h)
		if err != nil {
			return "", nil, err
		}
		headers = append(headers, x)
	}
	if len(headers) == 0 {
		return "", nil, fmt.Errorf("%w: no X-Matrix Authorization header", ErrUnauthorized)
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, s.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", nil, err
		}
		return "", nil, errNotJSON("could not read the body")
	}
	if len(bytes.TrimSpace(body)) > 0 && !json.Valid(body) {
		return "", nil, errNotJSON("body is not JSON")
	}
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		uri = r.URL.RequestURI() // absolute-form target
	}
	origin := headers[0].Origin
	for _, x := range headers {
		if x.Origin != origin {
			return "", nil, fmt.Errorf("%w: X-Matrix headers name different origins", ErrUnauthorized)
		}
		dest := x.Destination
		if dest == "" {
			dest = s.name // older senders signed with it but did not send it
		} else if dest != s.name {
			return "", nil, fmt.Errorf("%w: request is for %s, not this server", ErrUnauthorized, dest)
		}
		msg, err := requestJSON(r.Method, uri, origin, dest, body)
		if err != nil {
			return "", nil, errNotJSON("body is not JSON")
		}
		pub, err := s.Keyring.VerifyKey(r.Context(), origin, x.Key, s.now())
		if err != nil {
			return "", nil, fmt.Errorf("%w: key %s of %s: %w", ErrUnauthorized, x.Key, origin, err)
		}
		if !verifyCanonical(msg, x.Sig, pub) {
			return "", nil, fmt.Errorf("%w: signature of %s with %s does not verify", ErrUnauthorized, origin, x.Key)
		}
	}
	return origin, body, nil
}

type originKey struct{}
type bodyKey struct{}

// Origin returns the authenticated origin server of a request that went
// through Authenticate ("" otherwise).
func Origin(ctx context.Context) string {
	o, _ := ctx.Value(originKey{}).(string)
	return o
}

// Authenticate is the X-Matrix middleware: requests that fail
// authentication get 401 M_UNAUTHORIZED (or 400/413 for bodies that are
// not JSON or too large); the rest reach next with Origin set and the
// body, already read, available again as r.Body. A request from a server
// also wakes our queue to it: it is evidently up.
func (s *Server) Authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, body, err := s.authenticate(r)
		if err != nil {
			s.log.DebugContext(r.Context(), "federation request refused", "method", r.Method, "path", r.URL.Path, "err", err)
			writeError(w, err)
			return
		}
		if s.Queue != nil {
			s.Queue.Wake(origin)
		}
		ctx := context.WithValue(context.WithValue(r.Context(), originKey{}, origin), bodyKey{}, body)
		r = r.WithContext(ctx)
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}
