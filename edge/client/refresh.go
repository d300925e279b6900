package client

import (
	"net/http"
	"time"

	"edge/edge/store"
)

func (s *Server) routesRefresh() {
	s.handle("POST /refresh", s.refresh)
}

// refreshLifetime is how long an access token issued with a refresh
// token lives.
func (s *Server) refreshLifetime() time.Duration {
	if d := s.Config.Registration.RefreshableTokenLifetime; d > 0 {
		return d
	}
	return 5 * time.Minute
}

// issueRefresh makes the device's access token expire and gives it a
// refresh token (only its hash is stored, like access tokens). It returns
// the token and the access token's lifetime in milliseconds.
func (s *Server) issueRefresh(tx *store.Tx, userID, deviceID, accessToken string) (string, int64, error) {
	d, err := tx.Device(userID, deviceID)
	if err != nil {
		return "", 0, err
	}
	life := s.refreshLifetime()
	tx.PutSession(hashToken(accessToken), &store.Session{UserID: userID, DeviceID: deviceID, ExpiresTS: time.Now().Add(life).UnixMilli()})
	if d.RefreshHash != "" {
		tx.DeleteSession(d.RefreshHash)
	}
	refresh := newToken("edger_")
	d.RefreshHash = hashToken(refresh)
	tx.PutDevice(d)
	tx.PutSession(d.RefreshHash, &store.Session{UserID: userID, DeviceID: deviceID, Refresh: true})
	return refresh, life.Milliseconds(), nil
}

// refresh: POST /refresh — trades a refresh token for a new access token
// and refresh token; the old pair stops working (spec: refreshing access
// tokens), so a leaked refresh token is good for one use only.
func (s *Server) refresh(r *http.Request) (any, error) {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.RefreshToken == "" {
		return nil, errMissingParam("Missing refresh_token")
	}
	unknown := newErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown refresh token")
	unknown.Extra = map[string]any{"soft_logout": false}
	var resp map[string]any
	err := s.Store.Write(func(tx *store.Tx) error {
		h := hashToken(req.RefreshToken)
		st, err := tx.Session(h)
		if err != nil || !st.Refresh {
			return unknown
		}
		d, err := tx.Device(st.UserID, st.DeviceID)
		if err != nil || d.RefreshHash != h {
			return unknown
		}
		if u, err := tx.User(localpart(st.UserID)); err != nil || u.Deactivated {
			return unknown
		}
		if d.TokenHash != "" {
			tx.DeleteSession(d.TokenHash)
		}
		access := newToken("edge_")
		d.TokenHash = hashToken(access)
		tx.PutDevice(d)
		refresh, ms, err := s.issueRefresh(tx, st.UserID, st.DeviceID, access)
		if err != nil {
			return err
		}
		resp = map[string]any{"access_token": access, "refresh_token": refresh, "expires_in_ms": ms}
		return nil
	})
	return resp, err
}
