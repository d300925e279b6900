package integration

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"maunium.net/go/mautrix"

	"edge/edge/config"
)

// startMediaFedNode is startRFNode counting the federation media
// requests the node answers, with cfg adjusted by opts.
func startMediaFedNode(t *testing.T, ca *rfCA, hits *atomic.Int64, opts ...func(*config.Config)) *rfNode {
	t.Helper()
	return startRFNodeWrapped(t, ca, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/") {
				hits.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}, opts...)
}

// mediaFedGet sends an authenticated GET to a client media endpoint.
func mediaFedGet(t *testing.T, c *mautrix.Client, path string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodGet, c.HomeserverURL.String()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header
}

func testPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), 128, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestMediaFedDownload: alice on A uploads an image; bob on B downloads it
// and a thumbnail through B byte-equal to what alice gets from A (A's own,
// fetched once), the second time from B's cache (A sees no further
// federation media request);
// unknown remote media is 404; a server whose upload limit is below the
// file's size answers 502 M_TOO_LARGE; A's federation media endpoint
// refuses unsigned requests.
func TestMediaFedDownload(t *testing.T) {
	ca := newRFCA(t)
	var hitsA, hitsB, hitsC atomic.Int64 // B's and C's are not inspected
	a := startMediaFedNode(t, ca, &hitsA)
	b := startMediaFedNode(t, ca, &hitsB)
	c := startMediaFedNode(t, ca, &hitsC, func(c *config.Config) { c.Media.MaxUploadBytes = 100 })
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	carol := c.register(t, "carol")
	ctx := ctxT(t)

	data := testPNG(t, 200, 150)
	up, err := alice.UploadBytesWithName(ctx, data, "image/png", "gradient.png")
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	mediaID := up.ContentURI.FileID
	if up.ContentURI.Homeserver != a.Name {
		t.Fatalf("content URI %s is not on A (%s)", up.ContentURI, a.Name)
	}
	dl := fmt.Sprintf("/_matrix/client/v1/media/download/%s/%s", a.Name, mediaID)
	th := fmt.Sprintf("/_matrix/client/v1/media/thumbnail/%s/%s?width=32&height=32&method=crop", a.Name, mediaID)

	st, got, hdr := mediaFedGet(t, bob, dl)
	if st != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("bob's download through B: %d, %d bytes (want %d equal bytes)", st, len(got), len(data))
	}
	if ct := hdr.Get("Content-Type"); ct != "image/png" {
		t.Fatalf("Content-Type %q, want image/png", ct)
	}
	if d := hdr.Get("Content-Disposition"); !strings.Contains(d, "gradient.png") {
		t.Fatalf("Content-Disposition %q does not name the file", d)
	}
	if n := hitsA.Load(); n != 1 {
		t.Fatalf("A answered %d federation media requests, want 1", n)
	}
	st, got, _ = mediaFedGet(t, bob, dl)
	if st != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("second download: %d, %d bytes", st, len(got))
	}
	_, wantThumb, _ := mediaFedGet(t, alice, th)
	st, gotThumb, _ := mediaFedGet(t, bob, th)
	if st != http.StatusOK || len(wantThumb) == 0 || !bytes.Equal(gotThumb, wantThumb) {
		t.Fatalf("thumbnail through B: %d, %d bytes, want %d equal bytes", st, len(gotThumb), len(wantThumb))
	}
	// The thumbnail is A's own, fetched once: one more request, then cached.
	if st, again, _ := mediaFedGet(t, bob, th); st != http.StatusOK || !bytes.Equal(again, wantThumb) {
		t.Fatalf("cached thumbnail through B: %d, %d bytes", st, len(again))
	}
	if n := hitsA.Load(); n != 2 {
		t.Fatalf("A answered %d federation media requests after cached ones, want 2", n)
	}

	st, body, _ := mediaFedGet(t, bob, fmt.Sprintf("/_matrix/client/v1/media/download/%s/NoSuchMedia", a.Name))
	if st != http.StatusNotFound || !bytes.Contains(body, []byte("M_NOT_FOUND")) {
		t.Fatalf("unknown remote media: %d %s, want 404 M_NOT_FOUND", st, body)
	}

	st, body, _ = mediaFedGet(t, carol, dl)
	if st != http.StatusBadGateway || !bytes.Contains(body, []byte("M_TOO_LARGE")) {
		t.Fatalf("remote media over C's limit: %d %s, want 502 M_TOO_LARGE", st, body)
	}
	// B asked A about the unknown ID, C about the image, and C cached
	// nothing: asking again asks A again.
	if n := hitsA.Load(); n != 4 {
		t.Fatalf("A answered %d federation media requests after C's, want 4", n)
	}
	if st, _, _ = mediaFedGet(t, carol, dl); st != http.StatusBadGateway || hitsA.Load() != 5 {
		t.Fatalf("second over-limit download: %d, A answered %d requests; want 502 and 5", st, hitsA.Load())
	}

	// Unsigned federation requests are refused.
	resp, err := rfHTTPClient(ca).Get(fmt.Sprintf("https://%s/_matrix/federation/v1/media/download/%s", a.Name, mediaID))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unsigned federation media download: %d, want 401", resp.StatusCode)
	}
}

// TestMediaFedLocation: a remote server may answer a federation media
// download with a Location part instead of the bytes; B follows it, serves
// the content and caches it.
func TestMediaFedLocation(t *testing.T) {
	ca := newRFCA(t)
	var hitsB atomic.Int64
	b := startMediaFedNode(t, ca, &hitsB)
	bob := b.register(t, "bob")

	content := []byte("bytes served from a CDN")
	var fedHits, cdnHits atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	origin := ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/federation/v1/media/download/{mediaId}", func(w http.ResponseWriter, r *http.Request) {
		fedHits.Add(1)
		if !strings.HasPrefix(r.Header.Get("Authorization"), "X-Matrix ") || r.PathValue("mediaId") != "viaLocation" {
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "multipart/mixed; boundary=b0undary")
		fmt.Fprintf(w, "--b0undary\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0undary\r\nLocation: https://%s/cdn/file\r\n\r\n\r\n--b0undary--\r\n", origin)
	})
	mux.HandleFunc("GET /cdn/file", func(w http.ResponseWriter, r *http.Request) {
		cdnHits.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(content)
	})
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.leaf}}}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	dl := fmt.Sprintf("/_matrix/client/v1/media/download/%s/viaLocation", origin)
	for i := range 2 {
		st, got, hdr := mediaFedGet(t, bob, dl)
		if st != http.StatusOK || !bytes.Equal(got, content) || hdr.Get("Content-Type") != "text/plain" {
			t.Fatalf("download %d through a Location: %d %q (%s)", i, st, got, hdr.Get("Content-Type"))
		}
	}
	if fedHits.Load() != 1 || cdnHits.Load() != 1 {
		t.Fatalf("origin saw %d federation and %d CDN requests, want 1 and 1", fedHits.Load(), cdnHits.Load())
	}
}

// TestMediaFedLegacyFallback: a server that does not know the federation
// media endpoint (answering 400 without a Matrix error, as Complement's
// does, or 404 M_UNRECOGNIZED) is asked through the legacy
// /_matrix/media/v3/download, with allow_remote=false; its content and
// Content-Type are served and cached. A 404 M_NOT_FOUND is about the media
// and is not retried on the legacy endpoint.
func TestMediaFedLegacyFallback(t *testing.T) {
	ca := newRFCA(t)
	var hitsB atomic.Int64
	b := startMediaFedNode(t, ca, &hitsB)
	bob := b.register(t, "bob")

	var fedHits, legacyHits atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	origin := ln.Addr().String()
	files := map[string]string{"plain400": "hello from the old side", "unrec404": "unrecognised, then legacy"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/federation/v1/media/download/{mediaId}", func(w http.ResponseWriter, r *http.Request) {
		fedHits.Add(1)
		switch r.PathValue("mediaId") {
		case "plain400":
			http.Error(w, "no such route", http.StatusBadRequest)
		case "unrec404":
			http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`, http.StatusNotFound)
		default:
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, http.StatusNotFound)
		}
	})
	mux.HandleFunc("GET /_matrix/media/v3/download/{server}/{mediaId}", func(w http.ResponseWriter, r *http.Request) {
		legacyHits.Add(1)
		content, ok := files[r.PathValue("mediaId")]
		if !ok || r.PathValue("server") != origin || r.URL.Query().Get("allow_remote") != "false" {
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(content))
	})
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.leaf}}}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	for id, content := range files {
		for i := range 2 {
			for _, prefix := range []string{"/_matrix/client/v1/media/download/", "/_matrix/media/v3/download/"} {
				st, got, hdr := mediaFedGet(t, bob, prefix+origin+"/"+id)
				if st != http.StatusOK || string(got) != content || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
					t.Fatalf("download %d of %s via %s: %d %q (%s)", i, id, prefix, st, got, hdr.Get("Content-Type"))
				}
			}
		}
	}
	if fedHits.Load() != 2 || legacyHits.Load() != 2 {
		t.Fatalf("origin saw %d federation and %d legacy requests, want 2 and 2 (then cached)", fedHits.Load(), legacyHits.Load())
	}
	st, body, _ := mediaFedGet(t, bob, "/_matrix/client/v1/media/download/"+origin+"/gone")
	if st != http.StatusNotFound || !bytes.Contains(body, []byte("M_NOT_FOUND")) {
		t.Fatalf("missing remote media: %d %s, want 404 M_NOT_FOUND", st, body)
	}
	if legacyHits.Load() != 2 {
		t.Fatalf("a 404 M_NOT_FOUND was retried on the legacy endpoint (%d legacy requests)", legacyHits.Load())
	}
}
