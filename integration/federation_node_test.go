package integration

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	"maunium.net/go/mautrix/crypto/canonicaljson"

	"edge/edge/config"
)

// TestFederationNodeWiring: a whole node serves its signing keys (self-
// signed with the key in its key file), the federation version, its
// .well-known delegation, and refuses unsigned federation requests.
func TestFederationNodeWiring(t *testing.T) {
	n := startNode(t, func(c *config.Config) {
		c.WellKnownServer = "matrix.example.org:443"
		c.PublicBaseURL = "https://matrix.example.org"
	})
	get := func(path string, v any) int {
		t.Helper()
		resp, err := http.Get(n.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if v != nil {
			_ = json.NewDecoder(resp.Body).Decode(v)
		}
		return resp.StatusCode
	}

	var keys map[string]json.RawMessage
	if st := get("/_matrix/key/v2/server", &keys); st != http.StatusOK {
		t.Fatalf("key server: HTTP %d", st)
	}
	var verify map[string]struct {
		Key string `json:"key"`
	}
	var sigs map[string]map[string]string
	_ = json.Unmarshal(keys["verify_keys"], &verify)
	_ = json.Unmarshal(keys["signatures"], &sigs)
	own := n.Keys[0]
	if verify[own.ID].Key != base64.RawStdEncoding.EncodeToString(own.Public()) {
		t.Fatalf("verify_keys %v do not hold the key file's key %s", verify, own.ID)
	}
	unsigned := map[string]json.RawMessage{}
	for k, v := range keys {
		if k != "signatures" {
			unsigned[k] = v
		}
	}
	raw, _ := json.Marshal(unsigned)
	canon, err := canonicaljson.CanonicalJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.RawStdEncoding.DecodeString(sigs["localhost"][own.ID])
	if err != nil || !ed25519.Verify(own.Public(), canon, sig) {
		t.Fatalf("key response is not self-signed by %s", own.ID)
	}

	var ver struct {
		Server struct{ Name string } `json:"server"`
	}
	if st := get("/_matrix/federation/v1/version", &ver); st != http.StatusOK || ver.Server.Name != "edge" {
		t.Fatalf("version: HTTP %d %+v", st, ver)
	}
	var wk map[string]string
	if st := get("/.well-known/matrix/server", &wk); st != http.StatusOK || wk["m.server"] != "matrix.example.org:443" {
		t.Fatalf("well-known server: HTTP %d %v", st, wk)
	}
	var wkc map[string]map[string]string
	if st := get("/.well-known/matrix/client", &wkc); st != http.StatusOK || wkc["m.homeserver"]["base_url"] != "https://matrix.example.org" {
		t.Fatalf("well-known client: HTTP %d %v", st, wkc)
	}

	req, _ := http.NewRequest(http.MethodPut, n.URL+"/_matrix/federation/v1/send/t1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		Code string `json:"errcode"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || e.Code != "M_UNAUTHORIZED" {
		t.Fatalf("unsigned /send: HTTP %d %s", resp.StatusCode, e.Code)
	}
}
