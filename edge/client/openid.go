package client

// OpenID tokens (https://spec.matrix.org/latest/client-server-api/#openid):
// a local user asks for a short-lived token that third parties check with
// GET /_matrix/federation/v1/openid/userinfo on this server. Only the
// token's sha256 is stored, with its expiry.

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"edge/edge/store"
)

// nsOpenID maps sha256(token) (hex) → openIDRecord.
const nsOpenID = "openid"

// openIDLifetime is the token's expires_in (Synapse's one hour).
const openIDLifetime = time.Hour

type openIDRecord struct {
	UserID    string `json:"user_id"`
	ExpiresTS int64  `json:"expires_ts"`
}

func (s *Server) routesOpenID() {
	s.authed("POST /user/{userId}/openid/request_token", s.openIDRequestToken)
}

func openIDKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// openIDRequestToken answers POST /_matrix/client/v3/user/{userId}/openid/request_token.
func (s *Server) openIDRequestToken(r *http.Request, sess *Session) (any, error) {
	if r.PathValue("userId") != sess.UserID {
		return nil, errForbidden("Cannot request OpenID tokens for other users")
	}
	// The body is an empty JSON object; an absent body is tolerated.
	if r.ContentLength != 0 {
		if _, err := decodeObject(r); err != nil {
			return nil, err
		}
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	token := base64.RawURLEncoding.EncodeToString(b)
	now := time.Now()
	val, err := json.Marshal(openIDRecord{UserID: sess.UserID, ExpiresTS: now.Add(openIDLifetime).UnixMilli()})
	if err != nil {
		return nil, err
	}
	if err := s.Store.Write(func(tx *store.Tx) error {
		// Drop expired tokens as new ones are made, so the namespace stays small.
		var expired []string
		tx.ScanKV(nsOpenID, "", func(key string, v []byte) bool {
			var rec openIDRecord
			if json.Unmarshal(v, &rec) != nil || rec.ExpiresTS <= now.UnixMilli() {
				expired = append(expired, key)
			}
			return len(expired) < 100
		})
		for _, k := range expired {
			tx.DeleteKV(nsOpenID, k)
		}
		tx.PutKV(nsOpenID, openIDKey(token), val)
		return nil
	}); err != nil {
		return nil, err
	}
	return map[string]any{
		"access_token":       token,
		"token_type":         "Bearer",
		"matrix_server_name": s.Config.ServerName,
		"expires_in":         int64(openIDLifetime / time.Second),
	}, nil
}

// OpenIDUserInfo resolves an OpenID token for
// GET /_matrix/federation/v1/openid/userinfo: the user it was issued to,
// or 401 M_UNKNOWN_TOKEN when it is unknown or expired.
func (s *Server) OpenIDUserInfo(token string) (string, error) {
	unknown := newErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown or expired OpenID token")
	if token == "" {
		return "", unknown
	}
	var rec openIDRecord
	err := s.Store.View(func(tx *store.Tx) error {
		v, err := tx.GetKV(nsOpenID, openIDKey(token))
		if err != nil {
			return err
		}
		return json.Unmarshal(v, &rec)
	})
	if errors.Is(err, store.ErrNotFound) {
		return "", unknown
	}
	if err != nil {
		return "", err
	}
	if time.Now().UnixMilli() >= rec.ExpiresTS {
		return "", unknown
	}
	return rec.UserID, nil
}
