package integration

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"
)

// TestFederationSignedRequests: three nodes with TLS federation
// listeners. A fetches B's keys from B and verifies them; A's signed
// requests reach B; hand-made X-Matrix requests to B's listener are
// accepted only when genuinely signed by the origin for B: a forged
// signature, a tampered body, a request made for C (replayed to B), an
// unknown key or an unknown origin get 401 M_UNAUTHORIZED and reach no
// hook.
func TestFederationSignedRequests(t *testing.T) {
	ca := newFedCA(t)
	var inboxB, inboxC fedInbox
	a := newFedNode(t, ca, fedOpts{})
	b := newFedNode(t, ca, fedOpts{setup: inboxB.install})
	c := newFedNode(t, ca, fedOpts{setup: inboxC.install})
	ctx := ctxT(t)

	// A establishes B's key from B's own key server.
	pub, err := a.Fed.Keyring.VerifyKey(ctx, b.Name, b.signingKey().ID, time.Now())
	if err != nil {
		t.Fatalf("A fetching B's keys: %v", err)
	}
	if !pub.Equal(b.signingKey().Public()) {
		t.Fatal("A holds a key for B that is not B's")
	}
	// …and B has no key by that ID for A: keys are per server.
	if _, err := a.Fed.Keyring.VerifyKey(ctx, b.Name, "ed25519:nonexistent", time.Now()); err == nil {
		t.Fatal("A found a key B never published")
	}

	// Signed requests through A's federation client.
	var ver struct {
		Server struct{ Name string } `json:"server"`
	}
	if err := a.Fed.Client.Get(ctx, b.Name, "/_matrix/federation/v1/version", &ver); err != nil || ver.Server.Name != "edge" {
		t.Fatalf("A → B version: %+v %v", ver, err)
	}
	var answer struct {
		PDUs map[string]any `json:"pdus"`
	}
	if err := a.Fed.Client.Put(ctx, b.Name, "/_matrix/federation/v1/send/client-1",
		json.RawMessage(fedTxn(a.Name, fedEDU("m.test", map[string]any{"n": "client"}))), &answer); err != nil {
		t.Fatalf("A → B transaction: %v", err)
	}
	if answer.PDUs == nil {
		t.Error("transaction answer lacks pdus")
	}

	hc := ca.httpClient()
	ak := a.signingKey()
	send := func(target *fedNode, txnID, auth string, body []byte) (int, string) {
		t.Helper()
		return fedRaw(t, hc, http.MethodPut, target.fedURL("/_matrix/federation/v1/send/"+txnID), auth, body)
	}
	uriOf := func(txnID string) string { return "/_matrix/federation/v1/send/" + txnID }

	// Positive control: the hand-made signature is what the spec asks for.
	body := fedTxn(a.Name, fedEDU("m.test", map[string]any{"n": "raw-ok"}))
	sig := fedSign(t, ak.Priv, "PUT", uriOf("raw-ok"), a.Name, b.Name, body)
	if st, code := send(b, "raw-ok", fedAuthHeader(a.Name, b.Name, ak.ID, sig), body); st != http.StatusOK {
		t.Fatalf("genuine hand-signed request: HTTP %d %s", st, code)
	}

	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	type refusal struct {
		name, txnID, auth string
		body              []byte
	}
	var refused []refusal
	add := func(name, txnID, auth string, body []byte) {
		refused = append(refused, refusal{name, txnID, auth, body})
	}
	{
		body := fedTxn(a.Name, fedEDU("m.test", map[string]any{"n": "forged"}))
		sig := fedSign(t, otherPriv, "PUT", uriOf("forged"), a.Name, b.Name, body)
		add("forged signature", "forged", fedAuthHeader(a.Name, b.Name, ak.ID, sig), body)
	}
	{
		body := fedTxn(a.Name, fedEDU("m.test", map[string]any{"n": "tampered"}))
		sig := fedSign(t, ak.Priv, "PUT", uriOf("tampered"), a.Name, b.Name, body)
		other := bytes.Replace(body, []byte(`"tampered"`), []byte(`"tampered!"`), 1)
		add("body changed after signing", "tampered", fedAuthHeader(a.Name, b.Name, ak.ID, sig), other)
	}
	{
		sig := fedSign(t, ak.Priv, "PUT", uriOf("other-path"), a.Name, b.Name, body)
		add("signature for another path", "moved", fedAuthHeader(a.Name, b.Name, ak.ID, sig), body)
	}
	// A's request to C, replayed to B as it was, and with its destination rewritten.
	replay := fedTxn(a.Name, fedEDU("m.test", map[string]any{"n": "replay"}))
	replaySig := fedSign(t, ak.Priv, "PUT", uriOf("replay"), a.Name, c.Name, replay)
	add("request for C replayed to B", "replay", fedAuthHeader(a.Name, c.Name, ak.ID, replaySig), replay)
	add("request for C with destination rewritten to B", "replay", fedAuthHeader(a.Name, b.Name, ak.ID, replaySig), replay)
	{
		body := fedTxn(a.Name, fedEDU("m.test", map[string]any{"n": "unknown-key"}))
		sig := fedSign(t, ak.Priv, "PUT", uriOf("unknown-key"), a.Name, b.Name, body)
		add("unknown key ID", "unknown-key", fedAuthHeader(a.Name, b.Name, "ed25519:unknown", sig), body)
	}
	{
		ghost := freeAddr(t) // no server there: its keys cannot be had
		body := fedTxn(ghost, fedEDU("m.test", map[string]any{"n": "ghost"}))
		sig := fedSign(t, otherPriv, "PUT", uriOf("ghost"), ghost, b.Name, body)
		add("unknown origin", "ghost", fedAuthHeader(ghost, b.Name, "ed25519:a", sig), body)
	}
	add("no Authorization header", "none", "", body)
	add("malformed X-Matrix header", "malformed", `X-Matrix origin="`+a.Name+`",key=`, body)
	add("another scheme", "bearer", "Bearer abc", body)
	for _, tc := range refused {
		if st, code := send(b, tc.txnID, tc.auth, tc.body); st != http.StatusUnauthorized || code != "M_UNAUTHORIZED" {
			t.Errorf("%s: HTTP %d %s, want 401 M_UNAUTHORIZED", tc.name, st, code)
		}
	}
	// The request made for C is genuine there.
	if st, code := send(c, "replay", fedAuthHeader(a.Name, c.Name, ak.ID, replaySig), replay); st != http.StatusOK {
		t.Errorf("A's request at its real destination C: HTTP %d %s", st, code)
	}

	// B's hooks saw exactly the two genuine transactions, from A.
	edus, _ := inboxB.snapshot()
	var got []string
	for _, e := range edus {
		if e.Origin != a.Name {
			t.Errorf("B received an EDU from %q", e.Origin)
		}
		got = append(got, e.Content["n"].(string))
	}
	if !slices.Equal(got, []string{"client", "raw-ok"}) {
		t.Errorf("B's EDUs: %v, want [client raw-ok]", got)
	}
	if edus, _ := inboxC.snapshot(); len(edus) != 1 || edus[0].Content["n"] != "replay" {
		t.Errorf("C's EDUs: %+v", edus)
	}
}

// TestFederationTLSListener: the federation listener speaks HTTP/2 and
// HTTP/1.1 over TLS with the configured certificate, the client listener
// stays plain HTTP and answers federation too, and a certificate replaced
// on disk is served without a restart.
func TestFederationTLSListener(t *testing.T) {
	ca := newFedCA(t)
	b := newFedNode(t, ca, fedOpts{})

	get := func(hc *http.Client, url string) *http.Response {
		t.Helper()
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get(ca.httpClient(), b.fedURL("/_matrix/key/v2/server")); resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Errorf("keys over TLS: HTTP %d %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, NextProtos: []string{"http/1.1"}}}}
	if resp := get(h1, b.fedURL("/_matrix/federation/v1/version")); resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
		t.Errorf("version over HTTP/1.1: HTTP %d %s", resp.StatusCode, resp.Proto)
	}
	if resp := get(http.DefaultClient, "http://"+b.ClientAddr+"/_matrix/key/v2/server"); resp.StatusCode != http.StatusOK {
		t.Errorf("keys on the plain client listener: HTTP %d", resp.StatusCode)
	}
	if resp := get(http.DefaultClient, "http://"+b.ClientAddr+"/_matrix/client/versions"); resp.StatusCode != http.StatusOK {
		t.Errorf("client API: HTTP %d", resp.StatusCode)
	}

	// Renewal: a certificate from another CA is written over the files.
	ca2 := newFedCA(t)
	trusts2 := func() bool {
		conn, err := tls.Dial("tcp", b.FedAddr, &tls.Config{RootCAs: ca2.pool, ServerName: "127.0.0.1"})
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	if trusts2() {
		t.Fatal("the second CA verifies the first certificate")
	}
	certPEM, keyPEM := ca2.issue(t, "127.0.0.1")
	later := time.Now().Add(time.Second)
	for _, f := range []struct {
		path string
		data []byte
	}{{b.Config.Path(b.Config.TLSKeyFile), keyPEM}, {b.Config.Path(b.Config.TLSCertFile), certPEM}} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(f.path, later, later); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 15*time.Second, "the renewed certificate to be served", trusts2)
}
