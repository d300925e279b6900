// Package tlsmode is where the node's TLS certificate comes from, as
// tls.mode says: files (edge/tlsfiles, reloaded when replaced), acme
// (golang.org/x/crypto/acme/autocert, cached in the database) or
// internal (a local CA). The client API's and federation's TLS listeners
// share one Source.
package tlsmode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"edge/edge/config"
	"edge/edge/store"
	"edge/edge/tlsfiles"
)

// Source serves the node's certificate.
type Source struct {
	// Mode is config.TLSFiles, TLSACME or TLSInternal.
	Mode string
	// Hosts are the names the certificate covers; Hosts[0] answers a
	// handshake without SNI.
	Hosts []string
	// RetryMin is the first wait after a failed ACME order; it doubles up
	// to RetryMax.
	RetryMin, RetryMax time.Duration

	log     *slog.Logger
	files   *tlsfiles.Files
	manager *autocert.Manager
	ca      *internalCA

	mu   sync.Mutex
	cert *tls.Certificate // internal mode's current node certificate
	// waiting holds the hosts whose first ACME certificate Start is still
	// after; handshakes for them do not start orders of their own.
	waiting map[string]bool
}

// New builds the Source of cfg's tls.mode, or returns nil for mode off.
// Problems it can see without the network (unreadable files, a bad CA)
// are errors naming the setting; ACME runs later, in Start.
func New(cfg *config.Config, st *store.Store, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{Mode: cfg.TLSMode(), Hosts: cfg.CertHosts(), RetryMin: 10 * time.Second, RetryMax: time.Hour, log: log}
	switch s.Mode {
	case config.TLSOff:
		return nil, nil
	case config.TLSFiles:
		f, err := LoadFiles(cfg, log)
		if err != nil {
			return nil, err
		}
		s.files = f
		if c, _ := f.GetCertificate(nil); c != nil {
			s.checkLeaf(c.Leaf, cfg.TLSCertFile)
		}
	case config.TLSInternal:
		ca, err := loadCA(cfg.Path(cfg.TLS.Internal.CACertFile), cfg.Path(cfg.TLS.Internal.CAKeyFile), cfg.TLS.Internal.AllowReadableKey)
		if err != nil {
			return nil, err
		}
		s.ca = ca
		if s.cert, err = ca.issue(s.Hosts); err != nil {
			return nil, fmt.Errorf("tls.internal: issuing the node certificate: %w", err)
		}
	case config.TLSACME:
		hc := &http.Client{Timeout: time.Minute}
		if f := cfg.TLS.ACME.TrustCAFile; f != "" {
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			pem, err := os.ReadFile(cfg.Path(f))
			if err != nil {
				return nil, fmt.Errorf("tls.acme.trust_ca_file: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls.acme.trust_ca_file: %s holds no PEM certificate", f)
			}
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
			hc.Transport = tr
		}
		s.manager = &autocert.Manager{
			Prompt:      autocert.AcceptTOS,
			Cache:       StoreCache{Store: st},
			HostPolicy:  autocert.HostWhitelist(s.Hosts...),
			RenewBefore: cfg.TLS.ACME.RenewBefore,
			Email:       cfg.TLS.ACME.Email,
			Client:      &acme.Client{DirectoryURL: cfg.ACMEDirectory(), HTTPClient: hc, UserAgent: "edge"},
		}
	default:
		return nil, fmt.Errorf("tls.mode: unknown mode %q", s.Mode)
	}
	return s, nil
}

// LoadFiles loads tls_cert_file and tls_key_file, naming the setting at
// fault on error.
func LoadFiles(cfg *config.Config, log *slog.Logger) (*tlsfiles.Files, error) {
	f, err := tlsfiles.Load(cfg.Path(cfg.TLSCertFile), cfg.Path(cfg.TLSKeyFile), tlsfiles.DefaultInterval, log)
	if err != nil {
		field := "tls_cert_file, tls_key_file"
		var te *tlsfiles.Error
		if errors.As(err, &te) && te.Which == "cert" {
			field = "tls_cert_file"
		} else if errors.As(err, &te) && te.Which == "key" {
			field = "tls_key_file"
		}
		return nil, &config.FieldError{Field: field, Reason: err.Error()}
	}
	return f, nil
}

// checkLeaf warns about a certificate that peers will refuse: the node
// still serves it (a wrong certificate beats none for a LAN client that
// pinned it), but the log says why federation fails.
func (s *Source) checkLeaf(leaf *x509.Certificate, file string) {
	if leaf == nil {
		return
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		s.log.Error("TLS certificate has expired; peers and clients will refuse it", "file", file, "not_after", leaf.NotAfter)
	} else if now.Before(leaf.NotBefore) {
		s.log.Error("TLS certificate is not valid yet", "file", file, "not_before", leaf.NotBefore)
	}
	for _, h := range s.Hosts {
		if err := leaf.VerifyHostname(h); err != nil {
			s.log.Error("TLS certificate does not cover a configured host; peers connecting by that name will refuse it",
				"file", file, "host", h, "err", err)
		}
	}
}

// GetCertificate is a tls.Config.GetCertificate.
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	switch {
	case s.files != nil:
		return s.files.GetCertificate(hello)
	case s.ca != nil:
		return s.internalCert()
	}
	h := *hello
	if h.ServerName == "" {
		// A client that dialled an IP sends no SNI: answer for the server name.
		h.ServerName = s.Hosts[0]
	}
	if s.notYet(&h) {
		// Start's loop is ordering or backing off: an order per handshake
		// would burn the CA's rate limit on failed validations.
		return nil, fmt.Errorf("tlsmode: no certificate for %s yet (ACME order pending)", h.ServerName)
	}
	if tls13Only(&h) {
		// TLS 1.3-only clients (QUIC) list no ECDSA suite, which autocert
		// reads as "RSA only" and would order a second certificate for.
		h.CipherSuites = append(append([]uint16(nil), h.CipherSuites...), tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
	}
	return s.manager.GetCertificate(&h)
}

// notYet reports whether hello is a client's (not the CA's TLS-ALPN-01
// check) for a host Start has not got a certificate for, and none is in
// the cache.
func (s *Source) notYet(hello *tls.ClientHelloInfo) bool {
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto {
		return false
	}
	s.mu.Lock()
	waiting := s.waiting[strings.ToLower(hello.ServerName)]
	s.mu.Unlock()
	if !waiting {
		return false
	}
	_, err := s.manager.Cache.Get(context.Background(), strings.ToLower(hello.ServerName))
	return err != nil
}

func tls13Only(h *tls.ClientHelloInfo) bool {
	if len(h.SupportedVersions) == 0 {
		return false
	}
	for _, v := range h.SupportedVersions {
		if v < tls.VersionTLS13 {
			return false
		}
	}
	return true
}

// internalCert returns the node certificate, re-issued when a third of
// its life is left.
func (s *Source) internalCert() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	leaf := s.cert.Leaf
	if time.Until(leaf.NotAfter) < leaf.NotAfter.Sub(leaf.NotBefore)/3 {
		if c, err := s.ca.issue(s.Hosts); err != nil {
			s.log.Error("tls.internal: re-issuing the node certificate failed; serving the current one", "err", err)
		} else {
			s.cert = c
		}
	}
	return s.cert, nil
}

// TLSConfig is the configuration of a TLS listener serving the Source.
// In acme mode it answers TLS-ALPN-01 challenges too.
func (s *Source) TLSConfig() *tls.Config {
	protos := []string{"h2", "http/1.1"}
	if s.manager != nil {
		protos = append(protos, acme.ALPNProto)
	}
	return &tls.Config{GetCertificate: s.GetCertificate, NextProtos: protos, MinVersion: tls.VersionTLS12}
}

// HTTPHandler serves the plain port-80 listener of acme mode: HTTP-01
// challenges, and a redirect to https (on httpsPort, "" or "443" for the
// default) for everything else.
func (s *Source) HTTPHandler(httpsPort string) http.Handler {
	redirect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "use HTTPS", http.StatusBadRequest)
			return
		}
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if httpsPort != "" && httpsPort != "443" {
			host = net.JoinHostPort(host, httpsPort)
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusFound)
	})
	if s.manager == nil {
		return redirect
	}
	challenges := s.manager.HTTPHandler(redirect)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// autocert matches the Host header, port included, against the
		// host policy: a CA validating on a port other than 80 (a test CA)
		// would be refused.
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			r = r.Clone(r.Context())
			r.Host = h
		}
		challenges.ServeHTTP(w, r)
	})
}

// Start gets the ACME certificates in the background, so a node whose CA
// is unreachable still starts and serves what it can (the plain listener;
// TLS handshakes for a host fail until its certificate arrives). Failures
// are logged and retried with backoff; once a certificate is there,
// autocert renews it before expiry. Other modes have nothing to start.
func (s *Source) Start(ctx context.Context) {
	if s == nil || s.manager == nil {
		return
	}
	s.mu.Lock()
	s.waiting = map[string]bool{}
	for _, host := range s.Hosts {
		s.waiting[host] = true
	}
	s.mu.Unlock()
	for _, host := range s.Hosts {
		go s.obtain(ctx, host)
	}
}

func (s *Source) obtain(ctx context.Context, host string) {
	hello := &tls.ClientHelloInfo{
		ServerName:        host,
		CipherSuites:      []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		SupportedCurves:   []tls.CurveID{tls.CurveP256},
		SignatureSchemes:  []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedVersions: []uint16{tls.VersionTLS13, tls.VersionTLS12},
	}
	wait := s.RetryMin
	for {
		c, err := s.manager.GetCertificate(hello)
		if err == nil {
			s.mu.Lock()
			delete(s.waiting, host)
			s.mu.Unlock()
			s.log.Info("ACME certificate ready", "host", host, "not_after", c.Leaf.NotAfter, "issuer", c.Leaf.Issuer.String())
			return
		}
		s.log.Error("ACME: no certificate yet; TLS for this host fails until one is issued",
			"host", host, "directory", s.manager.Client.DirectoryURL, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, s.RetryMax)
	}
}

// Ready reports whether a certificate for host is at hand without
// ordering one (acme: in the cache).
func (s *Source) Ready(host string) bool {
	if s.manager == nil {
		return true
	}
	_, err := s.manager.Cache.Get(context.Background(), host)
	return err == nil
}
