package media

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // first frame
	"image/jpeg"
	"image/png"
	"io/fs"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp"
)

// maxThumbnailSide caps a requested thumbnail dimension, so a request
// cannot make the server render (and cache) an arbitrarily large image.
const maxThumbnailSide = 2048

// thumbnailSides are the sizes thumbnails are made in: a request is
// rounded up to the next one (the spec lets servers return larger images),
// so one media file has at most a few dozen cached variants however many
// sizes clients ask for.
var thumbnailSides = []int{32, 96, 240, 320, 480, 600, 640, 800, 1280, maxThumbnailSide}

func snapSide(v int) int {
	for _, s := range thumbnailSides {
		if v <= s {
			return s
		}
	}
	return maxThumbnailSide
}

var (
	errNotImage   = errors.New("media: not a decodable image")
	errTooManyPix = errors.New("media: image too large to thumbnail")
)

// thumbnail answers GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
// and the deprecated GET /_matrix/media/v3/thumbnail/…: a JPEG or PNG
// at least width×height (never upscaled), generated once and cached.
func (s *Service) thumbnail(w http.ResponseWriter, r *http.Request, req request) error {
	q := r.URL.Query()
	width, err := dimension(q.Get("width"), "width")
	if err != nil {
		return err
	}
	height, err := dimension(q.Get("height"), "height")
	if err != nil {
		return err
	}
	method := q.Get("method")
	switch method {
	case "":
		method = "scale"
	case "scale", "crop":
	default:
		return errorf(http.StatusBadRequest, "M_INVALID_PARAM", "method must be crop or scale")
	}
	width, height = snapSide(width), snapSide(height)
	if server := r.PathValue("serverName"); server != "" && server != s.Config.ServerName && r.URL.Query().Get("allow_remote") != "false" {
		// Another server's media: its own thumbnail (remote.go).
		if handled, err := s.remoteThumbnail(w, r, server, r.PathValue("mediaId"), width, height, method); handled {
			return err
		}
	}
	rec, err := s.ready(r, req)
	if err != nil {
		return err
	}
	modTime := time.UnixMilli(rec.CreatedTS)
	name := fmt.Sprintf("%dx%d-%s", width, height, method)
	for _, ext := range []string{"jpg", "png"} {
		if path := s.files.thumbnail(rec.SHA256, name+"."+ext); fileExists(path) {
			return s.serveThumbnail(w, r, path, ext, modTime, rec.SHA256+"-"+name)
		}
	}
	select {
	case s.thumbSem <- struct{}{}:
	case <-r.Context().Done():
		return r.Context().Err()
	}
	data, ext, original, err := s.makeThumbnail(s.files.content(rec.SHA256), width, height, method)
	<-s.thumbSem
	switch {
	case errors.Is(err, errNotImage):
		return errorf(http.StatusBadRequest, "M_UNKNOWN", "Cannot generate thumbnails for the requested content")
	case errors.Is(err, errTooManyPix):
		return errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Content is too large to thumbnail")
	case err != nil:
		return err
	}
	if original {
		// Smaller than asked for: the spec says to return the original.
		// Its type is the decoded format, never the uploaded claim.
		return s.serveFile(w, r, s.files.content(rec.SHA256), "image/"+ext, "inline; filename=thumbnail."+ext, modTime, rec.SHA256)
	}
	path := s.files.thumbnail(rec.SHA256, name+"."+ext)
	if err := s.files.writeAtomic(path, data); err != nil {
		return err
	}
	return s.serveThumbnail(w, r, path, ext, modTime, rec.SHA256+"-"+name)
}

func (s *Service) serveThumbnail(w http.ResponseWriter, r *http.Request, path, ext string, modTime time.Time, etag string) error {
	ctype := "image/png"
	if ext == "jpg" {
		ctype = "image/jpeg"
	}
	return s.serveFile(w, r, path, ctype, "inline; filename=thumbnail."+ext, modTime, etag)
}

// dimension parses a positive integer width or height.
func dimension(v, name string) (int, error) {
	if v == "" {
		return 0, errorf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing "+name)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, errorf(http.StatusBadRequest, "M_INVALID_PARAM", name+" must be a positive integer")
	}
	return n, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist) && err == nil
}

// makeThumbnail renders the image at path for a width×height request.
// original reports that the image is no larger than the request, so the
// original should be served (ext is then its format: jpeg, png, gif, webp).
func (s *Service) makeThumbnail(path string, width, height int, method string) (data []byte, ext string, original bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", false, err
	}
	defer f.Close()
	cfg, format, err := image.DecodeConfig(f)
	if err != nil {
		return nil, "", false, errNotImage
	}
	if cfg.Width < 1 || cfg.Height < 1 || int64(cfg.Width)*int64(cfg.Height) > s.Config.Media.MaxImagePixels {
		return nil, "", false, errTooManyPix
	}
	dst, src, ok := geometry(cfg.Width, cfg.Height, width, height, method)
	if !ok {
		return nil, format, true, nil
	}
	if _, err := f.Seek(0, 0); err != nil {
		return nil, "", false, err
	}
	img, _, err := image.Decode(f)
	if err != nil {
		return nil, "", false, errNotImage
	}
	b := img.Bounds()
	src = src.Add(b.Min)
	out := image.NewRGBA(image.Rect(0, 0, dst.X, dst.Y))
	draw.CatmullRom.Scale(out, out.Bounds(), img, src, draw.Src, nil)
	var buf bytes.Buffer
	if format == "jpeg" {
		err, ext = jpeg.Encode(&buf, out, &jpeg.Options{Quality: 85}), "jpg"
	} else {
		// PNG keeps transparency (PNG, GIF, WebP sources).
		err, ext = png.Encode(&buf, out), "png"
	}
	return buf.Bytes(), ext, false, err
}

// geometry plans a thumbnail of a w×h image for a reqW×reqH request:
// the output size and the source rectangle drawn into it. Both methods
// scale by the factor that makes the result cover the request (the spec:
// never smaller than requested); "scale" keeps the whole image and its
// aspect ratio, "crop" cuts the centre to exactly reqW×reqH. ok is false
// when that factor is ≥ 1: no upscaling, serve the original.
func geometry(w, h, reqW, reqH int, method string) (dst image.Point, src image.Rectangle, ok bool) {
	f := math.Max(float64(reqW)/float64(w), float64(reqH)/float64(h))
	if f >= 1 {
		return image.Point{}, image.Rectangle{}, false
	}
	if method == "crop" {
		cw := min(w, int(math.Round(float64(reqW)/f)))
		ch := min(h, int(math.Round(float64(reqH)/f)))
		x0, y0 := (w-cw)/2, (h-ch)/2
		return image.Pt(reqW, reqH), image.Rect(x0, y0, x0+cw, y0+ch), true
	}
	dw := max(reqW, int(math.Round(float64(w)*f)))
	dh := max(reqH, int(math.Round(float64(h)*f)))
	return image.Pt(min(dw, w), min(dh, h)), image.Rect(0, 0, w, h), true
}
