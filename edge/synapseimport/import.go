// Package synapseimport turns a Synapse homeserver.yaml and its signing key
// into an edge.yaml, for `edge import-synapse`. It carries over what keeps
// the server's identity and behaviour (server_name, the signing key with
// its key ID, registration, the shared secret, listeners, media limits,
// trusted key servers) and lists everything else, one line per setting.
// Synapse's database (users, rooms, media) is not imported.
package synapseimport

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"edge/edge/config"
)

// Result is what Import wrote and what it left behind.
type Result struct {
	ConfigPath string
	KeyPath    string
	KeyID      string
	Config     *config.Config
	// NotCarried is one line per Synapse setting edge did not take over,
	// with why.
	NotCarried []string
}

// synapse is the part of homeserver.yaml that maps onto edge.
type synapse struct {
	ServerName                  string `yaml:"server_name"`
	SigningKeyPath              string `yaml:"signing_key_path"`
	PublicBaseURL               string `yaml:"public_baseurl"`
	ServeServerWellKnown        bool   `yaml:"serve_server_wellknown"`
	EnableRegistration          bool   `yaml:"enable_registration"`
	RegistrationWithoutVerif    bool   `yaml:"enable_registration_without_verification"`
	RegistrationSharedSecret    string `yaml:"registration_shared_secret"`
	RegistrationSharedSecretPth string `yaml:"registration_shared_secret_path"`
	AllowGuestAccess            bool   `yaml:"allow_guest_access"`
	MaxUploadSize               any    `yaml:"max_upload_size"`
	URLPreviewEnabled           bool   `yaml:"url_preview_enabled"`
	DefaultRoomVersion          any    `yaml:"default_room_version"`
	Listeners                   []struct {
		Port          int      `yaml:"port"`
		BindAddresses []string `yaml:"bind_addresses"`
		Type          string   `yaml:"type"`
		TLS           bool     `yaml:"tls"`
		XForwarded    bool     `yaml:"x_forwarded"`
		Resources     []struct {
			Names    []string `yaml:"names"`
			Compress bool     `yaml:"compress"`
		} `yaml:"resources"`
	} `yaml:"listeners"`
	TLSCertificatePath string `yaml:"tls_certificate_path"`
	TLSPrivateKeyPath  string `yaml:"tls_private_key_path"`
	TrustedKeyServers  []struct {
		ServerName string            `yaml:"server_name"`
		VerifyKeys map[string]string `yaml:"verify_keys"`
	} `yaml:"trusted_key_servers"`
	Database struct {
		Name string `yaml:"name"`
	} `yaml:"database"`
	TurnURIs         []string `yaml:"turn_uris"`
	TurnSharedSecret string   `yaml:"turn_shared_secret"`
	UserDirectory    struct {
		SearchAllUsers bool `yaml:"search_all_users"`
	} `yaml:"user_directory"`
}

// handled are the top-level keys Import maps (fully or with a note).
var handled = []string{
	"server_name", "signing_key_path", "public_baseurl", "serve_server_wellknown",
	"enable_registration", "enable_registration_without_verification",
	"registration_shared_secret", "registration_shared_secret_path", "allow_guest_access",
	"max_upload_size", "url_preview_enabled", "default_room_version", "listeners",
	"tls_certificate_path", "tls_private_key_path", "trusted_key_servers", "database",
	"turn_uris", "turn_shared_secret", "user_directory",
	// Silenced in Synapse's sample config to quiet its matrix.org warning; edge does not warn.
	"suppress_key_server_warning",
}

// why explains the settings edge has no counterpart for, by key.
var why = map[string]string{
	"log_config":                     "edge logs to stderr; set log.level in edge.yaml",
	"media_store_path":               "Synapse's media store is not imported; edge keeps its own media directory (media.path)",
	"report_stats":                   "edge reports no usage statistics",
	"macaroon_secret_key":            "edge has its own access tokens; Synapse sessions are not imported",
	"form_secret":                    "edge serves no HTML forms (consent, fallback auth)",
	"pid_file":                       "edge writes no pid file; use your service manager",
	"url_preview_ip_range_blacklist": "edge's URL previews refuse loopback and private addresses unless media.url_preview_allow_private is set",
	"url_preview_ip_range_whitelist": "edge's URL previews refuse loopback and private addresses unless media.url_preview_allow_private is set",
	"old_signing_keys":               "copy retired keys into edge's old keys file (federation.old_signing_keys_path) by hand",
	"registration_requires_token":    "Synapse's registration tokens live in its database: add them under registration.tokens",
	"email":                          "edge sends no email (no 3PID verification or password reset by mail)",
	"enable_metrics":                 "edge serves metrics on metrics_listen",
	"turn_user_lifetime":             "edge's voip.turn_user_lifetime takes a Go duration (1h); set it by hand",
	"app_service_config_files":       "edge does not support application services",
	"password_config":                "edge has its own password rules (registration.min_password_length)",
}

// Import reads the Synapse config at synapsePath and writes edge.yaml and
// signing.key into dir, refusing to overwrite either.
func Import(synapsePath, dir string) (*Result, error) {
	data, err := os.ReadFile(synapsePath)
	if err != nil {
		return nil, err
	}
	var syn synapse
	if err := yaml.Unmarshal(data, &syn); err != nil {
		return nil, fmt.Errorf("%s: %w", synapsePath, err)
	}
	var all map[string]any
	if err := yaml.Unmarshal(data, &all); err != nil {
		return nil, fmt.Errorf("%s: %w", synapsePath, err)
	}
	if syn.ServerName == "" {
		return nil, fmt.Errorf("%s: no server_name", synapsePath)
	}
	if err := config.ValidateServerName(syn.ServerName); err != nil {
		return nil, fmt.Errorf("%s: server_name: %w", synapsePath, err)
	}
	synDir, err := filepath.Abs(filepath.Dir(synapsePath))
	if err != nil {
		return nil, err
	}
	// Synapse resolves relative paths against its working directory, which
	// is usually the config's directory.
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(synDir, p)
	}
	res := &Result{ConfigPath: filepath.Join(dir, "edge.yaml")}
	note := func(format string, a ...any) { res.NotCarried = append(res.NotCarried, fmt.Sprintf(format, a...)) }

	if syn.SigningKeyPath == "" {
		return nil, fmt.Errorf("%s: no signing_key_path: without Synapse's key the server gets a new identity; use `edge init` instead", synapsePath)
	}
	keyPath := resolve(syn.SigningKeyPath)
	keyData, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("signing_key_path: %w", err)
	}
	keys, err := config.ReadSigningKeys(keyPath)
	if err != nil {
		return nil, fmt.Errorf("signing_key_path: %w", err)
	}
	res.KeyID = keys[0].ID

	cfg := config.Default(syn.ServerName)
	cfg.PublicBaseURL = syn.PublicBaseURL
	if syn.ServeServerWellKnown {
		if host := baseURLHost(syn.PublicBaseURL); host != "" {
			cfg.WellKnownServer = host + ":443" // what Synapse publishes
		} else {
			note("serve_server_wellknown: needs public_baseurl to know the delegated host; set well_known_server by hand")
		}
	}

	// Registration. Synapse refuses open registration without a
	// verification step unless told so; edge verifies nothing, so only
	// that combination opens it.
	cfg.Registration.Enabled = syn.EnableRegistration && syn.RegistrationWithoutVerif
	if syn.EnableRegistration && !syn.RegistrationWithoutVerif {
		note("enable_registration: Synapse's registration needs email, captcha or token verification, which edge lacks; registration is off (set registration.enabled or registration.tokens)")
	}
	cfg.Registration.GuestAccess = syn.AllowGuestAccess
	cfg.Registration.SharedSecret = syn.RegistrationSharedSecret
	if cfg.Registration.SharedSecret == "" && syn.RegistrationSharedSecretPth != "" {
		b, err := os.ReadFile(resolve(syn.RegistrationSharedSecretPth))
		if err != nil {
			note("registration_shared_secret_path: %v", err)
		} else {
			cfg.Registration.SharedSecret = strings.TrimSpace(string(b))
		}
	}

	if syn.MaxUploadSize != nil {
		n, err := parseSize(syn.MaxUploadSize)
		if err != nil {
			note("max_upload_size: %v; edge's default %d bytes applies", err, cfg.Media.MaxUploadBytes)
		} else {
			cfg.Media.MaxUploadBytes = n
		}
	}
	cfg.Media.URLPreviewEnabled = syn.URLPreviewEnabled
	cfg.VoIP.TurnURIs, cfg.VoIP.TurnSharedSecret = syn.TurnURIs, syn.TurnSharedSecret
	cfg.UserDirectory.SearchAllUsers = syn.UserDirectory.SearchAllUsers
	if syn.DefaultRoomVersion != nil {
		v := fmt.Sprint(syn.DefaultRoomVersion)
		probe := *cfg
		probe.Rooms.DefaultVersion = v
		if err := probe.Validate(); err != nil {
			note("default_room_version: %q is not a stable room version edge serves; edge's default %s applies", v, cfg.Rooms.DefaultVersion)
		} else {
			cfg.Rooms.DefaultVersion = v
		}
	}

	listeners(cfg, &syn, resolve, note)

	if _, set := all["trusted_key_servers"]; set {
		cfg.Federation.TrustedKeyServers = nil
		for _, ts := range syn.TrustedKeyServers {
			keys := ts.VerifyKeys
			if len(keys) == 0 && ts.ServerName == "matrix.org" {
				keys = config.DefaultFederation().TrustedKeyServers[0].VerifyKeys
			}
			if len(keys) == 0 {
				note("trusted_key_servers: %s has no verify_keys; edge only trusts a notary whose key it knows, so it was left out", ts.ServerName)
				continue
			}
			cfg.Federation.TrustedKeyServers = append(cfg.Federation.TrustedKeyServers, config.TrustedKeyServer{ServerName: ts.ServerName, VerifyKeys: keys})
		}
	}

	switch db := syn.Database.Name; db {
	case "":
	case "sqlite3", "psycopg2":
		note("database (%s): Synapse's users, rooms, messages and media are not imported; edge starts with an empty database (%s)", db, cfg.DatabasePath)
	default:
		note("database (%s): not imported; edge starts with an empty database", db)
	}

	// Every other setting, one line each.
	var rest []string
	for k := range all {
		if !slices.Contains(handled, k) {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	for _, k := range rest {
		if w, ok := why[k]; ok {
			note("%s: %s", k, w)
		} else {
			note("%s: no edge equivalent", k)
		}
	}

	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("the imported configuration is not valid: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	res.KeyPath = filepath.Join(dir, cfg.SigningKeyPath)
	kf, err := os.OpenFile(res.KeyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := kf.Write(keyData); err != nil {
		kf.Close()
		return nil, err
	}
	if err := kf.Close(); err != nil {
		return nil, err
	}
	if err := config.WriteFile(res.ConfigPath, cfg); err != nil {
		os.Remove(res.KeyPath) // leave nothing half-written behind
		return nil, err
	}
	res.Config = cfg
	return res, nil
}

// listeners maps Synapse's listeners: the plain HTTP one serving client
// (and federation) to listen, a TLS one to federation_listen, a metrics
// one to metrics_listen.
func listeners(cfg *config.Config, syn *synapse, resolve func(string) string, note func(string, ...any)) {
	seenHTTP := false
	for _, l := range syn.Listeners {
		var names []string
		for _, r := range l.Resources {
			names = append(names, r.Names...)
		}
		addr := bindAddr(l.BindAddresses, l.Port, note)
		switch {
		case l.Type == "metrics":
			cfg.MetricsListen = addr
		case l.Type != "http":
			note("listeners: a %q listener on port %d has no edge equivalent", l.Type, l.Port)
		case l.TLS:
			cfg.FederationListen = addr
			cfg.TLSCertFile, cfg.TLSKeyFile = resolve(syn.TLSCertificatePath), resolve(syn.TLSPrivateKeyPath)
			if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
				cfg.FederationListen, cfg.TLSCertFile, cfg.TLSKeyFile = "", "", ""
				note("listeners: the TLS listener on port %d has no tls_certificate_path/tls_private_key_path; not carried over", l.Port)
			}
		case !seenHTTP:
			seenHTTP = true
			cfg.Listen = addr
			for _, n := range names {
				if n != "client" && n != "federation" {
					note("listeners: resource %q on port %d: edge serves client, federation, keys and media on every listener", n, l.Port)
				}
			}
			if l.XForwarded {
				note("listeners: x_forwarded on port %d: edge does not read X-Forwarded-For (rate limits see the proxy's address)", l.Port)
			}
		default:
			note("listeners: a second HTTP listener on port %d: edge has one plain-HTTP listener (listen)", l.Port)
		}
	}
}

// bindAddr is the one address edge listens on for Synapse's bind_addresses:
// a wildcard covers everything; otherwise IPv4 loopback is preferred, as
// reverse proxies most often point at 127.0.0.1.
func bindAddr(binds []string, port int, note func(string, ...any)) string {
	p := strconv.Itoa(port)
	if len(binds) == 0 {
		return net.JoinHostPort("::", p)
	}
	pick := binds[0]
	for _, b := range binds {
		if b == "::" || b == "0.0.0.0" {
			pick = "::"
			break
		}
		if b == "127.0.0.1" {
			pick = b
		}
	}
	for _, b := range binds {
		if b != pick && pick != "::" {
			note("listeners: bind address %s on port %d dropped: edge listens on one address (%s)", b, port, pick)
		}
	}
	return net.JoinHostPort(pick, p)
}

// baseURLHost is the host of an http(s) URL, without port.
func baseURLHost(u string) string {
	u, ok := strings.CutPrefix(u, "https://")
	if !ok {
		if u, ok = strings.CutPrefix(u, "http://"); !ok {
			return ""
		}
	}
	host, _, _ := strings.Cut(u, "/")
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return host
}

// parseSize reads Synapse's size syntax: a number of bytes, or a number
// with K, M, G or T (powers of 1024).
func parseSize(v any) (int64, error) {
	switch v := v.(type) {
	case int:
		return int64(v), nil
	case string:
		s := strings.TrimSpace(strings.ToUpper(v))
		mult := int64(1)
		for i, suf := range []string{"K", "M", "G", "T"} {
			if t, ok := strings.CutSuffix(s, suf); ok {
				s, mult = t, int64(1)<<(10*(i+1))
				break
			}
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a size", v)
		}
		return n * mult, nil
	}
	return 0, errors.New("not a size")
}
