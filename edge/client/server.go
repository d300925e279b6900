package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"edge/edge/appservice"
	"edge/edge/config"
	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

// Deps is what the client API needs from the node.
type Deps struct {
	Config   *config.Config
	Store    *store.Store
	Rooms    *room.Service
	Notifier *notify.Notifier
	Typing   *notify.Typing
	Log      *slog.Logger
}

// Server serves /_matrix/client.
type Server struct {
	Deps
	mux       *http.ServeMux
	limits    *limiters
	uia       *uiaSessions
	nonces    *nonces
	startedAt time.Time

	// SyncExtensions add streams to /sync (E2EE, presence).
	SyncExtensions []SyncExtension
	// SetPresence handles /sync's set_presence; nil ignores it.
	SetPresence func(userID, presence string)
	// DeviceRemovalHooks run inside the transaction that deletes a device,
	// so features with per-device data (E2EE keys, to-device inboxes)
	// delete it too.
	DeviceRemovalHooks []func(tx *store.Tx, userID, deviceID string)
	// UnreadCounts fills a joined room's unread_notifications.
	UnreadCounts func(tx *store.Tx, userID, roomID string) map[string]int
	// UnreadThreadCounts is UnreadCounts split into the main timeline's
	// and each thread's (unread_thread_notifications).
	UnreadThreadCounts func(tx *store.Tx, userID, roomID string) (map[string]int, map[string]map[string]int)
	// RemoteJoin joins a room this server does not know through other
	// servers (see remotejoin.go); nil: unknown rooms are 404.
	RemoteJoin func(ctx context.Context, userID, roomID string, servers []string) error
	// RemoteKnock knocks on a room this server is not in through other
	// servers (see knock.go); nil: unknown rooms are 404.
	RemoteKnock func(ctx context.Context, userID, roomID string, servers []string, reason string) (eventID string, pdu json.RawMessage, state []json.RawMessage, err error)
	// AwaitFullState waits until a room joined with partial state (faster
	// joins) has its full state; /members answers only then, as in
	// Synapse. Nil: rooms never have partial state.
	AwaitFullState func(ctx context.Context, roomID string) error
	// RemoteBackfill fetches history older than what this server holds of
	// a room from other servers, returning how many events it added (see
	// messages.go); nil: /messages stops at the oldest event held.
	RemoteBackfill func(ctx context.Context, roomID string, limit int) (int, error)
	// RemoteTimestamp answers timestamp_to_event from other servers when
	// this one lacks part of a room's history (nil: local only).
	RemoteTimestamp RemoteTimestampFunc
	// AppServices are the node's application services (nil: none).
	AppServices *appservice.Set
	// AppServiceFeed takes ephemeral and E2EE data for them (nil: none).
	AppServiceFeed AppServiceFeed
	// RemoteHierarchy asks other servers (via first) for the federation
	// hierarchy of a room this server is not in (see hierarchy.go); nil:
	// such rooms are left out.
	RemoteHierarchy func(ctx context.Context, roomID string, via []string, suggestedOnly bool) (*room.HierarchyAnswer, error)
	// RemoteEventRelationships asks other servers in q.RoomID for the
	// thread around q.EventID and stores what they answer (MSC2836, see
	// event_relationships.go); nil: threads are walked locally only.
	RemoteEventRelationships func(ctx context.Context, q room.ThreadQuery) error
	// RemoteBackfillAt is RemoteBackfill for a gap inside the timeline,
	// just before timeline event eventID; nil: /messages pages past gaps.
	RemoteBackfillAt func(ctx context.Context, roomID, eventID string, limit int) (int, error)
	// Remote carries typing, receipts, profiles and aliases to other
	// servers (see remote_queries.go); nil: local only.
	Remote *RemoteQueries

	// e2eeFederation reaches other servers for keys, to-device and device
	// lists (nil: local users only).
	e2eeFederation *E2EEFederation
	// toDeviceAcks is the E2EE module's to-device acknowledgements, shared
	// by /sync and sliding sync (set by routesKeys).
	toDeviceAcks *toDeviceAcks
	// remoteHooks invite and reject invites across servers (nil: local only).
	remoteHooks *RemoteMembership

	// delayedWake wakes RunDelayedEvents when a delayed event is added or
	// restarted (delayed.go).
	delayedWake chan struct{}

	unreadMu sync.Mutex
	unread   map[[2]string]unreadMemo
}

// New makes the client API server and registers its routes.
func New(d Deps) *Server {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	s := &Server{Deps: d, mux: http.NewServeMux(), limits: newLimiters(d.Config.RateLimits), uia: newUIASessions(), nonces: &nonces{m: map[string]time.Time{}}, startedAt: time.Now(), delayedWake: make(chan struct{}, 1)}
	for _, register := range []func(){
		s.routesMeta, s.routesAccount, s.routesDevices, s.routesProfile, s.routesRooms,
		s.routesEvents, s.routesSync, s.routesUserData, s.routesDirectory, s.routesEphemeral,
		s.routesPush, s.routesAdminRegister, s.routesKeys,
		s.routesRelations, s.routesSearch, s.routesUserDirectory, s.routesVoIP, s.routesOpenID,
		s.routesKnock, s.routesDelayed, s.routesHierarchy, s.routesThreadSubscriptions,
		s.routesRefresh, s.routesTimestamp, s.routesServerNotices,
	} {
		register()
	}
	return s
}

// Mux exposes the route table so the node can add other APIs beside it.
func (s *Server) Mux() *http.ServeMux { return s.mux }

// handlerFunc answers one request with a JSON body or an error.
type handlerFunc func(r *http.Request) (any, error)

// authedFunc is a handlerFunc for a logged-in device.
type authedFunc func(r *http.Request, sess *Session) (any, error)

// handle registers h for a client API path under both v3 and r0 (which
// older clients still call) unless the pattern names its own prefix
// (/_matrix/…, /_synapse/… or /.well-known/…).
func (s *Server) handle(pattern string, h handlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	if strings.HasPrefix(path, "/_matrix/") || strings.HasPrefix(path, "/_synapse/") || strings.HasPrefix(path, "/.well-known/") {
		s.mux.Handle(method+" "+path, s.serveJSON(h))
		return
	}
	s.mux.Handle(method+" /_matrix/client/v3"+path, s.serveJSON(h))
	s.mux.Handle(method+" /_matrix/client/r0"+path, s.serveJSON(h))
}

// authed registers a handler that requires an access token.
func (s *Server) authed(pattern string, h authedFunc) {
	h = s.stamped(stampRuleFor(pattern), h)
	s.handle(pattern, func(r *http.Request) (any, error) {
		sess, err := s.authenticate(r)
		if err != nil {
			return nil, err
		}
		return h(r, sess)
	})
}

func (s *Server) serveJSON(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, err := h(r)
		if err != nil {
			if toError(err).Status >= 500 {
				// The client only sees M_UNKNOWN; the operator needs the cause.
				s.Log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, err)
			return
		}
		if c, ok := resp.(created); ok {
			writeJSON(w, http.StatusCreated, c.body)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

// created wraps a handler's response that answers 201 Created.
type created struct{ body any }

// Handler is the client API with its middleware: panic recovery, CORS,
// body limits, and Matrix-shaped 404/405s.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.Log.Error("panic in handler", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				writeError(w, errors.New("panic"))
			}
		}()
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		if !strings.HasPrefix(r.URL.Path, "/_matrix/media/") && !strings.HasPrefix(r.URL.Path, "/_matrix/client/v1/media/") {
			r.Body = http.MaxBytesReader(w, r.Body, s.Config.Limits.MaxRequestBytes)
		}
		handler, pattern := s.mux.Handler(r)
		if pattern == "" {
			rec := &statusRecorder{header: http.Header{}}
			handler.ServeHTTP(rec, r)
			if allow := rec.header.Get("Allow"); allow != "" {
				h.Set("Allow", allow)
			}
			status := rec.status
			if status != http.StatusMethodNotAllowed {
				status = http.StatusNotFound
			}
			writeError(w, errUnrecognized(status))
			return
		}
		s.mux.ServeHTTP(w, r) // (not handler: only ServeHTTP fills in PathValue)
		s.Log.Debug("request", "method", r.Method, "path", r.URL.Path, "took", time.Since(start))
	})
}

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(s int)           { r.status = s }

// decode reads a JSON request body into v: M_NOT_JSON when it is not
// JSON, M_BAD_JSON when it does not fit v, M_TOO_LARGE over the limit.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return newErr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body too large")
		}
		return errNotJSON("Could not read body")
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	// JSON is UTF-8 (RFC 8259); the decoder would let invalid bytes through.
	if !utf8.Valid(body) || !json.Valid(body) {
		return errNotJSON("Content not JSON")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errBadJSON("%s", jsonMessage(err))
	}
	return nil
}

// decodeObject reads a body that must be a JSON object and returns it raw.
func decodeObject(r *http.Request) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := decode(r, &raw); err != nil {
		return nil, err
	}
	if t := strings.TrimSpace(string(raw)); !strings.HasPrefix(t, "{") {
		return nil, errBadJSON("Body must be a JSON object")
	}
	return raw, nil
}

func jsonMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return "Invalid type for field " + te.Field
	}
	return "Invalid JSON: " + err.Error()
}

type empty struct{}
