package media

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"edge/edge/client"
	"edge/edge/config"
	"edge/edge/store"
)

// KV namespaces: media ID → record, and "userID\x00mediaID" → nothing for
// each pending (created, not yet uploaded) media ID, to count them.
const (
	nsMedia   = "media"
	nsPending = "media_pending"
)

const (
	// pendingLifetime is how long a created media ID waits for its upload
	// (the spec's recommended 24 hours).
	pendingLifetime = 24 * time.Hour
	// maxPendingPerUser bounds created-but-not-uploaded IDs per user.
	maxPendingPerUser = 100
	// defaultWait and maxWait bound timeout_ms for not-yet-uploaded media.
	defaultWait = 20 * time.Second
	maxWait     = 60 * time.Second
)

// Deps is what the media repository needs from the node.
type Deps struct {
	Config *config.Config
	Store  *store.Store
	// Authenticate resolves an access token; its errors are *client.Error.
	Authenticate func(r *http.Request) (*client.Session, error)
	Log          *slog.Logger
	// FetchRemote sends a signed federation GET and returns the answer's
	// body; nil leaves other servers' media 404.
	FetchRemote func(ctx context.Context, server, path string) ([]byte, error)
	// FetchRemoteLegacy is FetchRemote returning the answer's headers too,
	// for the legacy /_matrix/media/v3/download of servers that predate
	// the federation media endpoints; nil disables that fallback.
	FetchRemoteLegacy func(ctx context.Context, server, path string) ([]byte, http.Header, error)
	// LocationTLS verifies the servers a federation media answer's
	// Location points to; nil means the system roots.
	LocationTLS *tls.Config
}

// Service serves /_matrix/media and /_matrix/client/v1/media.
type Service struct {
	Deps
	files files
	mux   *http.ServeMux
	// thumbSem bounds concurrent thumbnail generation (it is CPU bound).
	thumbSem chan struct{}
	// preview fetches pages for preview_url; nil while previews are off.
	preview *previewer
}

// record is what a media ID refers to.
type record struct {
	SHA256      string `json:"sha256,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	FileName    string `json:"file_name,omitempty"`
	Size        int64  `json:"size"`
	Uploader    string `json:"uploader"`
	CreatedTS   int64  `json:"created_ts"`
	// Authenticated media was uploaded while unauthenticated access was
	// frozen: the deprecated endpoints do not serve it.
	Authenticated bool `json:"authenticated,omitempty"`
	// Pending IDs were created by /media/v1/create and await their upload
	// until ExpiresTS.
	Pending   bool  `json:"pending,omitempty"`
	ExpiresTS int64 `json:"expires_ts,omitempty"`
}

// New makes the media repository and registers its routes.
func New(d Deps) *Service {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	s := &Service{Deps: d, files: files{dir: d.Config.MediaDir()}, mux: http.NewServeMux(), thumbSem: make(chan struct{}, 2)}
	s.files.cleanTmp()
	s.routes()
	return s
}

func (s *Service) routes() {
	// Authenticated (v1.11) endpoints.
	s.mux.HandleFunc("GET /_matrix/client/v1/media/config", s.authed(s.getConfig))
	s.mux.HandleFunc("GET /_matrix/client/v1/media/download/{serverName}/{mediaId}", s.authed(s.download))
	s.mux.HandleFunc("GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}", s.authed(s.download))
	s.mux.HandleFunc("GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", s.authed(s.thumbnail))
	// Uploads have no authenticated replacement: they always needed a token.
	s.mux.HandleFunc("POST /_matrix/media/v1/create", s.authed(s.create))
	for _, v := range []string{"v3", "r0"} {
		p := "/_matrix/media/" + v
		s.mux.HandleFunc("POST "+p+"/upload", s.authed(s.upload))
		s.mux.HandleFunc("PUT "+p+"/upload/{serverName}/{mediaId}", s.authed(s.uploadTo))
		s.mux.HandleFunc("GET "+p+"/config", s.authed(s.getConfig))
		// Deprecated unauthenticated endpoints, frozen (see record.Authenticated).
		s.mux.HandleFunc("GET "+p+"/download/{serverName}/{mediaId}", s.legacy(s.download))
		s.mux.HandleFunc("GET "+p+"/download/{serverName}/{mediaId}/{fileName}", s.legacy(s.download))
		s.mux.HandleFunc("GET "+p+"/thumbnail/{serverName}/{mediaId}", s.legacy(s.thumbnail))
	}
	s.previewRoutes()
}

// request is one media request: who made it (nil on the deprecated
// unauthenticated endpoints) and whether frozen media may be served.
type request struct {
	sess   *client.Session
	legacy bool
}

type mediaHandler func(w http.ResponseWriter, r *http.Request, req request) error

func (s *Service) authed(h mediaHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.Authenticate(r)
		if err == nil {
			err = h(w, r, request{sess: sess})
		}
		s.finish(w, r, err)
	}
}

func (s *Service) legacy(h mediaHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.finish(w, r, h(w, r, request{legacy: true}))
	}
}

func (s *Service) finish(w http.ResponseWriter, r *http.Request, err error) {
	if err == nil {
		return
	}
	var me *client.Error
	if !errors.As(err, &me) {
		s.Log.ErrorContext(r.Context(), "media request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	client.WriteError(w, err)
}

// Handler is the media API with its middleware: CORS, panic recovery and
// Matrix-shaped 404/405s.
func (s *Service) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.Log.Error("panic in media handler", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				client.WriteError(w, errors.New("panic"))
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
		if _, pattern := s.mux.Handler(r); pattern == "" {
			status := http.StatusNotFound
			if allowed := s.allowed(r); allowed != "" {
				h.Set("Allow", allowed)
				status = http.StatusMethodNotAllowed
			}
			client.WriteError(w, errorf(status, "M_UNRECOGNIZED", "Unrecognized request"))
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// allowed reports the Allow header the mux would send for a path that
// exists under another method, or "".
func (s *Service) allowed(r *http.Request) string {
	rec := &headerRecorder{h: http.Header{}}
	s.mux.ServeHTTP(rec, r)
	if rec.status == http.StatusMethodNotAllowed {
		return rec.h.Get("Allow")
	}
	return ""
}

type headerRecorder struct {
	h      http.Header
	status int
}

func (r *headerRecorder) Header() http.Header         { return r.h }
func (r *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *headerRecorder) WriteHeader(s int)           { r.status = s }

// getConfig answers GET /_matrix/client/v1/media/config (and the
// deprecated GET /_matrix/media/v3/config).
func (s *Service) getConfig(w http.ResponseWriter, r *http.Request, _ request) error {
	client.WriteJSON(w, http.StatusOK, map[string]any{"m.upload.size": s.Config.Media.MaxUploadBytes})
	return nil
}

func errorf(status int, code, msg string) *client.Error {
	return &client.Error{Status: status, Code: code, Message: msg}
}

func errNotFound() *client.Error {
	return errorf(http.StatusNotFound, "M_NOT_FOUND", "Media not found")
}

func errTooLargeUpload(limit int64) *client.Error {
	return errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Cannot upload files larger than "+strconv.FormatInt(limit, 10)+" bytes")
}

// validMediaID is the spec's media-id grammar: [A-Za-z0-9_-]+.
func validMediaID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// newMediaID makes a random 24-character media ID.
func newMediaID() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// lookup reads the record of the media ID named in the request path;
// another server's media is fetched over federation and cached.
func (s *Service) lookup(r *http.Request) (string, *record, error) {
	server, id := r.PathValue("serverName"), r.PathValue("mediaId")
	if !validMediaID(id) || server == "" {
		return id, nil, errNotFound()
	}
	if server != s.Config.ServerName {
		if r.URL.Query().Get("allow_remote") == "false" {
			return id, nil, errNotFound()
		}
		rec, err := s.remote(r.Context(), server, id)
		return id, rec, err
	}
	rec, err := s.get(id)
	return id, rec, err
}

func (s *Service) get(id string) (*record, error) {
	var rec record
	err := s.Store.View(func(tx *store.Tx) error {
		b, err := tx.GetKV(nsMedia, id)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &rec)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNotFound()
	}
	if err != nil {
		return nil, err
	}
	if rec.Pending && time.Now().UnixMilli() >= rec.ExpiresTS {
		return nil, errNotFound()
	}
	return &rec, nil
}

// ready returns the uploaded record a download or thumbnail request names,
// waiting up to timeout_ms for a pending upload (504 M_NOT_YET_UPLOADED).
func (s *Service) ready(r *http.Request, req request) (*record, error) {
	_, rec, err := s.lookup(r)
	if err != nil {
		return nil, err
	}
	if req.legacy && rec.Authenticated {
		return nil, errNotFound() // frozen: the spec's MAY return 404
	}
	if !rec.Pending {
		return rec, nil
	}
	wait := defaultWait
	if v := r.URL.Query().Get("timeout_ms"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, errorf(http.StatusBadRequest, "M_INVALID_PARAM", "timeout_ms must be a non-negative integer")
		}
		wait = min(time.Duration(ms)*time.Millisecond, maxWait)
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for rec.Pending {
		select {
		case <-r.Context().Done():
			return nil, r.Context().Err()
		case <-deadline.C:
			return nil, errorf(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
		case <-tick.C:
		}
		if rec, err = s.get(r.PathValue("mediaId")); err != nil {
			return nil, err
		}
	}
	return rec, nil
}
