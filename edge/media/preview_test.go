package media

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"edge/edge/client"
	"edge/wellknown"
)

func TestParseHTML(t *testing.T) {
	page := `<!doctype html><html><head>
<title>Ignored  title</title>
<meta property="og:title" content="  The   &amp; Title ">
<meta property="og:description" content="Desc">
<meta property="og:image" content="/a.png"><meta property="og:image" content="/second.png">
<meta property="og:image:width" content="48"><meta property="og:image:height" content="tall">
<meta property="og:site_name" content="Site">
<meta property="og:secret" content="not passed through">
<meta name="description" content="fallback desc">
</head><body><meta property="og:type" content="article"></body></html>`
	want := map[string]any{"og:title": "The & Title", "og:description": "Desc", "og:image": "/a.png",
		"og:image:width": 48, "og:site_name": "Site", "og:type": "article"}
	if got := parseHTML([]byte(page)); !reflect.DeepEqual(got, want) {
		t.Errorf("og page:\n got %v\nwant %v", got, want)
	}

	fallback := `<html><head><title>Plain
  page</title><meta name="Description" content="About it"><meta name="og:url" content="https://x.org/"></head>`
	want = map[string]any{"og:title": "Plain page", "og:description": "About it", "og:url": "https://x.org/"}
	if got := parseHTML([]byte(fallback)); !reflect.DeepEqual(got, want) {
		t.Errorf("fallback page:\n got %v\nwant %v", got, want)
	}

	// A page cut mid-tag keeps what came before the cut.
	cut := `<head><meta property="og:title" content="Kept"><meta property="og:description" cont`
	if got := parseHTML([]byte(cut)); !reflect.DeepEqual(got, map[string]any{"og:title": "Kept"}) {
		t.Errorf("cut page: %v", got)
	}

	long := `<meta property="og:description" content="` + strings.Repeat("é", 2000) + `">`
	if d := parseHTML([]byte(long))["og:description"].(string); len([]rune(d)) != maxDescription {
		t.Errorf("description of %d runes, want %d", len([]rune(d)), maxDescription)
	}
}

func TestPreviewTarget(t *testing.T) {
	for _, raw := range []string{"ftp://x.org/", "file:///etc/passwd", "//x.org/", "http://", "https://user:pw@x.org/", "http://[::1", "gopher://x"} {
		_, err := previewTarget(raw)
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != http.StatusBadRequest || ce.Code != "M_INVALID_PARAM" {
			t.Errorf("%q: %v, want 400 M_INVALID_PARAM", raw, err)
		}
	}
	u, err := previewTarget("https://x.org/a?b=c#frag")
	if err != nil || u.String() != "https://x.org/a?b=c" {
		t.Errorf("good URL: %v %v", u, err)
	}
}

// countingServer serves h on addr and counts the requests reaching it.
func countingServer(t *testing.T, addr string, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &n
}

func testPreviewer(allowPrivate bool, maxBytes int64) (*previewer, *[]string) {
	var saved []string
	p := newPreviewer(allowPrivate, maxBytes, 5*time.Second, func(data []byte, ctype, userID string) (string, error) {
		saved = append(saved, fmt.Sprintf("%s %d %s", ctype, len(data), userID))
		return fmt.Sprintf("mxc://test/img%d", len(saved)), nil
	})
	return p, &saved
}

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := previewTarget(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func pngBytes(t *testing.T, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, image.NewRGBA(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestPreviewFetch: a page's tags, its image copied (relative URL
// resolved, real dimensions), and the second request answered from cache.
func TestPreviewFetch(t *testing.T) {
	img := pngBytes(t, 7, 5)
	srv, n := countingServer(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		// The page names "img.png": relative to /dir/page, that is /dir/img.png.
		if r.URL.Path == "/dir/img.png" {
			w.Header().Set("Content-Type", "image/png")
			w.Write(img)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<html><head><meta property="og:title" content="Hello"><meta property="og:image" content="img.png"></head></html>`)
	})
	p, saved := testPreviewer(true, 1<<20)
	og, err := p.preview(context.Background(), mustURL(t, srv.URL+"/dir/page"), "@a:x")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"og:title": "Hello", "og:image": "mxc://test/img1", "og:image:type": "image/png",
		"og:image:width": 7, "og:image:height": 5, "matrix:image:size": len(img)}
	if !reflect.DeepEqual(og, want) {
		t.Errorf("preview:\n got %v\nwant %v", og, want)
	}
	if len(*saved) != 1 || (*saved)[0] != fmt.Sprintf("image/png %d @a:x", len(img)) {
		t.Errorf("saved %v", *saved)
	}
	before := n.Load()
	if _, err := p.preview(context.Background(), mustURL(t, srv.URL+"/dir/page"), "@b:x"); err != nil || n.Load() != before {
		t.Errorf("second preview: %v, %d requests after %d", err, n.Load(), before)
	}
}

// TestPreviewCap: only maxBytes of a page are read; tags past the cap are
// not seen and the fetch still succeeds.
func TestPreviewCap(t *testing.T) {
	srv, _ := countingServer(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<html><head><meta property="og:title" content="Early"><!--`)
		w.Write(bytes.Repeat([]byte("x"), 64<<10))
		fmt.Fprint(w, `--><meta property="og:description" content="Late"></head></html>`)
	})
	p, _ := testPreviewer(true, 16<<10)
	og, err := p.preview(context.Background(), mustURL(t, srv.URL), "@a:x")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(og, map[string]any{"og:title": "Early"}) {
		t.Errorf("capped page: %v", og)
	}
}

// TestPreviewRefusesLoopback: with private targets not allowed, a
// loopback URL is refused before any request is made.
func TestPreviewRefusesLoopback(t *testing.T) {
	srv, n := countingServer(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {})
	p, _ := testPreviewer(false, 1<<20)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for _, raw := range []string{srv.URL, "http://localhost:" + port + "/", "http://[::ffff:127.0.0.1]:" + port + "/"} {
		if _, err := p.preview(context.Background(), mustURL(t, raw), "@a:x"); !errors.Is(err, errRestricted) {
			t.Errorf("%s: %v, want errRestricted", raw, err)
		}
	}
	if n.Load() != 0 {
		t.Errorf("%d requests reached the loopback server", n.Load())
	}
}

// TestPreviewRedirects: a redirect is re-checked (127.0.0.1 plays a public
// address, 127.0.0.2 stays restricted) and at most five are followed.
func TestPreviewRedirects(t *testing.T) {
	inner, innerN := countingServer(t, "127.0.0.2:0", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<title>secret</title>`)
	})
	outer, _ := countingServer(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		var hops int
		fmt.Sscanf(r.URL.Query().Get("hops"), "%d", &hops)
		switch {
		case r.URL.Path == "/inner":
			http.Redirect(w, r, inner.URL+"/", http.StatusFound)
		case hops > 0:
			http.Redirect(w, r, fmt.Sprintf("/chain?hops=%d", hops-1), http.StatusFound)
		default:
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, `<title>end</title>`)
		}
	})
	p, _ := testPreviewer(false, 1<<20)
	p.restricted = func(a netip.Addr) (string, bool) {
		if a == netip.MustParseAddr("127.0.0.1") {
			return "", false
		}
		return wellknown.Restricted(a)
	}
	if _, err := p.preview(context.Background(), mustURL(t, outer.URL+"/inner"), "@a:x"); !errors.Is(err, errRestricted) {
		t.Errorf("redirect to 127.0.0.2: %v, want errRestricted", err)
	}
	if innerN.Load() != 0 {
		t.Errorf("%d requests reached the restricted server", innerN.Load())
	}
	og, err := p.preview(context.Background(), mustURL(t, outer.URL+"/chain?hops=5"), "@a:x")
	if err != nil || og["og:title"] != "end" {
		t.Errorf("5 redirects: %v %v", og, err)
	}
	if _, err := p.preview(context.Background(), mustURL(t, outer.URL+"/chain?hops=6"), "@a:x"); err == nil || errors.Is(err, errRestricted) {
		t.Errorf("6 redirects: %v, want a redirect error", err)
	}
}

// TestPreviewTimeout: a page that never finishes fails within the timeout.
func TestPreviewTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv, _ := countingServer(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	p, _ := testPreviewer(true, 1<<20)
	p.timeout = 300 * time.Millisecond
	start := time.Now()
	if _, err := p.preview(context.Background(), mustURL(t, srv.URL), "@a:x"); err == nil {
		t.Error("a hanging page gave a preview")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
}
