package federation

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"edge/edge/config"
	"edge/edge/store"
)

// Deps is what the federation transport needs from the node.
type Deps struct {
	Config *config.Config
	Store  *store.Store
	// Keys are the current signing keys (the key file); the first signs
	// requests. Retired keys are read from Config.OldKeysPath().
	Keys []config.SigningKey
	// Resolver finds destinations; nil means IPLiteralResolver (IP-named
	// servers only). The node passes a *wellknown.Resolver.
	Resolver Resolver
	// RootCAs verifies destinations' certificates; nil means the system
	// roots plus Config.Federation.TrustCAFile.
	RootCAs *x509.CertPool
	Log     *slog.Logger
	// Version is reported by /_matrix/federation/v1/version.
	Version string
}

// EDU is an ephemeral data unit as carried in a transaction.
type EDU struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// Request is an authenticated inbound federation request.
type Request struct {
	*http.Request
	// Origin is the server that signed the request.
	Origin string
	// Body is the raw request body (empty for GET).
	Body json.RawMessage
}

// HandlerFunc answers an authenticated federation request with a JSON
// body or an error (an *Error, or a package sentinel mapped by toError).
type HandlerFunc func(r *Request) (any, error)

// Server is the federation transport of one node: its routes, keyring,
// client and queues. Create it with New, add routes with Handle and
// HandleRoom, mount it with Register, run it with Start.
type Server struct {
	// Keyring establishes other servers' keys; its GetKey is a pdu.GetKeyFunc.
	Keyring *Keyring
	// Client sends signed requests to other servers.
	Client *Client
	// Queue delivers PDUs and EDUs in transactions.
	Queue *Queue

	// OnPDUs receives the PDUs of an inbound transaction that passed the
	// server ACLs, and returns a result per event ID (nil error: accepted).
	// The room federation engine plugs in here; nil answers no results.
	OnPDUs func(ctx context.Context, origin string, pdus []json.RawMessage) map[string]error
	// OnEDU receives each EDU of an inbound transaction (room-scoped ones
	// filtered by the server ACLs) whose type no HandleEDU claimed; nil
	// drops them.
	OnEDU func(ctx context.Context, origin string, edu EDU)
	// ACLSource returns the content of the room's current m.room.server_acl
	// (nil when the room has none or is unknown) and the room's version.
	// Nil disables server ACLs.
	ACLSource func(roomID string) (acl json.RawMessage, roomVersion string, err error)

	name    string
	own     *ownKeys
	store   *store.Store
	log     *slog.Logger
	version string
	maxBody int64
	now     func() time.Time
	mux     *http.ServeMux
	edus    map[string]EDUFunc
	txns    group[string, []byte]
	stop    context.CancelFunc
	done    chan struct{}
}

// New builds the federation transport from the node's configuration.
func New(d Deps) (*Server, error) {
	if len(d.Keys) == 0 {
		return nil, errors.New("federation: no signing key")
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	cfg := d.Config
	fed := cfg.Federation
	old, err := ReadOldKeys(cfg.OldKeysPath())
	if err != nil {
		return nil, fmt.Errorf("old signing keys: %w", err)
	}
	roots := d.RootCAs
	if roots == nil && fed.TrustCAFile != "" {
		if roots, err = LoadRootCAs(cfg.Path(fed.TrustCAFile)); err != nil {
			return nil, fmt.Errorf("federation.trust_ca_file: %w", err)
		}
	}
	s := &Server{
		name: cfg.ServerName, store: d.Store, log: d.Log.With("component", "federation"),
		version: d.Version, maxBody: fed.MaxRequestBytes, now: time.Now, mux: http.NewServeMux(),
	}
	s.own = &ownKeys{server: s.name, current: d.Keys, old: old, validity: fed.KeyValidity, now: time.Now}
	s.Client, err = NewClient(ClientOptions{
		ServerName: s.name, Key: d.Keys[0], Resolver: d.Resolver, AllowPrivate: fed.AllowPrivateAddresses,
		RootCAs: roots, Timeout: fed.RequestTimeout, MaxResponseBytes: fed.MaxResponseBytes, Log: s.log,
	})
	if err != nil {
		return nil, err
	}
	if s.Keyring, err = newKeyring(s.name, s.own, s.Client, d.Store, fed.TrustedKeyServers, fed.KeyCacheSize, s.log); err != nil {
		return nil, err
	}
	s.Queue = newQueue(s.name, s.Client, d.Store, fed.QueueLimit, fed.RetryMinInterval, fed.RetryMaxInterval, s.log)
	s.Client.onAnswer = s.Queue.Wake
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /_matrix/key/v2/server", s.serveKeys)
	s.mux.HandleFunc("GET /_matrix/key/v2/server/{keyId}", s.serveKeys)
	s.mux.HandleFunc("GET /_matrix/key/v2/query/{serverName}", s.serveNotaryGet)
	s.mux.HandleFunc("POST /_matrix/key/v2/query", s.serveNotaryPost)
	s.mux.HandleFunc("GET /_matrix/federation/v1/version", s.serveVersion)
	s.Handle("PUT /_matrix/federation/v1/send/{txnId}", s.serveSend)
}

// EDUFunc handles one inbound EDU's content. EDUs get no answer, so an
// error only drops the EDU (and is logged).
type EDUFunc func(ctx context.Context, origin string, content json.RawMessage) error

// HandleEDU registers fn for the EDUs of one type, replacing any handler
// registered before for it. Call it before the server is serving.
func (s *Server) HandleEDU(eduType string, fn EDUFunc) {
	if s.edus == nil {
		s.edus = make(map[string]EDUFunc)
	}
	s.edus[eduType] = fn
}

// Handle registers an X-Matrix-authenticated route (Go ServeMux pattern,
// full path, e.g. "GET /_matrix/federation/v1/query/profile").
func (s *Server) Handle(pattern string, h HandlerFunc) {
	s.mux.Handle(pattern, s.Authenticate(serveJSON(h)))
}

// HandleHTTP registers a route answered by h as it is: no X-Matrix
// authentication (wrap h with Authenticate for that) and no JSON framing,
// for the few endpoints that are public (openid/userinfo) or answer with
// something other than JSON (media's multipart/mixed).
func (s *Server) HandleHTTP(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
}

// HandleRoom is Handle for routes with a {roomId} that the spec's server
// ACL section protects (make_join, send_join, state, backfill …): a
// denied origin gets 403 M_FORBIDDEN before h runs.
func (s *Server) HandleRoom(pattern string, h HandlerFunc) {
	s.Handle(pattern, func(r *Request) (any, error) {
		if err := s.ACLCheck(r.Origin, r.PathValue("roomId")); err != nil {
			return nil, err
		}
		return h(r)
	})
}

func serveJSON(h HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := r.Context().Value(bodyKey{}).([]byte)
		resp, err := h(&Request{Request: r, Origin: Origin(r.Context()), Body: body})
		if err != nil {
			writeError(w, err)
			return
		}
		if raw, ok := resp.(json.RawMessage); ok {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(raw)
			return
		}
		if sr, ok := resp.(StreamedJSON); ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			bw := bufio.NewWriterSize(w, 64<<10)
			if err := sr.WriteJSON(bw); err != nil || bw.Flush() != nil {
				// The status is out: break the connection, so the
				// requester sees a failed answer, not a short one.
				panic(http.ErrAbortHandler)
			}
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

// StreamedJSON is a handler's answer written as it is produced, for
// answers too big to build whole first (a big room's send_join: 100k
// events). The status is 200; a failure midway aborts the connection.
type StreamedJSON interface {
	WriteJSON(w io.Writer) error
}

// Register mounts the federation and key APIs (/_matrix/federation/ and
// /_matrix/key/) on mux. Routes added later with Handle still work.
func (s *Server) Register(mux *http.ServeMux) {
	h := s.Handler()
	mux.Handle("/_matrix/federation/", h)
	mux.Handle("/_matrix/key/", h)
}

// Handler serves the federation and key APIs on their own (a dedicated
// federation listener): panic recovery, Matrix-shaped 404 and 405.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("panic in federation handler", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				writeError(w, errors.New("panic"))
			}
		}()
		if _, pattern := s.mux.Handler(r); pattern == "" {
			rec := &statusRecorder{header: http.Header{}}
			h, _ := s.mux.Handler(r)
			h.ServeHTTP(rec, r)
			status := http.StatusNotFound
			if rec.status == http.StatusMethodNotAllowed {
				status = rec.status
				w.Header().Set("Allow", rec.header.Get("Allow"))
			}
			writeError(w, newErr(status, "M_UNRECOGNIZED", "Unrecognized request"))
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(s int)           { r.status = s }

// serveVersion answers GET /_matrix/federation/v1/version.
func (s *Server) serveVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"server": map[string]string{"name": "edge", "version": s.version}})
}

// Start runs the background work: the transaction queues (resuming what
// was pending at the last shutdown) and the pruning of old inbound
// transaction records. Stop it with Close.
func (s *Server) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop, s.done = cancel, make(chan struct{})
	if err := s.Queue.start(ctx); err != nil {
		cancel()
		return err
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			s.pruneTxns()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// Close stops the queues (pending items stay in the store), waits for
// key fetches and inbound transactions still being processed, and drops
// idle connections. Requests arriving afterwards fail; close the store
// only after Close returns.
func (s *Server) Close() {
	if s.stop != nil {
		s.stop()
		<-s.done
		s.Queue.wait()
	}
	s.txns.shutdown()
	s.Keyring.close()
	s.Client.Close()
}
