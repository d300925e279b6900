package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// thumbOrigin counts the federation media requests a node answers, by
// kind, and can play a server without the thumbnail endpoint.
type thumbOrigin struct {
	downloads, thumbnails atomic.Int64
	noThumbnails          atomic.Bool // answer thumbnail requests 404 M_UNRECOGNIZED
}

// startThumbOrigin is startMediaFedNode with per-kind counts.
func startThumbOrigin(t *testing.T, ca *rfCA, o *thumbOrigin) *rfNode {
	t.Helper()
	return startRFNodeWrapped(t, ca, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/download/"):
				o.downloads.Add(1)
			case strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/thumbnail/"):
				o.thumbnails.Add(1)
				if o.noThumbnails.Load() {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusNotFound)
					_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`))
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	})
}

// TestMediaFedThumbnailFromOrigin: bob on B asks for thumbnails of
// alice's image on A; B fetches A's own thumbnail per size and method
// (never the original), serves it byte-equal to what alice gets from A
// with A's Content-Type, and answers the same (snapped) size again from
// its cache. A request for a size B has not cached while A cannot
// thumbnail (no endpoint) falls back to B thumbnailing the original; a
// non-image is refused by both and answered 400.
func TestMediaFedThumbnailFromOrigin(t *testing.T) {
	ca := newRFCA(t)
	var origin, other thumbOrigin
	a := startThumbOrigin(t, ca, &origin)
	b := startThumbOrigin(t, ca, &other)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	ctx := ctxT(t)

	up, err := alice.UploadBytesWithName(ctx, testPNG(t, 400, 300), "image/png", "gradient.png")
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	thumb := func(w, h int, method string) string {
		return fmt.Sprintf("/_matrix/client/v1/media/thumbnail/%s/%s?width=%d&height=%d&method=%s", a.Name, up.ContentURI.FileID, w, h, method)
	}

	for i, c := range []struct {
		w, h   int
		method string
	}{{32, 32, "crop"}, {96, 96, "scale"}, {240, 200, "crop"}} {
		st, want, wantHdr := mediaFedGet(t, alice, thumb(c.w, c.h, c.method))
		if st != http.StatusOK || len(want) == 0 {
			t.Fatalf("alice's own %dx%d %s thumbnail: %d", c.w, c.h, c.method, st)
		}
		st, got, hdr := mediaFedGet(t, bob, thumb(c.w, c.h, c.method))
		if st != http.StatusOK || !bytes.Equal(got, want) {
			t.Fatalf("%dx%d %s thumbnail through B: %d, %d bytes; want A's %d bytes", c.w, c.h, c.method, st, len(got), len(want))
		}
		if hdr.Get("Content-Type") != wantHdr.Get("Content-Type") {
			t.Fatalf("Content-Type through B %q, A's %q", hdr.Get("Content-Type"), wantHdr.Get("Content-Type"))
		}
		if n := origin.thumbnails.Load(); n != int64(i+1) {
			t.Fatalf("A answered %d thumbnail requests after %d sizes", n, i+1)
		}
	}
	if n := origin.downloads.Load(); n != 0 {
		t.Fatalf("B downloaded the original %d times; thumbnails must come from A", n)
	}

	// 90×90 snaps to 96×96: B's cached copy, no new request to A.
	_, want96, _ := mediaFedGet(t, alice, thumb(96, 96, "scale"))
	if st, got, _ := mediaFedGet(t, bob, thumb(90, 90, "scale")); st != http.StatusOK || !bytes.Equal(got, want96) {
		t.Fatalf("90x90 through B: %d, %d bytes", st, len(got))
	}
	if n := origin.thumbnails.Load(); n != 3 {
		t.Fatalf("A answered %d thumbnail requests; the snapped size should be cached", n)
	}

	// A without the thumbnail endpoint: B thumbnails the original itself,
	// with the same result.
	origin.noThumbnails.Store(true)
	_, want320, _ := mediaFedGet(t, alice, thumb(320, 320, "scale"))
	if st, got, _ := mediaFedGet(t, bob, thumb(320, 320, "scale")); st != http.StatusOK || !bytes.Equal(got, want320) {
		t.Fatalf("fallback 320x320 through B: %d, %d bytes; want %d", st, len(got), len(want320))
	}
	if d, th := origin.downloads.Load(), origin.thumbnails.Load(); d != 1 || th != 4 {
		t.Fatalf("fallback: A answered %d downloads and %d thumbnails, want 1 and 4", d, th)
	}
	origin.noThumbnails.Store(false)

	// A text file: A cannot thumbnail it, nor can B.
	txt, err := alice.UploadBytesWithName(ctx, []byte("just text"), "text/plain", "notes.txt")
	if err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/_matrix/client/v1/media/thumbnail/%s/%s?width=32&height=32", a.Name, txt.ContentURI.FileID)
	if st, body, _ := mediaFedGet(t, bob, path); st != http.StatusBadRequest || !bytes.Contains(body, []byte("M_UNKNOWN")) {
		t.Fatalf("thumbnail of remote text: %d %s, want 400 M_UNKNOWN", st, body)
	}
	// Unknown remote media is 404 without a fallback download.
	before := origin.downloads.Load()
	path = fmt.Sprintf("/_matrix/client/v1/media/thumbnail/%s/NoSuchMedia?width=32&height=32", a.Name)
	if st, body, _ := mediaFedGet(t, bob, path); st != http.StatusNotFound || !bytes.Contains(body, []byte("M_NOT_FOUND")) {
		t.Fatalf("thumbnail of unknown remote media: %d %s, want 404 M_NOT_FOUND", st, body)
	}
	if origin.downloads.Load() != before {
		t.Fatal("an unknown remote media ID was fetched again as a download")
	}
}
