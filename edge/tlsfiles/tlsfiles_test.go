package tlsfiles

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// issuer is a CA made for one test.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tlsfiles test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return &issuer{cert: c, key: key, pool: pool}
}

// issue returns PEM certificate and key for 127.0.0.1 with serial.
func (is *issuer) issue(t *testing.T, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.cert, &key.PublicKey, is.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// write replaces path and moves its mtime on, so a change is seen even on
// file systems with coarse timestamps.
func write(t *testing.T, path string, data []byte, mod time.Time) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}

// TestReload: a real TLS listener serves the files' certificate, switches
// to replaced files within the interval, and keeps the last good pair when
// the replacement is broken or half-written.
func TestReload(t *testing.T) {
	is := newIssuer(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	c1, k1 := is.issue(t, 101)
	mod := time.Now()
	write(t, certFile, c1, mod)
	write(t, keyFile, k1, mod)
	f, err := Load(certFile, keyFile, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: f.GetCertificate})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	serial := func() int64 {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: is.pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	waitSerial := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := serial()
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("serving serial %d, want %d", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got := serial(); got != 101 {
		t.Fatalf("first certificate: serial %d", got)
	}

	c2, k2 := is.issue(t, 102)
	mod = mod.Add(time.Second)
	write(t, certFile, c2, mod)
	write(t, keyFile, k2, mod)
	waitSerial(102)

	// Half-written renewal: new certificate, old key. Still 102.
	c3, k3 := is.issue(t, 103)
	mod = mod.Add(time.Second)
	write(t, certFile, c3, mod)
	time.Sleep(150 * time.Millisecond)
	if got := serial(); got != 102 {
		t.Fatalf("mismatched pair: serving %d, want the last good 102", got)
	}
	write(t, keyFile, k3, mod)
	waitSerial(103)

	// Garbage and a vanished key keep the good pair too.
	mod = mod.Add(time.Second)
	write(t, certFile, []byte("not PEM"), mod)
	time.Sleep(150 * time.Millisecond)
	if got := serial(); got != 103 {
		t.Fatalf("garbage certificate: serving %d", got)
	}
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	if got := serial(); got != 103 {
		t.Fatalf("missing key: serving %d", got)
	}
}

// TestLoadErrors: a failed first load says which file is at fault.
func TestLoadErrors(t *testing.T) {
	is := newIssuer(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	c, k := is.issue(t, 7)
	_, otherKey := is.issue(t, 8)
	which := func(err error) string {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v is not a *tlsfiles.Error", err)
		}
		return e.Which
	}
	if _, err := Load(certFile, keyFile, 0, nil); which(err) != "cert" {
		t.Errorf("missing certificate: %v", err)
	}
	write(t, certFile, c, time.Now())
	if _, err := Load(certFile, keyFile, 0, nil); which(err) != "key" {
		t.Errorf("missing key: %v", err)
	}
	write(t, keyFile, otherKey, time.Now())
	if _, err := Load(certFile, keyFile, 0, nil); which(err) != "pair" {
		t.Errorf("mismatched key: %v", err)
	}
	write(t, keyFile, k, time.Now())
	if _, err := Load(certFile, keyFile, 0, nil); err != nil {
		t.Errorf("good pair: %v", err)
	}
}
