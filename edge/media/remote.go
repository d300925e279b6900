package media

// Media over federation (spec v1.11): other servers fetch our media with
// GET /_matrix/federation/v1/media/download/{mediaId} and /thumbnail, a
// multipart/mixed answer of a JSON part ({}) and the content (or a
// Location to fetch it from); our clients' requests for another server's
// media are fetched that way once and cached under (server, mediaId).
// Thumbnails of another server's media are the origin's own, fetched once
// per (server, mediaId, size, method) and cached; only when the origin
// cannot thumbnail do we make one from the downloaded original. A server
// that does not know the federation endpoint is asked through the legacy
// /_matrix/media/v3/download instead.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"edge/edge/store"
	"edge/federation"
	"edge/wellknown"
)

// nsRemote maps "server\x00mediaID" → record of a cached remote file.
const nsRemote = "media_remote"

// nsRemoteThumb maps "server\x00mediaID\x00WxH-method[-animated]" →
// record of a thumbnail fetched from the origin.
const nsRemoteThumb = "media_remote_thumb"

// remoteFetchTimeout bounds one remote fetch, redirect included.
const remoteFetchTimeout = 60 * time.Second

// fetchLocks serialises fetches of one remote media ID, so concurrent
// requests do not download it twice.
var fetchLocks sync.Map // "server\x00mediaID" → *sync.Mutex

// remote returns the cached record of server's media ID, fetching it over
// federation on first use.
func (s *Service) remote(ctx context.Context, server, id string) (*record, error) {
	key := server + "\x00" + id
	if rec, err := s.cached(key); rec != nil || err != nil {
		return rec, err
	}
	if s.FetchRemote == nil {
		return nil, errNotFound()
	}
	mu, _ := fetchLocks.LoadOrStore(key, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if rec, err := s.cached(key); rec != nil || err != nil {
		return rec, err
	}
	ctx, cancel := context.WithTimeout(ctx, remoteFetchTimeout)
	defer cancel()
	var rec *record
	body, err := s.FetchRemote(ctx, server, "/_matrix/federation/v1/media/download/"+url.PathEscape(id))
	switch {
	case err != nil && unknownEndpoint(err) && s.FetchRemoteLegacy != nil:
		rec, err = s.fetchLegacy(ctx, server, id)
	case err != nil:
		return nil, remoteError(err)
	default:
		rec, err = s.storeMultipart(ctx, body)
	}
	if err != nil {
		return nil, err
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if err := s.Store.Write(func(tx *store.Tx) error {
		tx.PutKV(nsRemote, key, val)
		return nil
	}); err != nil {
		return nil, err
	}
	return rec, nil
}

// unknownEndpoint tells whether a failed federation media request means
// the remote server does not know the endpoint (it predates spec v1.11):
// 404 or 405 that is not a Matrix error or is M_UNRECOGNIZED, or 400
// M_UNRECOGNIZED or not a Matrix error at all. A 404 M_NOT_FOUND is an
// answer about the media, not the endpoint.
func unknownEndpoint(err error) bool {
	var re *federation.RemoteError
	if !errors.As(err, &re) {
		return false
	}
	switch re.Status {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusBadRequest:
		return re.Code == "" || re.Code == "M_UNRECOGNIZED"
	}
	return false
}

// fetchLegacy downloads server's media ID through the deprecated
// GET /_matrix/media/v3/download/{serverName}/{mediaId} (allow_remote=false:
// the origin must not go asking further) and stores its content.
func (s *Service) fetchLegacy(ctx context.Context, server, id string) (*record, error) {
	path := "/_matrix/media/v3/download/" + url.PathEscape(server) + "/" + url.PathEscape(id) + "?allow_remote=false"
	body, hdr, err := s.FetchRemoteLegacy(ctx, server, path)
	if err != nil {
		return nil, remoteError(err)
	}
	ctype, name := hdr.Get("Content-Type"), ""
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	if _, params, err := mime.ParseMediaType(hdr.Get("Content-Disposition")); err == nil {
		name = params["filename"]
	}
	sha, size, err := s.files.store(bytes.NewReader(body), s.Config.Media.MaxUploadBytes)
	if errors.Is(err, errTooLarge) {
		return nil, errRemoteTooLarge()
	}
	if err != nil {
		return nil, err
	}
	return &record{SHA256: sha, ContentType: ctype, FileName: name, Size: size, CreatedTS: time.Now().UnixMilli()}, nil
}

func (s *Service) cached(key string) (*record, error) { return s.cachedIn(nsRemote, key) }

// cachedIn reads a record of a remote file from namespace ns; nil if none.
func (s *Service) cachedIn(ns, key string) (*record, error) {
	var rec record
	err := s.Store.View(func(tx *store.Tx) error {
		b, err := tx.GetKV(ns, key)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &rec)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &rec, nil
}

func errRemoteTooLarge() error {
	return errorf(http.StatusBadGateway, "M_TOO_LARGE", "Remote content is too large")
}

// remoteError maps a failed federation fetch to the client API's answer:
// the origin's 404 (or a server name that does not resolve) is ours, too-large content is 502 M_TOO_LARGE (the
// spec's answer for it), anything else 502.
func remoteError(err error) error {
	var re *federation.RemoteError
	switch {
	case errors.As(err, &re) && re.Status == http.StatusNotFound,
		// A server name that resolves nowhere has no media.
		errors.Is(err, wellknown.ErrNoAddress), errors.Is(err, wellknown.ErrInvalidServerName):
		return errNotFound()
	case errors.Is(err, federation.ErrResponseTooLarge):
		return errRemoteTooLarge()
	case errors.Is(err, context.DeadlineExceeded):
		return errorf(http.StatusGatewayTimeout, "M_UNKNOWN", "Timed out fetching remote content")
	}
	return errorf(http.StatusBadGateway, "M_UNKNOWN", "Could not fetch remote content: "+err.Error())
}

// storeMultipart parses a federation media answer and stores its content.
// The client does not hand over the answer's Content-Type, so the boundary
// is read from the body's first line ("--boundary").
func (s *Service) storeMultipart(ctx context.Context, body []byte) (*record, error) {
	bad := errorf(http.StatusBadGateway, "M_UNKNOWN", "Remote server sent an invalid media response")
	line, _, _ := bytes.Cut(body, []byte("\n"))
	line = bytes.TrimRight(line, "\r \t")
	if !bytes.HasPrefix(line, []byte("--")) || len(line) < 3 {
		return nil, bad
	}
	mr := multipart.NewReader(bytes.NewReader(body), string(line[2:]))
	meta, err := mr.NextPart()
	if err != nil {
		return nil, bad
	}
	if err := json.NewDecoder(io.LimitReader(meta, 1<<16)).Decode(new(map[string]any)); err != nil {
		return nil, bad
	}
	part, err := mr.NextPart()
	if err != nil {
		return nil, bad
	}
	ctype, name := part.Header.Get("Content-Type"), ""
	if _, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition")); err == nil {
		name = params["filename"]
	}
	var content io.Reader = part
	if loc := part.Header.Get("Location"); loc != "" {
		resp, err := s.fetchLocation(ctx, loc)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		content, ctype = resp.Body, resp.Header.Get("Content-Type")
	}
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	sha, size, err := s.files.store(content, s.Config.Media.MaxUploadBytes)
	if errors.Is(err, errTooLarge) {
		return nil, errRemoteTooLarge()
	}
	if err != nil {
		return nil, err
	}
	return &record{SHA256: sha, ContentType: ctype, FileName: name, Size: size, CreatedTS: time.Now().UnixMilli()}, nil
}

// fetchLocation follows the redirect form of a federation media answer: a
// plain HTTPS GET that may only reach the addresses federation may.
func (s *Service) fetchLocation(ctx context.Context, loc string) (*http.Response, error) {
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errorf(http.StatusBadGateway, "M_UNKNOWN", "Remote server sent an invalid media location")
	}
	d := &wellknown.PublicDialer{AllowPrivate: s.Config.Federation.AllowPrivateAddresses}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, TLSClientConfig: s.LocationTLS}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, errorf(http.StatusBadGateway, "M_UNKNOWN", "Could not fetch remote content")
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, errNotFound()
		}
		return nil, errorf(http.StatusBadGateway, "M_UNKNOWN", fmt.Sprintf("Remote content location answered %d", resp.StatusCode))
	}
	return resp, nil
}

// FederationHandlers returns the handlers of
// GET /_matrix/federation/v1/media/download/{mediaId} and
// GET /_matrix/federation/v1/media/thumbnail/{mediaId}, to be mounted
// behind X-Matrix authentication. They serve local media only.
func (s *Service) FederationHandlers() (download, thumbnail http.Handler) {
	return s.federation(s.download), s.federation(s.thumbnail)
}

// federation runs a client media handler for our own server name into a
// buffer and sends its answer as the spec's multipart/mixed: {} and then
// the content with its Content-Type and Content-Disposition.
func (s *Service) federation(h mediaHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r2 := r.Clone(r.Context())
		r2.SetPathValue("serverName", s.Config.ServerName)
		r2.SetPathValue("mediaId", r.PathValue("mediaId"))
		for _, h := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
			r2.Header.Del(h)
		}
		buf := &bufferWriter{h: http.Header{}, status: http.StatusOK}
		if err := h(buf, r2, request{}); err != nil {
			s.finish(w, r, err)
			return
		}
		if buf.status != http.StatusOK {
			w.WriteHeader(buf.status)
			return
		}
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		boundary := hex.EncodeToString(b)
		var out bytes.Buffer
		mw := multipart.NewWriter(&out)
		_ = mw.SetBoundary(boundary)
		jp, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
		_, _ = jp.Write([]byte("{}"))
		ph := textproto.MIMEHeader{"Content-Type": {buf.h.Get("Content-Type")}}
		if d := buf.h.Get("Content-Disposition"); d != "" {
			ph.Set("Content-Disposition", d)
		}
		fp, _ := mw.CreatePart(ph)
		_, _ = fp.Write(buf.body.Bytes())
		_ = mw.Close()
		w.Header().Set("Content-Type", "multipart/mixed; boundary="+boundary)
		w.WriteHeader(http.StatusOK)
		_, _ = out.WriteTo(w)
	})
}

// bufferWriter collects a handler's answer.
type bufferWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferWriter) Header() http.Header         { return b.h }
func (b *bufferWriter) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferWriter) WriteHeader(s int)           { b.status = s }

// remoteThumbnail serves the origin's thumbnail of another server's media
// (width and height already snapped to our sizes), fetched once and
// cached. handled is false when the origin could not make one (it cannot
// thumbnail that content, is unreachable or predates the endpoint): the
// caller then thumbnails the original itself.
func (s *Service) remoteThumbnail(w http.ResponseWriter, r *http.Request, server, id string, width, height int, method string) (handled bool, err error) {
	if !validMediaID(id) || s.FetchRemote == nil {
		return true, errNotFound()
	}
	animated := r.URL.Query().Get("animated")
	if animated != "true" && animated != "false" {
		animated = ""
	}
	key := fmt.Sprintf("%s\x00%s\x00%dx%d-%s", server, id, width, height, method)
	if animated != "" {
		key += "-animated=" + animated
	}
	rec, err := s.cachedIn(nsRemoteThumb, key)
	if err != nil {
		return true, err
	}
	if rec == nil {
		mu, _ := fetchLocks.LoadOrStore(key, &sync.Mutex{})
		mu.(*sync.Mutex).Lock()
		defer mu.(*sync.Mutex).Unlock()
		if rec, err = s.cachedIn(nsRemoteThumb, key); err != nil {
			return true, err
		}
	}
	if rec == nil {
		q := url.Values{"width": {strconv.Itoa(width)}, "height": {strconv.Itoa(height)}, "method": {method}}
		if animated != "" {
			q.Set("animated", animated)
		}
		if t := r.URL.Query().Get("timeout_ms"); t != "" {
			q.Set("timeout_ms", t)
		}
		ctx, cancel := context.WithTimeout(r.Context(), remoteFetchTimeout)
		defer cancel()
		body, err := s.FetchRemote(ctx, server, "/_matrix/federation/v1/media/thumbnail/"+url.PathEscape(id)+"?"+q.Encode())
		if err != nil {
			var re *federation.RemoteError
			if errors.As(err, &re) && ((re.Status == http.StatusNotFound && re.Code == "M_NOT_FOUND") ||
				(re.Status == http.StatusGatewayTimeout && re.Code == "M_NOT_YET_UPLOADED")) {
				return true, remoteError(err) // no such media (yet): no original either
			}
			s.Log.DebugContext(r.Context(), "remote thumbnail unavailable; thumbnailing the original", "server", server, "media_id", id, "err", err)
			return false, nil
		}
		if rec, err = s.storeMultipart(ctx, body); err != nil {
			return false, nil
		}
		if mt, _, _ := mime.ParseMediaType(rec.ContentType); !strings.HasPrefix(mt, "image/") {
			return false, nil // not a thumbnail we would serve inline
		}
		val, err := json.Marshal(rec)
		if err != nil {
			return true, err
		}
		if err := s.Store.Write(func(tx *store.Tx) error {
			tx.PutKV(nsRemoteThumb, key, val)
			return nil
		}); err != nil {
			return true, err
		}
	}
	ext := "png"
	if exts, _ := mime.ExtensionsByType(rec.ContentType); len(exts) > 0 {
		ext = strings.TrimPrefix(exts[0], ".")
	}
	if mt, _, _ := mime.ParseMediaType(rec.ContentType); mt == "image/jpeg" {
		ext = "jpg"
	}
	return true, s.serveFile(w, r, s.files.content(rec.SHA256), rec.ContentType, disposition(rec.ContentType, "thumbnail."+ext),
		time.UnixMilli(rec.CreatedTS), rec.SHA256)
}
