package tlsmode

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// Lifetimes of the internal CA and of the node certificates it issues.
// A node certificate is issued at every start and again when a third of
// its life is left, so a long-running node never serves an expired one.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 90 * 24 * time.Hour
)

// CreateCA makes the local CA of tls.mode internal: an ECDSA P-256 root
// named after serverName, certificate at certFile (0644) and key at
// keyFile (0600). It refuses to overwrite either file.
func CreateCA(certFile, keyFile, serverName string) (*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "edge internal CA for " + serverName, Organization: []string{"edge"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	// The key first: a CA certificate without its key is useless.
	if err := writeNew(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyFile)
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// internalCA issues node certificates.
type internalCA struct {
	cert  *x509.Certificate
	key   any
	hosts []string
}

func loadCA(certFile, keyFile string, allowReadableKey bool) (*internalCA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("tls.internal.ca_cert_file: %w (make the CA with `edge init --tls internal`)", err)
	}
	if fi, err := os.Stat(keyFile); err == nil && fi.Mode().Perm()&0o077 != 0 && !allowReadableKey {
		return nil, fmt.Errorf("tls.internal.ca_key_file: %s is readable by others (mode %o): chmod 600 it (or set tls.internal.allow_readable_key when a container runtime hands it in)", keyFile, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls.internal.ca_key_file: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls.internal: %s and %s: %w", certFile, keyFile, err)
	}
	if !pair.Leaf.IsCA {
		return nil, fmt.Errorf("tls.internal.ca_cert_file: %s is not a CA certificate", certFile)
	}
	return &internalCA{cert: pair.Leaf, key: pair.PrivateKey}, nil
}

// issue makes a node certificate for hosts (DNS names or IPs).
func (ca *internalCA) issue(hosts []string) (*tls.Certificate, error) {
	if len(hosts) == 0 {
		return nil, errors.New("no host names to issue for")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// TrustHint tells an operator how to make clients trust the internal CA.
func TrustHint(certFile string) string {
	return fmt.Sprintf(`clients must trust the internal CA %[1]s:
  Debian/Ubuntu: sudo cp %[1]s /usr/local/share/ca-certificates/edge-ca.crt && sudo update-ca-certificates
  Fedora/RHEL:   sudo cp %[1]s /etc/pki/ca-trust/source/anchors/ && sudo update-ca-trust
  macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain %[1]s
  other edge servers: federation.trust_ca_file: %[1]s
  curl:          curl --cacert %[1]s https://HOST/_matrix/client/versions`, certFile)
}
