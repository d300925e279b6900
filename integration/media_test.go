package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"edge/edge"
	"edge/edge/config"
)

// mediaGet makes a raw GET (mautrix has no helper for the deprecated or
// header-checking cases) and returns the response with its body read.
func mediaGet(t *testing.T, url, token string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// wantMatrixError checks status and errcode of a raw error response.
func wantMatrixError(t *testing.T, what string, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != status || e.Errcode != code {
		t.Errorf("%s: %d %s, want %d %s (%s)", what, resp.StatusCode, e.Errcode, status, code, body)
	}
}

func wantHTTPError(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != status || he.RespError == nil || he.RespError.ErrCode != code {
		t.Errorf("%s: err = %v, want %d %s", what, err, status, code)
	}
}

func upload(t *testing.T, c *mautrix.Client, data []byte, ctype, name string) id.ContentURI {
	t.Helper()
	resp, err := c.UploadMedia(ctxT(t), mautrix.ReqUploadMedia{ContentBytes: data, ContentType: ctype, FileName: name})
	if err != nil {
		t.Fatalf("upload %s: %v", name, err)
	}
	if resp.ContentURI.Homeserver != "localhost" || resp.ContentURI.FileID == "" {
		t.Fatalf("content_uri = %v", resp.ContentURI)
	}
	return resp.ContentURI
}

func authedURL(n *testNode, kind string, mxc id.ContentURI, suffix string) string {
	return n.URL + "/_matrix/client/v1/media/" + kind + "/" + mxc.Homeserver + "/" + mxc.FileID + suffix
}

func TestMediaUploadDownload(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	data := []byte("hello, media repository\n")
	mxc := upload(t, alice, data, "text/plain", "hello.txt")

	// Another user downloads it through mautrix (the authenticated endpoint).
	resp, err := bob.Download(ctxT(t), mxc)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, data) {
		t.Errorf("downloaded %q, want %q", got, data)
	}
	h := resp.Header
	for k, want := range map[string]string{
		"Content-Type":                 "text/plain",
		"Content-Disposition":          "inline; filename=hello.txt",
		"X-Content-Type-Options":       "nosniff",
		"Cross-Origin-Resource-Policy": "cross-origin",
	} {
		if h.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, h.Get(k), want)
		}
	}
	if csp := h.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}

	// The name in the path overrides the uploaded one.
	r, body := mediaGet(t, authedURL(n, "download", mxc, "/other%20name.txt"), bob.AccessToken)
	if r.StatusCode != 200 || !bytes.Equal(body, data) || r.Header.Get("Content-Disposition") != `inline; filename="other name.txt"` {
		t.Errorf("download with name: %d %q %q", r.StatusCode, r.Header.Get("Content-Disposition"), body)
	}
	// Authenticated media needs a token.
	r, body = mediaGet(t, authedURL(n, "download", mxc, ""), "")
	wantMatrixError(t, "download without token", r, body, 401, "M_MISSING_TOKEN")
	r, body = mediaGet(t, authedURL(n, "download", mxc, ""), "not-a-token")
	wantMatrixError(t, "download with bad token", r, body, 401, "M_UNKNOWN_TOKEN")
	// Frozen by default: the deprecated unauthenticated endpoint does not serve new media.
	r, body = mediaGet(t, n.URL+"/_matrix/media/v3/download/localhost/"+mxc.FileID, "")
	wantMatrixError(t, "legacy download of frozen media", r, body, 404, "M_NOT_FOUND")
	// Unknown IDs, remote servers and bad IDs are 404.
	r, body = mediaGet(t, n.URL+"/_matrix/client/v1/media/download/localhost/doesNotExist", bob.AccessToken)
	wantMatrixError(t, "unknown media", r, body, 404, "M_NOT_FOUND")
	r, body = mediaGet(t, n.URL+"/_matrix/client/v1/media/download/example.org/"+mxc.FileID, bob.AccessToken)
	wantMatrixError(t, "remote media", r, body, 404, "M_NOT_FOUND")
	r, body = mediaGet(t, n.URL+"/_matrix/client/v1/media/download/localhost/bad.id", bob.AccessToken)
	wantMatrixError(t, "invalid media ID", r, body, 404, "M_NOT_FOUND")
	// Upload needs a token.
	anon, _ := mautrix.NewClient(n.URL, "", "")
	_, err = anon.UploadBytes(ctxT(t), data, "text/plain")
	wantHTTPError(t, "anonymous upload", err, 401, "M_MISSING_TOKEN")

	// No Content-Type: application/octet-stream, as an attachment.
	req, _ := http.NewRequestWithContext(ctxT(t), http.MethodPost, n.URL+"/_matrix/media/v3/upload", bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+alice.AccessToken)
	up, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ur struct {
		ContentURI id.ContentURI `json:"content_uri"`
	}
	_ = json.NewDecoder(up.Body).Decode(&ur)
	up.Body.Close()
	r, _ = mediaGet(t, authedURL(n, "download", ur.ContentURI, ""), alice.AccessToken)
	if r.StatusCode != 200 || r.Header.Get("Content-Type") != "application/octet-stream" || r.Header.Get("Content-Disposition") != "attachment" {
		t.Errorf("untyped upload served as %d %q %q", r.StatusCode, r.Header.Get("Content-Type"), r.Header.Get("Content-Disposition"))
	}

	// Config.
	cfg, err := alice.GetMediaConfig(ctxT(t))
	if err != nil || cfg.UploadSize != 50<<20 {
		t.Errorf("media config = %+v %v", cfg, err)
	}
	// Unknown media paths are Matrix-shaped.
	r, body = mediaGet(t, n.URL+"/_matrix/media/v3/nonsense", "")
	wantMatrixError(t, "unknown media path", r, body, 404, "M_UNRECOGNIZED")
}

func TestMediaTooLarge(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.Media.MaxUploadBytes = 4096 })
	alice := n.register(t, "")
	_, err := alice.UploadBytes(ctxT(t), make([]byte, 4097), "application/octet-stream")
	wantHTTPError(t, "upload over the limit", err, 413, "M_TOO_LARGE")
	// Chunked (no Content-Length): caught while streaming.
	req, _ := http.NewRequestWithContext(ctxT(t), http.MethodPost, n.URL+"/_matrix/media/v3/upload",
		io.MultiReader(bytes.NewReader(make([]byte, 3000)), bytes.NewReader(make([]byte, 3000))))
	req.Header.Set("Authorization", "Bearer "+alice.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantMatrixError(t, "chunked upload over the limit", resp, body, 413, "M_TOO_LARGE")
	// At the limit is accepted; the limit is advertised.
	upload(t, alice, make([]byte, 4096), "application/octet-stream", "")
	cfg, err := alice.GetMediaConfig(ctxT(t))
	if err != nil || cfg.UploadSize != 4096 {
		t.Errorf("media config = %+v %v", cfg, err)
	}
	// Nothing half-stored: only the accepted upload is on disk.
	var files int
	_ = filepath.WalkDir(filepath.Join(n.Dir, "media", "content"), func(_ string, d os.DirEntry, _ error) error {
		if d != nil && !d.IsDir() {
			files++
		}
		return nil
	})
	if files != 1 {
		t.Errorf("media/content holds %d files, want 1", files)
	}
}

func TestMediaUnsafeTypes(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	for _, tc := range []struct{ ctype, name, data string }{
		{"text/html", "evil.html", "<script>alert(1)</script>"},
		{"image/svg+xml", "evil.svg", `<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>`},
		{"application/javascript", "evil.js", "alert(1)"},
	} {
		mxc := upload(t, alice, []byte(tc.data), tc.ctype, tc.name)
		r, body := mediaGet(t, authedURL(n, "download", mxc, ""), alice.AccessToken)
		if r.StatusCode != 200 || string(body) != tc.data {
			t.Errorf("%s: %d %q", tc.ctype, r.StatusCode, body)
		}
		if d := r.Header.Get("Content-Disposition"); d != "attachment; filename="+tc.name {
			t.Errorf("%s served with Content-Disposition %q", tc.ctype, d)
		}
		if !strings.HasPrefix(r.Header.Get("Content-Security-Policy"), "sandbox;") || r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s served without CSP sandbox/nosniff: %v", tc.ctype, r.Header)
		}
	}
}

// testImage draws a w×h gradient.
func testImage(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	return img
}

func TestMediaThumbnail(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	var pngBuf, jpgBuf, gifBuf bytes.Buffer
	src := testImage(400, 300)
	if err := png.Encode(&pngBuf, src); err != nil {
		t.Fatal(err)
	}
	if err := jpeg.Encode(&jpgBuf, src, nil); err != nil {
		t.Fatal(err)
	}
	pal := image.NewPaletted(image.Rect(0, 0, 200, 100), color.Palette{color.Black, color.White})
	if err := gif.EncodeAll(&gifBuf, &gif.GIF{Image: []*image.Paletted{pal, pal}, Delay: []int{10, 10}}); err != nil {
		t.Fatal(err)
	}
	pngURI := upload(t, alice, pngBuf.Bytes(), "image/png", "src.png")
	jpgURI := upload(t, alice, jpgBuf.Bytes(), "image/jpeg", "src.jpg")
	gifURI := upload(t, alice, gifBuf.Bytes(), "image/gif", "anim.gif")

	thumb := func(mxc id.ContentURI, w, h int, method, wantType string, wantW, wantH int) {
		t.Helper()
		resp, err := alice.DownloadThumbnail(ctxT(t), mxc, h, w, mautrix.DownloadThumbnailExtra{Method: method})
		if err != nil {
			t.Fatalf("thumbnail %d×%d %s: %v", w, h, method, err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != wantType {
			t.Errorf("thumbnail %d×%d %s: Content-Type %q, want %q", w, h, method, ct, wantType)
		}
		if d := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(d, "inline; filename=thumbnail.") {
			t.Errorf("thumbnail Content-Disposition = %q", d)
		}
		cfg, _, err := image.DecodeConfig(resp.Body)
		if err != nil {
			t.Fatalf("thumbnail %d×%d %s does not decode: %v", w, h, method, err)
		}
		if cfg.Width != wantW || cfg.Height != wantH {
			t.Errorf("thumbnail %d×%d %s is %d×%d, want %d×%d", w, h, method, cfg.Width, cfg.Height, wantW, wantH)
		}
	}
	thumb(pngURI, 32, 32, "crop", "image/png", 32, 32)
	thumb(pngURI, 96, 96, "crop", "image/png", 96, 96)
	thumb(pngURI, 320, 240, "scale", "image/png", 320, 240)
	// Requests round up to the standard sides (100×50 → 240×96), then
	// scale covers that and keeps the aspect.
	thumb(pngURI, 100, 50, "scale", "image/png", 240, 180)
	thumb(pngURI, 800, 600, "scale", "image/png", 400, 300) // never upscaled: the original
	thumb(jpgURI, 96, 96, "crop", "image/jpeg", 96, 96)
	thumb(gifURI, 50, 50, "crop", "image/png", 96, 96) // first frame, as PNG; 50 rounds up to 96
	// Cached on disk, and served again from there.
	cached, _ := filepath.Glob(filepath.Join(n.Dir, "media", "thumbnails", "*", "*", "32x32-crop.png"))
	if len(cached) != 1 {
		t.Errorf("cached 32x32 crop thumbnails: %v", cached)
	}
	thumb(pngURI, 32, 32, "crop", "image/png", 32, 32)

	// Not an image: 400 M_UNKNOWN, and the original still downloads.
	txt := upload(t, alice, []byte("not an image"), "image/png", "liar.png")
	r, body := mediaGet(t, authedURL(n, "thumbnail", txt, "?width=32&height=32"), alice.AccessToken)
	wantMatrixError(t, "thumbnail of a non-image", r, body, 400, "M_UNKNOWN")
	if r, body = mediaGet(t, authedURL(n, "download", txt, ""), alice.AccessToken); r.StatusCode != 200 || string(body) != "not an image" {
		t.Errorf("download of an undecodable image: %d %q", r.StatusCode, body)
	}
	// Bad parameters.
	for q, code := range map[string]string{
		"?height=32": "M_MISSING_PARAM", "?width=-1&height=32": "M_INVALID_PARAM",
		"?width=a&height=32": "M_INVALID_PARAM", "?width=32&height=32&method=stretch": "M_INVALID_PARAM",
	} {
		r, body = mediaGet(t, authedURL(n, "thumbnail", pngURI, q), alice.AccessToken)
		wantMatrixError(t, "thumbnail"+q, r, body, 400, code)
	}
	r, body = mediaGet(t, authedURL(n, "thumbnail", pngURI, "?width=32&height=32"), "")
	wantMatrixError(t, "thumbnail without token", r, body, 401, "M_MISSING_TOKEN")
}

func TestMediaDecompressionBomb(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.Media.MaxImagePixels = 10_000 })
	alice := n.register(t, "")
	var buf bytes.Buffer
	if err := png.Encode(&buf, testImage(200, 200)); err != nil {
		t.Fatal(err)
	}
	mxc := upload(t, alice, buf.Bytes(), "image/png", "big.png")
	r, body := mediaGet(t, authedURL(n, "thumbnail", mxc, "?width=32&height=32&method=crop"), alice.AccessToken)
	wantMatrixError(t, "thumbnail over max_image_pixels", r, body, 413, "M_TOO_LARGE")
}

func TestMediaAsyncUpload(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	created, err := alice.CreateMXC(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if created.ContentURI.Homeserver != "localhost" || created.UnusedExpiresAt.IsZero() {
		t.Fatalf("create = %+v", created)
	}
	mxc := created.ContentURI
	r, body := mediaGet(t, authedURL(n, "download", mxc, "?timeout_ms=100"), alice.AccessToken)
	wantMatrixError(t, "download before upload", r, body, 504, "M_NOT_YET_UPLOADED")

	put := func(c *mautrix.Client, data []byte) error {
		_, err := c.UploadMedia(ctxT(t), mautrix.ReqUploadMedia{ContentBytes: data, ContentType: "text/plain", FileName: "late.txt", MXC: mxc})
		return err
	}
	wantHTTPError(t, "upload to another user's ID", put(bob, []byte("bob")), 403, "M_FORBIDDEN")

	// A download waiting for the upload gets it.
	type result struct {
		body []byte
		err  error
	}
	waiting := make(chan result, 1)
	go func() {
		resp, err := bob.Download(context.Background(), mxc)
		if err != nil {
			waiting <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		waiting <- result{b, err}
	}()
	if err := put(alice, []byte("late content")); err != nil {
		t.Fatalf("async upload: %v", err)
	}
	if res := <-waiting; res.err != nil || string(res.body) != "late content" {
		t.Errorf("waiting download = %q %v", res.body, res.err)
	}
	wantHTTPError(t, "second upload", put(alice, []byte("again")), 409, "M_CANNOT_OVERWRITE_MEDIA")
	_, err = alice.UploadMedia(ctxT(t), mautrix.ReqUploadMedia{ContentBytes: []byte("x"), ContentType: "text/plain",
		MXC: id.ContentURI{Homeserver: "localhost", FileID: "neverCreated"}})
	wantHTTPError(t, "upload to an uncreated ID", err, 404, "M_NOT_FOUND")
}

func TestMediaLegacyUnfrozen(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.Media.FreezeUnauthenticated = false })
	alice := n.register(t, "")
	var buf bytes.Buffer
	if err := png.Encode(&buf, testImage(64, 64)); err != nil {
		t.Fatal(err)
	}
	mxc := upload(t, alice, buf.Bytes(), "image/png", "pic.png")
	r, body := mediaGet(t, n.URL+"/_matrix/media/v3/download/localhost/"+mxc.FileID, "")
	if r.StatusCode != 200 || !bytes.Equal(body, buf.Bytes()) || r.Header.Get("Content-Security-Policy") == "" {
		t.Errorf("legacy download: %d, %d bytes", r.StatusCode, len(body))
	}
	r, body = mediaGet(t, n.URL+"/_matrix/media/v3/thumbnail/localhost/"+mxc.FileID+"?width=32&height=32&method=crop", "")
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(body)); r.StatusCode != 200 || err != nil || cfg.Width != 32 {
		t.Errorf("legacy thumbnail: %d %v %+v", r.StatusCode, err, cfg)
	}
}

func TestMediaRestart(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	data := []byte("survives a restart")
	mxc := upload(t, alice, data, "text/plain", "keep.txt")
	n.stop()

	cfg, err := config.Load(filepath.Join(n.Dir, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := edge.Open(cfg, n.Log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	again := &testNode{Node: node, URL: n.URL, Dir: n.Dir, cancel: cancel, done: make(chan error, 1)}
	go func() { again.done <- node.Serve(ctx, ln) }()
	t.Cleanup(again.stop)

	got, err := alice.DownloadBytes(ctxT(t), mxc)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("download after restart = %q %v", got, err)
	}
}
