package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestWriteFileRoundTrip: every setting written by `edge init` reads back
// as it was (a template that hard-codes a value loses the operator's choice).
func TestWriteFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	c := Default("example.org")
	c.Listen = "127.0.0.1:9999"
	c.PublicBaseURL = "https://matrix.example.org"
	c.WellKnownServer = "matrix.example.org:443"
	c.Registration.Tokens = []string{"tok-1", `we"ird`}
	c.Registration.SharedSecret = "s3cret"
	c.Registration.GuestAccess = true
	c.Federation.AllowPrivateAddresses = true
	c.Federation.RequestTimeout = 42 * time.Second
	c.Federation.TrustCAFile = "ca.pem"
	c.Federation.Presence = false
	c.Federation.Nameservers = []string{"127.0.0.1:5353", "[::1]:53"}
	c.FederationListen = "127.0.0.1:8448"
	c.TLSCertFile = "tls/cert.pem"
	c.TLSKeyFile = "/etc/edge/key.pem"
	c.MetricsListen = "127.0.0.1:9100"
	c.TLS = TLS{Mode: "acme", Listen: "127.0.0.1:8443", Hosts: []string{"matrix.example.org"}, HTTP3: false,
		ACME: ACME{DirectoryURL: "https://ca.example/dir", Staging: true, Email: "ops@example.org",
			HTTPListen: "[::]:80", TrustCAFile: "pebble.pem", RenewBefore: 90 * time.Minute},
		Internal: InternalTLS{CACertFile: "ca/c.pem", CAKeyFile: "ca/c.key"}}
	path := filepath.Join(dir, "edge.yaml")
	if err := WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	got.Dir = ""
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", got, c)
	}
	if err := WriteFile(path, c); err == nil {
		t.Fatal("WriteFile overwrote an existing file")
	}
}

func TestLoadNamesTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"server_name: x.org\nrate_limits:\n  login_burst: many\n", "rate_limits.login_burst"},
		{"server_name: x.org\nlisten: nope\n", "listen"},
		{"listen: \"[::]:8008\"\n", "server_name"},
		{"server_name: x.org\nrooms:\n  default_version: \"99\"\n", "rooms.default_version"},
		{"server_name: x.org\nfederation:\n  request_timeout: soon\n", "federation.request_timeout"},
	} {
		path := filepath.Join(t.TempDir(), "edge.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v does not name %s", tc.yaml, err, tc.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "edge init") {
		t.Errorf("missing file: %v", err)
	}
}

func TestSigningKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.key")
	k, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteSigningKey(path, k); err != nil {
		t.Fatal(err)
	}
	keys, err := ReadSigningKeys(path)
	if err != nil || len(keys) != 1 || keys[0].ID != k.ID || !keys[0].Priv.Equal(k.Priv) {
		t.Fatalf("read back %v, %v", keys, err)
	}
	// A Synapse key file line (padded base64 tolerated).
	if err := os.WriteFile(path, []byte("ed25519 a_abcd YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err = ReadSigningKeys(path)
	if err != nil || keys[0].ID != "ed25519:a_abcd" {
		t.Fatalf("synapse key: %v %v", keys, err)
	}
	if err := os.WriteFile(path, []byte("rsa 1 xyz\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSigningKeys(path); err == nil {
		t.Fatal("accepted a non-ed25519 line")
	}
}
