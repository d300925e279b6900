package config

import (
	"fmt"
	"time"
)

// VoIP configures GET /voip/turnServer: TURN credentials in coturn's
// use-auth-secret scheme (time-limited username, HMAC-SHA1 password).
type VoIP struct {
	// TurnURIs are handed to clients (e.g. "turn:turn.example.org:3478?transport=udp").
	TurnURIs []string `yaml:"turn_uris"`
	// TurnSharedSecret is coturn's static-auth-secret. Empty (or no URIs):
	// the endpoint answers {} and clients fall back to their own servers.
	TurnSharedSecret string `yaml:"turn_shared_secret"`
	// TurnUserLifetime is how long handed-out credentials stay valid.
	TurnUserLifetime time.Duration `yaml:"turn_user_lifetime"`
}

// UserDirectory configures POST /user_directory/search.
type UserDirectory struct {
	// SearchAllUsers lists every local user, not only those sharing a room
	// with the searcher or sitting in public rooms (Synapse's search_all_users).
	SearchAllUsers bool `yaml:"search_all_users"`
}

// DefaultVoIP is the voip section `edge init` writes: no TURN server.
func DefaultVoIP() VoIP {
	return VoIP{TurnUserLifetime: time.Hour}
}

func (v VoIP) validate() error {
	if v.TurnUserLifetime <= 0 {
		return &FieldError{"voip.turn_user_lifetime", "must be positive"}
	}
	return nil
}

// voipSection renders the VoIP and user-directory settings with comments.
func voipSection(v VoIP, d UserDirectory) string {
	uris := "" // (null: an empty flow list would load as a non-nil slice)
	if len(v.TurnURIs) > 0 {
		uris = " " + yamlList(v.TurnURIs)
	}
	return fmt.Sprintf(`# TURN server for VoIP calls (coturn with use-auth-secret): clients get
# time-limited credentials from /voip/turnServer. Empty: none offered.
voip:
  # e.g. ["turn:turn.example.org:3478?transport=udp"]
  turn_uris:%s
  turn_shared_secret: %q
  turn_user_lifetime: %s

user_directory:
  # List every local user in searches, not only those sharing a room with
  # the searcher or in public rooms.
  search_all_users: %t
`, uris, v.TurnSharedSecret, v.TurnUserLifetime, d.SearchAllUsers)
}
