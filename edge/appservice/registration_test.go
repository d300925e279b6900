package appservice

import (
	"os"
	"path/filepath"
	"testing"
)

const reg = `id: irc
url: http://127.0.0.1:9000
as_token: AS
hs_token: HS
sender_localpart: ircbot
namespaces:
  users:
    - exclusive: true
      regex: "@irc_.*:example.org"
    - exclusive: false
      regex: "@shared_.*"
  aliases:
    - exclusive: true
      regex: "#irc_.*"
  rooms:
    - exclusive: false
      regex: "!bridged:example.org"
`

func TestRegistrationNamespaces(t *testing.T) {
	r, err := Parse([]byte(reg), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	set := &Set{Regs: []*Registration{r}}
	if r.Sender != "@ircbot:example.org" || set.ByToken("AS") != r || set.ByToken("HS") != nil || set.ByToken("") != nil {
		t.Fatalf("sender %q or token lookup wrong", r.Sender)
	}
	for _, c := range []struct {
		user            string
		owns, exclusive bool
	}{
		{"@irc_bob:example.org", true, true},
		{"@ircbot:example.org", true, true},
		{"@shared_x:example.org", true, false},
		{"@alice:example.org", false, false},
		{"@xirc_bob:example.org", false, false}, // anchored at the start
	} {
		if got := r.OwnsUser(c.user); got != c.owns {
			t.Errorf("OwnsUser(%s) = %v", c.user, got)
		}
		if got := set.ExclusiveUser(c.user) != nil; got != c.exclusive {
			t.Errorf("ExclusiveUser(%s) = %v", c.user, got)
		}
	}
	if set.ExclusiveAlias("#irc_chan:example.org") != r || set.ExclusiveAlias("#other:example.org") != nil {
		t.Error("exclusive aliases")
	}
	if !r.InterestedInRoom("!bridged:example.org") || r.InterestedInRoom("!other:example.org") {
		t.Error("rooms namespace")
	}
}

func TestRegistrationLoad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "irc.yaml"), []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	regs, err := Load(dir, []string{"*.yaml"}, "example.org")
	if err != nil || len(regs) != 1 || regs[0].ID != "irc" {
		t.Fatalf("Load: %v %v", regs, err)
	}
	// The same file twice: its id and as_token clash.
	if _, err := Load(dir, []string{"*.yaml", "irc.yaml"}, "example.org"); err == nil {
		t.Error("duplicate registrations accepted")
	}
	for name, bad := range map[string]string{
		"no id":     "as_token: a\nhs_token: h\nsender_localpart: s\n",
		"no tokens": "id: x\nsender_localpart: s\n",
		"bad regex": "id: x\nas_token: a\nhs_token: h\nsender_localpart: s\nnamespaces:\n  users:\n    - regex: \"(\"\n",
	} {
		if _, err := Parse([]byte(bad), "example.org"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRegistrationEphemeralFlags: the stable and unstable MSC2409 names
// and MSC3202's flag are read; without them nothing extra is pushed.
func TestRegistrationEphemeralFlags(t *testing.T) {
	for _, tc := range []struct {
		extra     string
		eph, e2ee bool
	}{
		{"", false, false},
		{"receive_ephemeral: true\n", true, false},
		{"push_ephemeral: true\n", true, false},
		{"de.sorunome.msc2409.push_ephemeral: true\norg.matrix.msc3202: true\n", true, true},
	} {
		r, err := Parse([]byte(reg+tc.extra), "example.org")
		if err != nil {
			t.Fatal(err)
		}
		if r.Ephemeral() != tc.eph || r.MSC3202 != tc.e2ee {
			t.Errorf("%q: ephemeral %v msc3202 %v", tc.extra, r.Ephemeral(), r.MSC3202)
		}
		// To-device messages go to the AS only for users it owns exclusively.
		if !r.OwnsExclusively("@irc_x:example.org") || !r.OwnsExclusively("@ircbot:example.org") || r.OwnsExclusively("@shared_x:example.org") {
			t.Error("OwnsExclusively")
		}
	}
}
