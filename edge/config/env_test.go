package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edge.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("EDGE_T_NAME", "hs1")
	t.Setenv("EDGE_T_BURST", "7")
	t.Setenv("EDGE_T_EMPTY", "")
	path := writeConfig(t, `# ${NOT_SET_IN_A_COMMENT} is ignored
server_name: ${EDGE_T_NAME}
listen: "[::]:${EDGE_T_PORT:-8008}"
public_base_url: "https://${EDGE_T_NAME}.example"
rate_limits:
  login_burst: ${EDGE_T_BURST}
registration:
  shared_secret: "a$b$${EDGE_T_NAME}"
  tokens: ["${EDGE_T_EMPTY}x", "${EDGE_T_EMPTY:-dflt}"]
`)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "hs1" || cfg.Listen != "[::]:8008" || cfg.PublicBaseURL != "https://hs1.example" {
		t.Fatalf("got server_name %q listen %q public_base_url %q", cfg.ServerName, cfg.Listen, cfg.PublicBaseURL)
	}
	if cfg.RateLimits.LoginBurst != 7 {
		t.Fatalf("login_burst = %d, want 7 from the environment", cfg.RateLimits.LoginBurst)
	}
	if cfg.Registration.SharedSecret != "a$b${EDGE_T_NAME}" {
		t.Fatalf("shared_secret = %q: a bare $ and an escaped $${ must stay literal", cfg.Registration.SharedSecret)
	}
	if got := strings.Join(cfg.Registration.Tokens, ","); got != "x,dflt" {
		t.Fatalf("tokens = %q, want x,dflt (set-but-empty, then default for empty)", got)
	}
}

func TestEnvExpansionUnset(t *testing.T) {
	os.Unsetenv("EDGE_T_MISSING")
	path := writeConfig(t, "listen: \"[::]:8008\"\nserver_name: ${EDGE_T_MISSING}\n")
	_, err := Load(path)
	if err == nil {
		t.Fatal("an unset variable without a default loaded")
	}
	for _, want := range []string{"EDGE_T_MISSING", "not set", "line 2", path} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not mention %q", err, want)
		}
	}
	for _, bad := range []string{"server_name: ${EDGE T}\n", "server_name: ${OPEN\n"} {
		if _, err := Load(writeConfig(t, bad)); err == nil {
			t.Fatalf("%q loaded", bad)
		}
	}
}

// The value of a variable is data: it cannot add keys to the file.
func TestEnvExpansionNoInjection(t *testing.T) {
	t.Setenv("EDGE_T_NAME", "hs1\nregistration:\n  enabled: false")
	_, err := Load(writeConfig(t, "server_name: ${EDGE_T_NAME}\n"))
	if err == nil || !strings.Contains(err.Error(), "server_name") {
		t.Fatalf("a multi-line server name was accepted or misreported: %v", err)
	}
}

func TestEnsureSigningKey(t *testing.T) {
	dir := t.TempDir()
	cfg := Default("hs1")
	cfg.Dir = dir
	cfg.SigningKeyPath = "keys/signing.key"
	if _, made, err := cfg.EnsureSigningKey(); err != nil || made {
		t.Fatalf("generation off: made=%v err=%v", made, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("generation off still touched the key directory")
	}
	cfg.SigningKeyGenerate = true
	key, made, err := cfg.EnsureSigningKey()
	if err != nil || !made {
		t.Fatalf("first start: made=%v err=%v", made, err)
	}
	keys, err := ReadSigningKeys(cfg.Path(cfg.SigningKeyPath))
	if err != nil || keys[0].ID != key.ID || !keys[0].Priv.Equal(key.Priv) {
		t.Fatalf("written key does not read back: %v", err)
	}
	fi, _ := os.Stat(cfg.Path(cfg.SigningKeyPath))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	// A restart keeps the key.
	if _, made, err := cfg.EnsureSigningKey(); err != nil || made {
		t.Fatalf("second start: made=%v err=%v", made, err)
	}
	again, _ := ReadSigningKeys(cfg.Path(cfg.SigningKeyPath))
	if again[0].ID != key.ID {
		t.Fatalf("restart replaced the key: %s -> %s", key.ID, again[0].ID)
	}
}

func TestSigningKeyGenerateLoads(t *testing.T) {
	cfg, err := Load(writeConfig(t, "server_name: hs1\nsigning_key_generate: true\n"))
	if err != nil || !cfg.SigningKeyGenerate {
		t.Fatalf("signing_key_generate not read: %v", err)
	}
}

// The commented edge.yaml `edge init` writes carries both container
// settings.
func TestContainerSettingsRoundTrip(t *testing.T) {
	c := Default("hs1")
	c.SigningKeyGenerate = true
	c.TLS.Internal.AllowReadableKey = true
	path := filepath.Join(t.TempDir(), "edge.yaml")
	if err := WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.SigningKeyGenerate || !got.TLS.Internal.AllowReadableKey {
		t.Fatalf("signing_key_generate %v, tls.internal.allow_readable_key %v after a round trip",
			got.SigningKeyGenerate, got.TLS.Internal.AllowReadableKey)
	}
}
