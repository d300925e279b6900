package integration

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"testing"
)

// TestAdminRegisterSynapseMAC registers an admin the way Synapse's
// register_new_matrix_user does, computing the HMAC here from the
// documented scheme (not with edge's own helper), then checks the admin
// can use the admin API.
func TestAdminRegisterSynapseMAC(t *testing.T) {
	n := startNode(t) // shared secret "test-shared-secret"
	url := n.URL + "/_synapse/admin/v1/register"
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&nonce)
	resp.Body.Close()
	if nonce.Nonce == "" {
		t.Fatal("no nonce")
	}
	mac := hmac.New(sha1.New, []byte("test-shared-secret"))
	mac.Write([]byte(nonce.Nonce + "\x00" + "root" + "\x00" + "a long password" + "\x00" + "admin"))
	body, _ := json.Marshal(map[string]any{"nonce": nonce.Nonce, "username": "root", "password": "a long password",
		"admin": true, "mac": hex.EncodeToString(mac.Sum(nil))})
	resp, err = http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var reg struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&reg)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || reg.UserID != "@root:localhost" || reg.AccessToken == "" {
		t.Fatalf("register: HTTP %d %+v", resp.StatusCode, reg)
	}
	req, _ := http.NewRequest(http.MethodGet, n.URL+"/_synapse/admin/v2/users", nil)
	req.Header.Set("Authorization", "Bearer "+reg.AccessToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the registered admin cannot list users: HTTP %d", resp.StatusCode)
	}
}
