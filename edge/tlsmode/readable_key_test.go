package tlsmode

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"edge/edge/config"
)

// A CA handed in by a container runtime (Complement copies its key in at
// 0777) is refused unless tls.internal.allow_readable_key says otherwise;
// then a handshake for the server name verifies against that CA.
func TestInternalReadableCAKey(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	ca, err := CreateCA(certFile, keyFile, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(keyFile, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default("hs1")
	cfg.Dir = dir
	cfg.TLS.Mode = config.TLSInternal
	cfg.TLS.Internal = config.InternalTLS{CACertFile: "ca.crt", CAKeyFile: "ca.key"}
	if _, err := New(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "allow_readable_key") {
		t.Fatalf("a world-readable CA key was accepted, or the error does not say how to allow it: %v", err)
	}
	cfg.TLS.Internal.AllowReadableKey = true
	src, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: src.GetCertificate})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "hs1", RootCAs: roots})
	if err != nil {
		t.Fatalf("handshake for hs1 against the given CA: %v", err)
	}
	conn.Close()
}
