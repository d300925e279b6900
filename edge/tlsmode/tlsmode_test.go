package tlsmode

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"edge/edge/config"
	"edge/edge/store"
)

// writePair writes a self-signed certificate for name valid until
// notAfter, and its key.
func writePair(t *testing.T, dir, name string, notAfter time.Time) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter, DNSNames: []string{name}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	_ = os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}

// TestFilesExpiredOrMismatchedWarns: a certificate that is expired or
// made for another name is served (it is all there is), and the log says
// what peers will object to.
func TestFilesExpiredOrMismatchedWarns(t *testing.T) {
	dir := t.TempDir()
	writePair(t, dir, "other.example", time.Now().Add(-time.Hour))
	cfg := config.Default("example.org")
	cfg.Dir = dir
	cfg.TLSCertFile, cfg.TLSKeyFile = "cert.pem", "key.pem"
	var logs bytes.Buffer
	s, err := New(cfg, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != config.TLSFiles {
		t.Fatalf("mode %q, want files from tls_cert_file", s.Mode)
	}
	if c, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "example.org"}); err != nil || c == nil {
		t.Fatalf("GetCertificate: %v", err)
	}
	for _, want := range []string{"has expired", "does not cover", "host=example.org"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	// Missing files are an error naming the setting.
	cfg.TLSKeyFile = "missing.pem"
	_, err = New(cfg, nil, nil)
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Field != "tls_key_file" {
		t.Fatalf("missing key: %v, want a tls_key_file error", err)
	}
}

// TestInternalIssuesForHosts: the node certificate covers the server
// name and tls.hosts (IPs too) and chains to the CA.
func TestInternalIssuesForHosts(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default("example.org:8448")
	cfg.Dir = dir
	cfg.TLS.Mode = config.TLSInternal
	cfg.TLS.Hosts = []string{"matrix.example.org", "10.0.0.5"}
	caCert, err := CreateCA(filepath.Join(dir, cfg.TLS.Internal.CACertFile), filepath.Join(dir, cfg.TLS.Internal.CAKeyFile), cfg.ServerName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateCA(filepath.Join(dir, cfg.TLS.Internal.CACertFile), filepath.Join(dir, "x.key"), "x"); err == nil {
		t.Fatal("CreateCA overwrote an existing CA")
	}
	s, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	for _, h := range []string{"example.org", "matrix.example.org", "10.0.0.5"} {
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: roots}); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
}

// TestStoreCache: the autocert cache round-trips through the database
// and misses with autocert.ErrCacheMiss.
func TestStoreCache(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "edge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c := StoreCache{Store: st}
	ctx := context.Background()
	if _, err := c.Get(ctx, "example.org"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get on empty cache: %v", err)
	}
	if err := c.Put(ctx, "example.org", []byte("pem")); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "example.org"); err != nil || string(v) != "pem" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := c.Delete(ctx, "example.org"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "example.org"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get after Delete: %v", err)
	}
}
