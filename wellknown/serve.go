package wellknown

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Discovery is what this server publishes under /.well-known/matrix/.
type Discovery struct {
	// Server is the m.server delegation ("host[:port]"); empty means
	// GET /.well-known/matrix/server answers 404 M_NOT_FOUND.
	Server string
	// HomeserverBaseURL is m.homeserver.base_url; empty means
	// GET /.well-known/matrix/client answers 404 M_NOT_FOUND.
	HomeserverBaseURL string
	// IdentityServerBaseURL is m.identity_server.base_url, if any.
	IdentityServerBaseURL string
	// ClientExtra are further top-level keys of the client document, named
	// in Java package style (e.g. "org.matrix.msc3575.proxy",
	// "org.matrix.msc4143.rtc_foci"); values are marshalled as JSON.
	ClientExtra map[string]any
	// MaxAge is the Cache-Control max-age sent with both documents
	// (default 1h: remote servers then refetch hourly, so a changed
	// delegation spreads within the hour).
	MaxAge time.Duration
}

// Handler serves GET /.well-known/matrix/server and
// GET /.well-known/matrix/client from a Discovery rendered once at
// construction. Mount it at "/.well-known/matrix/".
type Handler struct {
	server, client []byte // nil when not configured
	cacheControl   string
}

var _ http.Handler = (*Handler)(nil)

// NewHandler validates d and pre-renders both documents.
func NewHandler(d Discovery) (*Handler, error) {
	h := &Handler{}
	if d.MaxAge <= 0 {
		d.MaxAge = time.Hour
	}
	h.cacheControl = "public, max-age=" + strconv.Itoa(int(d.MaxAge/time.Second))
	if d.Server != "" {
		n, err := ParseServerName(d.Server)
		if err != nil {
			return nil, fmt.Errorf("wellknown: m.server: %w", err)
		}
		h.server, _ = json.Marshal(map[string]string{"m.server": n.String()})
	}
	if d.HomeserverBaseURL == "" {
		if d.IdentityServerBaseURL != "" || len(d.ClientExtra) > 0 {
			return nil, fmt.Errorf("wellknown: client discovery needs m.homeserver.base_url")
		}
		return h, nil
	}
	doc := map[string]any{}
	for k, v := range d.ClientExtra {
		if k == "m.homeserver" || k == "m.identity_server" || !strings.Contains(k, ".") ||
			strings.HasPrefix(k, ".") || strings.HasSuffix(k, ".") || strings.Contains(k, "..") {
			return nil, fmt.Errorf("wellknown: client extra key %q: need a namespaced name like org.example.property", k)
		}
		doc[k] = v
	}
	if err := checkBaseURL(d.HomeserverBaseURL); err != nil {
		return nil, fmt.Errorf("wellknown: m.homeserver.base_url: %w", err)
	}
	doc["m.homeserver"] = map[string]string{"base_url": d.HomeserverBaseURL}
	if d.IdentityServerBaseURL != "" {
		if err := checkBaseURL(d.IdentityServerBaseURL); err != nil {
			return nil, fmt.Errorf("wellknown: m.identity_server.base_url: %w", err)
		}
		doc["m.identity_server"] = map[string]string{"base_url": d.IdentityServerBaseURL}
	}
	var err error
	if h.client, err = json.Marshal(doc); err != nil {
		return nil, fmt.Errorf("wellknown: client document: %w", err)
	}
	return h, nil
}

// checkBaseURL accepts an absolute http(s) URL, which is what clients
// validate it against (client-server API, "Well-known URIs", step 5).
func checkBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	return nil
}

// ServeHTTP answers:
//
//	GET /.well-known/matrix/server  {"m.server": "host:port"}, or 404 M_NOT_FOUND
//	GET /.well-known/matrix/client  {"m.homeserver": {"base_url": …}, …}, or 404 M_NOT_FOUND
//
// with CORS headers on every response (the client-server API asks for them
// on well-known files) and OPTIONS preflights answered directly.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Access-Control-Allow-Origin", "*")
	hd.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
	hd.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
	var doc []byte
	switch r.URL.Path {
	case "/.well-known/matrix/server":
		doc = h.server
	case "/.well-known/matrix/client":
		doc = h.client
	default:
		writeMatrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodOptions:
		w.WriteHeader(http.StatusNoContent)
		return
	default:
		hd.Set("Allow", "GET, HEAD, OPTIONS")
		writeMatrixError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Unrecognized request")
		return
	}
	hd.Set("Cache-Control", h.cacheControl)
	if doc == nil {
		writeMatrixError(w, http.StatusNotFound, "M_NOT_FOUND", "No discovery information configured")
		return
	}
	hd.Set("Content-Type", "application/json")
	hd.Set("Content-Length", strconv.Itoa(len(doc)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(doc)
}

func writeMatrixError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]string{"errcode": code, "error": msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
