package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFederationConfig: the listener and discovery settings of federation
// load, default and fail with the field named.
func TestFederationConfig(t *testing.T) {
	load := func(t *testing.T, yaml string) (*Config, error) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "edge.yaml")
		if err := os.WriteFile(path, []byte("server_name: x.org\n"+yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return Load(path)
	}
	t.Run("defaults", func(t *testing.T) {
		for _, tc := range []struct{ yaml, want string }{
			{"", ""},
			{"tls_cert_file: c.pem\ntls_key_file: k.pem\n", DefaultFederationListen},
			{"tls_cert_file: c.pem\ntls_key_file: k.pem\nfederation_listen: \"127.0.0.1:8449\"\n", "127.0.0.1:8449"},
		} {
			c, err := load(t, tc.yaml)
			if err != nil {
				t.Fatalf("%q: %v", tc.yaml, err)
			}
			if got := c.FederationAddr(); got != tc.want {
				t.Errorf("%q: federation listener %q, want %q", tc.yaml, got, tc.want)
			}
		}
		c, err := load(t, "federation:\n  nameservers: [\"10.0.0.1:53\", \"[fd00::1]:5353\"]\n")
		if err != nil || len(c.Federation.Nameservers) != 2 || c.Federation.Nameservers[1] != "[fd00::1]:5353" {
			t.Fatalf("nameservers: %v %v", c, err)
		}
	})
	t.Run("errors name the field", func(t *testing.T) {
		for _, tc := range []struct{ yaml, want string }{
			{"tls_cert_file: c.pem\n", "tls_key_file"},
			{"tls_key_file: k.pem\n", "tls_cert_file"},
			{"federation_listen: \"127.0.0.1:8448\"\n", "federation_listen"},
			{"tls_cert_file: c.pem\ntls_key_file: k.pem\nfederation_listen: nope\n", "federation_listen"},
			{"metrics_listen: \"localhost\"\n", "metrics_listen"},
			{"federation:\n  nameservers: [\"ns.example.org:53\"]\n", "federation.nameservers[0]"},
			{"federation:\n  nameservers: [\"127.0.0.1:53\", \"127.0.0.1\"]\n", "federation.nameservers[1]"},
		} {
			_, err := load(t, tc.yaml)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: error %v does not name %s", tc.yaml, err, tc.want)
			}
		}
	})
}
