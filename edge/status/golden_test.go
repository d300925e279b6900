package status

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// Things that differ between runs: ports, timestamps, fingerprints, keys,
// durations. normalise replaces them so the rest of the JSON is compared.
var (
	rePort     = regexp.MustCompile(`(127\.0\.0\.1|\]|[a-z]\.test):\d{2,5}\b`)
	reTime     = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	reDuration = regexp.MustCompile(`expires in [0-9hms.]+`)
	reSkew     = regexp.MustCompile(`clock is [+-]\d+s off`)
	reDays     = regexp.MustCompile(`\(\d+ days left\)`)
	reSRVValue = regexp.MustCompile(`^(\d+ \d+ )\d+( \S+)$`) // "priority weight port target"
)

func normalise(v any, key string) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			// Key material: a notary's "keys", a key response's verify_keys.
			if m, ok := x.(map[string]any); ok && (k == "verify_keys" || k == "old_verify_keys" || (k == "keys" && m["verify_keys"] == nil)) {
				for id := range m {
					m[id] = "<key>"
				}
				continue
			}
			v[k] = normalise(x, k)
		}
		return v
	case []any:
		for i := range v {
			v[i] = normalise(v[i], key)
		}
		return v
	case float64:
		switch key {
		case "valid_until_ts":
			return "<ts>"
		case "handshake_ms", "keys_ms":
			return "<ms>"
		case "clock_skew_seconds": // to the minute: a second's jitter is no change
			return math.Round(v/60)*60 + 0 // + 0 turns -0 into 0
		case "port":
			return "<port>"
		}
		return v
	case string:
		if key == "sha256_fingerprint" {
			return "<sha256>"
		}
		v = rePort.ReplaceAllString(v, "$1:PORT")
		v = reSRVValue.ReplaceAllString(v, "${1}PORT$2")
		v = reTime.ReplaceAllString(v, "<time>")
		v = reDuration.ReplaceAllString(v, "expires in <duration>")
		v = reSkew.ReplaceAllString(v, "clock is <skew> off")
		return reDays.ReplaceAllString(v, "(<n> days left)")
	}
	return v
}

// golden compares rep's normalised JSON with testdata/<name>.json.
func golden(t *testing.T, name string, rep *Report) {
	t.Helper()
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := json.Unmarshal(raw, &tree); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(normalise(tree, "")); err != nil {
		t.Fatal(err)
	}
	got := buf.Bytes()
	path := filepath.Join("testdata", name+".json")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update if the change is intended):\n%s", path, lineDiff(string(want), string(got)))
	}
}

// lineDiff lists the lines that differ, position by position.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := range max(len(w), len(g)) {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a != c {
			b.WriteString("- " + a + "\n+ " + c + "\n")
		}
	}
	return b.String()
}

// TestStatusGolden: the --json report of each broken-on-purpose peer is
// stable, and FederationOK says whether federation would work.
func TestStatusGolden(t *testing.T) {
	ca := newTestCA(t)
	day := 24 * time.Hour
	cases := []struct {
		name  string
		ok    bool
		check string // a failure (or, when ok, a warning) the report must hold
		run   func(t *testing.T) *Report
	}{
		{"healthy", true, "", func(t *testing.T) *Report {
			f := startFake(t, ca.issue(t, 90*day, "127.0.0.1"), "")
			return inspect(t, f.name, Options{RootCAs: ca.pool})
		}},
		{"expired_cert", false, "ValidCertificates", func(t *testing.T) *Report {
			f := startFake(t, ca.issue(t, -time.Minute, "127.0.0.1"), "")
			return inspect(t, f.name, Options{RootCAs: ca.pool})
		}},
		{"wrong_san", false, "MatchingServerName", func(t *testing.T) *Report {
			f := startFake(t, ca.issue(t, 90*day, "other.example"), "")
			return inspect(t, f.name, Options{RootCAs: ca.pool})
		}},
		{"keys_expiring", true, "KeyExpiry", func(t *testing.T) *Report {
			f := startFake(t, ca.issue(t, 90*day, "127.0.0.1"), "")
			f.validFor = 10 * time.Minute
			return inspect(t, f.name, Options{RootCAs: ca.pool})
		}},
		{"clock_skew", true, "ClockSkew", func(t *testing.T) *Report {
			f := startFake(t, ca.issue(t, 90*day, "127.0.0.1"), "")
			f.skew = -10 * time.Minute
			return inspect(t, f.name, Options{RootCAs: ca.pool})
		}},
		{"srv_deprecated_only", true, "SRV", func(t *testing.T) *Report {
			f := startFake(t, ca.issue(t, 90*day, "srv.test"), "srv.test")
			ns := startDNS(t, []string{
				"_matrix._tcp.srv.test. 60 IN SRV 10 5 " + itoa(f.port()) + " host.srv.test.",
				"host.srv.test. 60 IN A 127.0.0.1",
				"srv.test. 60 IN A 127.0.0.1",
			})
			return inspect(t, "srv.test", Options{RootCAs: ca.pool, Nameservers: []string{ns}, WellKnownPort: f.port()})
		}},
		{"wellknown_bad_json", true, "WellKnown", func(t *testing.T) *Report {
			f := startFake(t, ca.issue(t, 90*day, "wk.test"), "wk.test")
			f.serverWK = `{"m.server": "wk.test:` // cut short
			ns := startDNS(t, []string{
				"_matrix-fed._tcp.wk.test. 60 IN SRV 10 5 " + itoa(f.port()) + " wk.test.",
				"wk.test. 60 IN A 127.0.0.1",
			})
			return inspect(t, "wk.test", Options{RootCAs: ca.pool, Nameservers: []string{ns}, WellKnownPort: f.port()})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep := tc.run(t)
			if rep.FederationOK != tc.ok {
				t.Errorf("FederationOK %v, want %v; failures %+v", rep.FederationOK, tc.ok, rep.Failures)
			}
			if tc.check != "" {
				list := rep.Failures
				if tc.ok {
					list = rep.Warnings
				}
				f := hasFinding(list, tc.check)
				if f == nil || f.Fix == "" || strings.Contains(f.Fix, "\n") {
					t.Errorf("no %s finding with a one-line fix: failures %+v warnings %+v", tc.check, rep.Failures, rep.Warnings)
				}
			}
			// Every failure carries its fix.
			for _, f := range rep.Failures {
				if f.Fix == "" {
					t.Errorf("failure without a fix: %+v", f)
				}
			}
			for _, c := range rep.Connections {
				if c.Error == "" && (!c.HTTP2 || !strings.HasPrefix(c.HTTP3, "not advertised")) {
					t.Errorf("%s: http2 %v http3 %q", c.Addr, c.HTTP2, c.HTTP3)
				}
			}
			golden(t, tc.name, rep)
		})
	}
}
