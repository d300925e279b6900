package integration

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"edge/edge/config"
)

// TestVoIPTurnServer checks the credentials as coturn would: the username
// is "<expiry>:<user>" with the expiry a lifetime ahead, and the password
// is the HMAC-SHA1 of the username under the shared secret.
func TestVoIPTurnServer(t *testing.T) {
	const secret = "coturn-static-auth-secret"
	uris := []string{"turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"}
	n := startNode(t, func(c *config.Config) {
		c.VoIP.TurnURIs = uris
		c.VoIP.TurnSharedSecret = secret
		c.VoIP.TurnUserLifetime = 2 * time.Hour
	})
	alice := n.register(t, "")
	resp, err := alice.TurnServer(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	expiry, user, ok := strings.Cut(resp.Username, ":")
	if !ok || user != string(alice.UserID) {
		t.Fatalf("username %q is not expiry:%s", resp.Username, alice.UserID)
	}
	exp, err := strconv.ParseInt(expiry, 10, 64)
	if err != nil {
		t.Fatalf("expiry %q: %v", expiry, err)
	}
	if d := exp - time.Now().Add(2*time.Hour).Unix(); d < -60 || d > 60 {
		t.Fatalf("expiry %d is %ds off now+2h", exp, d)
	}
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(resp.Username))
	if resp.Password != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
		t.Fatalf("password %q does not verify", resp.Password)
	}
	if resp.TTL != 7200 || len(resp.URIs) != 2 || resp.URIs[0] != uris[0] || resp.URIs[1] != uris[1] {
		t.Fatalf("ttl/uris = %d %v", resp.TTL, resp.URIs)
	}
	anon, _ := mautrix.NewClient(n.URL, "", "")
	if _, err := anon.TurnServer(ctxT(t)); err == nil {
		t.Fatal("turnServer without a token succeeded")
	}
}

// TestVoIPNotConfigured: without a TURN server the answer is {}.
func TestVoIPNotConfigured(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	st, body := relHTTP(t, alice, "GET", "/_matrix/client/v3/voip/turnServer", nil)
	if st != 200 || len(body) != 0 {
		t.Fatalf("turnServer unconfigured: %d %v", st, body)
	}
}

// TestVoIPCallEventsPassThrough: a 1:1 call is m.call.* events, which reach
// the callee unchanged.
func TestVoIPCallEventsPassThrough(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "trusted_private_chat", IsDirect: true})
	if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	offer := map[string]any{"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
	invite := sendJSON(t, alice, roomID, "m.call.invite", map[string]any{"call_id": "c1", "party_id": "p1", "version": "1", "lifetime": 60000, "offer": offer})
	cand := sendJSON(t, alice, roomID, "m.call.candidates", map[string]any{"call_id": "c1", "party_id": "p1", "version": "1",
		"candidates": []any{map[string]any{"candidate": "candidate:1 1 UDP 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}}})
	answer := sendJSON(t, bob, roomID, "m.call.answer", map[string]any{"call_id": "c1", "party_id": "p2", "version": "1", "answer": map[string]any{"type": "answer", "sdp": "v=0\r\n"}})
	hangup := sendJSON(t, alice, roomID, "m.call.hangup", map[string]any{"call_id": "c1", "party_id": "p1", "version": "1", "reason": "user_hangup"})
	msgs, err := bob.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 20)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]string{}
	for _, ev := range msgs.Chunk {
		byID[string(ev.ID)] = ev.Type.Type
		if ev.ID == invite {
			if sdp, _ := ev.Content.Raw["offer"].(map[string]any)["sdp"].(string); sdp != offer["sdp"] {
				t.Fatalf("offer sdp changed: %q", sdp)
			}
		}
	}
	for evID, typ := range map[string]string{string(invite): "m.call.invite", string(cand): "m.call.candidates", string(answer): "m.call.answer", string(hangup): "m.call.hangup"} {
		if byID[evID] != typ {
			t.Fatalf("bob sees %s as %q, want %s", evID, byID[evID], typ)
		}
	}
}
