package integration

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"edge/edge/config"
)

// TestRefreshTokens: a login that asks for a refresh token gets one and an
// expiring access token; POST /refresh trades it for a new pair once, the
// old access token stops working, and the device (so its transaction IDs)
// stays the same. An expired access token is a soft logout.
func TestRefreshTokens(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.Registration.RefreshableTokenLifetime = 2 * time.Second })
	alice := n.register(t, "")
	anon, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	login, _ := json.Marshal(map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": alice.UserID.String()},
		"password": "correct horse battery", "refresh_token": true})
	r := doRaw(t, anon, http.MethodPost, anon.BuildClientURL("v3", "login"), login, nil)
	if r.Status != 200 {
		t.Fatalf("login: %d %s", r.Status, r.Raw)
	}
	access, _ := r.Body["access_token"].(string)
	refresh, _ := r.Body["refresh_token"].(string)
	device, _ := r.Body["device_id"].(string)
	if ms, _ := r.Body["expires_in_ms"].(float64); refresh == "" || ms != 2000 {
		t.Fatalf("login without refresh_token/expires_in_ms 2000: %s", r.Raw)
	}
	c, _ := mautrix.NewClient(n.URL, alice.UserID, access)
	roomID := mustCreateRoom(t, c, &mautrix.ReqCreateRoom{})
	first, err := c.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi"}, mautrix.ReqSendEvent{TransactionID: "txn1"})
	if err != nil {
		t.Fatal(err)
	}

	body, _ := json.Marshal(map[string]string{"refresh_token": refresh})
	r = doRaw(t, anon, http.MethodPost, anon.BuildClientURL("v3", "refresh"), body, nil)
	if r.Status != 200 {
		t.Fatalf("refresh: %d %s", r.Status, r.Raw)
	}
	newAccess, _ := r.Body["access_token"].(string)
	newRefresh, _ := r.Body["refresh_token"].(string)
	if newAccess == "" || newAccess == access || newRefresh == "" || newRefresh == refresh || r.Body["expires_in_ms"] == nil {
		t.Fatalf("refresh answered %s", r.Raw)
	}
	// The used refresh token and the old access token are dead.
	doRaw(t, anon, http.MethodPost, anon.BuildClientURL("v3", "refresh"), body, nil).want(t, 401, "M_UNKNOWN_TOKEN")
	if _, err := c.Whoami(ctxT(t)); err == nil {
		t.Fatal("the old access token still works after its refresh")
	}
	c.AccessToken = newAccess
	who, err := c.Whoami(ctxT(t))
	if err != nil || who.DeviceID.String() != device {
		t.Fatalf("whoami with the new token: %+v %v, want device %s", who, err, device)
	}
	// Same device, so the same transaction ID is deduplicated.
	again, err := c.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi"}, mautrix.ReqSendEvent{TransactionID: "txn1"})
	if err != nil || again.EventID != first.EventID {
		t.Fatalf("resend after refresh: %v %v, want %s", again, err, first.EventID)
	}

	// Expiry: a soft logout, which the client cures with its refresh token.
	time.Sleep(2100 * time.Millisecond)
	r = doRaw(t, c, http.MethodGet, c.BuildClientURL("v3", "account", "whoami"), nil, nil)
	r.want(t, 401, "M_UNKNOWN_TOKEN")
	if r.Body["soft_logout"] != true {
		t.Fatalf("expired token: %s, want soft_logout true", r.Raw)
	}
	body, _ = json.Marshal(map[string]string{"refresh_token": newRefresh})
	if r = doRaw(t, anon, http.MethodPost, anon.BuildClientURL("v3", "refresh"), body, nil); r.Status != 200 {
		t.Fatalf("refresh after expiry: %d %s", r.Status, r.Raw)
	}
	// Clients that did not ask for a refresh token keep non-expiring tokens.
	if _, err := alice.Whoami(ctxT(t)); err != nil {
		t.Fatalf("plain token expired: %v", err)
	}
}
