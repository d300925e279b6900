// Package appservice implements the homeserver side of the Application
// Service API: registration files, namespaces, and the transactions that
// push a bridge the events it is interested in.
package appservice

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"go.yaml.in/yaml/v3"
)

// Namespace is one entry of a registration's users, aliases or rooms.
type Namespace struct {
	Exclusive bool   `yaml:"exclusive"`
	Regex     string `yaml:"regex"`
	re        *regexp.Regexp
}

// Registration is an application service's registration file.
type Registration struct {
	ID              string `yaml:"id"`
	URL             string `yaml:"url"` // empty: no transactions are pushed
	ASToken         string `yaml:"as_token"`
	HSToken         string `yaml:"hs_token"`
	SenderLocalpart string `yaml:"sender_localpart"`
	RateLimited     *bool  `yaml:"rate_limited"`
	// ReceiveEphemeral (MSC2409, or its unstable name) asks for typing,
	// receipts, presence and to-device messages in transactions.
	ReceiveEphemeral bool `yaml:"receive_ephemeral"`
	PushEphemeral    bool `yaml:"de.sorunome.msc2409.push_ephemeral"`
	PushEphemeralOld bool `yaml:"push_ephemeral"` // Complement writes this name too
	// MSC3202 asks for device list changes and one-time/fallback key
	// counts of the AS's users' devices (end-to-bridge encryption).
	MSC3202    bool `yaml:"org.matrix.msc3202"`
	Namespaces struct {
		Users   []Namespace `yaml:"users"`
		Aliases []Namespace `yaml:"aliases"`
		Rooms   []Namespace `yaml:"rooms"`
	} `yaml:"namespaces"`

	// Sender is the AS's own user, @sender_localpart:server.
	Sender string `yaml:"-"`
}

// Parse reads one registration file's text for serverName.
func Parse(data []byte, serverName string) (*Registration, error) {
	var r Registration
	if err := yaml.Unmarshal(data, &r); err != nil {
		return nil, err
	}
	switch {
	case r.ID == "":
		return nil, fmt.Errorf("id is required")
	case r.ASToken == "" || r.HSToken == "":
		return nil, fmt.Errorf("as_token and hs_token are required")
	case r.SenderLocalpart == "":
		return nil, fmt.Errorf("sender_localpart is required")
	}
	r.Sender = "@" + r.SenderLocalpart + ":" + serverName
	for _, list := range [][]Namespace{r.Namespaces.Users, r.Namespaces.Aliases, r.Namespaces.Rooms} {
		for i := range list {
			// Anchored at the start as Synapse's re.match; a pattern
			// wanting the whole ID ends itself with $ or a server name.
			re, err := regexp.Compile("^(?:" + list[i].Regex + ")")
			if err != nil {
				return nil, fmt.Errorf("namespace regex %q: %w", list[i].Regex, err)
			}
			list[i].re = re
		}
	}
	return &r, nil
}

// Load reads the registrations that patterns (paths or globs, relative
// to dir) name.
func Load(dir string, patterns []string, serverName string) ([]*Registration, error) {
	var out []*Registration
	seen := map[string]bool{}
	tokens := map[string]bool{}
	for _, p := range patterns {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		files, err := filepath.Glob(p)
		if err != nil {
			return nil, fmt.Errorf("appservices: %q: %w", p, err)
		}
		sort.Strings(files)
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("appservices: %w", err)
			}
			r, err := Parse(data, serverName)
			if err != nil {
				return nil, fmt.Errorf("appservices: %s: %w", f, err)
			}
			if seen[r.ID] || tokens[r.ASToken] {
				return nil, fmt.Errorf("appservices: %s: id or as_token used twice", f)
			}
			seen[r.ID], tokens[r.ASToken] = true, true
			out = append(out, r)
		}
	}
	return out, nil
}

func matchAny(list []Namespace, s string, exclusiveOnly bool) bool {
	for _, ns := range list {
		if (!exclusiveOnly || ns.Exclusive) && ns.re != nil && ns.re.MatchString(s) {
			return true
		}
	}
	return false
}

// OwnsUser tells whether the AS may act as userID: its sender or a user
// in its users namespaces.
func (r *Registration) OwnsUser(userID string) bool {
	return userID == r.Sender || matchAny(r.Namespaces.Users, userID, false)
}

// Ephemeral tells whether the AS asked for ephemeral data and to-device
// messages (MSC2409, MSC4203).
func (r *Registration) Ephemeral() bool {
	return r.ReceiveEphemeral || r.PushEphemeral || r.PushEphemeralOld
}

// OwnsExclusively tells whether userID is the AS's sender or in one of
// its exclusive user namespaces: a user no one else may be, whose
// to-device messages therefore go to the AS.
func (r *Registration) OwnsExclusively(userID string) bool {
	return userID == r.Sender || matchAny(r.Namespaces.Users, userID, true)
}

// InterestedInUser tells whether events of userID concern the AS.
func (r *Registration) InterestedInUser(userID string) bool { return r.OwnsUser(userID) }

// InterestedInRoom tells whether the room ID is in the AS's rooms namespaces.
func (r *Registration) InterestedInRoom(roomID string) bool {
	return matchAny(r.Namespaces.Rooms, roomID, false)
}

// InterestedInAlias tells whether the alias is in the AS's aliases namespaces.
func (r *Registration) InterestedInAlias(alias string) bool {
	return matchAny(r.Namespaces.Aliases, alias, false)
}

// Set is the node's application services.
type Set struct {
	Regs []*Registration
}

// ByToken finds the AS whose as_token this is.
func (s *Set) ByToken(token string) *Registration {
	if s == nil || token == "" {
		return nil
	}
	for _, r := range s.Regs {
		if r.ASToken == token {
			return r
		}
	}
	return nil
}

// ExclusiveUser is the AS that claims userID exclusively (or its sender), if any.
func (s *Set) ExclusiveUser(userID string) *Registration {
	if s == nil {
		return nil
	}
	for _, r := range s.Regs {
		if userID == r.Sender || matchAny(r.Namespaces.Users, userID, true) {
			return r
		}
	}
	return nil
}

// ExclusiveAlias is the AS that claims alias exclusively, if any.
func (s *Set) ExclusiveAlias(alias string) *Registration {
	if s == nil {
		return nil
	}
	for _, r := range s.Regs {
		if matchAny(r.Namespaces.Aliases, alias, true) {
			return r
		}
	}
	return nil
}
