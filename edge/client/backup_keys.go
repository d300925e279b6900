package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"edge/edge/store"
)

// Server-side key backups
// (https://spec.matrix.org/latest/client-server-api/#server-side-key-backups).
// Versions are numbered per user and never reused; a deleted version
// stays as a tombstone so deleting it again succeeds. Keys can be written
// only to the current version: the newest one not deleted.

func (s *Server) routesKeyBackup() {
	s.authed("POST /room_keys/version", s.backupCreate)
	s.authed("GET /room_keys/version", s.backupLatest)
	s.authed("GET /room_keys/version/{version}", s.backupGet)
	s.authed("PUT /room_keys/version/{version}", s.backupUpdate)
	s.authed("DELETE /room_keys/version/{version}", s.backupDelete)
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		s.authed("PUT "+p, s.backupPutKeys)
		s.authed("GET "+p, s.backupGetKeys)
		s.authed("DELETE "+p, s.backupDeleteKeys)
	}
}

// backupVersion is one backup version of a user.
type backupVersion struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Etag      uint64          `json:"etag"`
	Count     int             `json:"count"`
	Deleted   bool            `json:"deleted,omitempty"`
}

// backupKeyData is one session's backed-up key.
type backupKeyData struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func (k *backupKeyData) check() error {
	if k.FirstMessageIndex == nil || k.ForwardedCount == nil || k.IsVerified == nil || !isJSONObject(k.SessionData) {
		return errBadJSON("Key data needs first_message_index, forwarded_count, is_verified and a session_data object")
	}
	return nil
}

// replaces tells whether k should replace old, by the spec's rules:
// verified beats unverified, then the lower first_message_index wins,
// then the lower forwarded_count.
func (k *backupKeyData) replaces(old *backupKeyData) bool {
	if *k.IsVerified != *old.IsVerified {
		return *k.IsVerified
	}
	if *k.FirstMessageIndex != *old.FirstMessageIndex {
		return *k.FirstMessageIndex < *old.FirstMessageIndex
	}
	return *k.ForwardedCount < *old.ForwardedCount
}

// versionKey renders a version number so that key order is numeric order.
func versionKey(v uint64) string { return posKey(v) }

// parseVersion reads a version path or query value; 0 when it names none.
func parseVersion(s string) uint64 {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || strconv.FormatUint(v, 10) != s {
		return 0
	}
	return v
}

func errNoBackup() *Error { return errNotFound("Unknown backup version") }

// loadBackup returns one version of a user's backup, deleted or not.
func loadBackup(tx *store.Tx, userID string, version uint64) (*backupVersion, error) {
	if version == 0 {
		return nil, errNoBackup()
	}
	raw, err := tx.GetKV(nsBackupVersion, e2eeKey(userID, versionKey(version)))
	if err != nil {
		return nil, errNoBackup()
	}
	var b backupVersion
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// liveBackup is loadBackup for a version that is not deleted.
func liveBackup(tx *store.Tx, userID string, version uint64) (*backupVersion, error) {
	b, err := loadBackup(tx, userID, version)
	if err == nil && b.Deleted {
		return nil, errNoBackup()
	}
	return b, err
}

func putBackup(tx *store.Tx, userID string, version uint64, b *backupVersion) {
	raw, _ := json.Marshal(b)
	tx.PutKV(nsBackupVersion, e2eeKey(userID, versionKey(version)), raw)
}

// currentBackup returns the newest version that is not deleted.
func currentBackup(tx *store.Tx, userID string) (uint64, *backupVersion) {
	var version uint64
	var cur *backupVersion
	p := e2eePrefix(userID)
	tx.ScanKV(nsBackupVersion, p, func(k string, v []byte) bool {
		var b backupVersion
		if json.Unmarshal(v, &b) == nil && !b.Deleted {
			version, cur = parsePosKey(strings.TrimPrefix(k, p)), &b
		}
		return true
	})
	return version, cur
}

func backupInfo(version uint64, b *backupVersion) map[string]any {
	return map[string]any{
		"algorithm": b.Algorithm,
		"auth_data": b.AuthData,
		"count":     b.Count,
		"etag":      strconv.FormatUint(b.Etag, 10),
		"version":   strconv.FormatUint(version, 10),
	}
}

// backupRequest is the body of creating or updating a version.
type backupRequest struct {
	Algorithm *string         `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   *string         `json:"version"`
}

func (b *backupRequest) check() error {
	if b.Algorithm == nil || *b.Algorithm == "" {
		return errMissingParam("Missing algorithm")
	}
	if len(b.AuthData) == 0 || string(b.AuthData) == "null" {
		return errMissingParam("Missing auth_data")
	}
	if !isJSONObject(b.AuthData) {
		return errBadJSON("auth_data must be an object")
	}
	return nil
}

// backupCreate: POST /room_keys/version
func (s *Server) backupCreate(r *http.Request, sess *Session) (any, error) {
	var req backupRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	var version uint64
	err := s.Store.Write(func(tx *store.Tx) error {
		if v, err := tx.GetKV(nsBackupLast, sess.UserID); err == nil {
			version = parseVersion(string(v))
		}
		version++
		tx.PutKV(nsBackupLast, sess.UserID, []byte(strconv.FormatUint(version, 10)))
		putBackup(tx, sess.UserID, version, &backupVersion{Algorithm: *req.Algorithm, AuthData: req.AuthData})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"version": strconv.FormatUint(version, 10)}, nil
}

// backupLatest: GET /room_keys/version
func (s *Server) backupLatest(r *http.Request, sess *Session) (any, error) {
	var resp map[string]any
	err := s.Store.View(func(tx *store.Tx) error {
		version, b := currentBackup(tx, sess.UserID)
		if b == nil {
			return errNotFound("No current backup version")
		}
		resp = backupInfo(version, b)
		return nil
	})
	return resp, err
}

// backupGet: GET /room_keys/version/{version}
func (s *Server) backupGet(r *http.Request, sess *Session) (any, error) {
	version := parseVersion(r.PathValue("version"))
	var resp map[string]any
	err := s.Store.View(func(tx *store.Tx) error {
		b, err := liveBackup(tx, sess.UserID, version)
		if err != nil {
			return err
		}
		resp = backupInfo(version, b)
		return nil
	})
	return resp, err
}

// backupUpdate: PUT /room_keys/version/{version}
func (s *Server) backupUpdate(r *http.Request, sess *Session) (any, error) {
	version := parseVersion(r.PathValue("version"))
	var req backupRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	if req.Version != nil && *req.Version != r.PathValue("version") {
		return nil, errInvalidParam("The version in the body does not match the path")
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		b, err := liveBackup(tx, sess.UserID, version)
		if err != nil {
			return err
		}
		if b.Algorithm != *req.Algorithm {
			return errInvalidParam("Algorithm does not match")
		}
		b.AuthData = req.AuthData
		putBackup(tx, sess.UserID, version, b)
		return nil
	})
}

// backupDelete: DELETE /room_keys/version/{version}
func (s *Server) backupDelete(r *http.Request, sess *Session) (any, error) {
	version := parseVersion(r.PathValue("version"))
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		b, err := loadBackup(tx, sess.UserID, version)
		if err != nil || b.Deleted {
			return err // a deleted version deletes again without error
		}
		deleteKVPrefix(tx, nsBackupKeys, e2eePrefix(sess.UserID, versionKey(version)))
		putBackup(tx, sess.UserID, version, &backupVersion{Algorithm: b.Algorithm, AuthData: json.RawMessage("{}"), Deleted: true})
		return nil
	})
}

// backupScope is the room and session a /room_keys/keys path names.
type backupScope struct {
	roomID, sessionID string
	version           uint64
}

func parseBackupScope(r *http.Request) (backupScope, error) {
	sc := backupScope{roomID: r.PathValue("roomId"), sessionID: r.PathValue("sessionId")}
	v := r.URL.Query().Get("version")
	if v == "" {
		return sc, errMissingParam("Missing version")
	}
	sc.version = parseVersion(v)
	for _, p := range []string{sc.roomID, sc.sessionID} {
		if p != "" && !validPathValue(p) {
			return sc, errInvalidParam("Invalid room or session ID")
		}
	}
	return sc, nil
}

// prefix is the KV prefix of every session in the scope (or, at session
// level, the session's key itself).
func (sc backupScope) prefix(userID string) string {
	switch {
	case sc.sessionID != "":
		return e2eeKey(userID, versionKey(sc.version), sc.roomID, sc.sessionID)
	case sc.roomID != "":
		return e2eePrefix(userID, versionKey(sc.version), sc.roomID)
	}
	return e2eePrefix(userID, versionKey(sc.version))
}

// backupPutKeys: PUT /room_keys/keys, /room_keys/keys/{roomId} and
// /room_keys/keys/{roomId}/{sessionId}
func (s *Server) backupPutKeys(r *http.Request, sess *Session) (any, error) {
	sc, err := parseBackupScope(r)
	if err != nil {
		return nil, err
	}
	// Flatten the three body shapes into room → session → key.
	rooms := map[string]map[string]*backupKeyData{}
	switch {
	case sc.sessionID != "":
		var k backupKeyData
		if err := decode(r, &k); err != nil {
			return nil, err
		}
		rooms[sc.roomID] = map[string]*backupKeyData{sc.sessionID: &k}
	case sc.roomID != "":
		var body struct {
			Sessions map[string]*backupKeyData `json:"sessions"`
		}
		if err := decode(r, &body); err != nil {
			return nil, err
		}
		if body.Sessions == nil {
			return nil, errBadJSON("Missing sessions")
		}
		rooms[sc.roomID] = body.Sessions
	default:
		var body struct {
			Rooms map[string]*struct {
				Sessions map[string]*backupKeyData `json:"sessions"`
			} `json:"rooms"`
		}
		if err := decode(r, &body); err != nil {
			return nil, err
		}
		if body.Rooms == nil {
			return nil, errBadJSON("Missing rooms")
		}
		for roomID, room := range body.Rooms {
			if room == nil || room.Sessions == nil {
				return nil, errBadJSON("Missing sessions for room %s", roomID)
			}
			rooms[roomID] = room.Sessions
		}
	}
	for _, sessions := range rooms {
		for _, k := range sessions {
			if k == nil {
				return nil, errBadJSON("Key data must be an object")
			}
			if err := k.check(); err != nil {
				return nil, err
			}
		}
	}
	var resp map[string]any
	err = s.Store.Write(func(tx *store.Tx) error {
		current, b := currentBackup(tx, sess.UserID)
		if b == nil {
			return errNoBackup()
		}
		if sc.version != current {
			e := newErr(http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version")
			e.Extra = map[string]any{"current_version": strconv.FormatUint(current, 10)}
			return e
		}
		changed := false
		for roomID, sessions := range rooms {
			for sessionID, k := range sessions {
				key := e2eeKey(sess.UserID, versionKey(current), roomID, sessionID)
				if raw, err := tx.GetKV(nsBackupKeys, key); err == nil {
					var old backupKeyData
					if json.Unmarshal(raw, &old) == nil && old.check() == nil && !k.replaces(&old) {
						continue
					}
				} else {
					b.Count++
				}
				raw, _ := json.Marshal(k)
				tx.PutKV(nsBackupKeys, key, raw)
				changed = true
			}
		}
		if changed {
			b.Etag++
			putBackup(tx, sess.UserID, current, b)
		}
		resp = map[string]any{"etag": strconv.FormatUint(b.Etag, 10), "count": b.Count}
		return nil
	})
	return resp, err
}

// backupGetKeys: GET /room_keys/keys, /room_keys/keys/{roomId} and
// /room_keys/keys/{roomId}/{sessionId}
func (s *Server) backupGetKeys(r *http.Request, sess *Session) (any, error) {
	sc, err := parseBackupScope(r)
	if err != nil {
		return nil, err
	}
	var resp any
	err = s.Store.View(func(tx *store.Tx) error {
		if _, err := liveBackup(tx, sess.UserID, sc.version); err != nil {
			return err
		}
		if sc.sessionID != "" {
			raw, err := tx.GetKV(nsBackupKeys, sc.prefix(sess.UserID))
			if errors.Is(err, store.ErrNotFound) {
				return errNotFound("No key backed up for this session")
			}
			resp = json.RawMessage(raw)
			return err
		}
		rooms := map[string]map[string]map[string]json.RawMessage{}
		vp := e2eePrefix(sess.UserID, versionKey(sc.version))
		tx.ScanKV(nsBackupKeys, sc.prefix(sess.UserID), func(k string, v []byte) bool {
			parts := splitKey(strings.TrimPrefix(k, vp))
			if len(parts) != 2 {
				return true
			}
			if rooms[parts[0]] == nil {
				rooms[parts[0]] = map[string]map[string]json.RawMessage{"sessions": {}}
			}
			rooms[parts[0]]["sessions"][parts[1]] = bytes.Clone(v) // v lives only as long as tx
			return true
		})
		if sc.roomID != "" {
			room := rooms[sc.roomID]
			if room == nil {
				room = map[string]map[string]json.RawMessage{"sessions": {}}
			}
			resp = room
		} else {
			resp = map[string]any{"rooms": rooms}
		}
		return nil
	})
	return resp, err
}

// backupDeleteKeys: DELETE /room_keys/keys, /room_keys/keys/{roomId} and
// /room_keys/keys/{roomId}/{sessionId}
func (s *Server) backupDeleteKeys(r *http.Request, sess *Session) (any, error) {
	sc, err := parseBackupScope(r)
	if err != nil {
		return nil, err
	}
	var resp map[string]any
	err = s.Store.Write(func(tx *store.Tx) error {
		b, err := liveBackup(tx, sess.UserID, sc.version)
		if err != nil {
			return err
		}
		n := 0
		if sc.sessionID != "" {
			if _, err := tx.GetKV(nsBackupKeys, sc.prefix(sess.UserID)); err == nil {
				tx.DeleteKV(nsBackupKeys, sc.prefix(sess.UserID))
				n = 1
			}
		} else {
			n = deleteKVPrefix(tx, nsBackupKeys, sc.prefix(sess.UserID))
		}
		if n > 0 {
			b.Count -= n
			b.Etag++
			putBackup(tx, sess.UserID, sc.version, b)
		}
		resp = map[string]any{"etag": strconv.FormatUint(b.Etag, 10), "count": b.Count}
		return nil
	})
	return resp, err
}
