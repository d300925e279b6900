package wellknown

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHandler(t *testing.T) {
	full, err := NewHandler(Discovery{
		Server:                "matrix.example.org:443",
		HomeserverBaseURL:     "https://matrix.example.org",
		IdentityServerBaseURL: "https://id.example.org/",
		ClientExtra: map[string]any{
			"org.matrix.msc3575.proxy":    map[string]string{"url": "https://sync.example.org"},
			"org.matrix.msc4143.rtc_foci": []map[string]string{{"type": "livekit", "livekit_service_url": "https://rtc.example.org"}},
		},
		MaxAge: 10 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	empty, err := NewHandler(Discovery{})
	if err != nil {
		t.Fatal(err)
	}
	fullSrv, emptySrv := httptest.NewServer(full), httptest.NewServer(empty)
	defer fullSrv.Close()
	defer emptySrv.Close()

	cases := []struct {
		name    string
		srv     *httptest.Server
		method  string
		path    string
		status  int
		errcode string
		check   func(t *testing.T, body map[string]any)
	}{
		{name: "server", srv: fullSrv, method: "GET", path: "/.well-known/matrix/server", status: 200,
			check: func(t *testing.T, b map[string]any) {
				if len(b) != 1 || b["m.server"] != "matrix.example.org:443" {
					t.Errorf("body %v", b)
				}
			}},
		{name: "client", srv: fullSrv, method: "GET", path: "/.well-known/matrix/client", status: 200,
			check: func(t *testing.T, b map[string]any) {
				hs, _ := b["m.homeserver"].(map[string]any)
				is, _ := b["m.identity_server"].(map[string]any)
				proxy, _ := b["org.matrix.msc3575.proxy"].(map[string]any)
				foci, _ := b["org.matrix.msc4143.rtc_foci"].([]any)
				if hs["base_url"] != "https://matrix.example.org" || is["base_url"] != "https://id.example.org/" ||
					proxy["url"] != "https://sync.example.org" || len(foci) != 1 || len(b) != 4 {
					t.Errorf("body %v", b)
				}
			}},
		{name: "server unconfigured", srv: emptySrv, method: "GET", path: "/.well-known/matrix/server", status: 404, errcode: "M_NOT_FOUND"},
		{name: "client unconfigured", srv: emptySrv, method: "GET", path: "/.well-known/matrix/client", status: 404, errcode: "M_NOT_FOUND"},
		{name: "POST", srv: fullSrv, method: "POST", path: "/.well-known/matrix/server", status: 405, errcode: "M_UNRECOGNIZED"},
		{name: "unknown file", srv: fullSrv, method: "GET", path: "/.well-known/matrix/other", status: 404, errcode: "M_UNRECOGNIZED"},
		{name: "preflight", srv: fullSrv, method: "OPTIONS", path: "/.well-known/matrix/client", status: 204},
		{name: "HEAD", srv: fullSrv, method: "HEAD", path: "/.well-known/matrix/server", status: 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, tc.srv.URL+tc.path, nil)
			req.Header.Set("Origin", "https://app.example")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, raw)
			}
			if resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
				!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "GET") {
				t.Errorf("CORS headers %v", resp.Header)
			}
			if tc.method == "GET" && tc.path != "/.well-known/matrix/other" {
				want := "public, max-age=600"
				if tc.srv == emptySrv {
					want = "public, max-age=3600"
				}
				if got := resp.Header.Get("Cache-Control"); got != want {
					t.Errorf("Cache-Control %q, want %q", got, want)
				}
			}
			if tc.method == "HEAD" || tc.method == "OPTIONS" {
				if len(raw) != 0 {
					t.Errorf("%s body %q", tc.method, raw)
				}
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var body map[string]any
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("body %q: %v", raw, err)
			}
			if tc.errcode != "" && body["errcode"] != tc.errcode {
				t.Errorf("errcode %v, want %s", body["errcode"], tc.errcode)
			}
			if tc.method == "POST" && resp.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if tc.check != nil {
				tc.check(t, body)
			}
		})
	}
}

func TestNewHandlerRejects(t *testing.T) {
	hs := "https://matrix.example.org"
	cases := map[string]Discovery{
		"bad m.server":               {Server: "matrix example"},
		"m.server port 0":            {Server: "matrix.example.org:0"},
		"relative base_url":          {HomeserverBaseURL: "/matrix"},
		"ftp base_url":               {HomeserverBaseURL: "ftp://matrix.example.org"},
		"unparsable base_url":        {HomeserverBaseURL: "https://[::1"},
		"bad identity base_url":      {HomeserverBaseURL: hs, IdentityServerBaseURL: "id.example.org"},
		"identity without homesrv":   {IdentityServerBaseURL: "https://id.example.org"},
		"extras without homeserver":  {ClientExtra: map[string]any{"org.example.x": 1}},
		"extra overrides homeserver": {HomeserverBaseURL: hs, ClientExtra: map[string]any{"m.homeserver": map[string]string{}}},
		"extra not namespaced":       {HomeserverBaseURL: hs, ClientExtra: map[string]any{"proxy": 1}},
		"extra empty segment":        {HomeserverBaseURL: hs, ClientExtra: map[string]any{"org..x": 1}},
		"extra not JSON":             {HomeserverBaseURL: hs, ClientExtra: map[string]any{"org.example.ch": make(chan int)}},
	}
	for name, d := range cases {
		if _, err := NewHandler(d); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
