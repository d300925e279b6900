package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	"edge/edge/config"
	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

func (s *Server) routesRooms() {
	s.authed("POST /createRoom", s.createRoom)
	s.authed("POST /join/{roomIdOrAlias}", s.joinByIDOrAlias)
	s.authed("POST /rooms/{roomId}/join", s.joinRoom)
	s.authed("POST /rooms/{roomId}/invite", s.membershipAction("invite", "invite"))
	s.authed("POST /rooms/{roomId}/leave", s.leave)
	s.authed("POST /rooms/{roomId}/forget", s.forget)
	s.authed("POST /rooms/{roomId}/kick", s.membershipAction("leave", "kick"))
	s.authed("POST /rooms/{roomId}/ban", s.membershipAction("ban", "ban"))
	s.authed("POST /rooms/{roomId}/unban", s.membershipAction("leave", "unban"))
	s.authed("GET /joined_rooms", s.joinedRooms)
	s.authed("POST /rooms/{roomId}/upgrade", s.upgradeRoom)
}

type createRoomRequest struct {
	Visibility                string            `json:"visibility"`
	RoomAliasName             string            `json:"room_alias_name"`
	Name                      string            `json:"name"`
	Topic                     string            `json:"topic"`
	Invite                    []string          `json:"invite"`
	RoomVersion               string            `json:"room_version"`
	CreationContent           json.RawMessage   `json:"creation_content"`
	InitialState              []room.StateEvent `json:"initial_state"`
	Preset                    string            `json:"preset"`
	IsDirect                  bool              `json:"is_direct"`
	PowerLevelContentOverride json.RawMessage   `json:"power_level_content_override"`
}

// createRoom: POST /createRoom
func (s *Server) createRoom(r *http.Request, sess *Session) (any, error) {
	var req createRoomRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Preset == "" {
		req.Preset = "private_chat"
		if req.Visibility == "public" {
			req.Preset = "public_chat"
		}
	}
	switch req.Preset {
	case "private_chat", "trusted_private_chat", "public_chat":
	default:
		return nil, errInvalidParam("Unknown preset %q", req.Preset)
	}
	if req.Visibility != "" && req.Visibility != "public" && req.Visibility != "private" {
		return nil, errInvalidParam("Unknown visibility %q", req.Visibility)
	}
	if req.RoomVersion == "" {
		req.RoomVersion = s.Config.Rooms.DefaultVersion
	}
	for _, u := range req.Invite {
		if !validUserID(u) {
			return nil, errInvalidParam("Invalid user ID %q", u)
		}
	}
	for _, raw := range []json.RawMessage{req.CreationContent, req.PowerLevelContentOverride} {
		if len(raw) > 0 && string(raw) != "null" && raw[0] != '{' {
			return nil, errBadJSON("creation_content and power_level_content_override must be objects")
		}
	}
	if err := checkCreators(&req, sess.UserID); err != nil {
		return nil, err
	}
	alias := ""
	if req.RoomAliasName != "" {
		if strings.ContainsAny(req.RoomAliasName, ":# ") {
			return nil, errInvalidParam("room_alias_name must be a localpart")
		}
		alias = "#" + req.RoomAliasName + ":" + s.Config.ServerName
		if err := s.checkExclusiveAlias(alias, sess.AppService); err != nil {
			return nil, err
		}
	}
	if err := s.checkSend(sess); err != nil {
		return nil, err
	}
	// Users of other servers are invited through theirs (federation
	// /invite) once the room exists; an event alone would not reach them.
	var localInvites, remoteInvites []string
	for _, u := range req.Invite {
		if strings.HasSuffix(u, ":"+s.Config.ServerName) {
			localInvites = append(localInvites, u)
		} else {
			remoteInvites = append(remoteInvites, u)
		}
	}
	var roomID string
	err := s.Store.Write(func(tx *store.Tx) error {
		if alias != "" {
			if _, err := tx.Alias(alias); err == nil {
				return newErr(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias already taken")
			}
		}
		var err error
		roomID, err = s.Rooms.CreateRoom(tx, room.CreateOptions{
			Creator: sess.UserID, Version: req.RoomVersion, Preset: req.Preset,
			CreationContent: req.CreationContent, PowerLevelsOverride: req.PowerLevelContentOverride,
			Alias: alias, Name: req.Name, Topic: req.Topic, Invite: localInvites, RemoteInvite: remoteInvites, IsDirect: req.IsDirect,
			InitialState: req.InitialState,
		})
		if err != nil {
			return err
		}
		if alias != "" {
			if err := tx.PutAlias(alias, roomID); err != nil {
				return err
			}
			s.recordAliasCreator(tx, alias, sess.UserID)
		}
		if req.Visibility == "public" {
			tx.SetPublished(roomID, true)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, u := range remoteInvites {
		content := map[string]any{"membership": "invite"}
		if req.IsDirect {
			content["is_direct"] = true
		}
		// The room stands without them, as in Synapse's createRoom.
		if err := s.sendRemoteInvite(r.Context(), roomID, sess.UserID, u, content); err != nil {
			s.Log.Info("createRoom: remote invite failed", "room_id", roomID, "invitee", u, "err", err)
		}
	}
	return map[string]string{"room_id": roomID}, nil
}

// checkCreators rejects, as a bad request rather than a refused event,
// what the auth rules of versions with privileged creators (MSC4289, v12)
// would refuse: additional_creators that are not user IDs, and creators
// listed in the power levels' users.
func checkCreators(req *createRoomRequest, creator string) error {
	if !room.Features(req.RoomVersion).PrivilegedRoomCreators() {
		return nil
	}
	creators := []string{creator}
	if len(req.CreationContent) > 0 && string(req.CreationContent) != "null" {
		var cc map[string]json.RawMessage
		if err := json.Unmarshal(req.CreationContent, &cc); err != nil {
			return errBadJSON("creation_content must be an object")
		}
		if raw, ok := cc["additional_creators"]; ok {
			var extra []string
			if err := json.Unmarshal(raw, &extra); err != nil {
				return errBadJSON("additional_creators must be an array of user IDs")
			}
			for _, u := range extra {
				srv, ok := userServer(u)
				if !ok || !validUserID(u) || config.ValidateServerName(srv) != nil {
					return errBadJSON("additional_creators: %q is not a user ID", u)
				}
			}
			creators = append(creators, extra...)
		}
	}
	if req.Preset == "trusted_private_chat" {
		creators = append(creators, req.Invite...)
	}
	if len(req.PowerLevelContentOverride) > 0 && string(req.PowerLevelContentOverride) != "null" {
		var pl struct {
			Users map[string]json.RawMessage `json:"users"`
		}
		if err := json.Unmarshal(req.PowerLevelContentOverride, &pl); err != nil {
			return errBadJSON("power_level_content_override: %s", jsonMessage(err))
		}
		for _, c := range creators {
			if _, ok := pl.Users[c]; ok {
				return errBadJSON("power_level_content_override: room creators (%s) cannot be given a power level in room version %s", c, req.RoomVersion)
			}
		}
	}
	return nil
}

func validUserID(u string) bool {
	return strings.HasPrefix(u, "@") && strings.Contains(u, ":") && len(u) <= 255
}

// joinByIDOrAlias: POST /join/{roomIdOrAlias}
func (s *Server) joinByIDOrAlias(r *http.Request, sess *Session) (any, error) {
	target := r.PathValue("roomIdOrAlias")
	if strings.HasPrefix(target, "#") {
		var roomID string
		err := s.Store.View(func(tx *store.Tx) error {
			var err error
			roomID, err = tx.Alias(target)
			return err
		})
		if errors.Is(err, store.ErrNotFound) && s.isRemoteAlias(target) {
			return s.joinRemoteAlias(r, sess, target)
		} else if errors.Is(err, store.ErrNotFound) {
			return nil, errNotFound("Room alias %s not found", target)
		} else if err != nil {
			return nil, err
		}
		return s.join(r, sess, roomID)
	}
	if !strings.HasPrefix(target, "!") {
		return nil, errInvalidParam("%q is not a room ID or alias", target)
	}
	return s.join(r, sess, target)
}

// joinRoom: POST /rooms/{roomId}/join
func (s *Server) joinRoom(r *http.Request, sess *Session) (any, error) {
	return s.join(r, sess, r.PathValue("roomId"))
}

func (s *Server) join(r *http.Request, sess *Session, roomID string) (any, error) {
	// Other keys of the body go into the member event's content, as in
	// Synapse: a per-room displayname, or custom keys.
	var body map[string]json.RawMessage
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	var reason string
	if raw, ok := body["reason"]; ok {
		if err := json.Unmarshal(raw, &reason); err != nil {
			return nil, errBadJSON("reason must be a string")
		}
	}
	// The authorising user of a restricted join is the server's choice.
	delete(body, room.JoinAuthorisedVia)
	// A room this server has left (its last member left, was kicked or
	// banned) has stale state here: the join is a remote one, through the
	// servers the client named, the inviter's, or the room ID's.
	inviteServers := s.remoteInviteServers(sess.UserID, roomID)
	var candidates []string
	q := r.URL.Query()
	for _, srv := range slices.Concat(q["server_name"], q["via"], inviteServers) {
		if srv != s.Config.ServerName {
			candidates = append(candidates, srv)
		}
	}
	if _, domain, ok := strings.Cut(roomID, ":"); ok && domain != s.Config.ServerName {
		candidates = append(candidates, domain)
	}
	// An invite this server was sent may still be on its way as an event.
	s.awaitInviteEvent(r.Context(), sess.UserID, roomID)
	var elsewhere []string // servers that may authorise a restricted join we cannot
	var notIn bool         // a room this server has left: join as a stranger
	local := func(tx *store.Tx) error {
		elsewhere, notIn = nil, false
		if roomBlocked(tx, roomID) {
			return errRoomBlocked()
		}
		content := s.memberContent(tx, sess.UserID, "join", reason)
		for k, v := range body {
			if _, set := content[k]; !set || k == "displayname" || k == "avatar_url" {
				if k != "third_party_signed" && k != "membership" && k != "reason" {
					content[k] = v
				}
			}
		}
		if s.sameMember(tx, roomID, sess.UserID, content) {
			return nil // joining twice is idempotent: no second event
		}
		if len(candidates) > 0 {
			if in, err := s.serverInRoom(tx, roomID); err != nil {
				return err
			} else if !in {
				notIn = true
				return nil
			}
		}
		via, err := s.Rooms.RestrictedJoinVia(tx, roomID, sess.UserID, s.Config.ServerName)
		switch {
		case errors.Is(err, room.ErrCannotAuthoriseJoin), errors.Is(err, room.ErrCannotGrantJoin):
			// A server in the room with a member able to invite may
			// authorise it: join through those (Synapse). A room this
			// server has left is joined through the servers the client
			// named, as an unknown room is.
			in, inviters, err := s.inviterServers(tx, roomID)
			if err != nil {
				return err
			}
			if !in {
				notIn = true
				return nil
			}
			if len(inviters) == 0 {
				return errForbidden("No member of the room can authorise this join")
			}
			elsewhere = inviters
			return nil
		case errors.Is(err, room.ErrJoinNotAllowed):
			return errForbidden("You are in none of the rooms the join rules allow")
		case err != nil && !errors.Is(err, room.ErrRoomNotFound):
			return err
		case via != "":
			content[room.JoinAuthorisedVia] = via
		}
		_, err = s.sendMember(tx, roomID, sess.UserID, sess.UserID, content)
		return err
	}
	err := s.Store.Write(local)
	if errors.Is(err, room.ErrRoomNotFound) {
		return s.remoteJoin(r, sess, roomID, inviteServers...)
	}
	if err == nil && notIn {
		// Through the servers the client named; when it named none, the
		// servers still in the room, as our stale copy has them.
		if q := r.URL.Query(); len(q["server_name"]) == 0 && len(q["via"]) == 0 {
			inviteServers = append(inviteServers, s.awayServers(roomID)...)
		}
		return s.remoteJoin(r, sess, roomID, inviteServers...)
	}
	// A restricted join refused everywhere may only be early: the event
	// giving a local member the power to invite, or the user's join of
	// the allowed room, can still be on its way between the servers. Ask
	// again a few times within a second before refusing.
	for wait := 200 * time.Millisecond; err == nil && len(elsewhere) > 0; wait *= 2 {
		var resp any
		resp, err = s.remoteJoinVia(r, sess, roomID, elsewhere)
		if err == nil {
			return resp, nil
		}
		if wait > 800*time.Millisecond || !errors.Is(err, room.ErrForbidden) {
			// No server in the room took the join: it stays unauthorised.
			s.Log.Info("restricted join through other servers failed", "room_id", roomID, "user_id", sess.UserID, "err", err)
			return nil, errForbidden("No server in the room could authorise this join")
		}
		select {
		case <-r.Context().Done():
			return nil, r.Context().Err()
		case <-time.After(wait):
		}
		if err = s.Store.Write(local); err == nil && notIn {
			return s.remoteJoin(r, sess, roomID, inviteServers...)
		}
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

// serverInRoom tells whether this server has a joined member in roomID; a
// room it does not know counts as in (the caller's send reports it).
func (s *Server) serverInRoom(tx *store.Tx, roomID string) (bool, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return true, nil
	} else if err != nil {
		return false, err
	}
	counts, err := s.Rooms.JoinedServers(tx, r.State)
	if err != nil {
		return false, err
	}
	return counts[s.Config.ServerName] > 0, nil
}

// inviterServers tells whether this server has a joined member in roomID,
// and lists the other servers with a joined member able to invite, in a
// stable order: those that can authorise a restricted join.
func (s *Server) inviterServers(tx *store.Tx, roomID string) (in bool, servers []string, err error) {
	_, st, err := s.roomState(tx, roomID)
	if err != nil {
		return false, nil, err
	}
	pl, err := s.Rooms.PowerLevels(tx, st)
	if err != nil {
		return false, nil, err
	}
	seen := map[string]bool{}
	st.Each(func(k, nid uint64) bool {
		evType, sk, err := tx.StateKey(k)
		if err != nil || evType != "m.room.member" {
			return true
		}
		_, srv, _ := strings.Cut(sk, ":")
		local := srv == s.Config.ServerName
		if (local && in) || (!local && (seen[srv] || pl.UserLevel(sk) < pl.Invite())) {
			return true
		}
		if ev, err := s.Rooms.Event(tx, nid); err == nil && ev.Membership() == "join" {
			if local {
				in = true
			} else {
				seen[srv] = true
				servers = append(servers, srv)
			}
		}
		return true
	})
	slices.Sort(servers)
	return in, servers, nil
}

// sameMember reports whether userID's current member event in roomID
// already has exactly content.
func (s *Server) sameMember(tx *store.Tx, roomID, userID string, content map[string]any) bool {
	_, st, err := s.roomState(tx, roomID)
	if err != nil {
		return false
	}
	ev, err := s.Rooms.StateEvent(tx, st, "m.room.member", userID)
	if err != nil || ev == nil {
		return false
	}
	var have, want any
	raw, _ := json.Marshal(content)
	if json.Unmarshal(ev.Content, &have) != nil || json.Unmarshal(raw, &want) != nil {
		return false
	}
	return reflect.DeepEqual(have, want)
}

// memberContent is a member event's content carrying the user's profile.
func (s *Server) memberContent(tx *store.Tx, userID, membership, reason string) map[string]any {
	c := map[string]any{"membership": membership}
	if membership == "join" {
		if u, err := tx.User(localpart(userID)); err == nil {
			if u.DisplayName != "" {
				c["displayname"] = u.DisplayName
			}
			if u.AvatarURL != "" {
				c["avatar_url"] = u.AvatarURL
			}
		}
	}
	if reason != "" {
		c["reason"] = reason
	}
	return c
}

func (s *Server) sendMember(tx *store.Tx, roomID, sender, target string, content map[string]any) (*room.Event, error) {
	raw, _ := json.Marshal(content)
	sk := target
	return s.Rooms.Send(tx, roomID, room.Proto{Type: "m.room.member", StateKey: &sk, Sender: sender, Content: raw})
}

// leave: POST /rooms/{roomId}/leave
func (s *Server) leave(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Reason string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	roomID := r.PathValue("roomId")
	remote := false
	var knock *remoteKnock
	err := s.Store.Write(func(tx *store.Tx) error {
		remote, knock = false, nil
		_, st, err := s.roomState(tx, roomID)
		if errors.Is(err, room.ErrRoomNotFound) {
			if s.pendingRemoteInvite(tx, sess.UserID, roomID) != nil {
				remote = true // rejecting an invite from another server
				return nil
			}
			if knock = s.pendingRemoteKnock(tx, sess.UserID, roomID); knock != nil {
				return nil // retracting a knock on another server's room
			}
			return errNotFound("Unknown room %s", roomID)
		} else if err != nil {
			return err
		}
		switch s.membershipIn(tx, st, sess.UserID) {
		case "invite":
			// Server notices may not be refused, only left once read (Synapse).
			if isNoticeRoom(tx, sess.UserID, roomID) {
				return newErr(http.StatusForbidden, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM", "You cannot reject this invite")
			}
		case "join", "knock":
		case "leave", "ban":
			return nil // already out: leaving again is a no-op, as Synapse does
		default:
			// An invite that came through /invite before its event reached
			// our copy of the room is rejected through the inviter's server.
			if s.pendingRemoteInvite(tx, sess.UserID, roomID) != nil {
				remote = true
				return nil
			}
			return errForbidden("You are not in room %s", roomID)
		}
		_, err = s.sendMember(tx, roomID, sess.UserID, sess.UserID, s.memberContent(tx, sess.UserID, "leave", req.Reason))
		return err
	})
	if err == nil && remote {
		err = s.rejectRemoteInvite(r.Context(), sess.UserID, roomID, req.Reason)
	}
	if err == nil && knock != nil {
		err = s.retractRemoteKnock(r.Context(), sess.UserID, roomID, knock, req.Reason)
	}
	return empty{}, err
}

// leaveAllRooms makes a deactivated user leave every room.
func (s *Server) leaveAllRooms(tx *store.Tx, userID string) error {
	ms, err := tx.Memberships(userID)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Membership == "join" || m.Membership == "invite" || m.Membership == "knock" {
			if _, err := s.sendMember(tx, m.RoomID, userID, userID, map[string]any{"membership": "leave"}); err != nil {
				s.Log.Warn("leave on deactivation failed", "room_id", m.RoomID, "err", err)
			}
		}
	}
	return nil
}

// forget: POST /rooms/{roomId}/forget
func (s *Server) forget(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		m, err := tx.Membership(sess.UserID, roomID)
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("You have no membership in %s", roomID)
		} else if err != nil {
			return err
		}
		if m.Membership == "join" || m.Membership == "invite" || m.Membership == "knock" {
			return newErr(http.StatusBadRequest, "M_UNKNOWN", "You must leave the room before forgetting it")
		}
		m.Forgotten = true
		tx.SetMembership(sess.UserID, m)
		return nil
	})
}

// awaitInviteEvent: when userID holds an invite to roomID countersigned
// through /invite but our copy of the room (we take part in it) has not
// received the invite event yet, which travels in the inviter's next
// transaction, a join waits a little for it: built before, it would be
// refused by our copy's auth rules. A copy none of our users is joined to
// never receives it, so then there is no wait.
func (s *Server) awaitInviteEvent(ctx context.Context, userID, roomID string) {
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for {
		w := s.Notifier.Listen(notify.RoomKey(roomID), notify.UserKey(userID))
		waiting := false
		_ = s.Store.View(func(tx *store.Tx) error {
			if s.pendingRemoteInvite(tx, userID, roomID) == nil {
				return nil
			}
			rm, st, err := s.roomState(tx, roomID)
			if err != nil {
				return nil
			}
			// A copy no user of ours is joined to receives no events: the
			// join goes through another server, which has the invite.
			if servers, err := s.Rooms.JoinedServers(tx, rm.State); err != nil || servers[s.Config.ServerName] == 0 {
				return nil
			}
			waiting = s.membershipIn(tx, st, userID) != "invite"
			return nil
		})
		if !waiting {
			w.Close()
			return
		}
		select {
		case <-w.C:
			w.Close()
		case <-deadline.C:
			w.Close()
			return
		case <-ctx.Done():
			w.Close()
			return
		}
	}
}

// awayServers: when this server knows roomID but none of its users is
// joined, and it can join remotely, the servers joined to the room as our
// copy last saw it, by number of members; else nil.
func (s *Server) awayServers(roomID string) []string {
	if s.RemoteJoin == nil {
		return nil
	}
	var out []string
	_ = s.Store.View(func(tx *store.Tx) error {
		rm, err := tx.Room(roomID)
		if err != nil {
			return nil
		}
		joined, err := s.Rooms.JoinedServers(tx, rm.State)
		if err != nil || joined[s.Config.ServerName] > 0 {
			return nil
		}
		for srv := range joined {
			out = append(out, srv)
		}
		slices.SortFunc(out, func(a, b string) int { return cmp.Or(joined[b]-joined[a], strings.Compare(a, b)) })
		return nil
	})
	return out
}

// membershipAction serves invite, kick, ban and unban:
// POST /rooms/{roomId}/{invite,kick,ban,unban}
func (s *Server) membershipAction(membership, action string) authedFunc {
	return func(r *http.Request, sess *Session) (any, error) {
		var req struct {
			UserID string `json:"user_id"`
			Reason string `json:"reason"`
		}
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if !validUserID(req.UserID) {
			return nil, errInvalidParam("Invalid user_id")
		}
		roomID := r.PathValue("roomId")
		content := map[string]any{"membership": membership}
		if req.Reason != "" {
			content["reason"] = req.Reason
		}
		// The invitee's server must sign an invite of its user first.
		remote := action == "invite" && !s.isLocalUser(req.UserID) && s.remoteMembership().Invite != nil
		err := s.Store.Write(func(tx *store.Tx) error {
			_, st, err := s.requireJoined(tx, roomID, sess.UserID)
			if err != nil {
				return err
			}
			cur := s.membershipIn(tx, st, req.UserID)
			switch action {
			case "invite":
				switch cur {
				case "join":
					return errForbidden("%s is already in the room", req.UserID)
				case "ban":
					return errForbidden("%s is banned from the room", req.UserID)
				}
			case "kick":
				if cur != "join" && cur != "invite" && cur != "knock" {
					return errForbidden("%s is not in the room", req.UserID)
				}
			case "unban":
				if cur != "ban" {
					return errForbidden("%s is not banned", req.UserID)
				}
			}
			if action == "invite" && !remote && s.isLocalUser(req.UserID) {
				switch s.inviteRuleFor(tx, req.UserID, sess.UserID) {
				case inviteBlock:
					return errForbidden("%s does not accept invites from you", req.UserID)
				case inviteIgnore:
					return nil // MSC4155: dropped without telling the inviter
				}
			}
			if remote {
				return nil
			}
			_, err = s.sendMember(tx, roomID, sess.UserID, req.UserID, content)
			return err
		})
		if err == nil && remote {
			err = s.sendRemoteInvite(r.Context(), roomID, sess.UserID, req.UserID, content)
		}
		return empty{}, err
	}
}

// joinedRooms: GET /joined_rooms
func (s *Server) joinedRooms(r *http.Request, sess *Session) (any, error) {
	rooms := []string{}
	err := s.Store.View(func(tx *store.Tx) error {
		ms, err := tx.Memberships(sess.UserID)
		for _, m := range ms {
			if m.Membership == "join" {
				rooms = append(rooms, m.RoomID)
			}
		}
		return err
	})
	return map[string]any{"joined_rooms": rooms}, err
}

// upgradeRoom: POST /rooms/{roomId}/upgrade
func (s *Server) upgradeRoom(r *http.Request, sess *Session) (any, error) {
	var req struct {
		NewVersion         string   `json:"new_version"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.NewVersion == "" {
		return nil, errMissingParam("Missing new_version")
	}
	oldID := r.PathValue("roomId")
	var newID string
	err := s.Store.Write(func(tx *store.Tx) error {
		var err error
		newID, err = s.Rooms.Upgrade(tx, oldID, sess.UserID, req.NewVersion, req.AdditionalCreators)
		if err != nil {
			return err
		}
		// Move local aliases and the directory listing to the new room.
		for _, a := range tx.RoomAliases(oldID) {
			_ = tx.DeleteAlias(a)
			_ = tx.PutAlias(a, newID)
		}
		if tx.Published(oldID) {
			tx.SetPublished(oldID, false)
			tx.SetPublished(newID, true)
		}
		s.moveCanonicalAlias(tx, oldID, newID, sess.UserID)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"replacement_room": newID}, nil
}

// moveCanonicalAlias carries the old room's canonical alias over to its
// replacement and clears it in the old room, as Synapse does, so clients
// following the alias land in the new room. Best effort: the upgrade
// stands even if the sender lacks the power for either event.
func (s *Server) moveCanonicalAlias(tx *store.Tx, oldID, newID, sender string) {
	_, st, err := s.roomState(tx, oldID)
	if err != nil {
		return
	}
	ev, err := s.Rooms.StateEvent(tx, st, "m.room.canonical_alias", "")
	if err != nil || ev == nil || string(ev.Content) == "{}" {
		return
	}
	sk := ""
	if _, err := s.Rooms.Send(tx, newID, room.Proto{Type: "m.room.canonical_alias", StateKey: &sk, Sender: sender, Content: ev.Content}); err != nil {
		s.Log.Warn("upgrade: canonical alias not copied", "room_id", newID, "err", err)
	}
	if _, err := s.Rooms.Send(tx, oldID, room.Proto{Type: "m.room.canonical_alias", StateKey: &sk, Sender: sender, Content: json.RawMessage(`{}`)}); err != nil {
		s.Log.Warn("upgrade: canonical alias not cleared", "room_id", oldID, "err", err)
	}
}
