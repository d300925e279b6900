package media

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"image"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGeometry(t *testing.T) {
	for _, tc := range []struct {
		w, h, reqW, reqH int
		method           string
		ok               bool
		dst              image.Point
		src              image.Rectangle
	}{
		// crop: exact request size, centre cut to its aspect.
		{400, 300, 32, 32, "crop", true, image.Pt(32, 32), image.Rect(50, 0, 350, 300)},
		{400, 300, 96, 96, "crop", true, image.Pt(96, 96), image.Rect(50, 0, 350, 300)},
		// scale: aspect kept, covering the request.
		{400, 300, 320, 240, "scale", true, image.Pt(320, 240), image.Rect(0, 0, 400, 300)},
		{400, 300, 100, 50, "scale", true, image.Pt(100, 75), image.Rect(0, 0, 400, 300)},
		{1000, 500, 320, 240, "scale", true, image.Pt(480, 240), image.Rect(0, 0, 1000, 500)},
		// no upscaling: the original is served.
		{400, 300, 800, 600, "scale", false, image.Point{}, image.Rectangle{}},
		{400, 300, 500, 10, "crop", false, image.Point{}, image.Rectangle{}},
	} {
		dst, src, ok := geometry(tc.w, tc.h, tc.reqW, tc.reqH, tc.method)
		if ok != tc.ok || dst != tc.dst || src != tc.src {
			t.Errorf("geometry(%d×%d → %d×%d %s) = %v %v %v, want %v %v %v",
				tc.w, tc.h, tc.reqW, tc.reqH, tc.method, dst, src, ok, tc.dst, tc.src, tc.ok)
		}
	}
}

func TestDisposition(t *testing.T) {
	for _, tc := range []struct{ ctype, name, want string }{
		{"image/png", "cat.png", "inline; filename=cat.png"},
		{"text/plain; charset=utf-8", "", "inline"},
		{"text/html", "x.html", "attachment; filename=x.html"},
		{"image/svg+xml", "x.svg", "attachment; filename=x.svg"},
		{"application/javascript", "", "attachment"},
		{"IMAGE/PNG", "a b.png", `inline; filename="a b.png"`},
		{"image/png", "café.png", "inline; filename*=utf-8''caf%C3%A9.png"},
		{"not a type", "x", "attachment; filename=x"},
	} {
		if got := disposition(tc.ctype, tc.name); got != tc.want {
			t.Errorf("disposition(%q, %q) = %q, want %q", tc.ctype, tc.name, got, tc.want)
		}
	}
}

func TestValidMediaID(t *testing.T) {
	for id, want := range map[string]bool{
		"abcXYZ_09-": true, "": false, "../etc": false, "a.b": false, "a%2F": false, strings.Repeat("a", 256): false,
	} {
		if got := validMediaID(id); got != want {
			t.Errorf("validMediaID(%q) = %v", id, got)
		}
	}
	if id := newMediaID(); !validMediaID(id) || len(id) != 24 {
		t.Errorf("newMediaID() = %q", id)
	}
}

func TestFilesStore(t *testing.T) {
	f := files{dir: t.TempDir()}
	data := []byte("hello media")
	sha, size, err := f.store(bytes.NewReader(data), 100)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if sha != hex.EncodeToString(sum[:]) || size != int64(len(data)) {
		t.Fatalf("store = %s %d", sha, size)
	}
	got, err := os.ReadFile(f.content(sha))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content file = %q %v", got, err)
	}
	// Over the limit: an error and nothing left behind.
	if _, _, err := f.store(bytes.NewReader(make([]byte, 101)), 100); !errors.Is(err, errTooLarge) {
		t.Fatalf("oversized store err = %v", err)
	}
	// Exactly the limit is fine.
	if _, _, err := f.store(bytes.NewReader(make([]byte, 100)), 100); err != nil {
		t.Fatalf("store at limit: %v", err)
	}
	left, _ := os.ReadDir(f.tmp())
	if len(left) != 0 {
		t.Errorf("tmp/ keeps %d files", len(left))
	}
	// A failing reader leaves no partial file.
	if _, _, err := f.store(bodyReader{&failing{}}, 100); !errors.Is(err, errBodyRead) {
		t.Fatalf("failing reader err = %v", err)
	}
	left, _ = os.ReadDir(f.tmp())
	if len(left) != 0 {
		t.Errorf("tmp/ keeps %d files after a failed read", len(left))
	}
	var n int
	_ = filepath.WalkDir(filepath.Join(f.dir, "content"), func(_ string, d os.DirEntry, _ error) error {
		if !d.IsDir() {
			n++
		}
		return nil
	})
	if n != 2 {
		t.Errorf("content/ holds %d files, want 2", n)
	}
}

type failing struct{ n int }

func (f *failing) Read(p []byte) (int, error) {
	if f.n > 0 {
		return 0, errors.New("connection reset")
	}
	f.n++
	return copy(p, "partial"), nil
}
