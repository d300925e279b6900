package wellknown

import "errors"

// Sentinel errors. Callers test them with errors.Is; the returned errors wrap
// them with %w and add the name or address involved.
var (
	// ErrInvalidServerName: the name does not match the server name grammar
	// (appendices, "Server Name").
	ErrInvalidServerName = errors.New("wellknown: invalid server name")

	// ErrWellKnownFetch: GET /.well-known/matrix/server failed before a
	// response arrived (DNS, connect, TLS, timeout). Step 3 then falls
	// through to step 4.
	ErrWellKnownFetch = errors.New("wellknown: .well-known fetch failed")
	// ErrNoWellKnown: the server answered with a status other than 200.
	ErrNoWellKnown = errors.New("wellknown: no .well-known/matrix/server")
	// ErrInvalidWellKnown: a 200 response whose body is not a JSON object
	// with a valid m.server, or is too large.
	ErrInvalidWellKnown = errors.New("wellknown: invalid .well-known/matrix/server")
	// ErrWellKnownRedirect: a redirect was refused (too many, a loop, or
	// not https).
	ErrWellKnownRedirect = errors.New("wellknown: .well-known redirect refused")

	// ErrSRVLookup: an SRV query failed (timeout, SERVFAIL …), as opposed
	// to finding no record, which is not an error.
	ErrSRVLookup = errors.New("wellknown: SRV lookup failed")
	// ErrSRVNoService: the only SRV record has target ".", which RFC 2782
	// defines as "service decidedly not available".
	ErrSRVNoService = errors.New("wellknown: SRV record says service not available")
	// ErrDNSLookup: an A/AAAA (or CNAME) query failed.
	ErrDNSLookup = errors.New("wellknown: address lookup failed")
	// ErrNoAddress: the lookups succeeded but gave no address.
	ErrNoAddress = errors.New("wellknown: no address found")
	// ErrPrivateAddress: the only addresses found are loopback, private,
	// link-local, CGNAT … and Options.AllowPrivate is false.
	ErrPrivateAddress = errors.New("wellknown: refusing non-public address")
)
