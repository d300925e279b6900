package client

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"edge/edge/appservice"
	"edge/edge/store"
)

// appServiceSession authenticates an application service by its
// as_token: it acts as its sender, or as ?user_id= when that user is in
// its namespaces and exists (spec: identity assertion).
func (s *Server) appServiceSession(r *http.Request, as *appservice.Registration, token string) (*Session, error) {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" {
		userID = as.Sender
	}
	if !s.isLocalUser(userID) || !as.OwnsUser(userID) {
		return nil, errForbidden("Application service cannot masquerade as this user")
	}
	sess := &Session{UserID: userID, Token: token, AppService: as}
	err := s.Store.View(func(tx *store.Tx) error {
		u, err := tx.User(localpart(userID))
		if err != nil || u.Deactivated {
			return errForbidden("Application service has not registered this user")
		}
		// Device masquerading (MSC3202): only one of the user's devices.
		dev := q.Get("device_id")
		if dev == "" {
			dev = q.Get("org.matrix.msc3202.device_id")
		}
		if dev != "" {
			if _, err := tx.Device(userID, dev); err != nil {
				return errForbidden("Unknown device for this user")
			}
			sess.DeviceID = dev
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sess, nil
}

// routesAppService registers the application service endpoints of the
// client API.
func (s *Server) routesAppService() {
	s.handle("POST /_matrix/client/v1/appservice/{appserviceId}/ping", s.pingAppService)
}

// pingAppService: POST /_matrix/client/v1/appservice/{appserviceId}/ping
// The homeserver calls the AS's /_matrix/app/v1/ping and reports how it
// went; mautrix bridges do this at start and stop when it fails.
func (s *Server) pingAppService(r *http.Request) (any, error) {
	as := s.requestAppService(r)
	if as == nil || as.ID != r.PathValue("appserviceId") {
		return nil, errForbidden("Provided access token is not the appservice's as_token")
	}
	var req struct {
		TransactionID *string `json:"transaction_id"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if as.URL == "" {
		return nil, newErr(http.StatusBadRequest, "M_URL_NOT_SET", "Application service doesn't have a URL configured")
	}
	txnID := ""
	if req.TransactionID != nil {
		txnID = *req.TransactionID
	}
	start := time.Now()
	status, body, err := s.AppServices.Ping(r.Context(), as, txnID)
	switch {
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return nil, newErr(http.StatusGatewayTimeout, "M_CONNECTION_TIMEOUT", "Connection to application service timed out")
	case err != nil:
		return nil, newErr(http.StatusBadGateway, "M_CONNECTION_FAILED", "Connection to application service failed")
	case status/100 != 2:
		e := newErr(http.StatusBadGateway, "M_BAD_STATUS", "Ping returned status %d", status)
		e.Extra = map[string]any{"status": status, "body": string(body)}
		return nil, e
	}
	return map[string]any{"duration_ms": time.Since(start).Milliseconds()}, nil
}

// isTimeout tells whether err is a network timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// requestAppService is the AS whose as_token made the request, whatever
// its ?user_id=: register and login do not assert an identity (the user
// may not exist yet), as in Synapse; mautrix bridges send user_id there.
func (s *Server) requestAppService(r *http.Request) *appservice.Registration {
	return s.AppServices.ByToken(requestToken(r))
}

// appServiceTS is the origin_server_ts an application service asked for
// with ?ts= (timestamp massaging, for bridging history); 0 otherwise.
func appServiceTS(r *http.Request, sess *Session) int64 {
	if sess.AppService == nil {
		return 0
	}
	ts, err := strconv.ParseInt(r.URL.Query().Get("ts"), 10, 64)
	if err != nil || ts <= 0 {
		return 0
	}
	return ts
}

// checkExclusiveUser refuses a user ID an application service claims
// exclusively to anyone but that service (M_EXCLUSIVE).
func (s *Server) checkExclusiveUser(userID string, as *appservice.Registration) error {
	if owner := s.AppServices.ExclusiveUser(userID); owner != nil && owner != as {
		return newErr(http.StatusBadRequest, "M_EXCLUSIVE", "User ID is reserved by an application service")
	}
	return nil
}

// checkExclusiveAlias is checkExclusiveUser for room aliases.
func (s *Server) checkExclusiveAlias(alias string, as *appservice.Registration) error {
	if owner := s.AppServices.ExclusiveAlias(alias); owner != nil && owner != as {
		return newErr(http.StatusBadRequest, "M_EXCLUSIVE", "Room alias is reserved by an application service")
	}
	return nil
}

// checkSend applies the per-user send limit, which an application service
// registered with rate_limited: false is exempt from.
func (s *Server) checkSend(sess *Session) error {
	if as := sess.AppService; as != nil && as.RateLimited != nil && !*as.RateLimited {
		return nil
	}
	return check(s.limits.send, sess.UserID)
}

// AppServiceFeed takes the data beside room events that application
// services ask for: typing, receipts and presence (MSC2409), to-device
// messages (MSC4203) and device lists and key counts (MSC3202). The
// appservice pusher implements it; nil when there are no services.
type AppServiceFeed interface {
	// EDU gets a committed typing or receipt (roomID) or presence (sender) event.
	EDU(typ, roomID, sender string, content any)
	// ToDevice may take a to-device message for a device of an AS's
	// user in place of its inbox (true), in the storing transaction.
	ToDevice(tx *store.Tx, sender, evType, userID, deviceID string, content json.RawMessage) bool
	// DeviceListChanged: userID's devices or keys changed.
	DeviceListChanged(tx *store.Tx, userID string)
	// DeviceKeys: a device's one-time or fallback keys changed; counts
	// reads them, only for a device an AS wants them of.
	DeviceKeys(tx *store.Tx, userID, deviceID string, counts func() (otk map[string]int, fallback []string))
}

// feedReceipt passes a public read receipt to the application services
// once it is committed (private receipts are the user's own business).
func (s *Server) feedReceipt(tx *store.Tx, rc *store.Receipt) {
	if s.AppServiceFeed == nil || rc.Type != receiptRead {
		return
	}
	r := map[string]any{"ts": rc.TS}
	if rc.ThreadID != "" {
		r["thread_id"] = rc.ThreadID
	}
	content := map[string]any{rc.EventID: map[string]any{rc.Type: map[string]any{rc.UserID: r}}}
	roomID := rc.RoomID
	tx.OnCommit(func() { s.AppServiceFeed.EDU("m.receipt", roomID, "", content) })
}

// feedPresence passes a committed presence change to the application services.
func (s *Server) feedPresence(tx *store.Tx, userID string, rec presenceRecord) {
	if s.AppServiceFeed == nil {
		return
	}
	tx.OnCommit(func() { s.AppServiceFeed.EDU("m.presence", "", userID, rec.content(time.Now().UnixMilli())) })
}

// feedDeviceKeys passes a device's current key counts to the application services.
func (s *Server) feedDeviceKeys(tx *store.Tx, userID, deviceID string) {
	if s.AppServiceFeed != nil {
		s.AppServiceFeed.DeviceKeys(tx, userID, deviceID, func() (map[string]int, []string) {
			return otkCounts(tx, userID, deviceID), unusedFallbackTypes(tx, userID, deviceID)
		})
	}
}
