package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"edge/edge/room"
	"edge/edge/store"
)

// The admin API for server admins, on Synapse's paths and shapes so that
// tools written for Synapse (synadm, scripts from its docs) work against
// edge. Every route needs the access token of a user with the admin flag.

// ServerVersion is what GET /_synapse/admin/v1/server_version reports;
// the node sets it from its build version.
var ServerVersion = "dev"

func (s *Server) routesAdmin() {
	s.admin("GET /_synapse/admin/v2/users", s.adminListUsers)
	s.admin("GET /_synapse/admin/v2/users/{userId}", s.adminGetUser)
	// PUT answers 201 for a new user, so it writes its own response.
	s.mux.Handle("PUT /_synapse/admin/v2/users/{userId}", http.HandlerFunc(s.adminPutUser))
	s.admin("POST /_synapse/admin/v1/deactivate/{userId}", s.adminDeactivate)
	s.admin("POST /_synapse/admin/v1/reset_password/{userId}", s.adminResetPassword)
	s.admin("GET /_synapse/admin/v1/rooms", s.adminListRooms)
	s.admin("GET /_synapse/admin/v1/rooms/{roomId}", s.adminGetRoom)
	s.admin("GET /_synapse/admin/v1/rooms/{roomId}/members", s.adminRoomMembers)
	s.admin("GET /_synapse/admin/v1/server_version", s.adminServerVersion)
	s.admin("DELETE /_synapse/admin/v1/rooms/{roomId}", s.adminDeleteRoom)
	s.admin("GET /_synapse/admin/v1/rooms/{roomId}/block", s.adminGetBlock)
	s.admin("PUT /_synapse/admin/v1/rooms/{roomId}/block", s.adminPutBlock)
	s.routesReport()
}

// admin registers a handler that only server admins may call.
func (s *Server) admin(pattern string, h authedFunc) {
	s.authed(pattern, func(r *http.Request, sess *Session) (any, error) {
		if !sess.Admin {
			return nil, errForbidden("You are not a server admin")
		}
		return h(r, sess)
	})
}

// adminSession authenticates a request and requires a server admin.
func (s *Server) adminSession(r *http.Request) (*Session, error) {
	sess, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	if !sess.Admin {
		return nil, errForbidden("You are not a server admin")
	}
	return sess, nil
}

// pageParams reads Synapse's from/limit paging (offsets into a list).
func pageParams(r *http.Request, defLimit int) (from, limit int, err error) {
	q := r.URL.Query()
	from, limit = 0, defLimit
	if v := q.Get("from"); v != "" {
		if from, err = strconv.Atoi(v); err != nil || from < 0 {
			return 0, 0, errInvalidParam("Query parameter from must be a non-negative integer")
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 {
			return 0, 0, errInvalidParam("Query parameter limit must be a non-negative integer")
		}
	}
	return from, limit, nil
}

// boolParam reads a "true"/"false" query parameter.
func boolParam(r *http.Request, name string, def bool) (bool, error) {
	switch r.URL.Query().Get(name) {
	case "":
		return def, nil
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errInvalidParam("Query parameter %s must be true or false", name)
}

// adminUserJSON is a user as the admin API shows it.
func (s *Server) adminUserJSON(u *store.User) map[string]any {
	return map[string]any{
		"name":          s.userID(u.Localpart),
		"displayname":   u.DisplayName,
		"avatar_url":    nilIfEmpty(u.AvatarURL),
		"admin":         u.Admin,
		"is_guest":      u.Guest,
		"deactivated":   u.Deactivated,
		"shadow_banned": false,
		"locked":        false,
		"user_type":     nil,
		"creation_ts":   u.CreatedTS,
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// adminListUsers: GET /_synapse/admin/v2/users
func (s *Server) adminListUsers(r *http.Request, _ *Session) (any, error) {
	from, limit, err := pageParams(r, 100)
	if err != nil {
		return nil, err
	}
	guests, err := boolParam(r, "guests", true)
	if err != nil {
		return nil, err
	}
	deactivated, err := boolParam(r, "deactivated", false)
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(r.URL.Query().Get("name"))
	var matched []map[string]any
	err = s.Store.View(func(tx *store.Tx) error {
		return tx.Users(func(u *store.User) bool {
			if (!guests && u.Guest) || (!deactivated && u.Deactivated) {
				return true
			}
			if name != "" && !strings.Contains(strings.ToLower(s.userID(u.Localpart)), name) &&
				!strings.Contains(strings.ToLower(u.DisplayName), name) {
				return true
			}
			matched = append(matched, s.adminUserJSON(u))
			return true
		})
	})
	if err != nil {
		return nil, err
	}
	page := []map[string]any{}
	if from < len(matched) {
		page = matched[from:min(len(matched), from+limit)]
	}
	resp := map[string]any{"users": page, "total": len(matched)}
	if from+len(page) < len(matched) {
		resp["next_token"] = strconv.Itoa(from + len(page))
	}
	return resp, nil
}

// localTarget checks a path's user ID names a user of this server.
func (s *Server) localTarget(r *http.Request) (string, error) {
	userID := r.PathValue("userId")
	if !validUserID(userID) {
		return "", errInvalidParam("Invalid user ID")
	}
	if !s.isLocalUser(userID) {
		return "", errInvalidParam("Can only manage local users")
	}
	return userID, nil
}

// adminGetUser: GET /_synapse/admin/v2/users/{userId}
func (s *Server) adminGetUser(r *http.Request, _ *Session) (any, error) {
	userID, err := s.localTarget(r)
	if err != nil {
		return nil, err
	}
	var resp map[string]any
	err = s.Store.View(func(tx *store.Tx) error {
		u, err := tx.User(localpart(userID))
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("User not found")
		} else if err != nil {
			return err
		}
		resp = s.adminUserJSON(u)
		resp["threepids"], resp["external_ids"] = []any{}, []any{}
		return nil
	})
	return resp, err
}

// adminPutUser: PUT /_synapse/admin/v2/users/{userId} creates the user
// (201) or changes the fields given (200).
func (s *Server) adminPutUser(w http.ResponseWriter, r *http.Request) {
	status, resp, err := s.adminPutUserResult(r)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, status, resp)
}

func (s *Server) adminPutUserResult(r *http.Request) (int, any, error) {
	sess, err := s.adminSession(r)
	if err != nil {
		return 0, nil, err
	}
	userID, err := s.localTarget(r)
	if err != nil {
		return 0, nil, err
	}
	var req struct {
		Password      *string `json:"password"`
		LogoutDevices *bool   `json:"logout_devices"`
		DisplayName   *string `json:"displayname"`
		AvatarURL     *string `json:"avatar_url"`
		Admin         *bool   `json:"admin"`
		Deactivated   *bool   `json:"deactivated"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	lp := localpart(userID)
	if err := s.validateLocalpart(lp); err != nil {
		return 0, nil, err
	}
	hash := ""
	if req.Password != nil {
		if *req.Password == "" || len(*req.Password) > 512 {
			return 0, nil, errInvalidParam("Invalid password")
		}
		if hash, err = HashPassword(*req.Password); err != nil {
			return 0, nil, err
		}
	}
	if req.Admin != nil && !*req.Admin && userID == sess.UserID {
		return 0, nil, errInvalidParam("You may not demote yourself")
	}
	if req.Deactivated != nil && *req.Deactivated && userID == sess.UserID {
		return 0, nil, errInvalidParam("You may not deactivate yourself")
	}
	status := http.StatusOK
	var resp map[string]any
	err = s.Store.Write(func(tx *store.Tx) error {
		status = http.StatusOK
		u, err := tx.User(lp)
		if errors.Is(err, store.ErrNotFound) {
			status = http.StatusCreated
			if err := CreateUser(tx, lp, "", false); err != nil {
				return err
			}
			u, err = tx.User(lp)
		}
		if err != nil {
			return err
		}
		if req.Password != nil {
			u.PasswordHash = hash
		}
		if req.DisplayName != nil {
			u.DisplayName = *req.DisplayName
		}
		if req.AvatarURL != nil {
			u.AvatarURL = *req.AvatarURL
		}
		if req.Admin != nil {
			u.Admin = *req.Admin
		}
		deactivate := req.Deactivated != nil && *req.Deactivated && !u.Deactivated
		if req.Deactivated != nil {
			u.Deactivated = *req.Deactivated
		}
		tx.PutUser(u)
		switch {
		case deactivate:
			if err := s.adminDeactivateTx(tx, userID); err != nil {
				return err
			}
			u.PasswordHash = ""
		case status == http.StatusOK && req.Password != nil && (req.LogoutDevices == nil || *req.LogoutDevices):
			// A reset password logs the user out everywhere, as Synapse does.
			if err := s.removeAllDevices(tx, userID); err != nil {
				return err
			}
		}
		resp = s.adminUserJSON(u)
		return nil
	})
	return status, resp, err
}

// removeAllDevices logs a user out of every device.
func (s *Server) removeAllDevices(tx *store.Tx, userID string) error {
	devices, err := tx.Devices(userID)
	if err != nil {
		return err
	}
	for _, d := range devices {
		if err := s.removeDevice(tx, userID, d.DeviceID); err != nil {
			return err
		}
	}
	return nil
}

// adminDeactivateTx deactivates a user: no password, no devices, no rooms.
func (s *Server) adminDeactivateTx(tx *store.Tx, userID string) error {
	u, err := tx.User(localpart(userID))
	if err != nil {
		return err
	}
	u.Deactivated, u.PasswordHash = true, ""
	tx.PutUser(u)
	if err := s.removeAllDevices(tx, userID); err != nil {
		return err
	}
	return s.leaveAllRooms(tx, userID)
}

// adminDeactivate: POST /_synapse/admin/v1/deactivate/{userId}
func (s *Server) adminDeactivate(r *http.Request, sess *Session) (any, error) {
	userID, err := s.localTarget(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		Erase bool `json:"erase"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	err = s.Store.Write(func(tx *store.Tx) error {
		if _, err := tx.User(localpart(userID)); errors.Is(err, store.ErrNotFound) {
			return errNotFound("User not found")
		}
		return s.adminDeactivateTx(tx, userID)
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"id_server_unbind_result": "success"}, nil
}

// adminResetPassword: POST /_synapse/admin/v1/reset_password/{userId}
func (s *Server) adminResetPassword(r *http.Request, sess *Session) (any, error) {
	userID, err := s.localTarget(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		NewPassword   string `json:"new_password"`
		LogoutDevices *bool  `json:"logout_devices"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.NewPassword == "" {
		return nil, errMissingParam("Missing new_password")
	}
	hash, err := HashPassword(req.NewPassword)
	if err != nil {
		return nil, err
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		u, err := tx.User(localpart(userID))
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("User not found")
		} else if err != nil {
			return err
		}
		if u.Deactivated {
			return errInvalidParam("User is deactivated")
		}
		u.PasswordHash = hash
		tx.PutUser(u)
		if req.LogoutDevices != nil && !*req.LogoutDevices {
			return nil
		}
		return s.removeAllDevices(tx, userID)
	})
}

// adminRoomJSON summarises a room from its current state.
func (s *Server) adminRoomJSON(tx *store.Tx, r *store.Room, st *room.State) map[string]any {
	joined := s.joinedUserIDs(tx, st)
	local := 0
	for _, u := range joined {
		if s.isLocalUser(u) {
			local++
		}
	}
	creator := ""
	if ev, err := s.Rooms.StateEvent(tx, st, "m.room.create", ""); err == nil && ev != nil {
		creator = ev.Sender
	}
	field := func(evType, name string) any { return nilIfEmpty(s.stateContentField(tx, st, evType, name)) }
	return map[string]any{
		"room_id":              r.RoomID,
		"name":                 field("m.room.name", "name"),
		"topic":                field("m.room.topic", "topic"),
		"avatar":               field("m.room.avatar", "url"),
		"canonical_alias":      field("m.room.canonical_alias", "alias"),
		"joined_members":       len(joined),
		"joined_local_members": local,
		"version":              r.Version,
		"creator":              creator,
		"encryption":           field("m.room.encryption", "algorithm"),
		"join_rules":           field("m.room.join_rules", "join_rule"),
		"guest_access":         field("m.room.guest_access", "guest_access"),
		"history_visibility":   field("m.room.history_visibility", "history_visibility"),
		"public":               tx.Published(r.RoomID),
		"state_events":         st.Len(),
	}
}

// adminListRooms: GET /_synapse/admin/v1/rooms
func (s *Server) adminListRooms(r *http.Request, _ *Session) (any, error) {
	from, limit, err := pageParams(r, 100)
	if err != nil {
		return nil, err
	}
	term := strings.ToLower(r.URL.Query().Get("search_term"))
	var all []map[string]any
	err = s.Store.View(func(tx *store.Tx) error {
		var rooms []*store.Room
		if err := tx.Rooms(func(rm *store.Room) bool { rooms = append(rooms, rm); return true }); err != nil {
			return err
		}
		for _, rm := range rooms {
			st, err := s.Rooms.State(tx, rm.State)
			if err != nil {
				return err
			}
			j := s.adminRoomJSON(tx, rm, st)
			if term != "" && !adminRoomMatches(j, term) {
				continue
			}
			all = append(all, j)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Synapse's default order: by name, unnamed rooms last, then by ID.
	slices.SortStableFunc(all, func(a, b map[string]any) int {
		an, _ := a["name"].(string)
		bn, _ := b["name"].(string)
		if (an == "") != (bn == "") {
			if an == "" {
				return 1
			}
			return -1
		}
		if c := strings.Compare(an, bn); c != 0 {
			return c
		}
		return strings.Compare(a["room_id"].(string), b["room_id"].(string))
	})
	page := []map[string]any{}
	if from < len(all) {
		page = all[from:min(len(all), from+limit)]
	}
	resp := map[string]any{"rooms": page, "offset": from, "total_rooms": len(all)}
	if from+len(page) < len(all) {
		resp["next_batch"] = from + len(page)
	}
	if from > 0 {
		resp["prev_batch"] = max(0, from-limit)
	}
	return resp, nil
}

// adminRoomMatches is search_term: a case-insensitive match on the name,
// the canonical alias or the room ID.
func adminRoomMatches(j map[string]any, term string) bool {
	for _, k := range []string{"name", "canonical_alias", "room_id"} {
		if v, _ := j[k].(string); strings.Contains(strings.ToLower(v), term) {
			return true
		}
	}
	return false
}

// adminGetRoom: GET /_synapse/admin/v1/rooms/{roomId}
func (s *Server) adminGetRoom(r *http.Request, _ *Session) (any, error) {
	var resp map[string]any
	err := s.Store.View(func(tx *store.Tx) error {
		rm, st, err := s.roomState(tx, r.PathValue("roomId"))
		if err != nil {
			return err
		}
		resp = s.adminRoomJSON(tx, rm, st)
		return nil
	})
	return resp, err
}

// adminRoomMembers: GET /_synapse/admin/v1/rooms/{roomId}/members
func (s *Server) adminRoomMembers(r *http.Request, _ *Session) (any, error) {
	var members []string
	err := s.Store.View(func(tx *store.Tx) error {
		_, st, err := s.roomState(tx, r.PathValue("roomId"))
		if err != nil {
			return err
		}
		members = s.joinedUserIDs(tx, st)
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(members)
	if members == nil {
		members = []string{}
	}
	return map[string]any{"members": members, "total": len(members)}, nil
}

// adminServerVersion: GET /_synapse/admin/v1/server_version
func (s *Server) adminServerVersion(r *http.Request, _ *Session) (any, error) {
	return map[string]string{"server_version": ServerVersion}, nil
}

// blockedRoomNamespace marks rooms an admin has blocked: local users may
// not join them (rooms.go join checks roomBlocked).
const blockedRoomNamespace = "room_blocked"

// roomBlocked tells whether an admin has blocked roomID.
func roomBlocked(tx *store.Tx, roomID string) bool {
	_, err := tx.GetKV(blockedRoomNamespace, roomID)
	return err == nil
}

// errRoomBlocked is what a join of a blocked room answers, as Synapse does.
func errRoomBlocked() *Error { return errForbidden("This room has been blocked on this server") }

// Synapse's defaults for the replacement room of a deleted room.
const (
	defaultShutdownRoomName = "Content Violation Notification"
	defaultShutdownMessage  = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked."
)

// adminDeleteRoom: DELETE /_synapse/admin/v1/rooms/{roomId}
// Makes every local member leave (by their own leave event, which the auth
// rules always allow), unpublishes the room, deletes its local aliases (or
// moves them to the replacement room when new_room_user_id is given), and
// with block=true keeps local users from joining again. purge (the
// default, as in Synapse) cannot erase events that other servers hold:
// here it marks the room forgotten for every local user, so it drops out
// of their /sync and archives; the events stay in the store.
func (s *Server) adminDeleteRoom(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	if !validRoomID(roomID) {
		return nil, errInvalidParam("%s is not a legal room ID", roomID)
	}
	var req struct {
		Block         bool    `json:"block"`
		Purge         *bool   `json:"purge"`
		ForcePurge    bool    `json:"force_purge"`
		Message       *string `json:"message"`
		RoomName      *string `json:"room_name"`
		NewRoomUserID string  `json:"new_room_user_id"`
	}
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return nil, err
		}
	}
	purge := req.Purge == nil || *req.Purge
	if !purge && req.ForcePurge {
		return nil, errInvalidParam("force_purge needs purge")
	}
	if req.NewRoomUserID != "" && (!validUserID(req.NewRoomUserID) || !s.isLocalUser(req.NewRoomUserID)) {
		return nil, errInvalidParam("User must be local to create a new room")
	}
	message, name := defaultShutdownMessage, defaultShutdownRoomName
	if req.Message != nil {
		message = *req.Message
	}
	if req.RoomName != nil {
		name = *req.RoomName
	}
	type result struct {
		Kicked       []string `json:"kicked_users"`
		FailedToKick []string `json:"failed_to_kick_users"`
		LocalAliases []string `json:"local_aliases"`
		NewRoomID    *string  `json:"new_room_id"`
	}
	var res result
	var touched []string
	err := s.Store.Write(func(tx *store.Tx) error {
		res, touched = result{Kicked: []string{}, FailedToKick: []string{}, LocalAliases: []string{}}, nil
		_, st, err := s.roomState(tx, roomID)
		if errors.Is(err, room.ErrRoomNotFound) {
			return errNotFound("Unknown room %s", roomID)
		} else if err != nil {
			return err
		}
		if req.NewRoomUserID != "" {
			if _, err := tx.User(localpart(req.NewRoomUserID)); err != nil {
				return errInvalidParam("User %s does not exist", req.NewRoomUserID)
			}
			newID, err := s.shutdownRoom(tx, req.NewRoomUserID, name, message)
			if err != nil {
				return err
			}
			res.NewRoomID = &newID
		}
		if req.Block {
			tx.PutKV(blockedRoomNamespace, roomID, []byte(sess.UserID))
		}
		tx.SetPublished(roomID, false)
		for _, u := range s.localMembers(tx, st) {
			touched = append(touched, u)
			if !s.evictLocalUser(tx, roomID, u, sess.UserID) {
				res.FailedToKick = append(res.FailedToKick, u)
				continue
			}
			res.Kicked = append(res.Kicked, u)
			if res.NewRoomID != nil {
				// The replacement room is public, so each user may join it.
				if _, err := s.sendMember(tx, *res.NewRoomID, u, u, s.memberContent(tx, u, "join", "")); err != nil {
					s.Log.Warn("delete room: join of replacement room failed", "user_id", u, "err", err)
				}
			}
		}
		for _, a := range tx.RoomAliases(roomID) {
			res.LocalAliases = append(res.LocalAliases, a)
			if err := tx.DeleteAlias(a); err != nil {
				return err
			}
			if res.NewRoomID != nil {
				if err := tx.PutAlias(a, *res.NewRoomID); err != nil {
					return err
				}
			} else {
				tx.DeleteKV(aliasCreatorNamespace, a)
			}
		}
		if purge {
			for _, u := range touched {
				if m, err := tx.Membership(u, roomID); err == nil && m.Membership != "join" && m.Membership != "invite" && m.Membership != "knock" {
					m.Forgotten = true
					tx.SetMembership(u, m)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(res.Kicked)
	slices.Sort(res.FailedToKick)
	return res, nil
}

// localMembers lists the local users joined, invited or knocking in st.
func (s *Server) localMembers(tx *store.Tx, st *room.State) []string {
	var out []string
	st.Each(func(k, nid uint64) bool {
		evType, sk, err := tx.StateKey(k)
		if err != nil || evType != "m.room.member" || !s.isLocalUser(sk) {
			return true
		}
		if ev, err := s.Rooms.Event(tx, nid); err == nil {
			switch ev.Membership() {
			case "join", "invite", "knock":
				out = append(out, sk)
			}
		}
		return true
	})
	return out
}

// evictLocalUser makes userID leave: by their own leave event, which the
// auth rules allow any member, else by a kick from the admin if the admin
// is in the room with the power to kick.
func (s *Server) evictLocalUser(tx *store.Tx, roomID, userID, adminID string) bool {
	_, err := s.sendMember(tx, roomID, userID, userID, map[string]any{"membership": "leave"})
	if err == nil {
		return true
	}
	s.Log.Warn("delete room: leave failed", "room_id", roomID, "user_id", userID, "err", err)
	_, err = s.sendMember(tx, roomID, adminID, userID, map[string]any{"membership": "leave", "reason": "Room deleted by a server admin"})
	return err == nil
}

// shutdownRoom creates the room that users of a deleted room are moved to:
// public so they may join, users_default -10 so they cannot talk, with the
// admin's message as its first message.
func (s *Server) shutdownRoom(tx *store.Tx, creator, name, message string) (string, error) {
	newID, err := s.Rooms.CreateRoom(tx, room.CreateOptions{
		Creator: creator, Version: s.Config.Rooms.DefaultVersion, Preset: "public_chat", Name: name,
		PowerLevelsOverride: json.RawMessage(`{"users_default":-10}`),
	})
	if err != nil {
		return "", err
	}
	content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": message})
	if _, err := s.Rooms.Send(tx, newID, room.Proto{Type: "m.room.message", Sender: creator, Content: content}); err != nil {
		return "", err
	}
	return newID, nil
}

// adminGetBlock: GET /_synapse/admin/v1/rooms/{roomId}/block
func (s *Server) adminGetBlock(r *http.Request, _ *Session) (any, error) {
	roomID := r.PathValue("roomId")
	if !validRoomID(roomID) {
		return nil, errInvalidParam("%s is not a legal room ID", roomID)
	}
	resp := map[string]any{"block": false}
	err := s.Store.View(func(tx *store.Tx) error {
		if by, err := tx.GetKV(blockedRoomNamespace, roomID); err == nil {
			resp["block"], resp["user_id"] = true, string(by)
		}
		return nil
	})
	return resp, err
}

// adminPutBlock: PUT /_synapse/admin/v1/rooms/{roomId}/block
// Blocks or unblocks a room, known here or not.
func (s *Server) adminPutBlock(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	if !validRoomID(roomID) {
		return nil, errInvalidParam("%s is not a legal room ID", roomID)
	}
	var req struct {
		Block *bool `json:"block"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Block == nil {
		return nil, errMissingParam("Missing block")
	}
	return map[string]bool{"block": *req.Block}, s.Store.Write(func(tx *store.Tx) error {
		if *req.Block {
			tx.PutKV(blockedRoomNamespace, roomID, []byte(sess.UserID))
		} else {
			tx.DeleteKV(blockedRoomNamespace, roomID)
		}
		return nil
	})
}
