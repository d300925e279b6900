package status

import (
	"time"

	"edge/wellknown"
)

// Report is everything `edge status SERVER` found out. FederationOK is the
// verdict: discovery worked, every address passed every check, and no
// notary disagrees about the server's keys.
type Report struct {
	ServerName   string    `json:"server_name"`
	CheckedAt    time.Time `json:"checked_at"`
	FederationOK bool      `json:"federation_ok"`

	WellKnown  WellKnown         `json:"well_known"`
	DNS        DNS               `json:"dns"`
	Resolution *wellknown.Report `json:"resolution"`
	// Host, TLSServerName: what requests carry after discovery.
	Host          string `json:"host,omitempty"`
	TLSServerName string `json:"tls_server_name,omitempty"`

	Connections []Connection `json:"connections"`
	// Version is the first /_matrix/federation/v1/version answer.
	Version *Version `json:"version,omitempty"`

	ClientWellKnown ClientWellKnown `json:"client_well_known"`
	Notaries        []NotaryCheck   `json:"notaries,omitempty"`
	// LocalView is the local node's outbound queue to the server, when
	// Options.AdminURL named its admin listener.
	LocalView *LocalView `json:"local_view,omitempty"`

	// Failures are why FederationOK is false; Warnings do not block it.
	Failures []Finding `json:"failures,omitempty"`
	Warnings []Finding `json:"warnings,omitempty"`
}

// Finding is one failed check or warning, with the likely fix.
type Finding struct {
	Check  string `json:"check"`
	Addr   string `json:"addr,omitempty"`
	Reason string `json:"reason"`
	Fix    string `json:"fix,omitempty"`
}

// WellKnown is the GET https://<hostname>/.well-known/matrix/server result.
type WellKnown struct {
	URL    string `json:"url,omitempty"`
	Found  bool   `json:"found"`
	Status int    `json:"status,omitempty"`
	// MServer is the delegated server name, when Found.
	MServer string `json:"m_server,omitempty"`
	// CacheExpires is when a resolver would fetch it again (errors are
	// cached too).
	CacheExpires time.Time `json:"cache_expires,omitzero"`
	Error        string    `json:"error,omitempty"`
	// Skipped says why no fetch was made (IP literal, explicit port).
	Skipped string `json:"skipped,omitempty"`
}

// DNS is what the name servers say about the host federation goes to.
type DNS struct {
	Nameservers []string `json:"nameservers"`
	// Host is the hostname SRV records were asked for: the server's, or the
	// delegated one. Empty when the spec asks for no SRV lookup.
	Host string   `json:"host,omitempty"`
	SRV  []SRVSet `json:"srv,omitempty"`
	// CNAMEs are every CNAME met on the way ("name → target").
	CNAMEs []string `json:"cnames,omitempty"`
	// Hosts are the hostnames looked up and their addresses.
	Hosts []HostAddrs `json:"hosts,omitempty"`
	// Addrs are the endpoints federation would connect to, in order.
	Addrs []string `json:"addrs"`
}

// SRVSet is the answer for one SRV name.
type SRVSet struct {
	Name       string                `json:"name"`
	Deprecated bool                  `json:"deprecated,omitempty"`
	Records    []wellknown.SRVRecord `json:"records,omitempty"`
	Error      string                `json:"error,omitempty"`
}

// HostAddrs is one hostname and its A/AAAA addresses.
type HostAddrs struct {
	Host  string   `json:"host"`
	Addrs []string `json:"addrs,omitempty"`
	Error string   `json:"error,omitempty"`
}

// Connection is one address: TLS, certificates, keys, version and checks.
type Connection struct {
	Addr   string `json:"addr"`
	Target string `json:"target,omitempty"`
	Error  string `json:"error,omitempty"`

	TLSVersion   string        `json:"tls_version,omitempty"`
	CipherSuite  string        `json:"cipher_suite,omitempty"`
	ALPN         string        `json:"alpn,omitempty"`
	Certificates []Certificate `json:"certificates,omitempty"`

	Checks Checks `json:"checks"`
	// Keys is the /_matrix/key/v2/server response as served.
	Keys    *KeyResponse `json:"keys,omitempty"`
	Version *Version     `json:"version,omitempty"`
	// ClockSkewSeconds is the peer's Date header minus our clock.
	ClockSkewSeconds *float64 `json:"clock_skew_seconds,omitempty"`
	// HandshakeMS is the TCP connect plus TLS handshake time; KeysMS the
	// round trip of GET /_matrix/key/v2/server on the open connection.
	HandshakeMS int64 `json:"handshake_ms"`
	KeysMS      int64 `json:"keys_ms,omitempty"`
	// HTTP2 is whether the server chose h2 by ALPN.
	HTTP2 bool `json:"http2"`
	// HTTP3 is the h3 check where Alt-Svc offers it: "ok (addr)",
	// "failed (addr): …", or "not advertised (…)".
	HTTP3 string `json:"http3"`
	// AltSvc is the Alt-Svc header the server sent (h3 advertisement).
	AltSvc string `json:"alt_svc,omitempty"`
}

// Certificate is one certificate of the chain the peer sent, leaf first.
type Certificate struct {
	Subject           string    `json:"subject"`
	Issuer            string    `json:"issuer"`
	SHA256Fingerprint string    `json:"sha256_fingerprint"`
	DNSNames          []string  `json:"dns_names,omitempty"`
	IPAddresses       []string  `json:"ip_addresses,omitempty"`
	NotBefore         time.Time `json:"not_before"`
	NotAfter          time.Time `json:"not_after"`
	DaysLeft          int       `json:"days_left"`
}

// Checks are the Federation Tester's checks for one address, plus
// MatchingKeyServerName (the key response names the server asked for).
// MatchingServerName here is about the certificate: valid for the TLS
// server name (the server name, or the delegated name).
type Checks struct {
	AllChecksOK           bool                     `json:"all_checks_ok"`
	MatchingServerName    bool                     `json:"matching_server_name"`
	FutureValidUntilTS    bool                     `json:"future_valid_until_ts"`
	HasEd25519Key         bool                     `json:"has_ed25519_key"`
	AllEd25519ChecksOK    bool                     `json:"all_ed25519_checks_ok"`
	Ed25519Checks         map[string]Ed25519Checks `json:"ed25519_checks"`
	ValidCertificates     bool                     `json:"valid_certificates"`
	MatchingKeyServerName bool                     `json:"matching_key_server_name"`
	// Failed lists the checks above that are false, with reasons.
	Failed []Finding `json:"failed,omitempty"`
}

// Ed25519Checks are the checks of one verify key.
type Ed25519Checks struct {
	ValidEd25519      bool `json:"valid_ed25519"`
	MatchingSignature bool `json:"matching_signature"`
}

// KeyResponse is the parts of a key response the report shows.
type KeyResponse struct {
	ServerName    string            `json:"server_name"`
	ValidUntilTS  int64             `json:"valid_until_ts"`
	VerifyKeys    map[string]string `json:"verify_keys"`
	OldVerifyKeys map[string]string `json:"old_verify_keys,omitempty"`
}

// Version is /_matrix/federation/v1/version.
type Version struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

// ClientWellKnown is GET https://<hostname>/.well-known/matrix/client and a
// probe of the base_url it names.
type ClientWellKnown struct {
	URL    string `json:"url"`
	Found  bool   `json:"found"`
	Status int    `json:"status,omitempty"`
	// CORS is the Access-Control-Allow-Origin header (web clients need "*").
	CORS    string `json:"cors,omitempty"`
	BaseURL string `json:"base_url,omitempty"`
	// Versions are what base_url/_matrix/client/versions lists.
	Versions  []string `json:"versions,omitempty"`
	Reachable bool     `json:"reachable"`
	Error     string   `json:"error,omitempty"`
}

// NotaryCheck compares a notary's view of the server's keys with the keys
// the server serves itself.
type NotaryCheck struct {
	Notary string `json:"notary"`
	// SignatureChecked: the notary's answer carried a valid signature by
	// one of its configured keys (false when no keys were configured).
	SignatureChecked bool              `json:"signature_checked"`
	Keys             map[string]string `json:"keys,omitempty"`
	Match            bool              `json:"match"`
	// Mismatch lists the key IDs that differ or are missing on one side.
	Mismatch []string `json:"mismatch,omitempty"`
	Error    string   `json:"error,omitempty"`
}

// LocalView is what the local node's admin listener (GET
// /_edge/admin/status with the admin token, or metrics_listen's GET
// /federation/queues) says about its traffic to the server. The queue
// keeps no latency figures; the connections' HandshakeMS and KeysMS are
// this machine's view of the round trip.
type LocalView struct {
	// Known is false when the node has never sent to the server.
	Known            bool      `json:"known"`
	Pending          int       `json:"pending"`
	InFlight         bool      `json:"in_flight"`
	Failures         int       `json:"failures"`
	RetryAt          time.Time `json:"retry_at,omitzero"`
	LastError        string    `json:"last_error,omitempty"`
	LastSuccess      time.Time `json:"last_success,omitzero"`
	SentTransactions uint64    `json:"sent_transactions"`
	Dropped          uint64    `json:"dropped"`
	// LastLatencyMS is how long the node's last accepted transaction to
	// the server took.
	LastLatencyMS float64 `json:"last_latency_ms,omitempty"`
	Error         string  `json:"error,omitempty"`
}
