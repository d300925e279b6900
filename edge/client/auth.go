package client

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"edge/edge/appservice"
	"edge/edge/store"
)

// Session is the device an access token belongs to.
type Session struct {
	UserID   string
	DeviceID string
	Admin    bool
	Token    string
	// AppService is set when an application service's as_token made the request.
	AppService *appservice.Registration
}

// requestToken is the request's access token: the Authorization header or
// the deprecated access_token query parameter.
func requestToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		return strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
	}
	return r.URL.Query().Get("access_token")
}

// authenticate resolves the request's access token.
func (s *Server) authenticate(r *http.Request) (*Session, error) {
	token := requestToken(r)
	if token == "" {
		return nil, newErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token")
	}
	if as := s.AppServices.ByToken(token); as != nil {
		return s.appServiceSession(r, as, token)
	}
	var sess *Session
	expired := false
	err := s.Store.View(func(tx *store.Tx) error {
		st, err := tx.Session(hashToken(token))
		if err != nil {
			return err
		}
		if st.Refresh {
			return store.ErrNotFound
		}
		if st.ExpiresTS != 0 && time.Now().UnixMilli() >= st.ExpiresTS {
			expired = true
			return store.ErrNotFound
		}
		u, err := tx.User(localpart(st.UserID))
		if err != nil {
			return err
		}
		if u.Deactivated {
			return store.ErrNotFound
		}
		sess = &Session{UserID: st.UserID, DeviceID: st.DeviceID, Admin: u.Admin, Token: token}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		e := newErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown access token")
		// An expired token (one that came with a refresh token) is a soft
		// logout: the client refreshes it rather than logging in again.
		e.Extra = map[string]any{"soft_logout": expired}
		return nil, e
	}
	return sess, err
}

// newToken makes a random opaque token; only its hash is stored.
func newToken(prefix string) string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// hashToken is how tokens are stored: a leaked database yields no usable token.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// HashPassword hashes with bcrypt at its default cost.
func HashPassword(password string) (string, error) {
	if len(password) > 72 {
		// bcrypt reads 72 bytes; pre-hash longer passwords so all of it counts.
		sum := sha256.Sum256([]byte(password))
		password = base64.StdEncoding.EncodeToString(sum[:])
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	return string(h), err
}

func checkPassword(hash, password string) bool {
	if hash == "" {
		return false
	}
	if len(password) > 72 {
		sum := sha256.Sum256([]byte(password))
		password = base64.StdEncoding.EncodeToString(sum[:])
	}
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
}

func localpart(userID string) string {
	s := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(s, ':'); i >= 0 {
		return s[:i]
	}
	return s
}

func (s *Server) userID(localpart string) string {
	return "@" + localpart + ":" + s.Config.ServerName
}

func (s *Server) isLocalUser(userID string) bool {
	return strings.HasSuffix(userID, ":"+s.Config.ServerName) && strings.HasPrefix(userID, "@")
}
