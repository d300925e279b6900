package client

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"edge/edge/config"
	"edge/edge/room"
	"edge/edge/store"
)

// routesDirectory registers room aliases and the published room directory
// (https://spec.matrix.org/v1.12/client-server-api/#room-aliases and
// #published-room-directory).
func (s *Server) routesDirectory() {
	s.authed("PUT /directory/room/{roomAlias}", s.putAlias)
	s.handle("GET /directory/room/{roomAlias}", s.getAlias)
	s.authed("DELETE /directory/room/{roomAlias}", s.deleteAlias)
	s.authed("GET /rooms/{roomId}/aliases", s.roomAliases)
	s.handle("GET /directory/list/room/{roomId}", s.getVisibility)
	s.authed("PUT /directory/list/room/{roomId}", s.putVisibility)
	s.handle("GET /publicRooms", s.publicRoomsGet)
	s.authed("POST /publicRooms", s.publicRoomsPost)
}

// aliasCreatorNamespace maps a local alias to the user who created it, who
// may delete it again without any power in the room.
const aliasCreatorNamespace = "alias_creator"

// parseAlias splits #localpart:server, checking the spec's grammar: a
// localpart of any code points but ':' and NUL, a valid server name, and
// at most 255 bytes in all.
func parseAlias(alias string) (server string, ok bool) {
	rest, found := strings.CutPrefix(alias, "#")
	if !found || len(alias) > 255 || !utf8.ValidString(alias) {
		return "", false
	}
	local, server, found := strings.Cut(rest, ":")
	if !found || local == "" || strings.ContainsRune(local, 0) || config.ValidateServerName(server) != nil {
		return "", false
	}
	return server, true
}

// recordAliasCreator remembers who made an alias so they may delete it;
// createRoom's room_alias_name path should call it too.
func (s *Server) recordAliasCreator(tx *store.Tx, alias, userID string) {
	tx.PutKV(aliasCreatorNamespace, alias, []byte(userID))
}

// canEditDirectory tells whether userID may change a room's aliases and
// directory listing: a joined member with the power to send
// m.room.canonical_alias (Synapse's check_can_change_room_list).
func (s *Server) canEditDirectory(tx *store.Tx, st *room.State, userID string) bool {
	if s.membershipIn(tx, st, userID) != "join" {
		return false
	}
	pl, err := s.Rooms.PowerLevels(tx, st)
	return err == nil && pl.UserLevel(userID) >= pl.EventLevel("m.room.canonical_alias", true)
}

// joinedUserIDs lists the users joined in a state.
func (s *Server) joinedUserIDs(tx *store.Tx, st *room.State) []string {
	var out []string
	st.Each(func(k, nid uint64) bool {
		evType, sk, err := tx.StateKey(k)
		if err != nil || evType != "m.room.member" {
			return true
		}
		if ev, err := s.Rooms.Event(tx, nid); err == nil && ev.Membership() == "join" {
			out = append(out, sk)
		}
		return true
	})
	return out
}

// putAlias: PUT /directory/room/{roomAlias}
func (s *Server) putAlias(r *http.Request, sess *Session) (any, error) {
	alias := r.PathValue("roomAlias")
	server, ok := parseAlias(alias)
	if !ok {
		return nil, errInvalidParam("Room alias invalid")
	}
	if server != s.Config.ServerName {
		return nil, errInvalidParam("Room aliases can only be created on %s", s.Config.ServerName)
	}
	if err := s.checkExclusiveAlias(alias, sess.AppService); err != nil {
		return nil, err
	}
	var req struct {
		RoomID *string `json:"room_id"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.RoomID == nil {
		return nil, errMissingParam("Missing room_id")
	}
	if !validRoomID(*req.RoomID) {
		return nil, errInvalidParam("%q is not a room ID", *req.RoomID)
	}
	roomID := *req.RoomID
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		// Only members may point aliases at a room (Synapse's default
		// require_membership_for_aliases); admins may for any known room.
		if sess.Admin {
			if _, _, err := s.roomState(tx, roomID); err != nil {
				return err
			}
		} else if _, _, err := s.requireJoined(tx, roomID, sess.UserID); err != nil {
			return errForbidden("You must be in the room to create an alias for it")
		}
		if err := tx.PutAlias(alias, roomID); errors.Is(err, store.ErrExists) {
			return newErr(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists", alias)
		} else if err != nil {
			return err
		}
		s.recordAliasCreator(tx, alias, sess.UserID)
		return nil
	})
}

// getAlias: GET /directory/room/{roomAlias}
func (s *Server) getAlias(r *http.Request) (any, error) {
	alias := r.PathValue("roomAlias")
	server, ok := parseAlias(alias)
	if !ok {
		return nil, errInvalidParam("Room alias invalid")
	}
	if server != s.Config.ServerName {
		return s.remoteAlias(r.Context(), alias, server)
	}
	// Ours first, then every other server in the room (with, while the
	// room has partial state, those its join named), as over federation.
	resp, err := s.localAlias(alias)
	// An alias in an application service's namespace may be made on
	// demand: ask the AS, then look again (spec: querying room aliases).
	var me *Error
	if errors.As(err, &me) && me.Code == "M_NOT_FOUND" && s.AppServices.QueryAlias(r.Context(), alias) {
		resp, err = s.localAlias(alias)
	}
	return resp, err
}

// deleteAlias: DELETE /directory/room/{roomAlias}
// Allowed to the alias's creator, server admins, and members with the power
// to send m.room.canonical_alias.
func (s *Server) deleteAlias(r *http.Request, sess *Session) (any, error) {
	alias := r.PathValue("roomAlias")
	server, ok := parseAlias(alias)
	if !ok {
		return nil, errInvalidParam("Room alias invalid")
	}
	if server != s.Config.ServerName {
		return nil, errNotFound("Room alias %s not found", alias)
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		roomID, err := tx.Alias(alias)
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("Room alias %s not found", alias)
		} else if err != nil {
			return err
		}
		creator, _ := tx.GetKV(aliasCreatorNamespace, alias)
		_, st, stErr := s.roomState(tx, roomID)
		allowed := sess.Admin || string(creator) == sess.UserID || (stErr == nil && s.canEditDirectory(tx, st, sess.UserID))
		if !allowed {
			return errForbidden("You may not delete the alias %s", alias)
		}
		if err := tx.DeleteAlias(alias); err != nil {
			return err
		}
		tx.DeleteKV(aliasCreatorNamespace, alias)
		if stErr == nil {
			return s.dropCanonicalAlias(tx, roomID, st, alias, sess.UserID)
		}
		return nil
	})
}

// dropCanonicalAlias removes a deleted alias from the room's
// m.room.canonical_alias, as Synapse does, when the deleting user has the
// power to; otherwise the alias is deleted and the event left as it is.
func (s *Server) dropCanonicalAlias(tx *store.Tx, roomID string, st *room.State, alias, userID string) error {
	ev, err := s.Rooms.StateEvent(tx, st, "m.room.canonical_alias", "")
	if err != nil || ev == nil || !s.canEditDirectory(tx, st, userID) {
		return nil
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(ev.Content, &c) != nil {
		return nil
	}
	changed := false
	var main string
	if json.Unmarshal(c["alias"], &main) == nil && main == alias {
		delete(c, "alias")
		changed = true
	}
	var alts []string
	if json.Unmarshal(c["alt_aliases"], &alts) == nil {
		if kept := slices.DeleteFunc(slices.Clone(alts), func(a string) bool { return a == alias }); len(kept) != len(alts) {
			c["alt_aliases"], _ = json.Marshal(kept)
			changed = true
		}
	}
	if !changed {
		return nil
	}
	content, _ := json.Marshal(c)
	sk := ""
	if _, err := s.Rooms.Send(tx, roomID, room.Proto{Type: "m.room.canonical_alias", StateKey: &sk, Sender: userID, Content: content}); err != nil && !errors.Is(err, room.ErrForbidden) {
		return err
	}
	return nil
}

// roomAliases: GET /rooms/{roomId}/aliases
func (s *Server) roomAliases(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	if !validRoomID(roomID) {
		return nil, errInvalidParam("%q is not a room ID", roomID)
	}
	aliases := []string{}
	err := s.Store.View(func(tx *store.Tx) error {
		_, st, err := s.roomState(tx, roomID)
		if errors.Is(err, room.ErrRoomNotFound) {
			return errForbidden("You are not in room %s", roomID)
		} else if err != nil {
			return err
		}
		visible := sess.Admin || s.membershipIn(tx, st, sess.UserID) == "join" ||
			s.stateContentField(tx, st, "m.room.history_visibility", "history_visibility") == "world_readable"
		if !visible {
			return errForbidden("You are not in room %s", roomID)
		}
		aliases = append(aliases, tx.RoomAliases(roomID)...)
		slices.Sort(aliases)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"aliases": aliases}, nil
}

// getVisibility: GET /directory/list/room/{roomId}
func (s *Server) getVisibility(r *http.Request) (any, error) {
	roomID := r.PathValue("roomId")
	visibility := "private"
	err := s.Store.View(func(tx *store.Tx) error {
		if _, err := tx.Room(roomID); err != nil {
			return errNotFound("Room not found")
		}
		if tx.Published(roomID) {
			visibility = "public"
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"visibility": visibility}, nil
}

// putVisibility: PUT /directory/list/room/{roomId}
func (s *Server) putVisibility(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	var req struct {
		Visibility string `json:"visibility"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	switch req.Visibility {
	case "":
		req.Visibility = "public" // the spec's default
	case "public", "private":
	default:
		return nil, errInvalidParam("visibility must be public or private")
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		_, st, err := s.roomState(tx, roomID)
		if errors.Is(err, room.ErrRoomNotFound) {
			return errNotFound("Room not found")
		} else if err != nil {
			return err
		}
		if !sess.Admin && !s.canEditDirectory(tx, st, sess.UserID) {
			return errForbidden("You may not change this room's directory visibility")
		}
		tx.SetPublished(roomID, req.Visibility == "public")
		return nil
	})
}

// publicRoomJSON is one entry of a /publicRooms chunk.
type publicRoomJSON struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"`
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	NumJoinedMembers int    `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	JoinRule         string `json:"join_rule,omitempty"`
	RoomType         string `json:"room_type,omitempty"`
}

// publicRoomsQuery is what GET and POST /publicRooms both ask.
type publicRoomsQuery struct {
	Limit                int
	Since                string
	IncludeAllNetworks   bool
	ThirdPartyInstanceID string
	SearchTerm           string
	RoomTypes            []*string // nil entries stand for untyped rooms
	RoomTypesSet         bool      // whether to filter by RoomTypes at all
}

// maxPublicRooms caps one page, also when the client asks for no limit.
const maxPublicRooms = 500

// publicRoomsGet: GET /publicRooms
// The spec lets anyone read the directory; a token, if sent, must be valid.
func (s *Server) publicRoomsGet(r *http.Request) (any, error) {
	if r.Header.Get("Authorization") != "" || r.URL.Query().Has("access_token") {
		if _, err := s.authenticate(r); err != nil {
			return nil, err
		}
	}
	pq, err := publicRoomsFromQuery(r.URL.Query())
	if err != nil {
		return nil, err
	}
	return s.publicRooms(r, pq)
}

// publicRoomsFromQuery reads GET /publicRooms's query parameters (the
// client API's and the federation API's are the same).
func publicRoomsFromQuery(q url.Values) (publicRoomsQuery, error) {
	var pq publicRoomsQuery
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return pq, errInvalidParam("limit must be an integer")
		}
		pq.Limit = n
	}
	pq.Since = q.Get("since")
	pq.IncludeAllNetworks = q.Get("include_all_networks") == "true"
	pq.ThirdPartyInstanceID = q.Get("third_party_instance_id")
	return pq, nil
}

// publicRoomsPost: POST /publicRooms
func (s *Server) publicRoomsPost(r *http.Request, sess *Session) (any, error) {
	var req publicRoomsBody
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	pq, err := req.query()
	if err != nil {
		return nil, err
	}
	return s.publicRooms(r, pq)
}

// publicRoomsBody is POST /publicRooms's body, on the client and the
// federation API alike.
type publicRoomsBody struct {
	Limit                int    `json:"limit"`
	Since                string `json:"since"`
	IncludeAllNetworks   bool   `json:"include_all_networks"`
	ThirdPartyInstanceID string `json:"third_party_instance_id"`
	Filter               *struct {
		GenericSearchTerm string          `json:"generic_search_term"`
		RoomTypes         json.RawMessage `json:"room_types"`
	} `json:"filter"`
}

func (b *publicRoomsBody) query() (publicRoomsQuery, error) {
	pq := publicRoomsQuery{Limit: b.Limit, Since: b.Since, IncludeAllNetworks: b.IncludeAllNetworks, ThirdPartyInstanceID: b.ThirdPartyInstanceID}
	if f := b.Filter; f != nil {
		pq.SearchTerm = f.GenericSearchTerm
		// room_types: null is "no filter"; [null] is "rooms without a type".
		if len(f.RoomTypes) > 0 && string(f.RoomTypes) != "null" {
			if err := json.Unmarshal(f.RoomTypes, &pq.RoomTypes); err != nil {
				return pq, errBadJSON("filter.room_types must be a list of strings and nulls")
			}
			pq.RoomTypesSet = true
		}
	}
	return pq, nil
}

// publicRooms lists the published rooms that are joinable or world-readable
// and have members, largest first then by room ID, one page at a time.
func (s *Server) publicRooms(r *http.Request, pq publicRoomsQuery) (any, error) {
	if srv := r.URL.Query().Get("server"); srv != "" && srv != s.Config.ServerName {
		return s.remotePublicRooms(r.Context(), srv, pq)
	}
	if pq.Limit < 0 {
		return nil, errInvalidParam("limit must not be negative")
	}
	if pq.IncludeAllNetworks && pq.ThirdPartyInstanceID != "" {
		return nil, errInvalidParam("include_all_networks cannot be combined with third_party_instance_id")
	}
	limit := pq.Limit
	if limit == 0 || limit > maxPublicRooms {
		limit = maxPublicRooms
	}
	var cursor *publicRoomsToken
	if pq.Since != "" {
		t, ok := parsePublicRoomsToken(pq.Since)
		if !ok {
			return nil, errInvalidParam("Invalid since token")
		}
		cursor = &t
	}
	var rooms []*publicRoomJSON
	if pq.ThirdPartyInstanceID == "" { // no bridges: a named network has no rooms here
		err := s.Store.View(func(tx *store.Tx) error {
			term := strings.ToLower(pq.SearchTerm)
			for _, roomID := range tx.PublishedRooms() {
				e := s.publicRoomEntry(tx, roomID)
				if e == nil || !matchesPublicFilter(e, term, pq) {
					continue
				}
				rooms = append(rooms, e)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(rooms, func(a, b *publicRoomJSON) int {
		return publicRoomsOrder(a.NumJoinedMembers, a.RoomID, b.NumJoinedMembers, b.RoomID)
	})

	start, end := 0, min(limit, len(rooms))
	if cursor != nil {
		// The first room ordered after (or from) the cursor's room.
		i, _ := slices.BinarySearchFunc(rooms, *cursor, func(e *publicRoomJSON, t publicRoomsToken) int {
			return publicRoomsOrder(e.NumJoinedMembers, e.RoomID, t.members, t.roomID)
		})
		if cursor.forward {
			if i < len(rooms) && rooms[i].RoomID == cursor.roomID && rooms[i].NumJoinedMembers == cursor.members {
				i++
			}
			start, end = i, min(i+limit, len(rooms))
		} else {
			start, end = max(0, i-limit), i
		}
	}
	page := rooms[start:end]
	resp := map[string]any{"chunk": orEmptyRooms(page), "total_room_count_estimate": len(rooms)}
	if len(page) > 0 {
		if start > 0 {
			resp["prev_batch"] = publicRoomsToken{forward: false, members: page[0].NumJoinedMembers, roomID: page[0].RoomID}.String()
		}
		if end < len(rooms) {
			last := page[len(page)-1]
			resp["next_batch"] = publicRoomsToken{forward: true, members: last.NumJoinedMembers, roomID: last.RoomID}.String()
		}
	}
	return resp, nil
}

func orEmptyRooms(p []*publicRoomJSON) []*publicRoomJSON {
	if p == nil {
		return []*publicRoomJSON{}
	}
	return p
}

// publicRoomsOrder orders rooms by joined members descending, then room ID.
func publicRoomsOrder(aMembers int, aRoom string, bMembers int, bRoom string) int {
	if c := cmp.Compare(bMembers, aMembers); c != 0 {
		return c
	}
	return strings.Compare(aRoom, bRoom)
}

// publicRoomEntry summarises a published room, or returns nil for one the
// directory should not show: unknown, empty, or neither joinable by anyone
// nor world-readable (as Synapse filters).
func (s *Server) publicRoomEntry(tx *store.Tx, roomID string) *publicRoomJSON {
	_, st, err := s.roomState(tx, roomID)
	if err != nil {
		return nil
	}
	field := func(evType, key string) string { return s.stateContentField(tx, st, evType, key) }
	e := &publicRoomJSON{
		RoomID:           roomID,
		Name:             field("m.room.name", "name"),
		Topic:            field("m.room.topic", "topic"),
		CanonicalAlias:   field("m.room.canonical_alias", "alias"),
		NumJoinedMembers: len(s.joinedUserIDs(tx, st)),
		WorldReadable:    field("m.room.history_visibility", "history_visibility") == "world_readable",
		GuestCanJoin:     field("m.room.guest_access", "guest_access") == "can_join",
		AvatarURL:        field("m.room.avatar", "url"),
		JoinRule:         field("m.room.join_rules", "join_rule"),
		RoomType:         field("m.room.create", "type"),
	}
	if e.NumJoinedMembers == 0 {
		return nil
	}
	switch e.JoinRule {
	case "public", "knock", "knock_restricted":
		return e
	}
	if e.WorldReadable {
		return e
	}
	return nil
}

// matchesPublicFilter applies generic_search_term (case-insensitive, over
// name, topic and canonical alias) and room_types (null: untyped rooms).
func matchesPublicFilter(e *publicRoomJSON, term string, pq publicRoomsQuery) bool {
	if term != "" &&
		!strings.Contains(strings.ToLower(e.Name), term) &&
		!strings.Contains(strings.ToLower(e.Topic), term) &&
		!strings.Contains(strings.ToLower(e.CanonicalAlias), term) {
		return false
	}
	if pq.RoomTypesSet {
		return slices.ContainsFunc(pq.RoomTypes, func(t *string) bool {
			if t == nil {
				return e.RoomType == ""
			}
			return *t == e.RoomType
		})
	}
	return true
}

// publicRoomsToken is a /publicRooms pagination token: the room a page
// ended (forward) or started (backward) at. Keyed on the room rather than
// an offset, so rooms joining or leaving the list do not shift pages.
type publicRoomsToken struct {
	forward bool
	members int
	roomID  string
}

func (t publicRoomsToken) String() string {
	dir := "b"
	if t.forward {
		dir = "f"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(dir + strconv.Itoa(t.members) + "|" + t.roomID))
}

func parsePublicRoomsToken(s string) (publicRoomsToken, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(raw) < 2 || (raw[0] != 'f' && raw[0] != 'b') {
		return publicRoomsToken{}, false
	}
	n, roomID, ok := strings.Cut(string(raw[1:]), "|")
	members, err := strconv.Atoi(n)
	if !ok || err != nil || members < 0 || !validRoomID(roomID) {
		return publicRoomsToken{}, false
	}
	return publicRoomsToken{forward: raw[0] == 'f', members: members, roomID: roomID}, true
}
