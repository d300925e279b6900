package client

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"edge/edge/store"
)

// Shared-secret registration, Synapse's /_synapse/admin/v1/register: how
// `edge register` adds users to a running node, and what test suites such
// as Complement use. Off unless registration.shared_secret is set.

// nonces are the server's outstanding registration nonces, each usable once
// within a minute.
type nonces struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func (s *Server) routesAdminRegister() {
	s.handle("GET /_synapse/admin/v1/register", s.adminRegisterNonce)
	s.handle("POST /_synapse/admin/v1/register", s.adminRegister)
	s.routesAdmin()
}

// adminRegisterNonce: GET /_synapse/admin/v1/register
func (s *Server) adminRegisterNonce(r *http.Request) (any, error) {
	if s.Config.Registration.SharedSecret == "" {
		return nil, errNotFound("Shared-secret registration is disabled")
	}
	n := newToken("")[:32]
	s.nonces.mu.Lock()
	for k, t := range s.nonces.m {
		if time.Since(t) > time.Minute {
			delete(s.nonces.m, k)
		}
	}
	s.nonces.m[n] = time.Now()
	s.nonces.mu.Unlock()
	return map[string]string{"nonce": n}, nil
}

// SharedSecretMAC is the HMAC-SHA1 a shared-secret registration carries.
func SharedSecretMAC(secret, nonce, user, password string, admin bool) string {
	m := hmac.New(sha1.New, []byte(secret))
	kind := "notadmin"
	if admin {
		kind = "admin"
	}
	m.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00" + kind))
	return hex.EncodeToString(m.Sum(nil))
}

// adminRegister: POST /_synapse/admin/v1/register
func (s *Server) adminRegister(r *http.Request) (any, error) {
	secret := s.Config.Registration.SharedSecret
	if secret == "" {
		return nil, errNotFound("Shared-secret registration is disabled")
	}
	var req struct {
		Nonce       string `json:"nonce"`
		Username    string `json:"username"`
		Password    string `json:"password"`
		Admin       bool   `json:"admin"`
		MAC         string `json:"mac"`
		DisplayName string `json:"displayname"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	s.nonces.mu.Lock()
	issued, ok := s.nonces.m[req.Nonce]
	delete(s.nonces.m, req.Nonce)
	s.nonces.mu.Unlock()
	if !ok || time.Since(issued) > time.Minute {
		return nil, errForbidden("Unrecognised nonce")
	}
	want := SharedSecretMAC(secret, req.Nonce, req.Username, req.Password, req.Admin)
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(req.MAC))) {
		return nil, errForbidden("HMAC incorrect")
	}
	lp := strings.ToLower(req.Username)
	if err := s.validateLocalpart(lp); err != nil {
		return nil, err
	}
	userID := s.userID(lp)
	resp := map[string]any{"user_id": userID, "home_server": s.Config.ServerName}
	err := s.Store.Write(func(tx *store.Tx) error {
		if err := CreateUser(tx, lp, req.Password, req.Admin); err != nil {
			return err
		}
		if req.DisplayName != "" {
			u, _ := tx.User(lp)
			u.DisplayName = req.DisplayName
			tx.PutUser(u)
		}
		token, deviceID := s.newDevice(tx, userID, "", "", r)
		resp["access_token"], resp["device_id"] = token, deviceID
		return nil
	})
	if errors.Is(err, store.ErrExists) {
		return nil, newErr(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
	}
	return resp, err
}
