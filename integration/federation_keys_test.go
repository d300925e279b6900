package integration

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"edge/edge/config"
	"edge/federation"
)

// TestFederationNotary: A trusts notary N. N has fetched B's keys; B goes
// down; a request B signed still authenticates at A (A gets B's key from
// N, checking N's signature and B's own), and N's query endpoint serves
// B's key response signed by both.
func TestFederationNotary(t *testing.T) {
	ca := newFedCA(t)
	n := newFedNode(t, ca, fedOpts{})
	b := newFedNode(t, ca, fedOpts{})
	var inboxA fedInbox
	nk := n.signingKey()
	a := newFedNode(t, ca, fedOpts{setup: inboxA.install, cfg: func(c *config.Config) {
		c.Federation.TrustedKeyServers = []config.TrustedKeyServer{{
			ServerName: n.Name, VerifyKeys: map[string]string{nk.ID: base64.RawStdEncoding.EncodeToString(nk.Public())},
		}}
	}})
	ctx := ctxT(t)
	bk := b.signingKey()

	// N asks B directly while B is up.
	if _, err := n.Fed.Keyring.VerifyKey(ctx, b.Name, bk.ID, time.Now()); err != nil {
		t.Fatalf("N fetching B's keys: %v", err)
	}
	b.stop()
	if _, err := ca.httpClient().Get(b.fedURL("/_matrix/key/v2/server")); err == nil {
		t.Fatal("B still answers after stopping")
	}

	// A request B signed (as B would send it) reaches A while B is down.
	body := fedTxn(b.Name, fedEDU("m.test", map[string]any{"n": "from-b"}))
	uri := "/_matrix/federation/v1/send/b-1"
	sig := fedSign(t, bk.Priv, "PUT", uri, b.Name, a.Name, body)
	if st, code := fedRaw(t, ca.httpClient(), http.MethodPut, a.fedURL(uri), fedAuthHeader(b.Name, a.Name, bk.ID, sig), body); st != http.StatusOK {
		t.Fatalf("B's signed request at A with B down: HTTP %d %s", st, code)
	}
	if edus, _ := inboxA.snapshot(); len(edus) != 1 || edus[0].Origin != b.Name {
		t.Fatalf("A's EDUs: %+v", edus)
	}
	pub, err := a.Fed.Keyring.VerifyKey(ctx, b.Name, bk.ID, time.Now())
	if err != nil || !pub.Equal(bk.Public()) {
		t.Fatalf("A's key for B: %v", err)
	}

	// N's notary answer, read raw: B's response with both signatures.
	resp, err := ca.httpClient().Get(n.fedURL("/_matrix/key/v2/query/" + b.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var q struct {
		ServerKeys []struct {
			ServerName string                       `json:"server_name"`
			Signatures map[string]map[string]string `json:"signatures"`
		} `json:"server_keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil || len(q.ServerKeys) != 1 {
		t.Fatalf("N's query answer: %+v %v", q, err)
	}
	sk := q.ServerKeys[0]
	if sk.ServerName != b.Name || sk.Signatures[b.Name][bk.ID] == "" || sk.Signatures[n.Name][nk.ID] == "" {
		t.Errorf("N's answer for B: server %s, signatures %v", sk.ServerName, sk.Signatures)
	}
}

// fakeServer is a server that is never up: only its keys exist.
type fakeServer struct {
	name  string
	keyID string
	priv  ed25519.PrivateKey
}

func newFakeServer(t *testing.T, keyID string) fakeServer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return fakeServer{name: freeAddr(t), keyID: keyID, priv: priv}
}

// keyResponse is the server's genuine, self-signed key response.
func (f fakeServer) keyResponse(t *testing.T) map[string]any {
	obj := map[string]any{
		"server_name":     f.name,
		"verify_keys":     map[string]any{f.keyID: map[string]string{"key": base64.RawStdEncoding.EncodeToString(f.priv.Public().(ed25519.PublicKey))}},
		"old_verify_keys": map[string]any{},
		"valid_until_ts":  time.Now().Add(24 * time.Hour).UnixMilli(),
	}
	return fedSignJSON(t, obj, f.name, f.keyID, f.priv)
}

// TestFederationLyingNotary: A's only notary is a small TLS server of the
// test's (httptest, certificate from the test CA) that answers for three
// servers which are down: honestly for one, with a key swapped under the
// origin's signature for another, and with a signature not made by the
// notary's key for the third. A accepts the first and catches both lies:
// the key lookups fail as invalid key responses and requests signed as
// those servers are refused.
func TestFederationLyingNotary(t *testing.T) {
	ca := newFedCA(t)
	honest := newFakeServer(t, "ed25519:h")
	swapped := newFakeServer(t, "ed25519:s")
	forgedNotary := newFakeServer(t, "ed25519:f")
	_, attacker, _ := ed25519.GenerateKey(rand.Reader)
	_, notaryPriv, _ := ed25519.GenerateKey(rand.Reader)
	_, impostor, _ := ed25519.GenerateKey(rand.Reader)
	const notaryKeyID = "ed25519:notary"

	var mu sync.Mutex
	asked := map[string]int{}
	var notaryName string
	answers := map[string]func() map[string]any{
		honest.name: func() map[string]any {
			return fedSignJSON(t, honest.keyResponse(t), notaryName, notaryKeyID, notaryPriv)
		},
		swapped.name: func() map[string]any {
			r := swapped.keyResponse(t) // the origin's signature stays, over the old key
			r["verify_keys"] = map[string]any{swapped.keyID: map[string]string{"key": base64.RawStdEncoding.EncodeToString(attacker.Public().(ed25519.PublicKey))}}
			return fedSignJSON(t, r, notaryName, notaryKeyID, notaryPriv)
		},
		forgedNotary.name: func() map[string]any {
			return fedSignJSON(t, forgedNotary.keyResponse(t), notaryName, notaryKeyID, impostor)
		},
	}
	notary := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/_matrix/key/v2/query" {
			http.NotFound(w, r)
			return
		}
		data, _ := io.ReadAll(r.Body)
		var q struct {
			ServerKeys map[string]json.RawMessage `json:"server_keys"`
		}
		_ = json.Unmarshal(data, &q)
		out := []any{}
		for name := range q.ServerKeys {
			mu.Lock()
			asked[name]++
			mu.Unlock()
			if f := answers[name]; f != nil {
				out = append(out, f())
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"server_keys": out})
	}))
	notary.TLS = &tls.Config{Certificates: []tls.Certificate{ca.tlsCert(t, "127.0.0.1")}}
	notary.StartTLS()
	defer notary.Close()
	notaryName = strings.TrimPrefix(notary.URL, "https://")

	var inboxA fedInbox
	a := newFedNode(t, ca, fedOpts{setup: inboxA.install, cfg: func(c *config.Config) {
		c.Federation.TrustedKeyServers = []config.TrustedKeyServer{{
			ServerName: notaryName,
			VerifyKeys: map[string]string{notaryKeyID: base64.RawStdEncoding.EncodeToString(notaryPriv.Public().(ed25519.PublicKey))},
		}}
	}})
	ctx := ctxT(t)
	hc := ca.httpClient()
	signedAs := func(f fakeServer, priv ed25519.PrivateKey, txnID string) (int, string) {
		body := fedTxn(f.name, fedEDU("m.test", map[string]any{"n": txnID}))
		uri := "/_matrix/federation/v1/send/" + txnID
		sig := fedSign(t, priv, "PUT", uri, f.name, a.Name, body)
		return fedRaw(t, hc, http.MethodPut, a.fedURL(uri), fedAuthHeader(f.name, a.Name, f.keyID, sig), body)
	}

	// The honest answer works end to end: the notary is reachable and trusted.
	if st, code := signedAs(honest, honest.priv, "honest"); st != http.StatusOK {
		t.Fatalf("request signed by the honestly notarised server: HTTP %d %s", st, code)
	}
	if pub, err := a.Fed.Keyring.VerifyKey(ctx, honest.name, honest.keyID, time.Now()); err != nil || !pub.Equal(honest.priv.Public().(ed25519.PublicKey)) {
		t.Fatalf("honest key: %v", err)
	}

	for _, tc := range []struct {
		name   string
		server fakeServer
		signer ed25519.PrivateKey
		want   string
	}{
		{"key swapped under the origin's signature", swapped, attacker, "self-signature"},
		{"notary signature not by the notary's key", forgedNotary, forgedNotary.priv, "notary"},
	} {
		if st, code := signedAs(tc.server, tc.signer, "lie"); st != http.StatusUnauthorized || code != "M_UNAUTHORIZED" {
			t.Errorf("%s: request accepted or mis-refused: HTTP %d %s", tc.name, st, code)
		}
		_, err := a.Fed.Keyring.VerifyKey(ctx, tc.server.name, tc.server.keyID, time.Now())
		if !errors.Is(err, federation.ErrBadKeyResponse) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: key lookup error %v, want an invalid key response (%s)", tc.name, err, tc.want)
		}
		mu.Lock()
		n := asked[tc.server.name]
		mu.Unlock()
		if n == 0 {
			t.Errorf("%s: the notary was never asked, so nothing was caught", tc.name)
		}
	}
	edus, _ := inboxA.snapshot()
	if len(edus) != 1 || edus[0].Origin != honest.name {
		t.Errorf("A's hooks saw %+v, want only the honest server's EDU", edus)
	}
}
