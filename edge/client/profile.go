package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"edge/edge/room"
	"edge/edge/store"
)

// routesProfile registers the profile API
// (https://spec.matrix.org/v1.16/client-server-api/#profiles): displayname
// and avatar_url, which also live in the user's member events, plus m.tz
// and custom fields.
func (s *Server) routesProfile() {
	s.handle("GET /profile/{userId}", s.getProfile)
	s.handle("GET /profile/{userId}/{keyName}", s.getProfileField)
	s.authed("PUT /profile/{userId}/{keyName}", s.putProfileField)
	s.authed("DELETE /profile/{userId}/{keyName}", s.deleteProfileField)
}

const (
	profileFieldNamespace = "profile_field" // KV: userID NUL key → raw JSON value
	maxDisplayNameChars   = 256             // Synapse's MAX_DISPLAYNAME_LEN
	maxAvatarURLBytes     = 1000            // Synapse's MAX_AVATAR_URL_LEN
	maxProfileKeyBytes    = 255
	maxProfileBytes       = 64 * 1024 // "the total profile MUST be under 64 KiB"
)

// profileKeyRE is the spec's keyName pattern.
var profileKeyRE = regexp.MustCompile(`^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$`)

// mediaIDRE is the content repository's media ID grammar.
var mediaIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func checkProfileKey(key string) error {
	if len(key) > maxProfileKeyBytes {
		return newErr(http.StatusBadRequest, "M_KEY_TOO_LARGE", "Profile key longer than %d bytes", maxProfileKeyBytes)
	}
	if !profileKeyRE.MatchString(key) {
		return errInvalidParam("Invalid profile key %q", key)
	}
	return nil
}

// profileKVKey keys a custom field; NUL cannot occur in a user ID, so one
// user's scan prefix never matches another's.
func profileKVKey(userID, key string) string { return userID + "\x00" + key }

// localProfileUser resolves the path's user to a local account: 400 for a
// malformed ID, 404 for an unknown user.
func (s *Server) localProfileUser(tx *store.Tx, userID string) (*store.User, error) {
	if !validUserID(userID) {
		return nil, errInvalidParam("Invalid user ID %q", userID)
	}
	if !s.isLocalUser(userID) {
		// Remote profiles are read with remoteProfile (getProfile and
		// getProfileField); they cannot be written here.
		return nil, errNotFound("Profile not found")
	}
	u, err := tx.User(localpart(userID))
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNotFound("Profile not found")
	}
	return u, err
}

// profileOf is a local user's whole profile: displayname and avatar_url when
// set, then the custom fields.
func profileOf(tx *store.Tx, u *store.User, userID string) map[string]json.RawMessage {
	p := map[string]json.RawMessage{}
	tx.ScanKV(profileFieldNamespace, profileKVKey(userID, ""), func(key string, value []byte) bool {
		p[strings.TrimPrefix(key, profileKVKey(userID, ""))] = json.RawMessage(bytes.Clone(value)) // value lives only as long as the transaction
		return true
	})
	if u.DisplayName != "" {
		p["displayname"], _ = json.Marshal(u.DisplayName)
	}
	if u.AvatarURL != "" {
		p["avatar_url"], _ = json.Marshal(u.AvatarURL)
	}
	return p
}

// getProfile: GET /profile/{userId}
func (s *Server) getProfile(r *http.Request) (any, error) {
	userID := r.PathValue("userId")
	if validUserID(userID) && !s.isLocalUser(userID) {
		return s.remoteProfile(r.Context(), userID, "")
	}
	var p map[string]json.RawMessage
	err := s.Store.View(func(tx *store.Tx) error {
		u, err := s.localProfileUser(tx, userID)
		if err != nil {
			return err
		}
		p = profileOf(tx, u, userID)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		// The spec's 404 covers "no profile information", as in Synapse.
		return nil, errNotFound("Profile not found")
	}
	return p, nil
}

// getProfileField: GET /profile/{userId}/{keyName}
func (s *Server) getProfileField(r *http.Request) (any, error) {
	userID, key := r.PathValue("userId"), r.PathValue("keyName")
	if err := checkProfileKey(key); err != nil {
		return nil, err
	}
	if validUserID(userID) && !s.isLocalUser(userID) {
		return s.remoteProfile(r.Context(), userID, key)
	}
	var value json.RawMessage
	err := s.Store.View(func(tx *store.Tx) error {
		u, err := s.localProfileUser(tx, userID)
		if err != nil {
			return err
		}
		value = profileOf(tx, u, userID)[key]
		return nil
	})
	if err != nil {
		return nil, err
	}
	if value == nil {
		return nil, errNotFound("Profile field %s not set", key)
	}
	return map[string]json.RawMessage{key: value}, nil
}

// putProfileField: PUT /profile/{userId}/{keyName}
func (s *Server) putProfileField(r *http.Request, sess *Session) (any, error) {
	userID, key := r.PathValue("userId"), r.PathValue("keyName")
	if !validUserID(userID) {
		return nil, errInvalidParam("Invalid user ID %q", userID)
	}
	if err := checkProfileKey(key); err != nil {
		return nil, err
	}
	// Server admins may edit local users' profiles, as in Synapse.
	if userID != sess.UserID && !(sess.Admin && s.isLocalUser(userID)) {
		return nil, errForbidden("Cannot set another user's profile")
	}
	raw, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, errBadJSON("Body must be a JSON object")
	}
	value, ok := body[key]
	if !ok {
		return nil, errMissingParam("Missing key %q", key)
	}
	if string(value) == "null" {
		return nil, errInvalidParam("%s cannot be null", key)
	}
	var str string
	switch key {
	case "displayname", "avatar_url", "m.tz":
		if json.Unmarshal(value, &str) != nil {
			return nil, errInvalidParam("%s must be a string", key)
		}
	}
	switch key {
	case "displayname":
		// Over-long names are refused with M_INVALID_PARAM; Synapse's
		// error here carries no specific errcode.
		if utf8.RuneCountInString(str) > maxDisplayNameChars {
			return nil, errInvalidParam("displayname is too long (max %d)", maxDisplayNameChars)
		}
		str = strings.TrimSpace(str)
	case "avatar_url":
		// The spec asks clients for an mxc:// URI but gives servers no
		// error for anything else; Synapse stores any string, and clients
		// render only what they can fetch, so only the length is checked.
		if len(str) > maxAvatarURLBytes {
			return nil, errInvalidParam("avatar_url is too long (max %d)", maxAvatarURLBytes)
		}
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		u, err := s.localProfileUser(tx, userID)
		if err != nil {
			return err
		}
		p := profileOf(tx, u, userID)
		if str == "" && (key == "displayname" || key == "avatar_url") {
			delete(p, key) // an empty name or avatar unsets it
		} else {
			p[key] = value
		}
		if size, _ := json.Marshal(p); len(size) > maxProfileBytes {
			return newErr(http.StatusBadRequest, "M_PROFILE_TOO_LARGE", "Profile would exceed %d bytes", maxProfileBytes)
		}
		switch key {
		case "displayname":
			u.DisplayName = str
		case "avatar_url":
			u.AvatarURL = str
		default:
			tx.PutKV(profileFieldNamespace, profileKVKey(userID, key), value)
			return nil
		}
		tx.PutUser(u)
		return s.propagateProfile(tx, userID)
	})
}

// deleteProfileField: DELETE /profile/{userId}/{keyName}
func (s *Server) deleteProfileField(r *http.Request, sess *Session) (any, error) {
	userID, key := r.PathValue("userId"), r.PathValue("keyName")
	if !validUserID(userID) {
		return nil, errInvalidParam("Invalid user ID %q", userID)
	}
	if err := checkProfileKey(key); err != nil {
		return nil, err
	}
	if userID != sess.UserID && !(sess.Admin && s.isLocalUser(userID)) {
		return nil, errForbidden("Cannot delete another user's profile fields")
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		u, err := s.localProfileUser(tx, userID)
		if err != nil {
			return err
		}
		switch key {
		case "displayname":
			if u.DisplayName == "" {
				return nil
			}
			u.DisplayName = ""
		case "avatar_url":
			if u.AvatarURL == "" {
				return nil
			}
			u.AvatarURL = ""
		default:
			tx.DeleteKV(profileFieldNamespace, profileKVKey(userID, key))
			return nil
		}
		tx.PutUser(u)
		return s.propagateProfile(tx, userID)
	})
}

// propagateProfile sends a fresh join event carrying the user's new
// displayname and avatar into every room they are joined to, in the same
// transaction as the profile change, as Synapse does. Rooms whose member
// event already says the same are skipped.
func (s *Server) propagateProfile(tx *store.Tx, userID string) error {
	ms, err := tx.Memberships(userID)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Membership != "join" {
			continue
		}
		content := s.memberContent(tx, userID, "join", "")
		_, st, err := s.roomState(tx, m.RoomID)
		if err != nil {
			return err
		}
		if cur, err := s.Rooms.StateEvent(tx, st, "m.room.member", userID); err == nil && cur != nil && sameMemberProfile(cur.Content, content) {
			continue
		}
		if _, err := s.sendMember(tx, m.RoomID, userID, userID, content); err != nil {
			if errors.Is(err, room.ErrForbidden) {
				// One room refusing (say, a power-level quirk) must not block
				// the profile change everywhere else.
				s.Log.Warn("profile update not sent to room", "room_id", m.RoomID, "user_id", userID, "err", err)
				continue
			}
			return err
		}
	}
	return nil
}

// sameMemberProfile tells whether a join event's content already carries
// exactly the profile in want.
func sameMemberProfile(have json.RawMessage, want map[string]any) bool {
	var c struct {
		Membership  string `json:"membership"`
		DisplayName string `json:"displayname"`
		AvatarURL   string `json:"avatar_url"`
	}
	if json.Unmarshal(have, &c) != nil {
		return false
	}
	name, _ := want["displayname"].(string)
	avatar, _ := want["avatar_url"].(string)
	return c.Membership == "join" && c.DisplayName == name && c.AvatarURL == avatar
}
