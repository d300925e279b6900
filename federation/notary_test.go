package federation

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"
)

// notaryAnswerOf decodes a notary answer and checks each response's origin
// and notary signatures.
func notaryAnswerOf(t *testing.T, n *testNode, body []byte) []*parsedKeys {
	t.Helper()
	var resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	nk := notaryKeys{name: n.name, keys: map[string]ed25519.PublicKey{n.keys[0].ID: n.keys[0].Public()}}
	var out []*parsedKeys
	for _, raw := range resp.ServerKeys {
		var head struct {
			ServerName string `json:"server_name"`
		}
		_ = json.Unmarshal(raw, &head)
		p, err := parseKeyResponse(raw, head.ServerName)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.verifyNotary(nk); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func TestFederationNotaryServes(t *testing.T) {
	b := startNode(t, nodeOpts{})
	n := startNode(t, nodeOpts{})
	n.srv.Keyring.RefetchMin = 0
	q := "/_matrix/key/v2/query/" + url.PathEscape(b.name)

	status, body := call(t, n, "GET", q, nil, "")
	if status != 200 {
		t.Fatalf("GET query: %d %s", status, body)
	}
	got := notaryAnswerOf(t, n, body)
	if len(got) != 1 || got[0].server != b.name || !got[0].verify[b.keys[0].ID].Equal(b.keys[0].Public()) {
		t.Fatalf("answer %+v", got)
	}
	if b.hits.get(keyPath) != 1 {
		t.Fatalf("b asked %d times", b.hits.get(keyPath))
	}
	// Cached: a second query does not go to b.
	call(t, n, "GET", q, nil, "")
	if b.hits.get(keyPath) != 1 {
		t.Fatal("the notary did not answer from its cache")
	}
	// A minimum validity beyond the cached response makes it ask again.
	later := strconv.FormatInt(time.Now().Add(30*24*time.Hour).UnixMilli(), 10)
	status, body = call(t, n, "GET", q+"?minimum_valid_until_ts="+later, nil, "")
	if status != 200 || len(notaryAnswerOf(t, n, body)) != 1 || b.hits.get(keyPath) != 2 {
		t.Fatalf("minimum_valid_until_ts beyond the cache: %d, b asked %d times, want a refetch", status, b.hits.get(keyPath))
	}
	// When b is gone the last response is still served.
	b.stop()
	status, body = call(t, n, "GET", q+"?minimum_valid_until_ts="+later, nil, "")
	if status != 200 || len(notaryAnswerOf(t, n, body)) != 1 {
		t.Fatalf("origin down: %d %s, want the stored response", status, body)
	}

	// Batch form: the known server, ourselves, and an unreachable one.
	dead := reservePort(t)
	query := fmt.Sprintf(`{"server_keys":{%q:{%q:{"minimum_valid_until_ts":1}},%q:{},%q:{}}}`, b.name, b.keys[0].ID, n.name, dead)
	status, body = call(t, n, "POST", "/_matrix/key/v2/query", []byte(query), "")
	if status != 200 {
		t.Fatalf("POST query: %d %s", status, body)
	}
	got = notaryAnswerOf(t, n, body)
	names := map[string]bool{}
	for _, p := range got {
		names[p.server] = true
	}
	if len(got) != 2 || !names[b.name] || !names[n.name] {
		t.Fatalf("batch answered for %v, want %s and %s (the unreachable server omitted)", names, b.name, n.name)
	}
}

func TestFederationNotaryBadRequests(t *testing.T) {
	n := startNode(t, nodeOpts{})
	many := map[string]any{}
	for i := range maxNotaryServers + 1 {
		many[fmt.Sprintf("s%d.example", i)] = map[string]any{}
	}
	tooMany, _ := json.Marshal(map[string]any{"server_keys": many})
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"not JSON", "POST", "/_matrix/key/v2/query", "{nope", 400, "M_NOT_JSON"},
		{"server_keys missing", "POST", "/_matrix/key/v2/query", `{}`, 400, "M_BAD_JSON"},
		{"server_keys wrong type", "POST", "/_matrix/key/v2/query", `{"server_keys":[]}`, 400, "M_BAD_JSON"},
		{"too many servers", "POST", "/_matrix/key/v2/query", string(tooMany), 400, "M_INVALID_PARAM"},
		{"bad minimum_valid_until_ts", "GET", "/_matrix/key/v2/query/example.org?minimum_valid_until_ts=soon", "", 400, "M_INVALID_PARAM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(t, n, tc.method, tc.path, []byte(tc.body), "")
			if status != tc.status || errcode(t, body) != tc.code {
				t.Fatalf("%d %s, want %d %s", status, body, tc.status, tc.code)
			}
		})
	}
	// An invalid server name is no keys, not an error.
	status, body := call(t, n, "GET", "/_matrix/key/v2/query/bad%20name", nil, "")
	if status != 200 || string(body) != `{"server_keys":[]}` {
		t.Fatalf("invalid server name: %d %s", status, body)
	}
}

func TestFederationVersionAndUnknownRoutes(t *testing.T) {
	n := startNode(t, nodeOpts{})
	status, body := call(t, n, "GET", "/_matrix/federation/v1/version", nil, "")
	var v struct {
		Server struct{ Name, Version string } `json:"server"`
	}
	if status != 200 || json.Unmarshal(body, &v) != nil || v.Server.Name != "edge" || v.Server.Version != "test" {
		t.Fatalf("version: %d %s", status, body)
	}
	status, body = call(t, n, "GET", "/_matrix/federation/v1/nothing", nil, "")
	if status != http.StatusNotFound || errcode(t, body) != "M_UNRECOGNIZED" {
		t.Fatalf("unknown endpoint: %d %s", status, body)
	}
	status, body = call(t, n, "DELETE", "/_matrix/federation/v1/version", nil, "")
	if status != http.StatusMethodNotAllowed || errcode(t, body) != "M_UNRECOGNIZED" {
		t.Fatalf("unknown method: %d %s", status, body)
	}
}
