package config

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Federation configures the server-server API: signing-key validity,
// trusted notaries, the outbound client and the transaction queues.
type Federation struct {
	// AllowPrivateAddresses lets outbound federation reach loopback and
	// private networks (tests, LANs). Off by default: a remote server name
	// must not turn this node into a proxy into its own network.
	AllowPrivateAddresses bool `yaml:"allow_private_addresses"`

	// KeyValidity is how far ahead of now the valid_until_ts of our
	// /_matrix/key/v2/server response lies (default 7 days; at least 1h,
	// since the spec asks origins not to publish shorter lifetimes).
	KeyValidity time.Duration `yaml:"key_validity"`
	// OldSigningKeysPath is the file of retired keys in Synapse's
	// old_signing_keys line format ("ed25519 <version> <public key> <expired_ts>"),
	// served as old_verify_keys. Empty means the signing key path plus ".old".
	// `edge keys rotate` appends to it.
	OldSigningKeysPath string `yaml:"old_signing_keys_path"`
	// TrustedKeyServers are the notaries asked for a server's keys when the
	// server cannot be asked directly, each with the keys its answers must
	// be signed with. Default: matrix.org, as Synapse ships. An empty list
	// switches notaries off.
	TrustedKeyServers []TrustedKeyServer `yaml:"trusted_key_servers"`

	// Nameservers are the DNS servers ("ip:port") server discovery asks
	// for SRV and A/AAAA records. Empty: those of /etc/resolv.conf.
	Nameservers []string `yaml:"nameservers"`

	// TrustCAFile is a PEM file of extra CA certificates the federation
	// client trusts besides the system roots (a LAN or test CA).
	TrustCAFile string `yaml:"trust_ca_file"`
	// RequestTimeout bounds one outbound federation request (default 60s).
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// MaxRequestBytes caps inbound federation request bodies (default 16 MiB:
	// a transaction carries up to 50 PDUs of 64 KiB plus 100 EDUs).
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// MaxResponseBytes caps outbound federation response bodies (default
	// 64 MiB: /state of a large room is big).
	MaxResponseBytes int64 `yaml:"max_response_bytes"`
	// KeyCacheSize is the number of remote servers whose keys are kept in
	// memory (default 1024); all of them are also kept in the database.
	KeyCacheSize int `yaml:"key_cache_size"`

	// QueueLimit bounds the items (PDUs and EDUs) queued for one
	// destination (default 2000). Beyond it the oldest are dropped: after a
	// long outage the peer gets the latest events and pulls the gap with
	// get_missing_events instead of an unbounded replay.
	QueueLimit int `yaml:"queue_limit"`
	// RetryMinInterval is the first wait after a failed transaction
	// (default 10s); it doubles, with jitter, per failure.
	RetryMinInterval time.Duration `yaml:"retry_min_interval"`
	// RetryMaxInterval caps the wait between attempts (default 24h). A
	// destination that sends us anything is retried at once.
	RetryMaxInterval time.Duration `yaml:"retry_max_interval"`

	// Presence sends and accepts m.presence EDUs (default true). Presence is
	// the chattiest EDU; switching it off keeps it local to this server.
	Presence bool `yaml:"presence"`

	// FasterJoins asks resident servers for the room state without its
	// members when joining (MSC3706 partial-state joins, default true): the
	// room opens at once and the members arrive in the background. Off:
	// every join waits for the full state.
	FasterJoins bool `yaml:"faster_joins"`

	// MaxJoinEvents bounds the state and auth chain events a join takes
	// (default 0: roomfed.DefaultMaxJoinEvents, which keeps the joiner
	// under ~1 GiB): a join over it is refused with
	// M_RESOURCE_LIMIT_EXCEEDED.
	MaxJoinEvents int `yaml:"max_join_events"`
}

// TrustedKeyServer is one notary: its server name and the verify keys
// (key ID → unpadded base64 ed25519 public key) its responses must carry
// a signature of.
type TrustedKeyServer struct {
	ServerName string            `yaml:"server_name"`
	VerifyKeys map[string]string `yaml:"verify_keys"`
}

// DefaultFederation is the federation section `edge init` writes.
func DefaultFederation() Federation {
	return Federation{
		KeyValidity: 7 * 24 * time.Hour,
		TrustedKeyServers: []TrustedKeyServer{{
			ServerName: "matrix.org",
			// matrix.org's published notary key, as in Synapse's default config.
			VerifyKeys: map[string]string{"ed25519:auto": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"},
		}},
		RequestTimeout:   60 * time.Second,
		MaxRequestBytes:  16 << 20,
		MaxResponseBytes: 64 << 20,
		KeyCacheSize:     1024,
		QueueLimit:       2000,
		RetryMinInterval: 10 * time.Second,
		RetryMaxInterval: 24 * time.Hour,
		Presence:         true,
		FasterJoins:      true,
	}
}

// OldKeysPath is where retired signing keys live (see
// Federation.OldSigningKeysPath), resolved against the config directory.
func (c *Config) OldKeysPath() string {
	if c.Federation.OldSigningKeysPath != "" {
		return c.Path(c.Federation.OldSigningKeysPath)
	}
	return c.Path(c.SigningKeyPath) + ".old"
}

func (f *Federation) validate() error {
	field := func(name, reason string) error { return &FieldError{"federation." + name, reason} }
	if f.KeyValidity < time.Hour {
		return field("key_validity", "must be at least 1h")
	}
	for i, ts := range f.TrustedKeyServers {
		name := fmt.Sprintf("trusted_key_servers[%d]", i)
		if err := ValidateServerName(ts.ServerName); err != nil || ts.ServerName == "" {
			return field(name+".server_name", fmt.Sprintf("%q is not a server name", ts.ServerName))
		}
		if len(ts.VerifyKeys) == 0 {
			return field(name+".verify_keys", "needs at least one key: a notary's answers are only trusted with its signature")
		}
		for id, key := range ts.VerifyKeys {
			if !strings.HasPrefix(id, "ed25519:") || len(id) == len("ed25519:") {
				return field(name+".verify_keys", fmt.Sprintf("%q is not an ed25519 key ID (ed25519:<version>)", id))
			}
			pub, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(key, "="))
			if err != nil || len(pub) != ed25519.PublicKeySize {
				return field(name+".verify_keys", fmt.Sprintf("%s is not 32 bytes of base64", id))
			}
		}
	}
	for i, ns := range f.Nameservers {
		if _, err := netip.ParseAddrPort(ns); err != nil {
			return field(fmt.Sprintf("nameservers[%d]", i), fmt.Sprintf("%q is not ip:port (e.g. 192.168.1.1:53)", ns))
		}
	}
	switch {
	case f.RequestTimeout <= 0:
		return field("request_timeout", "must be positive")
	case f.MaxRequestBytes < 64<<10:
		return field("max_request_bytes", "must be at least 65536")
	case f.MaxResponseBytes < 64<<10:
		return field("max_response_bytes", "must be at least 65536")
	case f.KeyCacheSize < 1:
		return field("key_cache_size", "must be at least 1")
	case f.QueueLimit < 1:
		return field("queue_limit", "must be at least 1")
	case f.RetryMinInterval <= 0:
		return field("retry_min_interval", "must be positive")
	case f.RetryMaxInterval < f.RetryMinInterval:
		return field("retry_max_interval", "must not be below retry_min_interval")
	case f.MaxJoinEvents < 0:
		return field("max_join_events", "must not be negative")
	}
	return nil
}
