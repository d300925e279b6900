package config

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// yamlList renders strings as a YAML flow sequence.
func yamlList(items []string) string {
	q := make([]string, len(items))
	for i, it := range items {
		q[i] = strconv.Quote(it)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// federationSection renders the federation settings with comments.
func federationSection(f Federation) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# Server-server API.
federation:
  # Let outbound federation reach loopback/private addresses (LAN, tests).
  allow_private_addresses: %t
  # valid_until_ts of our published signing keys.
  key_validity: %s
  # Retired keys (Synapse's old_signing_keys format); empty: <signing key>.old
  old_signing_keys_path: %q
  # Notaries asked for a server's keys when it cannot be asked directly.
  trusted_key_servers:`, f.AllowPrivateAddresses, f.KeyValidity, f.OldSigningKeysPath)
	if len(f.TrustedKeyServers) == 0 {
		b.WriteString(" []\n")
	} else {
		b.WriteString("\n")
		for _, ks := range f.TrustedKeyServers {
			fmt.Fprintf(&b, "    - server_name: %q\n      verify_keys:\n", ks.ServerName)
			ids := make([]string, 0, len(ks.VerifyKeys))
			for id := range ks.VerifyKeys {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			for _, id := range ids {
				fmt.Fprintf(&b, "        %q: %q\n", id, ks.VerifyKeys[id])
			}
		}
	}
	fmt.Fprintf(&b, `  # DNS servers ("ip:port") for finding other servers; empty: /etc/resolv.conf.
  nameservers: %s
  # Extra CA certificates (PEM) trusted for outbound federation.
  trust_ca_file: %q
  request_timeout: %s
  max_request_bytes: %d
  max_response_bytes: %d
  key_cache_size: %d
  # Per-destination queue bound and retry backoff.
  queue_limit: %d
  retry_min_interval: %s
  retry_max_interval: %s
  # Share presence (online/away) with other servers.
  presence: %t
  # Join rooms without waiting for their members (partial-state joins);
  # the full state is fetched in the background.
  faster_joins: %t
  # Most state and auth chain events a join takes (0: the default,
  # 200000, which keeps a join under ~1 GiB); larger rooms are refused.
  max_join_events: %d
`, yamlList(f.Nameservers), f.TrustCAFile, f.RequestTimeout, f.MaxRequestBytes, f.MaxResponseBytes, f.KeyCacheSize,
		f.QueueLimit, f.RetryMinInterval, f.RetryMaxInterval, f.Presence, f.FasterJoins, f.MaxJoinEvents)
	return b.String()
}

// WriteFile writes a commented edge.yaml for c; it refuses to overwrite.
func WriteFile(path string, c *Config) error {
	text := fmt.Sprintf(`# edge.yaml: configuration of an edge Matrix homeserver.
# Relative paths are resolved against this file's directory.

# The name in your users' IDs (@alice:%[1]s). It cannot change later.
server_name: %[1]q

# ed25519 signing key, Synapse's format ("ed25519 <version> <seed>"): a
# Synapse signing key can be copied here to keep the server's identity.
signing_key_path: %[2]q
# Write a fresh key there at start when the file is missing (a container's
# first start); an existing key is always kept.
signing_key_generate: %[36]t

# The database: one bbolt file.
database_path: %[3]q

# Client and federation API listener (plain HTTP).
listen: %[4]q

# Federation over TLS: a second listener serving the same APIs with the
# node's certificate (see tls below), for other servers to connect to.
# Empty: none, or "[::]:8448" when TLS is on.
federation_listen: %[24]q
# PEM certificate (chain) and key of tls.mode files; replaced files are
# picked up without a restart.
tls_cert_file: %[25]q
tls_key_file: %[26]q

# Admin listener: GET /metrics (Prometheus text) and GET /federation/queues
# (JSON). Not authenticated: keep it on loopback. Empty: off.
metrics_listen: %[27]q

# Admin listener of `+"`edge status`"+` (no SERVER): the node's health as JSON,
# authenticated with the token the node writes to admin.token beside this
# file at start. Empty: off.
admin_listen: %[34]q

# Advertised in /.well-known/matrix/client when set (e.g. https://matrix.example.org).
public_base_url: %[5]q

# Delegation published at /.well-known/matrix/server ("host:port"), for a
# server name whose federation is served elsewhere; empty publishes none.
well_known_server: %[23]q

registration:
  # Anyone may register (like the classic guide's enable_registration).
  enabled: %[6]t
  # Registration tokens (MSC3231): when set, registering needs one of them.
  tokens: %[19]s
  # Secret for /_synapse/admin/v1/register (and `+"`edge register`"+` on a
  # running node); empty disables it.
  shared_secret: %[20]q
  guest_access: %[21]t
  min_password_length: %[7]d
  # Lifetime of access tokens issued with a refresh token (0s: 5m).
  # Tokens of clients that ask for no refresh token never expire.
  refreshable_access_token_lifetime: %[37]s

# Token buckets: per client IP for login and register, per user for sends.
# A rate of 0 switches that limit off.
rate_limits:
  login_per_second: %[8]g
  login_burst: %[9]d
  register_per_second: %[10]g
  register_burst: %[11]d
  send_per_second: %[12]g
  send_burst: %[13]d

limits:
  max_request_bytes: %[14]d
  # Memory for rooms: materialised states (snapshots, and their entries
  # together), parsed events, the auth chains and results of state
  # resolution. Entry budgets bound memory however large a room is.
  state_cache_size: %[15]d
  state_cache_entries: %[31]d
  event_cache_size: %[16]d
  auth_chain_cache_entries: %[32]d
  resolution_cache_size: %[33]d

rooms:
  # Version for new rooms when the client asks for none (1-12).
  default_version: %[17]q

log:
  level: %[18]s

%[22]s
%[28]s
%[29]s
%[30]s
%[35]s
%[38]s`, c.ServerName, c.SigningKeyPath, c.DatabasePath, c.Listen, c.PublicBaseURL,
		c.Registration.Enabled, c.Registration.MinPasswordLength,
		c.RateLimits.LoginPerSecond, c.RateLimits.LoginBurst,
		c.RateLimits.RegisterPerSecond, c.RateLimits.RegisterBurst,
		c.RateLimits.SendPerSecond, c.RateLimits.SendBurst,
		c.Limits.MaxRequestBytes, c.Limits.StateCacheSize, c.Limits.EventCacheSize,
		c.Rooms.DefaultVersion, c.Log.Level,
		yamlList(c.Registration.Tokens), c.Registration.SharedSecret, c.Registration.GuestAccess,
		federationSection(c.Federation), c.WellKnownServer,
		c.FederationListen, c.TLSCertFile, c.TLSKeyFile, c.MetricsListen, mediaSection(c.Media),
		voipSection(c.VoIP, c.UserDirectory), pushSection(c.Push),
		c.Limits.StateCacheEntries, c.Limits.AuthChainCacheEntries, c.Limits.ResolutionCacheSize, c.AdminListen, tlsSection(c.TLS), c.SigningKeyGenerate,
		c.Registration.RefreshableTokenLifetime.String(), appServiceSection(c))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// appServiceSection writes the application services and server notices.
func appServiceSection(c *Config) string {
	list := "" // (null, not [], so a written file reads back as it was)
	if len(c.AppServices) > 0 {
		list = yamlList(c.AppServices)
	}
	return fmt.Sprintf(`# Application service (bridge) registration files: paths or globs,
# relative to this file's directory.
appservices: %s

# Server notices (POST /_synapse/admin/v1/send_server_notice): messages
# from this system user in a room per user. Empty localpart: off.
server_notices:
  system_mxid_localpart: %q
  system_mxid_display_name: %q
  room_name: %q
`, list, c.ServerNotices.SystemMXIDLocalpart, c.ServerNotices.SystemMXIDDisplayName, c.ServerNotices.RoomName)
}
