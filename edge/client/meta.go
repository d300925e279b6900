package client

import (
	"net/http"

	"edge/edge/room"
)

func (s *Server) routesMeta() {
	s.handle("GET /_matrix/client/versions", s.versions)
	s.authed("GET /capabilities", s.capabilities)
}

// supportedSpecVersions are the spec versions whose client API edge speaks.
var supportedSpecVersions = []string{
	"r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6",
	"v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
}

// versions: GET /_matrix/client/versions
func (s *Server) versions(r *http.Request) (any, error) {
	return map[string]any{
		"versions":          supportedSpecVersions,
		"unstable_features": map[string]bool{"org.matrix.msc3231": true, "org.matrix.msc3814": true, "org.matrix.simplified_msc3575": true},
	}, nil
}

// capabilities: GET /capabilities
func (s *Server) capabilities(r *http.Request, sess *Session) (any, error) {
	available := map[string]string{}
	for _, v := range room.SupportedVersions {
		available[v] = "stable"
	}
	for _, v := range room.UnstableVersions {
		available[v] = "unstable"
	}
	return map[string]any{"capabilities": map[string]any{
		"m.change_password": map[string]bool{"enabled": true},
		"m.room_versions":   map[string]any{"default": s.Config.Rooms.DefaultVersion, "available": available},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": true},
		"m.profile_fields":  map[string]bool{"enabled": true},
		"m.3pid_changes":    map[string]bool{"enabled": false},
		"m.get_login_token": map[string]bool{"enabled": false},
	}}, nil
}
