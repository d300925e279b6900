package federation

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"edge/edge/room"
	"edge/edge/store"
)

// ServerACL is the content of an m.room.server_acl event, with the
// defaults of its schema applied.
type ServerACL struct {
	Allow           []string
	Deny            []string
	AllowIPLiterals bool
}

// ParseServerACL reads m.room.server_acl content leniently, as the schema
// prescribes: allow_ip_literals is true unless it is the boolean false;
// allow and deny are empty unless arrays, and non-string entries are
// skipped. Unparseable content is an ACL that allows nobody, like an
// event with no allow list.
func ParseServerACL(content json.RawMessage) ServerACL {
	acl := ServerACL{AllowIPLiterals: true}
	var c map[string]json.RawMessage
	if json.Unmarshal(content, &c) != nil {
		return acl
	}
	var b bool
	if json.Unmarshal(c["allow_ip_literals"], &b) == nil {
		acl.AllowIPLiterals = b
	}
	list := func(raw json.RawMessage) []string {
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) != nil {
			return nil
		}
		var out []string
		for _, it := range items {
			var s string
			if json.Unmarshal(it, &s) == nil {
				out = append(out, s)
			}
		}
		return out
	}
	acl.Allow, acl.Deny = list(c["allow"]), list(c["deny"])
	return acl
}

// Allows applies the ACL to a server name in the schema's order: an IP
// literal when IP literals are not allowed is denied; then a deny match
// denies; then an allow match allows; anything else is denied. The port
// is not considered, and globs match case-insensitively.
func (a ServerACL) Allows(serverName string) bool {
	host := serverHost(serverName)
	if !a.AllowIPLiterals && isIPLiteral(host) {
		return false
	}
	host = strings.ToLower(host)
	for _, g := range a.Deny {
		if globMatch(strings.ToLower(g), host) {
			return false
		}
	}
	for _, g := range a.Allow {
		if globMatch(strings.ToLower(g), host) {
			return true
		}
	}
	return false
}

// serverHost strips the port from a server name; an IPv6 literal keeps
// its brackets, as ACL entries write it.
func serverHost(name string) string {
	if strings.HasPrefix(name, "[") {
		if end := strings.IndexByte(name, ']'); end >= 0 {
			return name[:end+1]
		}
		return name
	}
	if i := strings.IndexByte(name, ':'); i >= 0 {
		return name[:i]
	}
	return name
}

func isIPLiteral(host string) bool {
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Is4()
}

// globMatch matches s against a glob of the appendix "Glob-style
// matching": '*' is zero or more characters, '?' exactly one. It
// backtracks only to the last star, so it is linear in practice.
func globMatch(glob, s string) bool {
	gi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		if gi < len(glob) {
			switch glob[gi] {
			case '*':
				star, mark = gi, si
				gi++
				continue
			case '?':
				_, n := utf8.DecodeRuneInString(s[si:])
				gi++
				si += n
				continue
			default:
				gr, gn := utf8.DecodeRuneInString(glob[gi:])
				sr, sn := utf8.DecodeRuneInString(s[si:])
				if gr == sr {
					gi += gn
					si += sn
					continue
				}
			}
		}
		if star < 0 {
			return false
		}
		// Let the last star swallow one more character.
		_, n := utf8.DecodeRuneInString(s[mark:])
		mark += n
		gi, si = star+1, mark
	}
	for gi < len(glob) && glob[gi] == '*' {
		gi++
	}
	return gi == len(glob)
}

// ACLCheck reports whether origin may act in roomID under the room's
// current m.room.server_acl: nil when allowed (or the room has no ACL, or
// no ACL source is wired), an error wrapping ErrACLDenied when not.
func (s *Server) ACLCheck(origin, roomID string) error {
	if s.ACLSource == nil {
		return nil
	}
	content, _, err := s.ACLSource(roomID)
	if err != nil {
		return fmt.Errorf("server ACL of %s: %w", roomID, err)
	}
	if content == nil || ParseServerACL(content).Allows(origin) {
		return nil
	}
	return fmt.Errorf("%w: %s in %s", ErrACLDenied, origin, roomID)
}

// RoomACLSource is the ACLSource of a node whose rooms live in rooms and
// st: the content of the current m.room.server_acl and the room version,
// or nothing for a room this server does not know.
func RoomACLSource(st *store.Store, rooms *room.Service) func(roomID string) (json.RawMessage, string, error) {
	return func(roomID string) (acl json.RawMessage, version string, err error) {
		err = st.View(func(tx *store.Tx) error {
			r, err := tx.Room(roomID)
			if errors.Is(err, store.ErrNotFound) {
				return nil
			} else if err != nil {
				return err
			}
			version = r.Version
			state, err := rooms.State(tx, r.State)
			if err != nil {
				return err
			}
			ev, err := rooms.StateEvent(tx, state, "m.room.server_acl", "")
			if err != nil || ev == nil {
				return err
			}
			acl = ev.Content
			return nil
		})
		return acl, version, err
	}
}
