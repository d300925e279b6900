package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// TLS modes (tls.mode).
const (
	// TLSOff serves plain HTTP only (a LAN, or a TLS-terminating proxy).
	TLSOff = "off"
	// TLSFiles serves tls_cert_file/tls_key_file, reloaded when replaced.
	TLSFiles = "files"
	// TLSACME gets and renews certificates from an ACME CA (Let's Encrypt).
	TLSACME = "acme"
	// TLSInternal issues the node's certificate from a local CA made by
	// `edge init --tls internal`.
	TLSInternal = "internal"
)

// DefaultTLSListen is the client API's TLS listener when tls.mode is set
// and tls.listen is not.
const DefaultTLSListen = "[::]:443"

// ACME directories of Let's Encrypt.
const (
	LetsEncryptURL        = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStagingURL = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// TLS is the tls section: where the node's certificate comes from and
// which listeners serve it. The client API (tls.listen) and federation
// (federation_listen) share the certificate.
type TLS struct {
	// Mode is off, files, acme or internal. Empty: files when
	// tls_cert_file is set (configs from before tls.mode), else off.
	Mode string `yaml:"mode"`
	// Listen is the client API's TLS listener. Empty: DefaultTLSListen
	// when Mode is set explicitly, else none.
	Listen string `yaml:"listen"`
	// Hosts are names the certificate covers besides server_name's host
	// (e.g. matrix.example.org, the client API's host).
	Hosts []string `yaml:"hosts"`
	// HTTP3 serves HTTP/3 on the UDP port of every TLS listener and
	// advertises it with Alt-Svc.
	HTTP3    bool        `yaml:"http3"`
	ACME     ACME        `yaml:"acme"`
	Internal InternalTLS `yaml:"internal"`
}

// ACME configures mode acme.
type ACME struct {
	// DirectoryURL of the CA. Empty: Let's Encrypt (staging when Staging).
	DirectoryURL string `yaml:"directory_url"`
	Staging      bool   `yaml:"staging"`
	// Email is the account's contact address (expiry notices); optional.
	Email string `yaml:"email"`
	// HTTPListen is a plain listener (normally [::]:80) answering HTTP-01
	// challenges and redirecting everything else to https. Empty: none,
	// TLS-ALPN-01 on the TLS listeners is used.
	HTTPListen string `yaml:"http_listen"`
	// TrustCAFile holds extra roots (PEM) for the directory's own TLS,
	// e.g. a test CA such as Pebble's.
	TrustCAFile string `yaml:"trust_ca_file"`
	// RenewBefore renews a certificate this long before it expires.
	// 0: a third of its lifetime, at most 30 days.
	RenewBefore time.Duration `yaml:"renew_before"`
}

// InternalTLS configures mode internal: the local CA's files, relative
// to the config file's directory.
type InternalTLS struct {
	CACertFile string `yaml:"ca_cert_file"`
	CAKeyFile  string `yaml:"ca_key_file"`
	// AllowReadableKey accepts a CA key file readable by others: a CA
	// handed in by a container runtime (Docker secrets are 0444,
	// Complement copies its CA in at 0777), where edge cannot chmod it.
	AllowReadableKey bool `yaml:"allow_readable_key"`
}

// DefaultTLS is the tls section of Default.
func DefaultTLS() TLS {
	return TLS{HTTP3: true, Internal: InternalTLS{CACertFile: "tls-ca.pem", CAKeyFile: "tls-ca.key"}}
}

// TLSMode is the effective tls.mode.
func (c *Config) TLSMode() string {
	if c.TLS.Mode != "" {
		return c.TLS.Mode
	}
	if c.TLSCertFile != "" {
		return TLSFiles
	}
	return TLSOff
}

// TLSListenAddr is the address of the client API's TLS listener, or ""
// for none.
func (c *Config) TLSListenAddr() string {
	if c.TLS.Listen != "" || c.TLS.Mode == "" || c.TLS.Mode == TLSOff {
		return c.TLS.Listen
	}
	return DefaultTLSListen
}

// ACMEDirectory is the ACME directory URL in use.
func (c *Config) ACMEDirectory() string {
	switch {
	case c.TLS.ACME.DirectoryURL != "":
		return c.TLS.ACME.DirectoryURL
	case c.TLS.ACME.Staging:
		return LetsEncryptStagingURL
	}
	return LetsEncryptURL
}

// CertHosts are the DNS names (or IPs) the node's certificate covers:
// server_name's host, then tls.hosts, without duplicates.
func (c *Config) CertHosts() []string {
	host := c.ServerName
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	out := []string{strings.ToLower(host)}
	for _, h := range c.TLS.Hosts {
		h = strings.ToLower(h)
		dup := false
		for _, o := range out {
			dup = dup || o == h
		}
		if !dup {
			out = append(out, h)
		}
	}
	return out
}

func (c *Config) validateTLS() error {
	t := c.TLS
	switch t.Mode {
	case "", TLSOff, TLSFiles, TLSACME, TLSInternal:
	default:
		return &FieldError{"tls.mode", fmt.Sprintf("%q is not one of off, files, acme, internal", t.Mode)}
	}
	mode := c.TLSMode()
	if mode == TLSFiles && c.TLSCertFile == "" {
		return &FieldError{"tls.mode", "files needs tls_cert_file and tls_key_file"}
	}
	if t.Listen != "" {
		if _, _, err := net.SplitHostPort(t.Listen); err != nil {
			return &FieldError{"tls.listen", fmt.Sprintf("%q is not host:port", t.Listen)}
		}
		if mode == TLSOff {
			return &FieldError{"tls.listen", "needs tls.mode files, acme or internal"}
		}
	}
	for i, h := range t.Hosts {
		if strings.Contains(h, ":") && net.ParseIP(h) == nil {
			return &FieldError{fmt.Sprintf("tls.hosts[%d]", i), fmt.Sprintf("%q: a host name, without a port", h)}
		}
		if err := ValidateServerName(h); err != nil {
			return &FieldError{fmt.Sprintf("tls.hosts[%d]", i), err.Error()}
		}
	}
	if mode == TLSACME {
		for _, h := range c.CertHosts() {
			if net.ParseIP(h) != nil {
				return &FieldError{"tls.mode", fmt.Sprintf("acme cannot get a certificate for %s: ACME CAs only issue for DNS names, not IP addresses (use tls.mode internal or files)", h)}
			}
		}
		if u, err := url.Parse(c.ACMEDirectory()); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return &FieldError{"tls.acme.directory_url", fmt.Sprintf("%q is not an http(s) URL", t.ACME.DirectoryURL)}
		}
		if t.ACME.Email != "" && !strings.Contains(t.ACME.Email, "@") {
			return &FieldError{"tls.acme.email", fmt.Sprintf("%q is not an email address", t.ACME.Email)}
		}
		if t.ACME.HTTPListen != "" {
			if _, _, err := net.SplitHostPort(t.ACME.HTTPListen); err != nil {
				return &FieldError{"tls.acme.http_listen", fmt.Sprintf("%q is not host:port", t.ACME.HTTPListen)}
			}
		}
		if t.ACME.RenewBefore < 0 {
			return &FieldError{"tls.acme.renew_before", "must not be negative"}
		}
	}
	if mode == TLSInternal && (t.Internal.CACertFile == "" || t.Internal.CAKeyFile == "") {
		return &FieldError{"tls.internal", "ca_cert_file and ca_key_file are required (edge init --tls internal makes them)"}
	}
	return nil
}

// tlsSection renders the tls settings with comments.
func tlsSection(t TLS) string {
	return fmt.Sprintf(`# Where the TLS certificate comes from: off (plain HTTP only), files
# (tls_cert_file/tls_key_file above), acme (Let's Encrypt or another ACME
# CA; needs ports 443 or 80 reachable) or internal (a local CA made by
# `+"`edge init --tls internal`"+`). Empty: files when tls_cert_file is set.
# The client API (tls.listen) and federation (federation_listen) share it.
tls:
  mode: %q
  # Client API over TLS. Empty: [::]:443 when mode is set.
  listen: %q
  # Names the certificate covers besides server_name (e.g. the client host).
  hosts: %s
  # HTTP/3 (QUIC) on the UDP port of each TLS listener, advertised by Alt-Svc.
  http3: %t
  acme:
    # Empty: Let's Encrypt (its staging CA with staging: true).
    directory_url: %q
    staging: %t
    email: %q
    # Plain listener for HTTP-01 challenges (e.g. "[::]:80"); it redirects
    # everything else to https. Empty: TLS-ALPN-01 on the TLS listener only.
    http_listen: %q
    # Extra CA certificates (PEM) trusted for the ACME directory's own TLS.
    trust_ca_file: %q
    # Renew this long before expiry; 0s: a third of the lifetime.
    renew_before: %s
  internal:
    ca_cert_file: %q
    ca_key_file: %q
    # Accept a CA key readable by others (one a container runtime hands in).
    allow_readable_key: %t
`, t.Mode, t.Listen, yamlList(t.Hosts), t.HTTP3, t.ACME.DirectoryURL, t.ACME.Staging, t.ACME.Email,
		t.ACME.HTTPListen, t.ACME.TrustCAFile, t.ACME.RenewBefore, t.Internal.CACertFile, t.Internal.CAKeyFile, t.Internal.AllowReadableKey)
}
