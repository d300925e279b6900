package media

import (
	"errors"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"time"
)

// contentSecurityPolicy is the spec's recommended policy for media: no
// scripts, no plugins but PDF, nothing loaded from elsewhere.
const contentSecurityPolicy = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; " +
	"style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"

// inlineTypes are the spec's content types safe to serve with
// Content-Disposition: inline ("Serving inline content"); everything
// else, HTML and SVG included, is served as an attachment.
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// disposition is the Content-Disposition for content of ctype named name:
// inline only for the spec's safe types, the file name encoded per
// RFC 6266 (RFC 2231 filename* for non-ASCII names).
func disposition(ctype, name string) string {
	kind := "attachment"
	if mt, _, err := mime.ParseMediaType(ctype); err == nil && inlineTypes[mt] {
		kind = "inline"
	}
	if name == "" {
		return kind
	}
	if v := mime.FormatMediaType(kind, map[string]string{"filename": name}); v != "" {
		return v
	}
	return kind
}

// securityHeaders are set on every media response carrying content.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
}

// download answers GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]
// and the deprecated GET /_matrix/media/v3/download/… (frozen media: 404).
func (s *Service) download(w http.ResponseWriter, r *http.Request, req request) error {
	rec, err := s.ready(r, req)
	if err != nil {
		return err
	}
	name := rec.FileName
	if n := r.PathValue("fileName"); n != "" {
		name = n
	}
	return s.serveFile(w, r, s.files.content(rec.SHA256), rec.ContentType, disposition(rec.ContentType, name),
		time.UnixMilli(rec.CreatedTS), rec.SHA256)
}

// serveFile sends path (with Range and conditional request support).
func (s *Service) serveFile(w http.ResponseWriter, r *http.Request, path, ctype, disp string, modTime time.Time, etag string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		s.Log.ErrorContext(r.Context(), "media file missing", "path", path)
		return errNotFound()
	} else if err != nil {
		return err
	}
	defer f.Close()
	h := w.Header()
	securityHeaders(h)
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", disp)
	h.Set("ETag", `"`+etag+`"`)
	// Content behind a media ID never changes.
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	http.ServeContent(w, r, "", modTime, f)
	return nil
}

// mxc is the content URI of a local media ID.
func (s *Service) mxc(id string) string {
	return "mxc://" + s.Config.ServerName + "/" + id
}
