package client

import (
	"errors"
	"net/http"
	"regexp"
	"strings"
	"time"

	"edge/edge/appservice"
	"edge/edge/notify"
	"edge/edge/store"
)

func (s *Server) routesAccount() {
	s.handle("GET /register/available", s.registerAvailable)
	s.handle("POST /register", s.register)
	s.handle("GET /login", s.loginFlows)
	s.handle("POST /login", s.login)
	s.authed("POST /logout", s.logout)
	s.authed("POST /logout/all", s.logoutAll)
	s.authed("GET /account/whoami", s.whoami)
	s.authed("POST /account/password", s.changePassword)
	s.authed("POST /account/deactivate", s.deactivate)
	s.handle("GET /_matrix/client/v1/register/m.login.registration_token/validity", s.tokenValidity)
	s.routesAppService()
}

// localpartRE is the spec's user ID localpart grammar for new users.
var localpartRE = regexp.MustCompile(`^[a-z0-9._=\-/+]+$`)

func (s *Server) validateLocalpart(lp string) error {
	if !localpartRE.MatchString(lp) {
		return newErr(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may only contain a-z, 0-9, . _ = - / +")
	}
	if len(s.userID(lp)) > 255 {
		return newErr(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID too long")
	}
	return nil
}

// registerAvailable: GET /register/available?username=
func (s *Server) registerAvailable(r *http.Request) (any, error) {
	if err := check(s.limits.register, clientIP(r)); err != nil {
		return nil, err
	}
	lp := strings.ToLower(r.URL.Query().Get("username"))
	if err := s.validateLocalpart(lp); err != nil {
		return nil, err
	}
	if err := s.checkExclusiveUser(s.userID(lp), nil); err != nil {
		return nil, err
	}
	if err := s.checkUserFree(lp); err != nil {
		return nil, err
	}
	return map[string]bool{"available": true}, nil
}

type registerRequest struct {
	Type                     string   `json:"type"`
	Username                 string   `json:"username"`
	Password                 string   `json:"password"`
	DeviceID                 string   `json:"device_id"`
	InitialDeviceDisplayName string   `json:"initial_device_display_name"`
	InhibitLogin             bool     `json:"inhibit_login"`
	RefreshToken             bool     `json:"refresh_token"`
	Auth                     *uiaAuth `json:"auth"`
}

// registrationFlows are the UIA flows of POST /register: configured
// tokens are required whether or not registration is otherwise open, as
// the configuration documents (Synapse's registration_requires_token).
func (s *Server) registrationFlows() [][]string {
	switch {
	case len(s.Config.Registration.Tokens) > 0:
		return [][]string{{"m.login.registration_token"}}
	case s.Config.Registration.Enabled:
		return [][]string{{"m.login.dummy"}}
	}
	return nil
}

// register: POST /register
func (s *Server) register(r *http.Request) (any, error) {
	if err := check(s.limits.register, clientIP(r)); err != nil {
		return nil, err
	}
	var req registerRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	kind := r.URL.Query().Get("kind")
	if kind == "guest" {
		if !s.Config.Registration.GuestAccess {
			return nil, errForbidden("Guest access is disabled")
		}
	} else if kind != "" && kind != "user" {
		return nil, errInvalidParam("Unknown kind %q", kind)
	}
	// An application service registers users of its namespaces with its
	// as_token and no UIA (spec: m.login.application_service).
	var as *appservice.Registration
	if req.Type == "m.login.application_service" {
		if as = s.requestAppService(r); as == nil {
			return nil, newErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "Registering as m.login.application_service needs an as_token")
		}
		if kind == "guest" {
			return nil, errInvalidParam("Application services cannot register guests")
		}
	}
	flows := s.registrationFlows()
	if len(flows) == 0 && kind != "guest" && as == nil {
		return nil, errForbidden("Registration is disabled")
	}
	lp := strings.ToLower(req.Username)
	if lp == "" || kind == "guest" {
		lp = strings.ToLower(newToken("")[:12])
		lp = strings.Map(func(r rune) rune {
			if localpartRE.MatchString(string(r)) {
				return r
			}
			return 'x'
		}, lp)
	}
	if err := s.validateLocalpart(lp); err != nil {
		return nil, err
	}
	if as != nil && !as.OwnsUser(s.userID(lp)) {
		return nil, newErr(http.StatusBadRequest, "M_EXCLUSIVE", "User ID is not in the application service's namespaces")
	}
	if err := s.checkExclusiveUser(s.userID(lp), as); err != nil {
		return nil, err
	}
	if kind != "guest" && as == nil {
		if err := s.checkPasswordStrength(req.Password); err != nil {
			return nil, err
		}
	}
	if err := s.checkUserFree(lp); err != nil {
		return nil, err
	}
	if kind != "guest" && as == nil {
		params := map[string]any{}
		err := s.uiaCheck(req.Auth, "", flows, params, func(a *uiaAuth) error {
			if a.Type == "m.login.registration_token" {
				for _, t := range s.Config.Registration.Tokens {
					if t == a.Token {
						return nil
					}
				}
				return newErr(http.StatusUnauthorized, "M_FORBIDDEN", "Invalid registration token")
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	hash := ""
	if req.Password != "" {
		var err error
		if hash, err = HashPassword(req.Password); err != nil {
			return nil, err
		}
	}
	userID := s.userID(lp)
	resp := map[string]any{"user_id": userID, "home_server": s.Config.ServerName}
	err := s.Store.Write(func(tx *store.Tx) error {
		if err := tx.CreateUser(&store.User{Localpart: lp, PasswordHash: hash, Guest: kind == "guest", CreatedTS: time.Now().UnixMilli(), DisplayName: lp}); err != nil {
			return err
		}
		if req.InhibitLogin {
			return nil
		}
		token, deviceID := s.newDevice(tx, userID, req.DeviceID, req.InitialDeviceDisplayName, r)
		resp["access_token"], resp["device_id"] = token, deviceID
		if req.RefreshToken {
			refresh, ms, err := s.issueRefresh(tx, userID, deviceID, token)
			if err != nil {
				return err
			}
			resp["refresh_token"], resp["expires_in_ms"] = refresh, ms
		}
		return nil
	})
	if errors.Is(err, store.ErrExists) {
		return nil, newErr(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
	}
	if err != nil {
		return nil, err
	}
	s.Log.Info("registered user", "user_id", userID)
	return resp, nil
}

func (s *Server) checkPasswordStrength(pw string) error {
	if len(pw) < s.Config.Registration.MinPasswordLength {
		return newErr(http.StatusBadRequest, "M_WEAK_PASSWORD", "Password must be at least %d characters", s.Config.Registration.MinPasswordLength)
	}
	return nil
}

// CreateUser makes a local account outside any request (edge register).
func CreateUser(tx *store.Tx, localpartName, password string, admin bool) error {
	hash := ""
	if password != "" {
		var err error
		if hash, err = HashPassword(password); err != nil {
			return err
		}
	}
	// Like Synapse, a new user's display name starts as the localpart.
	return tx.CreateUser(&store.User{Localpart: localpartName, PasswordHash: hash, Admin: admin, CreatedTS: time.Now().UnixMilli(), DisplayName: localpartName})
}

// ValidLocalpart tells whether a new user may have this localpart.
func ValidLocalpart(lp string) bool { return localpartRE.MatchString(lp) }

// newDevice creates (or takes over) a device and issues its access token.
func (s *Server) newDevice(tx *store.Tx, userID, deviceID, displayName string, r *http.Request) (token, devID string) {
	// A device ID must never equal one of the user's cross-signing public
	// keys (spec: cross-signing); such a request gets a fresh ID instead.
	if deviceID == "" || isCrossSigningKey(tx, userID, deviceID) {
		deviceID = strings.ToUpper(newToken("")[:10])
		deviceID = strings.NewReplacer("-", "A", "_", "B").Replace(deviceID)
	}
	token = newToken("edge_")
	d, err := tx.Device(userID, deviceID)
	if err != nil {
		// A new device: users sharing a room learn of it at login, as
		// Synapse does, not only once it uploads keys.
		s.markDeviceListChange(tx, userID, "")
	}
	if err == nil {
		tx.DeleteSession(d.TokenHash)
		if d.RefreshHash != "" {
			// A new login on the device ends its old refresh token too.
			tx.DeleteSession(d.RefreshHash)
			d.RefreshHash = ""
		}
		if displayName != "" {
			d.DisplayName = displayName
		}
	} else {
		d = &store.Device{UserID: userID, DeviceID: deviceID, DisplayName: displayName, CreatedTS: time.Now().UnixMilli()}
	}
	d.TokenHash = hashToken(token)
	d.LastSeenTS = time.Now().UnixMilli()
	d.LastSeenIP = clientIP(r)
	tx.PutDevice(d)
	tx.PutSession(d.TokenHash, &store.Session{UserID: userID, DeviceID: deviceID})
	return token, deviceID
}

// tokenValidity: GET /_matrix/client/v1/register/m.login.registration_token/validity
func (s *Server) tokenValidity(r *http.Request) (any, error) {
	if err := check(s.limits.register, clientIP(r)); err != nil {
		return nil, err
	}
	if len(s.Config.Registration.Tokens) == 0 {
		// No tokens configured: every token is invalid, which the spec says with a 403.
		return nil, errForbidden("Registration tokens are not enabled on this homeserver")
	}
	t := r.URL.Query().Get("token")
	for _, tok := range s.Config.Registration.Tokens {
		if tok == t {
			return map[string]bool{"valid": true}, nil
		}
	}
	return map[string]bool{"valid": false}, nil
}

// loginFlows: GET /login
func (s *Server) loginFlows(r *http.Request) (any, error) {
	flows := []map[string]any{{"type": "m.login.password"}}
	if s.AppServices != nil && len(s.AppServices.Regs) > 0 {
		flows = append(flows, map[string]any{"type": "m.login.application_service"})
	}
	return map[string]any{"flows": flows}, nil
}

type loginRequest struct {
	Type       string `json:"type"`
	Identifier *struct {
		Type string `json:"type"`
		User string `json:"user"`
	} `json:"identifier"`
	User                     string `json:"user"`
	Password                 string `json:"password"`
	DeviceID                 string `json:"device_id"`
	InitialDeviceDisplayName string `json:"initial_device_display_name"`
	RefreshToken             bool   `json:"refresh_token"`
}

// login: POST /login
func (s *Server) login(r *http.Request) (any, error) {
	if err := check(s.limits.login, clientIP(r)); err != nil {
		return nil, err
	}
	var req loginRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	// An application service logs its users in with its as_token (a
	// device for, e.g., end-to-end encryption).
	var as *appservice.Registration
	switch req.Type {
	case "m.login.password":
	case "m.login.application_service":
		if as = s.requestAppService(r); as == nil {
			return nil, newErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "m.login.application_service needs an as_token")
		}
	default:
		return nil, newErr(http.StatusBadRequest, "M_UNKNOWN", "Unsupported login type %q", req.Type)
	}
	who := req.User
	if req.Identifier != nil {
		if req.Identifier.Type != "m.id.user" {
			return nil, newErr(http.StatusBadRequest, "M_UNKNOWN", "Unsupported identifier type %q", req.Identifier.Type)
		}
		who = req.Identifier.User
	}
	if who == "" {
		return nil, errMissingParam("Missing user identifier")
	}
	if strings.HasPrefix(who, "@") && !s.isLocalUser(who) {
		return nil, errForbidden("Invalid username or password")
	}
	lp := strings.ToLower(localpart(who))
	var resp map[string]any
	err := s.Store.Write(func(tx *store.Tx) error {
		u, err := tx.User(lp)
		if as != nil {
			if err != nil || u.Deactivated || !as.OwnsUser(s.userID(lp)) {
				return errForbidden("The application service cannot log in as this user")
			}
		} else if err != nil || u.Deactivated || !checkPassword(u.PasswordHash, req.Password) {
			return errForbidden("Invalid username or password")
		}
		userID := s.userID(lp)
		token, deviceID := s.newDevice(tx, userID, req.DeviceID, req.InitialDeviceDisplayName, r)
		resp = map[string]any{"user_id": userID, "access_token": token, "device_id": deviceID, "home_server": s.Config.ServerName}
		if req.RefreshToken {
			refresh, ms, err := s.issueRefresh(tx, userID, deviceID, token)
			if err != nil {
				return err
			}
			resp["refresh_token"], resp["expires_in_ms"] = refresh, ms
		}
		if s.Config.PublicBaseURL != "" {
			resp["well_known"] = map[string]any{"m.homeserver": map[string]string{"base_url": s.Config.PublicBaseURL}}
		}
		return nil
	})
	return resp, err
}

// logout: POST /logout
func (s *Server) logout(r *http.Request, sess *Session) (any, error) {
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		return s.removeDevice(tx, sess.UserID, sess.DeviceID)
	})
}

// logoutAll: POST /logout/all
func (s *Server) logoutAll(r *http.Request, sess *Session) (any, error) {
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		devices, err := tx.Devices(sess.UserID)
		if err != nil {
			return err
		}
		for _, d := range devices {
			if err := s.removeDevice(tx, sess.UserID, d.DeviceID); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Server) removeDevice(tx *store.Tx, userID, deviceID string) error {
	if err := tx.DeleteDevice(userID, deviceID); errors.Is(err, store.ErrNotFound) {
		return nil // already gone: nothing to clean up, no device-list change
	} else if err != nil {
		return err
	}
	for _, h := range s.DeviceRemovalHooks {
		h(tx, userID, deviceID)
	}
	// MSC3890: a device's local notification settings live in global
	// account data named after it, and go with the device.
	if _, err := tx.AccountData(userID, "", localNotificationSettingsPrefix+deviceID); err == nil {
		tx.DeleteAccountData(userID, "", localNotificationSettingsPrefix+deviceID)
		tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(userID)) })
	}
	return nil
}

// localNotificationSettingsPrefix names MSC3890's per-device account data.
const localNotificationSettingsPrefix = "org.matrix.msc3890.local_notification_settings."

// whoami: GET /account/whoami
func (s *Server) whoami(r *http.Request, sess *Session) (any, error) {
	var guest bool
	_ = s.Store.View(func(tx *store.Tx) error {
		if u, err := tx.User(localpart(sess.UserID)); err == nil {
			guest = u.Guest
		}
		return nil
	})
	return map[string]any{"user_id": sess.UserID, "device_id": sess.DeviceID, "is_guest": guest}, nil
}

var passwordFlows = [][]string{{"m.login.password"}}

// changePassword: POST /account/password
func (s *Server) changePassword(r *http.Request, sess *Session) (any, error) {
	var req struct {
		NewPassword   string   `json:"new_password"`
		LogoutDevices *bool    `json:"logout_devices"`
		Auth          *uiaAuth `json:"auth"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := s.uiaCheck(req.Auth, sess.UserID, passwordFlows, nil, s.passwordStage(sess.UserID)); err != nil {
		return nil, err
	}
	if req.NewPassword == "" {
		return nil, errMissingParam("Missing new_password")
	}
	if err := s.checkPasswordStrength(req.NewPassword); err != nil {
		return nil, err
	}
	hash, err := HashPassword(req.NewPassword)
	if err != nil {
		return nil, err
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		u, err := tx.User(localpart(sess.UserID))
		if err != nil {
			return err
		}
		u.PasswordHash = hash
		tx.PutUser(u)
		if !logout {
			return nil
		}
		devices, err := tx.Devices(sess.UserID)
		if err != nil {
			return err
		}
		for _, d := range devices {
			if d.DeviceID != sess.DeviceID {
				if err := s.removeDevice(tx, sess.UserID, d.DeviceID); err != nil {
					return err
				}
			}
		}
		deletePushersExcept(tx, sess.UserID, sess.DeviceID)
		return nil
	})
}

// deactivate: POST /account/deactivate
func (s *Server) deactivate(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Auth *uiaAuth `json:"auth"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := s.uiaCheck(req.Auth, sess.UserID, passwordFlows, nil, s.passwordStage(sess.UserID)); err != nil {
		return nil, err
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		u, err := tx.User(localpart(sess.UserID))
		if err != nil {
			return err
		}
		u.Deactivated, u.PasswordHash = true, ""
		tx.PutUser(u)
		devices, err := tx.Devices(sess.UserID)
		if err != nil {
			return err
		}
		for _, d := range devices {
			if err := s.removeDevice(tx, sess.UserID, d.DeviceID); err != nil {
				return err
			}
		}
		return s.leaveAllRooms(tx, sess.UserID)
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"id_server_unbind_result": "no-support"}, nil
}

// checkUserFree answers M_USER_IN_USE when the localpart has an account.
func (s *Server) checkUserFree(localpart string) error {
	var taken bool
	_ = s.Store.View(func(tx *store.Tx) error {
		_, err := tx.User(localpart)
		taken = err == nil
		return nil
	})
	if taken {
		return newErr(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
	}
	return nil
}
