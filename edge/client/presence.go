package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"edge/edge/notify"
	"edge/edge/store"
)

// presenceNamespace holds one presenceRecord per local user who ever set
// a presence, keyed by user ID.
const presenceNamespace = "presence"

// presenceRecord is a user's stored presence. Pos is the stream position
// of the last change other users should hear about.
type presenceRecord struct {
	Presence     string  `json:"presence"`
	StatusMsg    *string `json:"status_msg,omitempty"`
	LastActiveTS int64   `json:"last_active_ts,omitempty"`
	Pos          uint64  `json:"pos"`
}

const (
	// presenceActiveFor is how long after their last activity an online
	// user counts as currently_active.
	presenceActiveFor = 5 * time.Minute
	// presenceBumpEvery limits how often /sync's set_presence refreshes
	// last_active_ts, since each refresh is a durable write.
	presenceBumpEvery = time.Minute
)

func validPresence(p string) bool {
	return p == "online" || p == "offline" || p == "unavailable"
}

// routesPresence registers the presence API and its /sync stream.
func (s *Server) routesPresence() {
	s.authed("GET /presence/{userId}/status", s.getPresence)
	s.authed("PUT /presence/{userId}/status", s.putPresence)
	s.SetPresence = s.syncSetPresence
	s.SyncExtensions = append(s.SyncExtensions, s.presenceSync)
}

// content renders a record as m.presence content / the GET body.
func (p *presenceRecord) content(now int64) map[string]any {
	c := map[string]any{"presence": p.Presence}
	if p.LastActiveTS > 0 {
		c["last_active_ago"] = max(now-p.LastActiveTS, 0)
	}
	c["currently_active"] = p.Presence == "online" && p.LastActiveTS > 0 &&
		now-p.LastActiveTS < presenceActiveFor.Milliseconds()
	if p.StatusMsg != nil {
		c["status_msg"] = *p.StatusMsg
	}
	return c
}

// loadPresence reads a user's record; ok is false when there is none.
func loadPresence(tx *store.Tx, userID string) (rec presenceRecord, ok bool, err error) {
	v, err := tx.GetKV(presenceNamespace, userID)
	if errors.Is(err, store.ErrNotFound) {
		return rec, false, nil
	} else if err != nil {
		return rec, false, err
	}
	return rec, json.Unmarshal(v, &rec) == nil, nil
}

// storePresence writes a record and, if it is a change others should
// see, gives it a stream position and wakes the user and their rooms.
func (s *Server) storePresence(tx *store.Tx, userID string, rec presenceRecord, changed bool) error {
	var keys []string
	if changed {
		rec.Pos = tx.NextPos()
		keys = append(keys, notify.UserKey(userID))
		ms, err := tx.Memberships(userID)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Membership == "join" {
				keys = append(keys, notify.RoomKey(m.RoomID))
			}
		}
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tx.PutKV(presenceNamespace, userID, v)
	if changed {
		s.federatePresence(tx, userID, rec)
		s.feedPresence(tx, userID, rec)
	}
	if len(keys) > 0 {
		tx.OnCommit(func() { s.Notifier.Notify(keys...) })
	}
	return nil
}

// putPresence: PUT /presence/{userId}/status
func (s *Server) putPresence(r *http.Request, sess *Session) (any, error) {
	if r.PathValue("userId") != sess.UserID {
		return nil, errForbidden("Can only set your own presence state")
	}
	var body struct {
		Presence  *string         `json:"presence"`
		StatusMsg json.RawMessage `json:"status_msg"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Presence == nil {
		return nil, errBadJSON("presence is required")
	}
	if !validPresence(*body.Presence) {
		return nil, errInvalidParam("presence must be one of online, offline, unavailable")
	}
	var status *string
	if len(body.StatusMsg) > 0 && string(body.StatusMsg) != "null" {
		var msg string
		if json.Unmarshal(body.StatusMsg, &msg) != nil {
			return nil, errBadJSON("status_msg must be a string")
		}
		status = &msg
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		old, _, err := loadPresence(tx, sess.UserID)
		if err != nil {
			return err
		}
		rec := presenceRecord{Presence: *body.Presence, StatusMsg: status, LastActiveTS: old.LastActiveTS}
		if rec.Presence == "online" || rec.LastActiveTS == 0 {
			rec.LastActiveTS = time.Now().UnixMilli() // setting online is activity (spec: last active ago)
		}
		return s.storePresence(tx, sess.UserID, rec, true)
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

// getPresence: GET /presence/{userId}/status
func (s *Server) getPresence(r *http.Request, sess *Session) (any, error) {
	target := r.PathValue("userId")
	if !strings.HasPrefix(target, "@") || !strings.Contains(target, ":") {
		return nil, errInvalidParam("Invalid user ID")
	}
	var out map[string]any
	err := s.Store.View(func(tx *store.Tx) error {
		if s.isLocalUser(target) {
			if _, err := tx.User(localpart(target)); errors.Is(err, store.ErrNotFound) {
				return errNotFound("User %s not found", target)
			} else if err != nil {
				return err
			}
		}
		if target != sess.UserID {
			shared, err := s.sharesRoom(tx, sess.UserID, target)
			if err != nil {
				return err
			}
			if !shared {
				// Synapse's answer too: presence is only for users sharing a room.
				return errForbidden("You are not allowed to see their presence")
			}
		}
		rec, ok, err := loadPresence(tx, target)
		if err != nil {
			return err
		}
		if !ok {
			rec = presenceRecord{Presence: "offline"}
		}
		out = rec.content(time.Now().UnixMilli())
		return nil
	})
	return out, err
}

// sharesRoom tells whether userID (local) and other are both joined to
// some room.
func (s *Server) sharesRoom(tx *store.Tx, userID, other string) (bool, error) {
	ms, err := tx.Memberships(userID)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.Membership != "join" {
			continue
		}
		if s.isLocalUser(other) {
			if om, err := tx.Membership(other, m.RoomID); err == nil && om.Membership == "join" {
				return true, nil
			}
			continue
		}
		if _, st, err := s.roomState(tx, m.RoomID); err == nil && s.membershipIn(tx, st, other) == "join" {
			return true, nil
		}
	}
	return false, nil
}

// syncSetPresence handles /sync's set_presence. "offline" means "do not
// mark me online" (spec), so it changes nothing. Most syncs change
// nothing either, so the record is read first and written only when the
// state changes or last_active_ts is older than presenceBumpEvery.
func (s *Server) syncSetPresence(userID, presence string) {
	if presence != "online" && presence != "unavailable" {
		return
	}
	now := time.Now().UnixMilli()
	stale := func(rec presenceRecord, ok bool) (write, changed bool) {
		changed = !ok || rec.Presence != presence
		bump := presence == "online" && now-rec.LastActiveTS >= presenceBumpEvery.Milliseconds()
		return changed || bump, changed
	}
	var need bool
	if err := s.Store.View(func(tx *store.Tx) error {
		rec, ok, err := loadPresence(tx, userID)
		need, _ = stale(rec, ok)
		return err
	}); err != nil || !need {
		return
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		rec, ok, err := loadPresence(tx, userID)
		if err != nil {
			return err
		}
		write, changed := stale(rec, ok)
		if !write {
			return nil
		}
		rec.Presence = presence
		if presence == "online" || rec.LastActiveTS == 0 {
			rec.LastActiveTS = now
		}
		return s.storePresence(tx, userID, rec, changed)
	})
	if err != nil {
		s.Log.Warn("set_presence", "user", userID, "err", err)
	}
}

// presenceSync is the /sync presence stream: m.presence for the requester
// and every local user sharing a joined room with them whose presence
// changed after since (all of them on an initial sync). It scans the
// presence namespace, which holds one record per local user who ever set
// a presence, and each remote user whose m.presence EDU we accepted.
func (s *Server) presenceSync(tx *store.Tx, sess *Session, since, _ uint64, initial bool, resp map[string]any) bool {
	ms, err := tx.Memberships(sess.UserID)
	if err != nil {
		return false
	}
	joined := map[string]bool{}
	joinedAt := map[string]uint64{} // room → position of the requester's member event
	for _, m := range ms {
		if m.Membership == "join" {
			joined[m.RoomID] = true
			joinedAt[m.RoomID] = m.Pos
		}
	}
	now := time.Now().UnixMilli()
	var events []any
	var fresh map[string]bool // computed on first need
	tx.ScanKV(presenceNamespace, "", func(userID string, v []byte) bool {
		var rec presenceRecord
		if json.Unmarshal(v, &rec) != nil {
			return true
		}
		if !initial && rec.Pos <= since {
			// Unchanged presence is still news to someone who has just
			// come to share a room with the user (sytest "Existing members
			// see new members' presence"; Complement's TestMembersLocal).
			if fresh == nil {
				fresh = s.newMembers(tx, joinedAt, since)
			}
			if userID == sess.UserID || !fresh[userID] ||
				(!sharesJoined(tx, userID, joined) && !s.remoteSharesJoined(tx, userID, joined)) {
				return true // (a join since the token may have been left again)
			}
		} else if userID != sess.UserID && !sharesJoined(tx, userID, joined) && !s.remoteSharesJoined(tx, userID, joined) {
			return true
		}
		events = append(events, map[string]any{"type": "m.presence", "sender": userID, "content": rec.content(now)})
		return true
	})
	resp["presence"] = map[string]any{"events": orEmpty(events)}
	return len(events) > 0
}

// newMembers lists the users the requester has come to share a room with
// since the token: every joined member of a room the requester joined
// after it, and those whose join to a shared room came after it (read
// from the timeline since the token, so the cost is the new events').
func (s *Server) newMembers(tx *store.Tx, joinedAt map[string]uint64, since uint64) map[string]bool {
	fresh := map[string]bool{}
	for roomID, at := range joinedAt {
		r, st, err := s.roomState(tx, roomID)
		if err != nil {
			continue
		}
		// Few new events: read them. Many (a client back after long):
		// read the members instead, keeping those whose join is newer.
		seen, complete := 0, true
		if at <= since {
			tx.Timeline(r.NID, since+1, false, func(_, nid uint64) bool {
				if seen++; seen > newMembersScan {
					complete = false
					return false
				}
				if ev, err := s.Rooms.Event(tx, nid); err == nil && ev.Type == "m.room.member" && ev.StateKey != nil && ev.Membership() == "join" {
					fresh[*ev.StateKey] = true
				}
				return true
			})
		}
		if at <= since && complete {
			continue
		}
		st.Each(func(k, nid uint64) bool {
			if evType, sk, err := tx.StateKey(k); err == nil && evType == "m.room.member" {
				if ev, err := s.Rooms.Event(tx, nid); err == nil && ev.Membership() == "join" && (at > since || ev.Pos > since) {
					fresh[sk] = true
				}
			}
			return true
		})
	}
	return fresh
}

// newMembersScan bounds the events newMembers reads per room.
const newMembersScan = 500

// sharesJoined tells whether local user userID is joined to one of rooms.
func sharesJoined(tx *store.Tx, userID string, rooms map[string]bool) bool {
	if len(rooms) == 0 {
		return false
	}
	ms, err := tx.Memberships(userID)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Membership == "join" && rooms[m.RoomID] {
			return true
		}
	}
	return false
}
