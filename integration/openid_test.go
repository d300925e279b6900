package integration

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"edge/edge/store"
)

// rfHTTPClient trusts the test CA, to call a node's federation listener
// the way a third party would.
func rfHTTPClient(ca *rfCA) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// TestOpenIDUserInfo: alice gets an OpenID token from A; an unsigned
// GET /openid/userinfo on A's federation listener names her, while an
// unknown, an expired and a missing token are 401 M_UNKNOWN_TOKEN, and
// asking for another user's token is 403.
func TestOpenIDUserInfo(t *testing.T) {
	ca := newRFCA(t)
	a := startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := a.register(t, "bob")
	ctx := ctxT(t)

	var tok struct {
		AccessToken      string `json:"access_token"`
		TokenType        string `json:"token_type"`
		MatrixServerName string `json:"matrix_server_name"`
		ExpiresIn        int64  `json:"expires_in"`
	}
	u := alice.BuildClientURL("v3", "user", alice.UserID, "openid", "request_token")
	if _, err := alice.MakeRequest(ctx, http.MethodPost, u, struct{}{}, &tok); err != nil {
		t.Fatalf("request_token: %v", err)
	}
	if tok.AccessToken == "" || tok.TokenType != "Bearer" || tok.MatrixServerName != a.Name || tok.ExpiresIn != 3600 {
		t.Fatalf("request_token answered %+v", tok)
	}

	_, err := bob.MakeRequest(ctx, http.MethodPost, bob.BuildClientURL("v3", "user", alice.UserID, "openid", "request_token"), struct{}{}, nil)
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response.StatusCode != http.StatusForbidden || he.RespError.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("token for another user: %v, want 403 M_FORBIDDEN", err)
	}

	hc := rfHTTPClient(ca)
	userinfo := func(token string) (int, map[string]string) {
		t.Helper()
		q := ""
		if token != "" {
			q = "?access_token=" + url.QueryEscape(token)
		}
		resp, err := hc.Get(fmt.Sprintf("https://%s/_matrix/federation/v1/openid/userinfo%s", a.Name, q))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("userinfo body: %v", err)
		}
		return resp.StatusCode, body
	}
	if st, body := userinfo(tok.AccessToken); st != http.StatusOK || body["sub"] != alice.UserID.String() {
		t.Fatalf("userinfo with alice's token: %d %v", st, body)
	}
	for _, bad := range []string{"", "not-a-token", tok.AccessToken + "x"} {
		if st, body := userinfo(bad); st != http.StatusUnauthorized || body["errcode"] != "M_UNKNOWN_TOKEN" {
			t.Fatalf("userinfo with %q: %d %v, want 401 M_UNKNOWN_TOKEN", bad, st, body)
		}
	}

	// Age a token past its expiry in the store: it stops working.
	sum := sha256.Sum256([]byte(tok.AccessToken))
	rec, _ := json.Marshal(map[string]any{"user_id": alice.UserID.String(), "expires_ts": time.Now().Add(-time.Second).UnixMilli()})
	if err := a.Store.Write(func(tx *store.Tx) error {
		tx.PutKV("openid", hex.EncodeToString(sum[:]), rec)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if st, body := userinfo(tok.AccessToken); st != http.StatusUnauthorized || body["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("userinfo with an expired token: %d %v, want 401 M_UNKNOWN_TOKEN", st, body)
	}
}
