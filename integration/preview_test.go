package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"maunium.net/go/mautrix/id"

	"edge/edge/config"
)

// previewOn turns URL previews on, reaching loopback pages if private.
func previewOn(private bool) func(*config.Config) {
	return func(c *config.Config) {
		c.Media.URLPreviewEnabled = true
		c.Media.URLPreviewAllowPrivate = private
	}
}

func previewPath(n *testNode, prefix, target string) string {
	return n.URL + prefix + "/preview_url?ts=1510610716656&url=" + url.QueryEscape(target)
}

// pageServer serves h on loopback and counts the requests reaching it.
func pageServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// TestPreviewOpenGraph: a page's OpenGraph tags come back through mautrix,
// its image copied into the media repository; the legacy path answers
// too, and bad requests get the spec's errors.
func TestPreviewOpenGraph(t *testing.T) {
	var img bytes.Buffer
	if err := png.Encode(&img, image.NewRGBA(image.Rect(0, 0, 40, 30))); err != nil {
		t.Fatal(err)
	}
	srv, _ := pageServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/logo.png":
			w.Header().Set("Content-Type", "image/png")
			w.Write(img.Bytes())
		case "/gone":
			http.NotFound(w, r)
		case "/plain":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprint(w, `<html><head><title>Plain &amp; simple</title><meta name="description" content="No tags here"></head></html>`)
		default:
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprint(w, `<!doctype html><html><head>
<meta property="og:title" content="Matrix Blog Post">
<meta property="og:description" content="This is a really cool blog post">
<meta property="og:site_name" content="Edge Tests">
<meta property="og:image" content="/logo.png">
<meta property="og:image:width" content="40"><meta property="og:image:height" content="30">
<meta property="og:image:type" content="image/png">
</head><body>hi</body></html>`)
		}
	})
	n := startNode(t, previewOn(true))
	alice := n.register(t, "")

	p, err := alice.GetURLPreview(ctxT(t), srv.URL+"/post")
	if err != nil {
		t.Fatal(err)
	}
	if p.Title != "Matrix Blog Post" || p.Description != "This is a really cool blog post" || p.SiteName != "Edge Tests" ||
		p.ImageType != "image/png" || int(p.ImageWidth) != 40 || int(p.ImageHeight) != 30 || int(p.ImageSize) != img.Len() {
		t.Errorf("preview = %+v", p)
	}
	mxc, err := id.ParseContentURI(string(p.ImageURL))
	if err != nil || mxc.Homeserver != "localhost" {
		t.Fatalf("og:image = %q (%v)", p.ImageURL, err)
	}
	r, body := mediaGet(t, authedURL(n, "download", mxc, ""), alice.AccessToken)
	if r.StatusCode != 200 || !bytes.Equal(body, img.Bytes()) {
		t.Errorf("download of og:image: %d, %d bytes", r.StatusCode, len(body))
	}

	// Fallback to <title> and <meta name=description>, on the legacy path.
	r, body = mediaGet(t, previewPath(n, "/_matrix/media/v3", srv.URL+"/plain"), alice.AccessToken)
	var plain map[string]any
	_ = json.Unmarshal(body, &plain)
	if r.StatusCode != 200 || !reflect.DeepEqual(plain, map[string]any{"og:title": "Plain & simple", "og:description": "No tags here"}) {
		t.Errorf("legacy preview: %d %s", r.StatusCode, body)
	}

	r, body = mediaGet(t, previewPath(n, "/_matrix/client/v1/media", srv.URL+"/post"), "")
	wantMatrixError(t, "preview without token", r, body, 401, "M_MISSING_TOKEN")
	r, body = mediaGet(t, n.URL+"/_matrix/client/v1/media/preview_url", alice.AccessToken)
	wantMatrixError(t, "no url", r, body, 400, "M_MISSING_PARAM")
	for _, bad := range []string{"file:///etc/passwd", "ftp://example.org/", "not a url", "http://"} {
		r, body = mediaGet(t, previewPath(n, "/_matrix/client/v1/media", bad), alice.AccessToken)
		wantMatrixError(t, "url "+bad, r, body, 400, "M_INVALID_PARAM")
	}
	r, body = mediaGet(t, n.URL+"/_matrix/client/v1/media/preview_url?ts=soon&url="+url.QueryEscape(srv.URL), alice.AccessToken)
	wantMatrixError(t, "bad ts", r, body, 400, "M_INVALID_PARAM")

	// Nothing listening, and a page answering 404: 502.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/"
	ln.Close()
	r, body = mediaGet(t, previewPath(n, "/_matrix/client/v1/media", closed), alice.AccessToken)
	wantMatrixError(t, "unreachable", r, body, 502, "M_UNKNOWN")
	r, body = mediaGet(t, previewPath(n, "/_matrix/client/v1/media", srv.URL+"/gone"), alice.AccessToken)
	wantMatrixError(t, "404 page", r, body, 502, "M_UNKNOWN")
}

// TestPreviewSizeCap: a huge page is read only up to url_preview_max_bytes
// (tags past it are not seen) and the server stops receiving it.
func TestPreviewSizeCap(t *testing.T) {
	const total = 256 << 20
	var written atomic.Int64
	srv, _ := pageServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<html><head><meta property="og:title" content="Huge page"><!--`)
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for written.Load() < total {
			k, err := w.Write(chunk)
			written.Add(int64(k))
			if err != nil {
				return
			}
		}
		fmt.Fprint(w, `--><meta property="og:description" content="Past the cap">`)
	})
	n := startNode(t, previewOn(true), func(c *config.Config) { c.Media.URLPreviewMaxBytes = 64 << 10 })
	alice := n.register(t, "")
	r, body := mediaGet(t, previewPath(n, "/_matrix/client/v1/media", srv.URL), alice.AccessToken)
	if r.StatusCode != 200 || string(body) != `{"og:title":"Huge page"}` {
		t.Errorf("huge page: %d %s", r.StatusCode, body)
	}
	srv.Close() // waits for the handler to see its writes fail
	if w := written.Load(); w >= total/4 {
		t.Errorf("the node read %d bytes of a page capped at 64 KiB", w)
	}
}

// TestPreviewDisabled: off by default, the endpoint does not exist (as in
// Synapse), and no request leaves the server.
func TestPreviewDisabled(t *testing.T) {
	srv, hits := pageServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<title>should not be fetched</title>`)
	})
	n := startNode(t)
	alice := n.register(t, "")
	for _, prefix := range []string{"/_matrix/client/v1/media", "/_matrix/media/v3"} {
		r, body := mediaGet(t, previewPath(n, prefix, srv.URL), alice.AccessToken)
		wantMatrixError(t, prefix+" preview_url while disabled", r, body, 404, "M_UNRECOGNIZED")
	}
	if hits.Load() != 0 {
		t.Errorf("%d requests reached the page", hits.Load())
	}
}

// TestPreviewRefusesPrivate: with private targets not allowed, a page on
// loopback (by address or by name) is refused before any request reaches it.
func TestPreviewRefusesPrivate(t *testing.T) {
	srv, hits := pageServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<title>internal admin page</title>`)
	})
	n := startNode(t, previewOn(false))
	alice := n.register(t, "")
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	for _, target := range []string{srv.URL + "/admin", "http://localhost:" + port + "/", "http://[::ffff:127.0.0.1]:" + port + "/"} {
		r, body := mediaGet(t, previewPath(n, "/_matrix/client/v1/media", target), alice.AccessToken)
		wantMatrixError(t, "preview of "+target, r, body, 403, "M_FORBIDDEN")
	}
	if hits.Load() != 0 {
		t.Errorf("%d requests reached the loopback page", hits.Load())
	}
	// The node itself is on loopback too.
	r, body := mediaGet(t, previewPath(n, "/_matrix/client/v1/media", n.URL+"/_matrix/client/versions"), alice.AccessToken)
	wantMatrixError(t, "preview of the node itself", r, body, 403, "M_FORBIDDEN")
}
