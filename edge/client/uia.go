package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"edge/edge/store"
)

// uiaSessions holds user-interactive auth sessions
// (https://spec.matrix.org/latest/client-server-api/#user-interactive-authentication-api).
// They live in memory: a restart only makes a client start its auth again.
type uiaSessions struct {
	mu       sync.Mutex
	sessions map[string]*uiaSession
}

type uiaSession struct {
	created   time.Time
	completed []string
	userID    string // the user it was started for ("" for registration)
}

const uiaLifetime = 15 * time.Minute

func newUIASessions() *uiaSessions { return &uiaSessions{sessions: map[string]*uiaSession{}} }

// uiaAuth is the "auth" object of a request body.
type uiaAuth struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Password   string          `json:"password"`
	Identifier json.RawMessage `json:"identifier"`
	User       string          `json:"user"`
	Token      string          `json:"token"`
}

// uiaCheck runs one step of user-interactive auth for flows. It returns nil
// once some flow is complete; otherwise a 401 describing what is left.
// verify checks one stage's credentials.
func (s *Server) uiaCheck(auth *uiaAuth, userID string, flows [][]string, params map[string]any, verify func(a *uiaAuth) error) error {
	u := s.uia
	u.mu.Lock()
	now := time.Now()
	for id, ss := range u.sessions {
		if now.Sub(ss.created) > uiaLifetime {
			delete(u.sessions, id)
		}
	}
	var sess *uiaSession
	var sessionID string
	if auth != nil && auth.Session != "" {
		sess = u.sessions[auth.Session]
		sessionID = auth.Session
		if sess == nil || sess.userID != userID {
			u.mu.Unlock()
			return newErr(http.StatusBadRequest, "M_UNKNOWN", "Unknown UIA session")
		}
	}
	if sess == nil {
		sessionID = newToken("")[:24]
		sess = &uiaSession{created: now, userID: userID}
		u.sessions[sessionID] = sess
	}
	u.mu.Unlock()

	var stageErr *Error
	if auth != nil && auth.Type != "" {
		allowed := false
		for _, f := range flows {
			if slices.Contains(f, auth.Type) {
				allowed = true
			}
		}
		if !allowed {
			stageErr = newErr(http.StatusBadRequest, "M_UNRECOGNIZED", "Auth type %s is not offered", auth.Type)
		} else if err := verify(auth); err != nil {
			var hard uiaHardError
			if errors.As(err, &hard) {
				return hard.err
			}
			stageErr = toError(err)
		} else {
			u.mu.Lock()
			if !slices.Contains(sess.completed, auth.Type) {
				sess.completed = append(sess.completed, auth.Type)
			}
			u.mu.Unlock()
		}
	}
	u.mu.Lock()
	completed := slices.Clone(sess.completed)
	u.mu.Unlock()
	for _, f := range flows {
		done := true
		for _, stage := range f {
			if !slices.Contains(completed, stage) {
				done = false
			}
		}
		if done {
			u.mu.Lock()
			delete(u.sessions, sessionID)
			u.mu.Unlock()
			return nil
		}
	}
	flowObjs := make([]map[string]any, len(flows))
	for i, f := range flows {
		flowObjs[i] = map[string]any{"stages": f}
	}
	if params == nil {
		params = map[string]any{}
	}
	e := &Error{Status: http.StatusUnauthorized, Code: "M_FORBIDDEN", Message: "Authentication required",
		Extra: map[string]any{"flows": flowObjs, "params": params, "session": sessionID, "completed": completed}}
	if stageErr != nil {
		e.Code, e.Message = stageErr.Code, stageErr.Message
	} else {
		// The first request of a session carries no errcode, as the spec's example shows.
		e.Extra["errcode"], e.Extra["error"] = nil, nil
	}
	return e
}

// uiaHardError fails the request outright (403), as Synapse does for
// credentials of another user, instead of offering the stage again (401).
type uiaHardError struct{ err *Error }

func (h uiaHardError) Error() string { return h.err.Error() }

// passwordStage verifies m.login.password for userID.
func (s *Server) passwordStage(userID string) func(a *uiaAuth) error {
	return func(a *uiaAuth) error {
		if a.Type != "m.login.password" {
			return nil
		}
		who := a.User
		if len(a.Identifier) > 0 {
			var id struct {
				User string `json:"user"`
			}
			_ = json.Unmarshal(a.Identifier, &id)
			who = id.User
		}
		if who != "" && who != userID && who != localpart(userID) {
			return uiaHardError{errForbidden("Wrong user")}
		}
		var hash string
		_ = s.Store.View(func(tx *store.Tx) error {
			if u, err := tx.User(localpart(userID)); err == nil {
				hash = u.PasswordHash
			}
			return nil
		})
		if !checkPassword(hash, a.Password) {
			return errForbidden("Invalid password")
		}
		return nil
	}
}
