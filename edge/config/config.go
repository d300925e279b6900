package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole of edge.yaml. Every field has a default (see Default),
// so a file only needs the fields an operator changes.
type Config struct {
	// ServerName is the Matrix server name: the part after the colon in user IDs.
	ServerName string `yaml:"server_name"`
	// SigningKeyPath is the ed25519 key file in Synapse's format; relative paths
	// are resolved against the config file's directory.
	SigningKeyPath string `yaml:"signing_key_path"`
	// SigningKeyGenerate writes a fresh key to SigningKeyPath at start when
	// the file is missing (a container's first start); an existing key is
	// kept. Off by default: a lost key file should stop the node, not
	// silently change its identity.
	SigningKeyGenerate bool `yaml:"signing_key_generate"`
	// DatabasePath is the bbolt file; relative to the config file's directory.
	DatabasePath string `yaml:"database_path"`
	// Listen is the address of the plain-HTTP listener: the client API,
	// and the federation API too (for a TLS-terminating proxy in front).
	Listen string `yaml:"listen"`
	// FederationListen is the address of a second listener, with the TLS
	// certificate of tls.mode, serving the same APIs: what other servers
	// connect to. Empty means none, or "[::]:8448" when TLS is on (see
	// FederationAddr).
	FederationListen string `yaml:"federation_listen"`
	// TLSCertFile and TLSKeyFile are the PEM certificate (chain) and key of
	// the federation listener, relative to the config file's directory.
	// Replaced files are picked up without a restart.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// MetricsListen is the address of an unauthenticated admin listener
	// (GET /metrics in the Prometheus text format, GET /federation/queues
	// as JSON). Empty: off. Keep it on loopback.
	MetricsListen string `yaml:"metrics_listen"`
	// AdminListen is the address of the admin listener `edge status` (no
	// SERVER) asks for the node's health (GET /_edge/admin/status). It is
	// authenticated with a token the node writes to admin.token beside the
	// config file at start. Empty: off. Default: DefaultAdminListen.
	AdminListen string `yaml:"admin_listen"`
	// PublicBaseURL is what /.well-known/matrix/client advertises; empty means
	// the well-known endpoint answers 404 and clients use the host they typed.
	PublicBaseURL string `yaml:"public_base_url"`
	// WellKnownServer is the m.server delegation /.well-known/matrix/server
	// publishes ("host:port", e.g. matrix.example.org:443); empty: none.
	WellKnownServer string `yaml:"well_known_server"`

	Registration  Registration  `yaml:"registration"`
	RateLimits    RateLimits    `yaml:"rate_limits"`
	Limits        Limits        `yaml:"limits"`
	Rooms         Rooms         `yaml:"rooms"`
	Federation    Federation    `yaml:"federation"`
	Media         Media         `yaml:"media"`
	VoIP          VoIP          `yaml:"voip"`
	Push          Push          `yaml:"push"`
	UserDirectory UserDirectory `yaml:"user_directory"`
	TLS           TLS           `yaml:"tls"`
	Log           Log           `yaml:"log"`
	// AppServices are application service registration files (paths or
	// globs, relative to this file's directory).
	AppServices   []string      `yaml:"appservices"`
	ServerNotices ServerNotices `yaml:"server_notices"`

	// Dir is the directory of the loaded file; relative paths resolve against it.
	Dir string `yaml:"-"`
}

// Registration controls who may create accounts.
type Registration struct {
	// Enabled opens POST /register to anyone (the classic guide's setting).
	Enabled bool `yaml:"enabled"`
	// Tokens, when non-empty, makes registration require one of these tokens
	// (m.login.registration_token, MSC3231) even when Enabled is false.
	Tokens []string `yaml:"tokens"`
	// SharedSecret enables the admin registration endpoint
	// (/_synapse/admin/v1/register) for operators and test suites.
	SharedSecret string `yaml:"shared_secret"`
	// GuestAccess allows kind=guest registration.
	GuestAccess bool `yaml:"guest_access"`
	// MinPasswordLength rejects shorter passwords with M_WEAK_PASSWORD.
	MinPasswordLength int `yaml:"min_password_length"`
	// RefreshableTokenLifetime is how long an access token lives when its
	// client asked for a refresh token (0: 5 minutes, as Synapse). Tokens
	// of clients that did not ask never expire.
	RefreshableTokenLifetime time.Duration `yaml:"refreshable_access_token_lifetime"`
}

// RateLimits are token buckets per client IP (login, register) or per user
// (send). A rate of 0 disables that limit.
type RateLimits struct {
	LoginPerSecond    float64 `yaml:"login_per_second"`
	LoginBurst        int     `yaml:"login_burst"`
	RegisterPerSecond float64 `yaml:"register_per_second"`
	RegisterBurst     int     `yaml:"register_burst"`
	SendPerSecond     float64 `yaml:"send_per_second"`
	SendBurst         int     `yaml:"send_burst"`
}

// Limits bound what one request may cost.
type Limits struct {
	// MaxRequestBytes caps client request bodies (media uploads excepted).
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// StateCacheSize is the number of materialised state snapshots kept in memory.
	StateCacheSize int `yaml:"state_cache_size"`
	// StateCacheEntries bounds the (state key → event) entries of those
	// snapshots together, so a 100k-member room cannot fill memory.
	StateCacheEntries int `yaml:"state_cache_entries"`
	// EventCacheSize is the number of parsed events kept in memory.
	EventCacheSize int `yaml:"event_cache_size"`
	// AuthChainCacheEntries bounds the event IDs of the auth chains kept
	// for state resolution.
	AuthChainCacheEntries int `yaml:"auth_chain_cache_entries"`
	// ResolutionCacheSize is the number of state-resolution results kept.
	ResolutionCacheSize int `yaml:"resolution_cache_size"`
}

// Rooms holds room defaults.
type Rooms struct {
	// DefaultVersion is used by createRoom when the client names none.
	DefaultVersion string `yaml:"default_version"`
}

// ServerNotices configures the admin API's server notices: messages from
// a system user in a per-user room. Empty localpart: off.
type ServerNotices struct {
	SystemMXIDLocalpart   string `yaml:"system_mxid_localpart"`
	SystemMXIDDisplayName string `yaml:"system_mxid_display_name"`
	RoomName              string `yaml:"room_name"`
}

// Log selects the log level: debug, info, warn or error.
type Log struct {
	Level string `yaml:"level"`
}

// Default returns the configuration `edge init` writes for serverName.
func Default(serverName string) *Config {
	return &Config{
		ServerName:     serverName,
		SigningKeyPath: "signing.key",
		DatabasePath:   "edge.db",
		Listen:         "[::]:8008",
		AdminListen:    DefaultAdminListen,
		Registration: Registration{
			Enabled:           true,
			MinPasswordLength: 8,
		},
		RateLimits: RateLimits{
			LoginPerSecond: 0.5, LoginBurst: 10,
			RegisterPerSecond: 0.2, RegisterBurst: 5,
			SendPerSecond: 20, SendBurst: 100,
		},
		Limits: Limits{
			MaxRequestBytes:       1 << 20,
			StateCacheSize:        256,
			StateCacheEntries:     1_000_000,
			EventCacheSize:        10_000,
			AuthChainCacheEntries: 1_000_000,
			ResolutionCacheSize:   4096,
		},
		Rooms:      Rooms{DefaultVersion: "12"},
		Federation: DefaultFederation(),
		Media:      DefaultMedia(),
		VoIP:       DefaultVoIP(),
		Log:        Log{Level: "info"},
		TLS:        DefaultTLS(),
	}
}

// ErrNoConfig is returned by Load when the file does not exist.
var ErrNoConfig = errors.New("config file not found")

// FieldError names the field that is wrong and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Load reads and validates the file at path. Fields missing from the file keep
// their defaults. Values may name environment variables, ${NAME} or
// ${NAME:-default} (see env.go); an unset one without a default is an error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (create one with `edge init --server-name NAME`)", ErrNoConfig, path)
	} else if err != nil {
		return nil, err
	}
	cfg := Default("")
	if err := decodeExpanded(data, cfg, os.LookupEnv); err != nil {
		return nil, fmt.Errorf("%s: %s", path, yamlMessage(data, err))
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	cfg.Dir = filepath.Dir(abs)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// yamlMessage rewrites yaml's "line N: …" into "field.path: …" so an
// operator sees which setting is wrong, not just where.
func yamlMessage(data []byte, err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return strings.TrimPrefix(err.Error(), "yaml: ")
	}
	var root yaml.Node
	paths := map[int]string{}
	if yaml.Unmarshal(data, &root) == nil {
		collectPaths(&root, "", paths)
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		var line int
		if _, scanErr := fmt.Sscanf(m, "line %d:", &line); scanErr == nil {
			if p, ok := paths[line]; ok {
				m = p + ":" + strings.SplitN(m, ":", 2)[1]
			}
		}
		msgs = append(msgs, m)
	}
	return strings.Join(msgs, "; ")
}

// collectPaths maps the line of every mapping value to its dotted key path.
func collectPaths(n *yaml.Node, prefix string, out map[int]string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			collectPaths(c, prefix, out)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if prefix != "" {
				key = prefix + "." + key
			}
			out[n.Content[i+1].Line] = key
			collectPaths(n.Content[i+1], key, out)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", prefix, i)
			out[c.Line] = p
			collectPaths(c, p, out)
		}
	}
}

// Validate checks every field and returns the first problem as a *FieldError.
func (c *Config) Validate() error {
	if c.ServerName == "" {
		return &FieldError{"server_name", "is required (e.g. example.org)"}
	}
	if err := ValidateServerName(c.ServerName); err != nil {
		return &FieldError{"server_name", err.Error()}
	}
	if c.SigningKeyPath == "" {
		return &FieldError{"signing_key_path", "is required"}
	}
	if c.DatabasePath == "" {
		return &FieldError{"database_path", "is required"}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return &FieldError{"listen", fmt.Sprintf("%q is not host:port", c.Listen)}
	}
	if err := c.validateListeners(); err != nil {
		return err
	}
	if err := c.validateTLS(); err != nil {
		return err
	}
	if c.WellKnownServer != "" {
		if err := ValidateServerName(c.WellKnownServer); err != nil {
			return &FieldError{"well_known_server", err.Error()}
		}
	}
	if c.Limits.MaxRequestBytes < 1024 {
		return &FieldError{"limits.max_request_bytes", "must be at least 1024"}
	}
	if c.Limits.StateCacheSize < 1 {
		return &FieldError{"limits.state_cache_size", "must be at least 1"}
	}
	if c.Limits.EventCacheSize < 1 {
		return &FieldError{"limits.event_cache_size", "must be at least 1"}
	}
	if c.Limits.StateCacheEntries < 1 {
		return &FieldError{"limits.state_cache_entries", "must be at least 1"}
	}
	if c.Limits.AuthChainCacheEntries < 1 {
		return &FieldError{"limits.auth_chain_cache_entries", "must be at least 1"}
	}
	if c.Limits.ResolutionCacheSize < 1 {
		return &FieldError{"limits.resolution_cache_size", "must be at least 1"}
	}
	if !knownRoomVersion(c.Rooms.DefaultVersion) {
		return &FieldError{"rooms.default_version", fmt.Sprintf("%q is not a stable room version (1-12)", c.Rooms.DefaultVersion)}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return &FieldError{"log.level", fmt.Sprintf("%q is not one of debug, info, warn, error", c.Log.Level)}
	}
	if err := c.Federation.validate(); err != nil {
		return err
	}
	if err := c.Media.validate(); err != nil {
		return err
	}
	if err := c.VoIP.validate(); err != nil {
		return err
	}
	if c.Registration.RefreshableTokenLifetime < 0 {
		return &FieldError{"registration.refreshable_access_token_lifetime", "must not be negative"}
	}
	if c.Registration.MinPasswordLength < 0 {
		return &FieldError{"registration.min_password_length", "must not be negative"}
	}
	for _, rl := range []struct {
		name  string
		rate  float64
		burst int
	}{
		{"rate_limits.login", c.RateLimits.LoginPerSecond, c.RateLimits.LoginBurst},
		{"rate_limits.register", c.RateLimits.RegisterPerSecond, c.RateLimits.RegisterBurst},
		{"rate_limits.send", c.RateLimits.SendPerSecond, c.RateLimits.SendBurst},
	} {
		if rl.rate < 0 || (rl.rate > 0 && rl.burst < 1) {
			return &FieldError{rl.name, "rate must be >= 0 and burst >= 1 when the rate is set"}
		}
	}
	return nil
}

// DefaultFederationListen is the federation listener's address when TLS
// is on (tls.mode, or the certificate files) and federation_listen is not.
const DefaultFederationListen = "[::]:8448"

// DefaultAdminListen is where the admin listener listens unless
// admin_listen says otherwise: loopback only.
const DefaultAdminListen = "127.0.0.1:8010"

// FederationAddr is the address of the TLS federation listener, or "" for
// none.
func (c *Config) FederationAddr() string {
	if c.FederationListen == "" && c.TLSMode() != TLSOff {
		return DefaultFederationListen
	}
	return c.FederationListen
}

func (c *Config) validateListeners() error {
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		if c.TLSCertFile == "" {
			return &FieldError{"tls_cert_file", "is required with tls_key_file"}
		}
		return &FieldError{"tls_key_file", "is required with tls_cert_file"}
	}
	if c.FederationListen != "" {
		if _, _, err := net.SplitHostPort(c.FederationListen); err != nil {
			return &FieldError{"federation_listen", fmt.Sprintf("%q is not host:port", c.FederationListen)}
		}
		if c.TLSMode() == TLSOff {
			return &FieldError{"federation_listen", "needs a certificate (tls.mode, or tls_cert_file and tls_key_file): other servers only speak TLS"}
		}
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return &FieldError{"metrics_listen", fmt.Sprintf("%q is not host:port", c.MetricsListen)}
		}
	}
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			return &FieldError{"admin_listen", fmt.Sprintf("%q is not host:port", c.AdminListen)}
		}
	}
	return nil
}

func knownRoomVersion(v string) bool {
	switch v {
	case "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12":
		return true
	}
	return false
}

// ValidateServerName checks the grammar of the spec's server name: a DNS name
// or IP literal with an optional port.
func ValidateServerName(name string) error {
	host := name
	if h, port, err := net.SplitHostPort(name); err == nil {
		host = h
		if port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
			return fmt.Errorf("%q has an invalid port", name)
		}
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		if net.ParseIP(host[1:len(host)-1]) == nil {
			return fmt.Errorf("%q is not a valid IPv6 literal", name)
		}
		return nil
	}
	if host == "" || len(host) > 255 {
		return fmt.Errorf("%q is not a valid host name", name)
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return fmt.Errorf("%q contains %q, which is not allowed in a server name", name, r)
		}
	}
	return nil
}

// Path resolves p against the config file's directory.
func (c *Config) Path(p string) string {
	if filepath.IsAbs(p) || c.Dir == "" {
		return p
	}
	return filepath.Join(c.Dir, p)
}

// RequestTimeout is the longest a client request (other than /sync) may run.
const RequestTimeout = 60 * time.Second
