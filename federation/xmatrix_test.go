package federation

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"edge/edge/config"
)

func TestFederationXMatrixParse(t *testing.T) {
	want := XMatrix{Origin: "origin.example", Destination: "dest.example:8448", Key: "ed25519:k1", Sig: "c2ln/+x"}
	for _, tc := range []struct {
		name   string
		header string
		want   *XMatrix // nil: an error
	}{
		{"canonical", `X-Matrix origin="origin.example",destination="dest.example:8448",key="ed25519:k1",sig="c2ln/+x"`, &want},
		{"unquoted with colons", `X-Matrix origin=origin.example,destination=dest.example:8448,key=ed25519:k1,sig="c2ln/+x"`, &want},
		{"unquoted sig (as Synapse accepts)", `X-Matrix origin=origin.example,destination=dest.example:8448,key=ed25519:k1,sig=c2ln/+x`, &want},
		{"spaces and tabs around commas, any order", "X-Matrix  sig=\"c2ln/+x\" ,\tkey=\"ed25519:k1\" , destination=\"dest.example:8448\",origin=\"origin.example\"", &want},
		{"case-insensitive scheme and names", `x-matrix ORIGIN="origin.example",Destination="dest.example:8448",KEY="ed25519:k1",Sig="c2ln/+x"`, &want},
		{"escapes in quoted values", `X-Matrix origin="origin\.example",destination="dest.example:8448",key="ed25519:k\1",sig="c2ln\/+x"`, &want},
		{"unknown parameters ignored", `X-Matrix origin="origin.example",destination="dest.example:8448",foo="b,a\"r",key="ed25519:k1",sig="c2ln/+x",baz=1`, &want},
		{"empty list elements", `X-Matrix origin="origin.example",,destination="dest.example:8448",key="ed25519:k1",sig="c2ln/+x",`, &want},
		{"no destination (before v1.3)", `X-Matrix origin="origin.example",key="ed25519:k1",sig="c2ln/+x"`,
			&XMatrix{Origin: "origin.example", Key: "ed25519:k1", Sig: "c2ln/+x"}},
		{"comma inside quotes", `X-Matrix origin="origin.example",key="ed25519:k1",sig="a,b"`,
			&XMatrix{Origin: "origin.example", Key: "ed25519:k1", Sig: "a,b"}},
		{"other scheme", `Bearer abc`, nil},
		{"no space after scheme", `X-Matrixorigin="a"`, nil},
		{"missing origin", `X-Matrix destination="d.example",key="ed25519:k1",sig="s"`, nil},
		{"missing key", `X-Matrix origin="o.example",sig="s"`, nil},
		{"missing sig", `X-Matrix origin="o.example",key="ed25519:k1"`, nil},
		{"empty sig", `X-Matrix origin="o.example",key="ed25519:k1",sig=""`, nil},
		{"unterminated quote", `X-Matrix origin="o.example,key="ed25519:k1",sig="s`, nil},
		{"value missing", `X-Matrix origin=,key="ed25519:k1",sig="s"`, nil},
		{"no equals", `X-Matrix origin,key="ed25519:k1",sig="s"`, nil},
		{"junk after value", `X-Matrix origin="o.example"x,key="ed25519:k1",sig="s"`, nil},
		{"repeated parameter", `X-Matrix origin="o.example",origin="p.example",key="ed25519:k1",sig="s"`, nil},
		{"invalid origin", `X-Matrix origin="bad origin!",key="ed25519:k1",sig="s"`, nil},
		{"invalid destination", `X-Matrix origin="o.example",destination="",key="ed25519:k1",sig="s"`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseXMatrix(tc.header)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", got)
				}
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("err %v does not wrap ErrUnauthorized", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != *tc.want {
				t.Fatalf("got %+v, want %+v", got, *tc.want)
			}
		})
	}
	// What we send parses back to itself, escapes included.
	x := XMatrix{Origin: "o.example", Destination: "d.example", Key: "ed25519:a", Sig: `we"ird\sig`}
	if back, err := ParseXMatrix(x.String()); err != nil || back != x {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}

// echoRoutes adds authenticated test routes that report what they saw.
func echoRoutes(s *Server) {
	s.Handle("GET /_matrix/federation/v1/test/echo", func(r *Request) (any, error) {
		return map[string]any{"origin": r.Origin, "proto": r.ProtoMajor}, nil
	})
	s.Handle("PUT /_matrix/federation/v1/test/echo/{x}", func(r *Request) (any, error) {
		return map[string]any{"origin": r.Origin, "x": r.PathValue("x"), "body": r.Body}, nil
	})
}

func TestFederationXMatrixRoundTrip(t *testing.T) {
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{setup: echoRoutes})
	ctx := ctxT(t)
	var got struct {
		Origin string `json:"origin"`
		Proto  int    `json:"proto"`
	}
	if err := a.srv.Client.Get(ctx, b.name, "/_matrix/federation/v1/test/echo", &got); err != nil {
		t.Fatal(err)
	}
	if got.Origin != a.name {
		t.Fatalf("b saw origin %q, want %q", got.Origin, a.name)
	}
	if got.Proto != 2 {
		t.Fatalf("HTTP/%d, want HTTP/2 over TLS", got.Proto)
	}
	var put struct {
		Origin string          `json:"origin"`
		X      string          `json:"x"`
		Body   json.RawMessage `json:"body"`
	}
	body := map[string]any{"text": "héllo <&>", "n": 1}
	if err := a.srv.Client.Put(ctx, b.name, "/_matrix/federation/v1/test/echo/%21room%3Aexample.org?q=a%20b", body, &put); err != nil {
		t.Fatal(err)
	}
	if put.Origin != a.name || put.X != "!room:example.org" || !strings.Contains(string(put.Body), "llo") {
		t.Fatalf("PUT echo: %+v", put)
	}
}

func TestFederationXMatrixRefusals(t *testing.T) {
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{setup: func(s *Server) { echoRoutes(s); s.maxBody = 64 << 10 }})
	c := startNode(t, nodeOpts{setup: echoRoutes})
	const path = "/_matrix/federation/v1/test/echo/x?q=1"
	body := []byte(`{"a":1}`)
	sign := func(dest string, key config.SigningKey, method, uri string, content []byte) string {
		h, err := signRequest(a.name, dest, key, method, uri, content)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	good := sign(b.name, a.keys[0], "PUT", path, body)
	if status, resp := call(t, b, "PUT", path, body, good); status != http.StatusOK {
		t.Fatalf("a correctly signed request: %d %s", status, resp)
	}
	x, _ := ParseXMatrix(good)
	noDest := `X-Matrix origin="` + x.Origin + `",key="` + x.Key + `",sig="` + x.Sig + `"`
	if status, resp := call(t, b, "PUT", path, body, noDest); status != http.StatusOK {
		t.Fatalf("signed for b without the destination parameter (pre-v1.3 sender): %d %s", status, resp)
	}
	unknownKey := config.SigningKey{ID: "ed25519:unknown", Priv: a.keys[0].Priv}
	other, _ := config.GenerateSigningKey()
	forged := config.SigningKey{ID: a.keys[0].ID, Priv: other.Priv}
	big := []byte(`{"pad":"` + strings.Repeat("x", 100<<10) + `"}`)

	for _, tc := range []struct {
		name   string
		to     *testNode
		path   string
		body   []byte
		auth   string
		status int
		code   string
	}{
		{"no Authorization header", b, path, body, "", 401, "M_UNAUTHORIZED"},
		{"another scheme", b, path, body, "Bearer abc", 401, "M_UNAUTHORIZED"},
		{"malformed X-Matrix", b, path, body, `X-Matrix origin="` + a.name, 401, "M_UNAUTHORIZED"},
		{"addressed to another server", b, path, body, sign(c.name, a.keys[0], "PUT", path, body), 401, "M_UNAUTHORIZED"},
		{"replayed to another server", c, path, body, good, 401, "M_UNAUTHORIZED"},
		{"forged signature", b, path, body, sign(b.name, forged, "PUT", path, body), 401, "M_UNAUTHORIZED"},
		{"unknown key", b, path, body, sign(b.name, unknownKey, "PUT", path, body), 401, "M_UNAUTHORIZED"},
		{"tampered body", b, path, []byte(`{"a":2}`), good, 401, "M_UNAUTHORIZED"},
		{"tampered query", b, "/_matrix/federation/v1/test/echo/x?q=2", body, good, 401, "M_UNAUTHORIZED"},
		{"other method", b, path, body, sign(b.name, a.keys[0], "POST", path, body), 401, "M_UNAUTHORIZED"},
		{"body not JSON", b, path, []byte("{nope"), good, 400, "M_NOT_JSON"},
		{"body over the limit", b, path, big, sign(b.name, a.keys[0], "PUT", path, big), 413, "M_TOO_LARGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, resp := call(t, tc.to, "PUT", tc.path, tc.body, tc.auth)
			if status != tc.status || errcode(t, resp) != tc.code {
				t.Fatalf("%d %s, want %d %s", status, resp, tc.status, tc.code)
			}
		})
	}
}
