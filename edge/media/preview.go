package media

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/net/html"

	"edge/edge/client"
	"edge/edge/store"
	"edge/wellknown"
)

const (
	// maxPreviewRedirects is how many redirects one fetch follows.
	maxPreviewRedirects = 5
	// previewCacheTTL and previewCacheSize bound the in-memory cache.
	previewCacheTTL  = time.Hour
	previewCacheSize = 1024
	// maxConcurrentPreviews bounds fetches in flight across all users.
	maxConcurrentPreviews = 8
	// maxDescription caps og:description (as Synapse does); other values
	// are capped at maxPreviewValue.
	maxDescription  = 500
	maxPreviewValue = 1000
)

// errRestricted means a preview target's address is loopback, private,
// link-local or otherwise not public.
var errRestricted = wellknown.ErrPrivateAddress

// previewKeys are the OpenGraph properties passed through to clients.
var previewKeys = map[string]bool{
	"og:title": true, "og:description": true, "og:site_name": true, "og:type": true, "og:url": true,
	"og:locale": true, "og:image": true, "og:image:width": true, "og:image:height": true,
	"og:image:type": true, "og:image:alt": true,
}

// previewer fetches pages for preview_url with an SSRF-safe client: every
// connection (redirects included) dials only addresses it has checked.
type previewer struct {
	allowPrivate bool
	maxBytes     int64
	timeout      time.Duration
	// restricted judges an address (wellknown.Restricted; tests vary it).
	restricted func(netip.Addr) (string, bool)
	dialer     net.Dialer
	client     *http.Client
	cache      *expirable.LRU[string, map[string]any]
	sem        chan struct{}
	// saveImage stores a fetched image for userID and returns its mxc URI.
	saveImage func(data []byte, ctype, userID string) (string, error)
}

func newPreviewer(allowPrivate bool, maxBytes int64, timeout time.Duration, save func([]byte, string, string) (string, error)) *previewer {
	p := &previewer{
		allowPrivate: allowPrivate,
		maxBytes:     maxBytes,
		timeout:      timeout,
		restricted:   wellknown.Restricted,
		dialer:       net.Dialer{Timeout: timeout},
		cache:        expirable.NewLRU[string, map[string]any](previewCacheSize, nil, previewCacheTTL),
		sem:          make(chan struct{}, maxConcurrentPreviews),
		saveImage:    save,
	}
	p.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // a proxy would dial for us, past the address check
			DialContext:            p.dial,
			ForceAttemptHTTP2:      true,
			TLSHandshakeTimeout:    timeout,
			ResponseHeaderTimeout:  timeout,
			MaxResponseHeaderBytes: 64 << 10,
			MaxIdleConnsPerHost:    2,
			IdleConnTimeout:        30 * time.Second,
		},
		// Each hop dials through p.dial, so a redirect to a private address
		// is refused like a direct request would be.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > maxPreviewRedirects {
				return fmt.Errorf("more than %d redirects", maxPreviewRedirects)
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to a %q URL", req.URL.Scheme)
			}
			return nil
		},
	}
	return p
}

// dial resolves addr, drops addresses that are not public (unless
// allowed), and connects to a checked address itself, so DNS cannot
// answer differently between the check and the connection.
func (p *previewer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := wellknown.PublicDialer{Dialer: &p.dialer, AllowPrivate: p.allowPrivate, Restricted: p.restricted}
	return d.DialContext(ctx, network, addr)
}

// previewRoutes registers preview_url when previews are on; off, the
// endpoint does not exist (404 M_UNRECOGNIZED), as in Synapse.
func (s *Service) previewRoutes() {
	m := s.Config.Media
	if !m.URLPreviewEnabled {
		return
	}
	s.preview = newPreviewer(m.URLPreviewAllowPrivate, m.URLPreviewMaxBytes, m.URLPreviewTimeout, s.savePreviewImage)
	s.mux.HandleFunc("GET /_matrix/client/v1/media/preview_url", s.authed(s.previewURL))
	// The deprecated endpoints always needed an access token.
	s.mux.HandleFunc("GET /_matrix/media/v3/preview_url", s.authed(s.previewURL))
	s.mux.HandleFunc("GET /_matrix/media/r0/preview_url", s.authed(s.previewURL))
}

// previewURL answers GET /_matrix/client/v1/media/preview_url (and the
// deprecated GET /_matrix/media/v3/preview_url): the OpenGraph data of the
// page at ?url=, its image copied into the media repository.
func (s *Service) previewURL(w http.ResponseWriter, r *http.Request, req request) error {
	q := r.URL.Query()
	raw := q.Get("url")
	if raw == "" {
		return errorf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing url parameter")
	}
	// ts asks for a point in time; the newest preview always satisfies it.
	if ts := q.Get("ts"); ts != "" {
		if _, err := strconv.ParseInt(ts, 10, 64); err != nil {
			return errorf(http.StatusBadRequest, "M_INVALID_PARAM", "ts must be an integer")
		}
	}
	u, err := previewTarget(raw)
	if err != nil {
		return err
	}
	og, err := s.preview.preview(r.Context(), u, req.sess.UserID)
	if err != nil {
		if r.Context().Err() != nil {
			return r.Context().Err()
		}
		var ce *client.Error
		if errors.As(err, &ce) {
			return ce
		}
		if errors.Is(err, errRestricted) {
			return errorf(http.StatusForbidden, "M_FORBIDDEN", "URL is not on a public address")
		}
		s.Log.DebugContext(r.Context(), "url preview failed", "url", u.Redacted(), "err", err)
		return errorf(http.StatusBadGateway, "M_UNKNOWN", "Could not fetch the URL")
	}
	client.WriteJSON(w, http.StatusOK, og)
	return nil
}

// previewTarget parses a preview URL: absolute http(s) with a host and no
// credentials; the fragment, which servers never see, is dropped.
func previewTarget(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, errorf(http.StatusBadRequest, "M_INVALID_PARAM", "url is not a valid URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errorf(http.StatusBadRequest, "M_INVALID_PARAM", "url must be an http or https URL")
	case u.Host == "" || u.Hostname() == "":
		return nil, errorf(http.StatusBadRequest, "M_INVALID_PARAM", "url has no host")
	case u.User != nil:
		return nil, errorf(http.StatusBadRequest, "M_INVALID_PARAM", "url must not contain credentials")
	}
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// preview returns the (cached) OpenGraph data of u. userID owns the image
// copied into the media repository.
func (p *previewer) preview(ctx context.Context, u *url.URL, userID string) (map[string]any, error) {
	key := u.String()
	if og, ok := p.cache.Get(key); ok {
		return og, nil
	}
	select {
	case p.sem <- struct{}{}:
		defer func() { <-p.sem }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := p.get(ctx, key, "text/html,application/xhtml+xml;q=0.9,image/*;q=0.8,*/*;q=0.5")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	og := map[string]any{}
	ctype := mediaType(resp.Header.Get("Content-Type"))
	switch {
	case ctype == "text/html" || ctype == "application/xhtml+xml":
		// Read up to the cap and describe what arrived: the head, where the
		// tags are, comes first.
		body, err := io.ReadAll(io.LimitReader(resp.Body, p.maxBytes))
		if err != nil && len(body) == 0 {
			return nil, err
		}
		for k, v := range parseHTML(body) {
			og[k] = v
		}
		p.pageImage(ctx, og, resp.Request.URL, userID)
	case strings.HasPrefix(ctype, "image/"):
		p.addImage(og, resp, ctype, userID)
	}
	p.cache.Add(key, og)
	return og, nil
}

// get fetches target, failing on a non-2xx answer.
func (p *previewer) get(ctx context.Context, target, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", "edge URL preview")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("%s answered %s", req.URL.Redacted(), resp.Status)
	}
	return resp, nil
}

// pageImage replaces the page's og:image URL with an mxc:// copy (the spec
// says og:image is an mxc URI), or drops the image fields when the image
// cannot be fetched or is not one.
func (p *previewer) pageImage(ctx context.Context, og map[string]any, base *url.URL, userID string) {
	ref, _ := og["og:image"].(string)
	for _, k := range []string{"og:image", "og:image:width", "og:image:height", "og:image:type"} {
		delete(og, k)
	}
	if ref == "" {
		return
	}
	u, err := base.Parse(ref)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil {
		return
	}
	resp, err := p.get(ctx, u.String(), "image/*")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if ctype := mediaType(resp.Header.Get("Content-Type")); strings.HasPrefix(ctype, "image/") {
		p.addImage(og, resp, ctype, userID)
	}
}

// addImage stores the image in resp if it is within the cap and decodes,
// and describes it with its real type, dimensions and size.
func (p *previewer) addImage(og map[string]any, resp *http.Response, ctype, userID string) {
	data, err := io.ReadAll(io.LimitReader(resp.Body, p.maxBytes+1))
	if err != nil || int64(len(data)) > p.maxBytes {
		return
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return
	}
	mxc, err := p.saveImage(data, ctype, userID)
	if err != nil {
		return
	}
	og["og:image"] = mxc
	og["og:image:type"] = ctype
	og["og:image:width"] = cfg.Width
	og["og:image:height"] = cfg.Height
	og["matrix:image:size"] = len(data)
}

// savePreviewImage stores a preview's image as local media of userID.
func (s *Service) savePreviewImage(data []byte, ctype, userID string) (string, error) {
	sha, size, err := s.files.store(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return "", err
	}
	id := newMediaID()
	val, err := json.Marshal(record{SHA256: sha, ContentType: ctype, Size: size, Uploader: userID,
		CreatedTS: time.Now().UnixMilli(), Authenticated: s.Config.Media.FreezeUnauthenticated})
	if err != nil {
		return "", err
	}
	if err := s.Store.Write(func(tx *store.Tx) error {
		tx.PutKV(nsMedia, id, val)
		return nil
	}); err != nil {
		return "", err
	}
	return s.mxc(id), nil
}

func mediaType(header string) string {
	t, _, err := mime.ParseMediaType(header)
	if err != nil {
		return ""
	}
	return t
}

// parseHTML reads the OpenGraph properties of a (possibly truncated) page,
// falling back to <title> and <meta name="description">. og:image is still
// the page's URL; og:image:width and height are numbers when they parse.
func parseHTML(body []byte) map[string]any {
	z := html.NewTokenizer(bytes.NewReader(body))
	props := map[string]string{}
	var title, desc string
	var inTitle, haveTitle bool
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return previewProps(props, title, desc)
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			switch string(name) {
			case "title":
				inTitle = tt == html.StartTagToken && !haveTitle
			case "meta":
				var prop, mname, content string
				var haveContent bool
				for hasAttr {
					var k, v []byte
					k, v, hasAttr = z.TagAttr()
					switch string(k) {
					case "property":
						prop = strings.ToLower(strings.TrimSpace(string(v)))
					case "name":
						mname = strings.ToLower(strings.TrimSpace(string(v)))
					case "content":
						content, haveContent = string(v), true
					}
				}
				if !haveContent {
					continue
				}
				if prop == "" && strings.HasPrefix(mname, "og:") {
					prop = mname // a common mistake pages make
				}
				// The first value wins: repeated og:image tags list
				// alternatives after the main one.
				if _, seen := props[prop]; prop != "" && !seen {
					props[prop] = content
				}
				if mname == "description" && desc == "" {
					desc = content
				}
			}
		case html.TextToken:
			if inTitle {
				title += string(z.Text())
			}
		case html.EndTagToken:
			if name, _ := z.TagName(); string(name) == "title" && inTitle {
				inTitle, haveTitle = false, true
			}
		}
	}
}

func previewProps(props map[string]string, title, desc string) map[string]any {
	if props["og:image"] == "" {
		if v := props["og:image:secure_url"]; v != "" {
			props["og:image"] = v
		} else if v := props["og:image:url"]; v != "" {
			props["og:image"] = v
		}
	}
	if props["og:title"] == "" {
		props["og:title"] = title
	}
	if props["og:description"] == "" {
		props["og:description"] = desc
	}
	og := map[string]any{}
	for k, v := range props {
		if !previewKeys[k] {
			continue
		}
		limit := maxPreviewValue
		if k == "og:description" {
			limit = maxDescription
		}
		if v = cleanValue(v, limit); v == "" {
			continue
		}
		if k == "og:image:width" || k == "og:image:height" {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				og[k] = n
			}
			continue
		}
		og[k] = v
	}
	return og
}

// cleanValue collapses whitespace, repairs invalid UTF-8 and cuts v to at
// most limit characters.
func cleanValue(v string, limit int) string {
	v = strings.Join(strings.Fields(strings.ToValidUTF8(v, "\uFFFD")), " ")
	if utf8.RuneCountInString(v) <= limit {
		return v
	}
	r := []rune(v)
	return strings.TrimSpace(string(r[:limit-1])) + "…"
}
