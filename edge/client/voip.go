package client

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"
	"time"
)

func (s *Server) routesVoIP() {
	s.authed("GET /voip/turnServer", s.turnServer)
}

// turnServer: GET /voip/turnServer
//
// Credentials follow coturn's use-auth-secret scheme (TURN REST API):
// username "<expiry unix seconds>:<user ID>", password
// base64(HMAC-SHA1(secret, username)); coturn recomputes the HMAC and
// refuses the username once its expiry has passed.
func (s *Server) turnServer(r *http.Request, sess *Session) (any, error) {
	v := s.Config.VoIP
	if len(v.TurnURIs) == 0 || v.TurnSharedSecret == "" {
		return empty{}, nil
	}
	ttl := v.TurnUserLifetime
	if ttl <= 0 {
		ttl = time.Hour
	}
	username := strconv.FormatInt(time.Now().Add(ttl).Unix(), 10) + ":" + sess.UserID
	mac := hmac.New(sha1.New, []byte(v.TurnSharedSecret))
	mac.Write([]byte(username))
	return map[string]any{
		"username": username,
		"password": base64.StdEncoding.EncodeToString(mac.Sum(nil)),
		"uris":     v.TurnURIs,
		"ttl":      int64(ttl / time.Second),
	}, nil
}
