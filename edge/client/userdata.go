package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"edge/edge/notify"
	"edge/edge/store"
)

// routesUserData registers client config (account data), room tagging and,
// through account data, ignoring users:
// https://spec.matrix.org/v1.12/client-server-api/#client-config,
// #room-tagging and #ignoring-users.
func (s *Server) routesUserData() {
	s.authed("GET /user/{userId}/account_data/{type}", s.getAccountData)
	s.authed("PUT /user/{userId}/account_data/{type}", s.putAccountData)
	s.authed("GET /user/{userId}/rooms/{roomId}/account_data/{type}", s.getAccountData)
	s.authed("PUT /user/{userId}/rooms/{roomId}/account_data/{type}", s.putAccountData)
	// MSC3391: deleting account data, under its unstable prefix.
	s.authed("DELETE "+msc3391Prefix+"/user/{userId}/account_data/{type}", s.deleteAccountData)
	s.authed("DELETE "+msc3391Prefix+"/user/{userId}/rooms/{roomId}/account_data/{type}", s.deleteAccountData)
	s.authed("GET /user/{userId}/rooms/{roomId}/tags", s.getTags)
	s.authed("PUT /user/{userId}/rooms/{roomId}/tags/{tag}", s.putTag)
	s.authed("DELETE /user/{userId}/rooms/{roomId}/tags/{tag}", s.deleteTag)
}

const (
	msc3391Prefix   = "/_matrix/client/unstable/org.matrix.msc3391"
	tagType         = "m.tag"
	ignoredListType = "m.ignored_user_list"
	maxTagBytes     = 255 // "The name of a tag MUST NOT exceed 255 bytes."
)

// serverManagedTypes are account-data types only the server may write; the
// spec says clients get a 405 for them, globally and per room.
var serverManagedTypes = map[string]bool{"m.fully_read": true, "m.push_rules": true}

// validRoomID accepts any room ID shape: "!opaque:server" before room
// version 12, "!hash" from it on.
func validRoomID(roomID string) bool {
	return len(roomID) > 1 && len(roomID) <= 255 && strings.HasPrefix(roomID, "!")
}

// userDataTarget checks the path's user and (if present) room, returning
// the room ID ("" for global data).
func userDataTarget(r *http.Request, sess *Session) (string, error) {
	if r.PathValue("userId") != sess.UserID {
		return "", errForbidden("Cannot access account data of other users")
	}
	roomID := r.PathValue("roomId")
	if strings.Contains(r.Pattern, "{roomId}") && !validRoomID(roomID) {
		return "", errInvalidParam("%q is not a valid room ID", roomID)
	}
	return roomID, nil
}

// getAccountData: GET /user/{userId}/account_data/{type} and
// GET /user/{userId}/rooms/{roomId}/account_data/{type}
func (s *Server) getAccountData(r *http.Request, sess *Session) (any, error) {
	roomID, err := userDataTarget(r, sess)
	if err != nil {
		return nil, err
	}
	evType := r.PathValue("type")
	var content json.RawMessage
	err = s.Store.View(func(tx *store.Tx) error {
		ad, err := tx.AccountData(sess.UserID, roomID, evType)
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("Account data not found")
		} else if err != nil {
			return err
		}
		if isEmptyObject(ad.Content) {
			// MSC3391: empty content is how a deletion is stored.
			return errNotFound("Account data not found")
		}
		content = ad.Content
		return nil
	})
	return content, err
}

// isEmptyObject tells whether raw is the JSON object {}.
func isEmptyObject(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil && len(m) == 0
}

// deleteAccountData: DELETE /_matrix/client/unstable/org.matrix.msc3391/user/{userId}/account_data/{type}
// and DELETE …/user/{userId}/rooms/{roomId}/account_data/{type}
//
// MSC3391 makes a deletion the same as a PUT of {}: the entry is stored
// empty at a new stream position, so incremental syncs tell clients to
// drop it, while GET answers 404 and initial syncs leave it out.
func (s *Server) deleteAccountData(r *http.Request, sess *Session) (any, error) {
	roomID, err := userDataTarget(r, sess)
	if err != nil {
		return nil, err
	}
	evType := r.PathValue("type")
	if serverManagedTypes[evType] {
		return nil, newErr(http.StatusMethodNotAllowed, "M_BAD_JSON", "Cannot delete %s through this API", evType)
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		if ad, err := tx.AccountData(sess.UserID, roomID, evType); err != nil || isEmptyObject(ad.Content) {
			return nil // nothing to delete: no new stream entry
		}
		s.putUserData(tx, sess.UserID, roomID, evType, json.RawMessage("{}"))
		return nil
	})
}

// putAccountData: PUT /user/{userId}/account_data/{type} and
// PUT /user/{userId}/rooms/{roomId}/account_data/{type}
func (s *Server) putAccountData(r *http.Request, sess *Session) (any, error) {
	roomID, err := userDataTarget(r, sess)
	if err != nil {
		return nil, err
	}
	evType := r.PathValue("type")
	if evType == "" {
		return nil, errInvalidParam("Missing account data type")
	}
	if serverManagedTypes[evType] {
		return nil, newErr(http.StatusMethodNotAllowed, "M_BAD_JSON", "Cannot set %s through this API", evType)
	}
	content, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	if evType == ignoredListType && roomID == "" {
		if err := validateIgnoredList(content); err != nil {
			return nil, err
		}
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		s.putUserData(tx, sess.UserID, roomID, evType, content)
		return nil
	})
}

// putUserData stores an account-data entry and wakes the user's syncs once
// it is durable.
func (s *Server) putUserData(tx *store.Tx, userID, roomID, evType string, content json.RawMessage) {
	tx.PutAccountData(userID, roomID, evType, content)
	tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(userID)) })
}

// validateIgnoredList checks m.ignored_user_list against its schema: an
// ignored_users object mapping user IDs to objects. Synapse accepts any
// shape and silently ignores what it cannot read; rejecting it instead
// tells the client its write would have had no effect.
func validateIgnoredList(content json.RawMessage) error {
	var c struct {
		IgnoredUsers json.RawMessage `json:"ignored_users"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return errBadJSON("Invalid m.ignored_user_list")
	}
	var users map[string]json.RawMessage
	if len(c.IgnoredUsers) == 0 || json.Unmarshal(c.IgnoredUsers, &users) != nil || users == nil {
		return errBadJSON("ignored_users must be an object")
	}
	for u, v := range users {
		if !validUserID(u) {
			return errBadJSON("ignored_users key %q is not a user ID", u)
		}
		if t := strings.TrimSpace(string(v)); !strings.HasPrefix(t, "{") {
			return errBadJSON("ignored_users values must be objects")
		}
	}
	return nil
}

// ignoredUsers is the set of users userID ignores, read from their
// m.ignored_user_list account data; empty (never nil) when there is none.
func (s *Server) ignoredUsers(tx *store.Tx, userID string) map[string]bool {
	out := map[string]bool{}
	ad, err := tx.AccountData(userID, "", ignoredListType)
	if err != nil {
		return out
	}
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	if json.Unmarshal(ad.Content, &c) != nil {
		return out
	}
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out
}

// roomTags reads a room's m.tag content: its tags and any other top-level
// keys, which are kept as they are on rewrite.
func roomTags(tx *store.Tx, userID, roomID string) (map[string]json.RawMessage, map[string]json.RawMessage, error) {
	top := map[string]json.RawMessage{}
	tags := map[string]json.RawMessage{}
	ad, err := tx.AccountData(userID, roomID, tagType)
	if errors.Is(err, store.ErrNotFound) {
		return top, tags, nil
	} else if err != nil {
		return nil, nil, err
	}
	if json.Unmarshal(ad.Content, &top) != nil || top == nil {
		top = map[string]json.RawMessage{}
	}
	if raw, ok := top["tags"]; ok {
		if json.Unmarshal(raw, &tags) != nil || tags == nil {
			tags = map[string]json.RawMessage{}
		}
	}
	return top, tags, nil
}

func (s *Server) writeTags(tx *store.Tx, userID, roomID string, top, tags map[string]json.RawMessage) error {
	raw, err := json.Marshal(tags)
	if err != nil {
		return err
	}
	top["tags"] = raw
	content, err := json.Marshal(top)
	if err != nil {
		return err
	}
	s.putUserData(tx, userID, roomID, tagType, content)
	return nil
}

// getTags: GET /user/{userId}/rooms/{roomId}/tags
func (s *Server) getTags(r *http.Request, sess *Session) (any, error) {
	roomID, err := userDataTarget(r, sess)
	if err != nil {
		return nil, err
	}
	var tags map[string]json.RawMessage
	err = s.Store.View(func(tx *store.Tx) error {
		var err error
		_, tags, err = roomTags(tx, sess.UserID, roomID)
		return err
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"tags": tags}, nil
}

// putTag: PUT /user/{userId}/rooms/{roomId}/tags/{tag}
func (s *Server) putTag(r *http.Request, sess *Session) (any, error) {
	roomID, err := userDataTarget(r, sess)
	if err != nil {
		return nil, err
	}
	tag := r.PathValue("tag")
	if tag == "" || len(tag) > maxTagBytes {
		return nil, errInvalidParam("Tag names must be 1 to %d bytes", maxTagBytes)
	}
	body, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	var meta map[string]json.RawMessage
	if err := json.Unmarshal(body, &meta); err != nil {
		return nil, errBadJSON("Invalid tag content")
	}
	if order, ok := meta["order"]; ok {
		var f float64
		if json.Unmarshal(order, &f) != nil {
			return nil, errBadJSON("order must be a number")
		}
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		top, tags, err := roomTags(tx, sess.UserID, roomID)
		if err != nil {
			return err
		}
		tags[tag] = body
		return s.writeTags(tx, sess.UserID, roomID, top, tags)
	})
}

// deleteTag: DELETE /user/{userId}/rooms/{roomId}/tags/{tag}
func (s *Server) deleteTag(r *http.Request, sess *Session) (any, error) {
	roomID, err := userDataTarget(r, sess)
	if err != nil {
		return nil, err
	}
	tag := r.PathValue("tag")
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		top, tags, err := roomTags(tx, sess.UserID, roomID)
		if err != nil {
			return err
		}
		if _, ok := tags[tag]; !ok {
			return nil // removing an absent tag succeeds and changes nothing
		}
		delete(tags, tag)
		return s.writeTags(tx, sess.UserID, roomID, top, tags)
	})
}
