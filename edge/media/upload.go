package media

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"edge/edge/client"
	"edge/edge/store"
)

// upload answers POST /_matrix/media/v3/upload: stores the body and
// returns its new mxc:// URI.
func (s *Service) upload(w http.ResponseWriter, r *http.Request, req request) error {
	ctype, name, err := uploadParams(r)
	if err != nil {
		return err
	}
	sha, size, err := s.receive(r)
	if err != nil {
		return err
	}
	id := newMediaID()
	rec := record{SHA256: sha, ContentType: ctype, FileName: name, Size: size, Uploader: req.sess.UserID,
		CreatedTS: time.Now().UnixMilli(), Authenticated: s.Config.Media.FreezeUnauthenticated}
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := s.Store.Write(func(tx *store.Tx) error {
		tx.PutKV(nsMedia, id, val)
		return nil
	}); err != nil {
		return err
	}
	client.WriteJSON(w, http.StatusOK, map[string]string{"content_uri": s.mxc(id)})
	return nil
}

// create answers POST /_matrix/media/v1/create: reserves an mxc:// URI for
// a later PUT /_matrix/media/v3/upload/{serverName}/{mediaId}.
func (s *Service) create(w http.ResponseWriter, r *http.Request, req request) error {
	now := time.Now()
	id := newMediaID()
	rec := record{Uploader: req.sess.UserID, CreatedTS: now.UnixMilli(), Pending: true,
		ExpiresTS: now.Add(pendingLifetime).UnixMilli(), Authenticated: s.Config.Media.FreezeUnauthenticated}
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	err = s.Store.Write(func(tx *store.Tx) error {
		// Count the user's live pending IDs, dropping expired ones.
		prefix := req.sess.UserID + "\x00"
		var live int
		var expired []string
		tx.ScanKV(nsPending, prefix, func(key string, _ []byte) bool {
			pid := strings.TrimPrefix(key, prefix)
			b, err := tx.GetKV(nsMedia, pid)
			var pr record
			if err != nil || json.Unmarshal(b, &pr) != nil || !pr.Pending || now.UnixMilli() >= pr.ExpiresTS {
				expired = append(expired, pid)
			} else {
				live++
			}
			return true
		})
		for _, pid := range expired {
			tx.DeleteKV(nsPending, prefix+pid)
			if b, err := tx.GetKV(nsMedia, pid); err == nil {
				var pr record
				if json.Unmarshal(b, &pr) == nil && pr.Pending {
					tx.DeleteKV(nsMedia, pid)
				}
			}
		}
		if live >= maxPendingPerUser {
			e := errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many pending media uploads")
			e.RetryAfterMS = 60_000
			return e
		}
		tx.PutKV(nsMedia, id, val)
		tx.PutKV(nsPending, prefix+id, nil)
		return nil
	})
	if err != nil {
		return err
	}
	client.WriteJSON(w, http.StatusOK, map[string]any{"content_uri": s.mxc(id), "unused_expires_at": rec.ExpiresTS})
	return nil
}

// uploadTo answers PUT /_matrix/media/v3/upload/{serverName}/{mediaId}:
// the content of an ID reserved with /media/v1/create, by its creator,
// once.
func (s *Service) uploadTo(w http.ResponseWriter, r *http.Request, req request) error {
	id, rec, err := s.lookup(r)
	if err != nil {
		return err
	}
	if err := checkPending(rec, req.sess.UserID); err != nil {
		return err
	}
	ctype, name, err := uploadParams(r)
	if err != nil {
		return err
	}
	sha, size, err := s.receive(r)
	if err != nil {
		return err
	}
	err = s.Store.Write(func(tx *store.Tx) error {
		// Check again: another PUT may have finished while we received.
		b, err := tx.GetKV(nsMedia, id)
		if err != nil {
			return errNotFound()
		}
		var cur record
		if err := json.Unmarshal(b, &cur); err != nil {
			return err
		}
		if err := checkPending(&cur, req.sess.UserID); err != nil {
			return err
		}
		cur.Pending, cur.ExpiresTS = false, 0
		cur.SHA256, cur.Size, cur.ContentType, cur.FileName = sha, size, ctype, name
		val, err := json.Marshal(cur)
		if err != nil {
			return err
		}
		tx.PutKV(nsMedia, id, val)
		tx.DeleteKV(nsPending, cur.Uploader+"\x00"+id)
		return nil
	})
	if err != nil {
		return err
	}
	client.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// checkPending says whether userID may upload to rec now.
func checkPending(rec *record, userID string) error {
	switch {
	case !rec.Pending:
		return errorf(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
	case time.Now().UnixMilli() >= rec.ExpiresTS:
		return errNotFound()
	case rec.Uploader != userID:
		return errorf(http.StatusForbidden, "M_FORBIDDEN", "This media ID was created by another user")
	}
	return nil
}

// uploadParams reads an upload's Content-Type (default
// application/octet-stream) and filename query parameter.
func uploadParams(r *http.Request) (ctype, name string, err error) {
	ctype = strings.TrimSpace(r.Header.Get("Content-Type"))
	if ctype == "" {
		ctype = "application/octet-stream"
	} else if _, _, perr := mime.ParseMediaType(ctype); perr != nil || len(ctype) > 255 {
		return "", "", errorf(http.StatusBadRequest, "M_INVALID_PARAM", "Content-Type is not a valid media type")
	}
	name = r.URL.Query().Get("filename")
	if len(name) > 1024 || !utf8.ValidString(name) || strings.ContainsFunc(name, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		return "", "", errorf(http.StatusBadRequest, "M_INVALID_PARAM", "filename must be at most 1024 bytes of printable UTF-8")
	}
	return ctype, name, nil
}

// receive stores the request body, enforcing the upload size limit.
func (s *Service) receive(r *http.Request) (string, int64, error) {
	limit := s.Config.Media.MaxUploadBytes
	if r.ContentLength > limit {
		return "", 0, errTooLargeUpload(limit)
	}
	sha, size, err := s.files.store(bodyReader{r.Body}, limit)
	switch {
	case errors.Is(err, errTooLarge):
		return "", 0, errTooLargeUpload(limit)
	case errors.Is(err, errBodyRead):
		return "", 0, errorf(http.StatusBadRequest, "M_UNKNOWN", "Upload incomplete")
	}
	return sha, size, err
}

// errBodyRead marks a failure reading the client's body (a truncated
// upload, a disconnect), as opposed to a failure writing the disk.
var errBodyRead = errors.New("media: reading the upload failed")

type bodyReader struct{ r io.Reader }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: %w", errBodyRead, err)
	}
	return n, err
}
