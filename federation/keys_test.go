package federation

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"edge/edge/config"
)

// fetchOwnKeys GETs a node's key document and checks it is signed by every
// key it lists as current.
func fetchOwnKeys(t *testing.T, n *testNode, path string) (keyResponse, *parsedKeys) {
	t.Helper()
	status, body := call(t, n, http.MethodGet, path, nil, "")
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, status, body)
	}
	var kr keyResponse
	if err := json.Unmarshal(body, &kr); err != nil {
		t.Fatal(err)
	}
	p, err := parseKeyResponse(body, n.name)
	if err != nil {
		t.Fatalf("own key response does not validate: %v", err)
	}
	for keyID, pub := range p.verify {
		if !p.so.verify(n.name, keyID, pub) {
			t.Fatalf("not signed by current key %s", keyID)
		}
	}
	return kr, p
}

func TestFederationOwnKeys(t *testing.T) {
	n := startNode(t, nodeOpts{})
	before := time.Now()
	kr, _ := fetchOwnKeys(t, n, "/_matrix/key/v2/server")
	if kr.ServerName != n.name {
		t.Fatalf("server_name %q, want %q", kr.ServerName, n.name)
	}
	if got := kr.VerifyKeys[n.keys[0].ID].Key; got != EncodeKey(n.keys[0].Public()) {
		t.Fatalf("verify key %s = %q, want our public key", n.keys[0].ID, got)
	}
	if kr.OldVerifyKeys == nil || len(kr.OldVerifyKeys) != 0 {
		t.Fatalf("old_verify_keys before any rotation: %v, want {} (required by the spec)", kr.OldVerifyKeys)
	}
	// Default validity is 7 days.
	want := before.Add(7 * 24 * time.Hour).UnixMilli()
	if kr.ValidUntilTS < want-60_000 || kr.ValidUntilTS > want+60_000 {
		t.Fatalf("valid_until_ts %d, want about %d", kr.ValidUntilTS, want)
	}
	// The deprecated per-key form answers the same document.
	legacy, _ := fetchOwnKeys(t, n, "/_matrix/key/v2/server/"+n.keys[0].ID)
	if legacy.VerifyKeys[n.keys[0].ID] != kr.VerifyKeys[n.keys[0].ID] {
		t.Fatal("legacy /server/{keyId} differs")
	}
}

func TestFederationOwnKeysConfiguredValidity(t *testing.T) {
	n := startNode(t, nodeOpts{keyValidity: 2 * time.Hour})
	kr, _ := fetchOwnKeys(t, n, "/_matrix/key/v2/server")
	want := time.Now().Add(2 * time.Hour).UnixMilli()
	if kr.ValidUntilTS < want-60_000 || kr.ValidUntilTS > want+60_000 {
		t.Fatalf("valid_until_ts %d, want about %d (key_validity 2h)", kr.ValidUntilTS, want)
	}
}

// TestFederationKeysRotate runs what `edge keys rotate` runs and checks
// the restarted node publishes the old key with its expiry, and signs
// with the new one only.
func TestFederationKeysRotate(t *testing.T) {
	n := startNode(t, nodeOpts{})
	oldKey := n.keys[0]
	n.stop()

	at := time.Now()
	keyPath := filepath.Join(n.dir, "signing.key")
	fresh, retired, err := RotateKeys(keyPath, n.cfg.OldKeysPath(), at)
	if err != nil {
		t.Fatal(err)
	}
	if len(retired) != 1 || retired[0].ID != oldKey.ID {
		t.Fatalf("retired %v, want %s", retired, oldKey.ID)
	}
	if fresh.ID == oldKey.ID {
		t.Fatal("the new key has the old key's ID")
	}
	if cur, _ := config.ReadSigningKeys(keyPath); len(cur) != 1 || cur[0].ID != fresh.ID {
		t.Fatalf("key file holds %v, want only %s", cur, fresh.ID)
	}

	n2 := startNode(t, nodeOpts{dir: n.dir, name: n.name})
	kr, p := fetchOwnKeys(t, n2, "/_matrix/key/v2/server")
	if _, ok := kr.VerifyKeys[fresh.ID]; !ok || len(kr.VerifyKeys) != 1 {
		t.Fatalf("verify_keys %v, want only %s", kr.VerifyKeys, fresh.ID)
	}
	old, ok := kr.OldVerifyKeys[oldKey.ID]
	if !ok {
		t.Fatalf("old_verify_keys %v lacks %s", kr.OldVerifyKeys, oldKey.ID)
	}
	if old.ExpiredTS != at.UnixMilli() || old.Key != EncodeKey(oldKey.Public()) {
		t.Fatalf("old key %+v, want expired_ts %d and the old public key", old, at.UnixMilli())
	}
	if _, signedByOld := p.so.signatures[n2.name][oldKey.ID]; signedByOld {
		t.Fatal("the response is still signed by the retired key")
	}

	// A second rotation keeps the first retired key too.
	n2.stop()
	if _, _, err := RotateKeys(keyPath, n.cfg.OldKeysPath(), time.Now()); err != nil {
		t.Fatal(err)
	}
	olds, err := ReadOldKeys(n.cfg.OldKeysPath())
	if err != nil || len(olds) != 2 || olds[0].ID != oldKey.ID || olds[1].ID != fresh.ID {
		t.Fatalf("old keys after two rotations: %v, %v", olds, err)
	}
}

func TestFederationOldKeysFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, content, want string }{
		{"fields", "ed25519 abc\n", "want"},
		{"key", "ed25519 abc notbase64!! 123\n", "base64"},
		{"ts", "ed25519 abc " + strings.Repeat("A", 43) + " soon\n", "expired_ts"},
	} {
		path := filepath.Join(dir, tc.name)
		if err := writeAtomic(path, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadOldKeys(path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want mention of %q", tc.name, err, tc.want)
		}
	}
	if keys, err := ReadOldKeys(filepath.Join(dir, "missing")); err != nil || keys != nil {
		t.Fatalf("missing file: %v %v, want no keys and no error", keys, err)
	}
}

func TestFederationConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edge.yaml")
	yaml := `server_name: example.org
federation:
  key_validity: 48h
  retry_max_interval: 1h
  trusted_key_servers:
    - server_name: notary.example
      verify_keys:
        "ed25519:a": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"
`
	if err := writeAtomic(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Federation
	if f.KeyValidity != 48*time.Hour || f.RetryMaxInterval != time.Hour || f.RetryMinInterval != 10*time.Second {
		t.Fatalf("durations %v %v %v", f.KeyValidity, f.RetryMaxInterval, f.RetryMinInterval)
	}
	if len(f.TrustedKeyServers) != 1 || f.TrustedKeyServers[0].ServerName != "notary.example" {
		t.Fatalf("trusted_key_servers %+v", f.TrustedKeyServers)
	}
	if cfg.OldKeysPath() != filepath.Join(dir, "signing.key.old") {
		t.Fatalf("old keys path %q", cfg.OldKeysPath())
	}
	def := config.Default("example.org").Federation
	if len(def.TrustedKeyServers) != 1 || def.TrustedKeyServers[0].ServerName != "matrix.org" ||
		def.TrustedKeyServers[0].VerifyKeys["ed25519:auto"] != "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw" {
		t.Fatalf("default notaries %+v", def.TrustedKeyServers)
	}
	for _, bad := range []string{
		"federation:\n  key_validity: 10m\n",
		"federation:\n  trusted_key_servers:\n    - server_name: n.example\n      verify_keys: {}\n",
		"federation:\n  trusted_key_servers:\n    - server_name: n.example\n      verify_keys: {\"ed25519:a\": \"short\"}\n",
		"federation:\n  retry_min_interval: 2h\n  retry_max_interval: 1h\n",
	} {
		if err := writeAtomic(path, []byte("server_name: example.org\n"+bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := config.Load(path); err == nil || !strings.Contains(err.Error(), "federation.") {
			t.Errorf("config %q: err %v, want a federation field error", bad, err)
		}
	}
}
