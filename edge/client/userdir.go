package client

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"unicode"

	"edge/edge/room"
	"edge/edge/store"
)

const userDirMaxLimit = 100

func (s *Server) routesUserDirectory() {
	s.authed("POST /user_directory/search", s.userDirectorySearch)
}

// dirUser is one user directory entry with how it was found.
type dirUser struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
	shared      bool   // shares a room with the searcher (ranked first)
	public      bool   // joined to a public room
}

// userDirectorySearch: POST /user_directory/search
//
// Searched are the users joined to a room the searcher is joined to and
// those joined to public rooms (join rule public or world-readable
// history), or every local user with user_directory.search_all_users. Each
// word of the term must be a prefix of a word of the user ID or display
// name, case-insensitively.
func (s *Server) userDirectorySearch(r *http.Request, sess *Session) (any, error) {
	var req struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.SearchTerm == nil {
		return nil, errMissingParam("Missing search_term")
	}
	limit := 10
	if req.Limit != nil {
		if *req.Limit < 0 {
			return nil, errInvalidParam("limit must not be negative")
		}
		limit = min(*req.Limit, userDirMaxLimit)
	}
	terms := words(*req.SearchTerm)
	users := map[string]*dirUser{}
	err := s.Store.View(func(tx *store.Tx) error {
		mine := map[string]bool{}
		ms, err := tx.Memberships(sess.UserID)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Membership == "join" {
				mine[m.RoomID] = true
			}
		}
		err = tx.Rooms(func(rm *store.Room) bool {
			st, err := s.Rooms.State(tx, rm.State)
			if err != nil {
				return true
			}
			shared := mine[rm.RoomID]
			public := s.stateContentField(tx, st, "m.room.join_rules", "join_rule") == "public" ||
				s.stateContentField(tx, st, "m.room.history_visibility", "history_visibility") == "world_readable"
			if !shared && !public {
				return true
			}
			s.addJoinedMembers(tx, st, shared, public, users)
			return true
		})
		if err != nil {
			return err
		}
		if s.Config.UserDirectory.SearchAllUsers {
			return tx.Users(func(u *store.User) bool {
				if u.Deactivated {
					return true
				}
				uid := "@" + u.Localpart + ":" + s.Config.ServerName
				if _, ok := users[uid]; !ok {
					users[uid] = &dirUser{UserID: uid, DisplayName: u.DisplayName, AvatarURL: u.AvatarURL}
				}
				return true
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var hits []*dirUser
	for _, u := range users {
		// Searchers find themselves only as members of a public room:
		// Synapse's shared-rooms table pairs distinct users, its public
		// rooms' table has everyone (Complement's TestRoomSpecificUsername*
		// counts the results; MSC3902's user directory test finds itself).
		if (u.UserID != sess.UserID || u.public) && matchesUser(u, terms) {
			hits = append(hits, u)
		}
	}
	slices.SortFunc(hits, func(a, b *dirUser) int {
		if a.shared != b.shared {
			if a.shared {
				return -1
			}
			return 1
		}
		if (a.DisplayName != "") != (b.DisplayName != "") {
			if a.DisplayName != "" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.UserID, b.UserID)
	})
	limited := len(hits) > limit
	if limited {
		hits = hits[:limit]
	}
	if hits == nil {
		hits = []*dirUser{}
	}
	return map[string]any{"results": hits, "limited": limited}, nil
}

// addJoinedMembers adds the joined members of a room state to users, with
// their global profile if local, else the profile their member event
// carries.
func (s *Server) addJoinedMembers(tx *store.Tx, st *room.State, shared, public bool, users map[string]*dirUser) {
	st.Each(func(key, nid uint64) bool {
		evType, stateKey, err := tx.StateKey(key)
		if err != nil || evType != "m.room.member" {
			return true
		}
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil {
			return true
		}
		var c struct {
			Membership  string `json:"membership"`
			DisplayName string `json:"displayname"`
			AvatarURL   string `json:"avatar_url"`
		}
		if json.Unmarshal(ev.Content, &c) != nil || c.Membership != "join" {
			return true
		}
		u := users[stateKey]
		if u == nil {
			u = &dirUser{UserID: stateKey, DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
			if s.isLocalUser(stateKey) {
				// A member event may carry a per-room name meant for that
				// room only; the directory shows a local user's global
				// profile, as Synapse does (Complement's
				// TestRoomSpecificUsername*).
				if p, err := tx.User(localpart(stateKey)); err == nil {
					u.DisplayName, u.AvatarURL = p.DisplayName, p.AvatarURL
				}
			}
			users[stateKey] = u
		}
		u.shared = u.shared || shared
		u.public = u.public || public
		return true
	})
}

// words splits text into lowercase words of letters and digits.
func words(text string) []string {
	return strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsNumber(r)
	})
}

// matchesUser: every term is a prefix of some word of the user ID or
// display name. An empty term matches nobody, as in Synapse.
func matchesUser(u *dirUser, terms []string) bool {
	if len(terms) == 0 {
		return false
	}
	have := append(words(u.UserID), words(u.DisplayName)...)
	for _, t := range terms {
		if !slices.ContainsFunc(have, func(w string) bool { return strings.HasPrefix(w, t) }) {
			return false
		}
	}
	return true
}
