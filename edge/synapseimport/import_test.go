package synapseimport

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"edge/edge/config"
)

// synapseDir copies the fixture homeserver.yaml (with edits) beside a
// fresh signing key in Synapse's format and returns the config's path and
// the key.
func synapseDir(t *testing.T, edit func(string) string) (string, config.SigningKey) {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile("testdata/homeserver.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if edit != nil {
		text = edit(text)
	}
	p := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	key, err := config.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := config.WriteSigningKey(filepath.Join(dir, "localhost.signing.key"), key); err != nil {
		t.Fatal(err)
	}
	return p, key
}

func TestImportClassicGuide(t *testing.T) {
	syn, key := synapseDir(t, nil)
	out := t.TempDir()
	res, err := Import(syn, out)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(res.ConfigPath)
	if err != nil {
		t.Fatalf("the written edge.yaml does not load: %v", err)
	}
	if cfg.ServerName != "localhost" || cfg.Listen != "127.0.0.1:8008" || !cfg.Registration.Enabled ||
		cfg.Registration.SharedSecret != "Dz3v~mCx.aYl,oFf=Qs5ZqTmP7i:4n8s&KDs^H3xVb;LeYk-Rk" ||
		cfg.Media.MaxUploadBytes != 100<<20 || !cfg.Media.URLPreviewEnabled || cfg.PublicBaseURL != "http://localhost:8008/" {
		t.Fatalf("config: %+v", cfg)
	}
	// Synapse's sample names matrix.org without keys; edge needs its key.
	if ts := cfg.Federation.TrustedKeyServers; len(ts) != 1 || ts[0].ServerName != "matrix.org" || ts[0].VerifyKeys["ed25519:auto"] == "" {
		t.Fatalf("trusted key servers: %+v", ts)
	}
	keys, err := config.ReadSigningKeys(cfg.Path(cfg.SigningKeyPath))
	if err != nil || len(keys) != 1 || keys[0].ID != key.ID || !bytes.Equal(keys[0].Priv, key.Priv) || res.KeyID != key.ID {
		t.Fatalf("signing key: %v %+v, want %s", err, keys, key.ID)
	}
	if fi, err := os.Stat(res.KeyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", err, fi.Mode())
	}
	text := strings.Join(res.NotCarried, "\n")
	for _, want := range []string{
		"bind address ::1 on port 8008 dropped", "x_forwarded", "database (sqlite3)", "log_config:", "media_store_path:",
		"report_stats:", "macaroon_secret_key:", "form_secret:", "pid_file:", "url_preview_ip_range_blacklist:",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("not-carried list lacks %q:\n%s", want, text)
		}
	}
	for _, carried := range []string{"server_name", "registration_shared_secret", "max_upload_size", "suppress_key_server_warning", "trusted_key_servers"} {
		for _, l := range res.NotCarried {
			if strings.HasPrefix(l, carried+":") {
				t.Errorf("%s was carried over, yet listed: %s", carried, l)
			}
		}
	}
	// Never overwrite an existing node.
	if _, err := Import(syn, out); err == nil {
		t.Fatal("a second import into the same directory succeeded")
	}
}

func TestImportVariants(t *testing.T) {
	t.Run("registration needing verification stays closed", func(t *testing.T) {
		syn, _ := synapseDir(t, func(s string) string {
			return strings.Replace(s, "enable_registration_without_verification: true", "enable_registration_without_verification: false", 1)
		})
		res, err := Import(syn, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if res.Config.Registration.Enabled || !strings.Contains(strings.Join(res.NotCarried, "\n"), "enable_registration:") {
			t.Fatalf("enabled=%v %v", res.Config.Registration.Enabled, res.NotCarried)
		}
	})
	t.Run("wildcard, TLS and metrics listeners, unknown notary", func(t *testing.T) {
		syn, _ := synapseDir(t, func(s string) string {
			s = strings.Replace(s, "bind_addresses: ['::1', '127.0.0.1']", "bind_addresses: ['::']", 1)
			s = strings.Replace(s, "listeners:\n", `listeners:
  - port: 8448
    tls: true
    type: http
    resources:
      - names: [federation]
  - port: 9000
    type: metrics
    bind_addresses: ['127.0.0.1']
`, 1)
			s = strings.Replace(s, `  - server_name: "matrix.org"`, `  - server_name: "notary.example"`, 1)
			s = strings.Replace(s, "max_upload_size: 100M", "max_upload_size: 10K", 1)
			return s + "tls_certificate_path: cert.pem\ntls_private_key_path: key.pem\nfrobnicate: true\n"
		})
		res, err := Import(syn, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		c := res.Config
		if c.Listen != "[::]:8008" || c.FederationListen != "[::]:8448" || c.MetricsListen != "127.0.0.1:9000" ||
			c.TLSCertFile != filepath.Join(filepath.Dir(syn), "cert.pem") || c.Media.MaxUploadBytes != 10<<10 {
			t.Fatalf("config: listen %s fed %s metrics %s cert %s upload %d", c.Listen, c.FederationListen, c.MetricsListen, c.TLSCertFile, c.Media.MaxUploadBytes)
		}
		text := strings.Join(res.NotCarried, "\n")
		if len(c.Federation.TrustedKeyServers) != 0 || !strings.Contains(text, "notary.example has no verify_keys") || !strings.Contains(text, "frobnicate: no edge equivalent") {
			t.Fatalf("notaries %+v, not carried:\n%s", c.Federation.TrustedKeyServers, text)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		for name, edit := range map[string]func(string) string{
			"no key file":    func(s string) string { return strings.Replace(s, `"localhost.signing.key"`, `"missing.key"`, 1) },
			"no server_name": func(s string) string { return strings.Replace(s, `server_name: "localhost"`, ``, 1) },
			"not YAML":       func(string) string { return "server_name: [" },
		} {
			syn, _ := synapseDir(t, edit)
			out := t.TempDir()
			if _, err := Import(syn, out); err == nil {
				t.Errorf("%s: imported", name)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("%s: left files behind: %v", name, ents)
			}
		}
	})
	if n, err := parseSize("1G"); err != nil || n != 1<<30 {
		t.Fatalf("parseSize: %d %v", n, err)
	}
	if _, err := parseSize("lots"); err == nil {
		t.Fatal("parseSize accepted nonsense")
	}
}
