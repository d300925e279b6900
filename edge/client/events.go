package client

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"

	"edge/edge/room"
	"edge/edge/store"
)

func (s *Server) routesEvents() {
	s.authed("PUT /rooms/{roomId}/send/{eventType}/{txnId}", s.sendMessage)
	s.authed("PUT /rooms/{roomId}/state/{eventType}", s.putState)
	s.authed("PUT /rooms/{roomId}/state/{eventType}/{stateKey...}", s.putState)
	s.authed("GET /rooms/{roomId}/state", s.getStateAll)
	s.authed("GET /rooms/{roomId}/state/{eventType}", s.getState)
	s.authed("GET /rooms/{roomId}/state/{eventType}/{stateKey...}", s.getState)
	s.authed("PUT /rooms/{roomId}/redact/{eventId}/{txnId}", s.redact)
	s.authed("GET /rooms/{roomId}/event/{eventId}", s.getEvent)
	s.authed("GET /rooms/{roomId}/members", s.members)
	s.authed("GET /rooms/{roomId}/joined_members", s.joinedMembers)
	s.authed("GET /rooms/{roomId}/messages", s.messages)
	s.authed("GET /rooms/{roomId}/context/{eventId}", s.eventContext)
}

// sendMessage: PUT /rooms/{roomId}/send/{eventType}/{txnId}
func (s *Server) sendMessage(r *http.Request, sess *Session) (any, error) {
	roomID, evType, txnID := r.PathValue("roomId"), r.PathValue("eventType"), r.PathValue("txnId")
	delay, delayed, err := delayFromQuery(r)
	if err != nil {
		return nil, err
	}
	if delayed {
		if resp, ok := s.delayedTxnResult(sess, roomID, txnID); ok {
			return resp, nil
		}
	}
	content, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	if delayed {
		return s.scheduleDelayed(sess, roomID, room.Proto{Type: evType, Content: content}, delay, txnID)
	}
	return s.sendEvent(sess, roomID, room.Proto{Type: evType, Sender: sess.UserID, Content: content, TS: appServiceTS(r, sess)}, txnID)
}

// sendEvent sends a message-like event idempotently per device and txnId.
func (s *Server) sendEvent(sess *Session, roomID string, p room.Proto, txnID string) (any, error) {
	var eventID string
	scope := "send:" + roomID
	// A retried transaction must not be rate limited: look it up first.
	_ = s.Store.View(func(tx *store.Tx) error {
		eventID, _ = tx.Txn(sess.UserID, sess.DeviceID, scope, txnID)
		return nil
	})
	if eventID != "" {
		return map[string]string{"event_id": eventID}, nil
	}
	if err := s.checkSend(sess); err != nil {
		return nil, err
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		if id, ok := tx.Txn(sess.UserID, sess.DeviceID, scope, txnID); ok {
			eventID = id
			return nil
		}
		if _, _, err := s.requireJoined(tx, roomID, sess.UserID); err != nil {
			return err
		}
		if p.Redacts != "" {
			if err := s.checkRedact(tx, roomID, sess.UserID, p.Redacts); err != nil {
				return err
			}
		}
		ev, err := s.Rooms.Send(tx, roomID, p)
		if err != nil {
			return err
		}
		eventID = ev.ID
		tx.PutTxn(sess.UserID, sess.DeviceID, scope, txnID, ev.ID)
		t, _ := json.Marshal(map[string]string{"d": sess.DeviceID, "t": txnID})
		tx.PutKV(txnNamespace, ev.ID, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": eventID}, nil
}

// checkRedact lets users redact their own events, and others' only with
// the room's redact power level.
func (s *Server) checkRedact(tx *store.Tx, roomID, userID, target string) error {
	ev, err := s.Rooms.EventByID(tx, target)
	// An event this server never received may still exist elsewhere in
	// the room: one with the redact level may redact it (Synapse sends
	// such a redaction too); anyone else is told it is not found.
	unseen := errors.Is(err, room.ErrEventNotFound)
	if err == nil && ev.RoomID != roomID {
		return errNotFound("Event not found")
	} else if err != nil && !unseen {
		return err
	}
	if !unseen && ev.Sender == userID {
		return nil
	}
	_, st, err := s.roomState(tx, roomID)
	if err != nil {
		return err
	}
	pl, err := s.Rooms.PowerLevels(tx, st)
	if err != nil {
		return err
	}
	if pl.UserLevel(userID) < pl.Redact() {
		if unseen {
			return errNotFound("Event not found")
		}
		return errForbidden("You may not redact other users' events")
	}
	return nil
}

// redact: PUT /rooms/{roomId}/redact/{eventId}/{txnId}
func (s *Server) redact(r *http.Request, sess *Session) (any, error) {
	content, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	roomID := r.PathValue("roomId")
	return s.sendEvent(sess, roomID, room.Proto{Type: "m.room.redaction", Sender: sess.UserID, Content: content, Redacts: r.PathValue("eventId")}, "redact:"+r.PathValue("txnId"))
}

// putState: PUT /rooms/{roomId}/state/{eventType}/{stateKey}
func (s *Server) putState(r *http.Request, sess *Session) (any, error) {
	content, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	roomID, evType, stateKey := r.PathValue("roomId"), r.PathValue("eventType"), r.PathValue("stateKey")
	if delay, delayed, err := delayFromQuery(r); err != nil {
		return nil, err
	} else if delayed {
		return s.scheduleDelayed(sess, roomID, room.Proto{Type: evType, StateKey: &stateKey, Content: content}, delay, "")
	}
	if err := s.checkSend(sess); err != nil {
		return nil, err
	}
	ts := appServiceTS(r, sess)
	var eventID string
	err = s.Store.Write(func(tx *store.Tx) error {
		r, st, err := s.requireJoined(tx, roomID, sess.UserID)
		if err != nil && evType != "m.room.member" {
			return err
		}
		if err := s.checkStatePut(tx, r, st, evType, stateKey, content); err != nil {
			return err
		}
		// Setting the same state again is a no-op answering the current
		// event (Synapse, sytest "Setting state twice is idempotent").
		// Membership changes keep their own semantics.
		if st != nil && evType != "m.room.member" {
			if cur, err := s.Rooms.StateEvent(tx, st, evType, stateKey); err == nil && cur != nil && cur.Sender == sess.UserID && sameJSON(cur.Content, content) {
				eventID = cur.ID
				return nil
			}
		}
		if evType == "m.room.canonical_alias" {
			if err := s.checkCanonicalAlias(tx, roomID, content); err != nil {
				return err
			}
		}
		body := content
		if evType == "m.room.member" && stateKey == sess.UserID {
			if body, err = s.ownMemberContent(tx, roomID, sess.UserID, content); err != nil {
				return err
			}
		}
		ev, err := s.Rooms.Send(tx, roomID, room.Proto{Type: evType, StateKey: &stateKey, Sender: sess.UserID, Content: body, TS: ts})
		if err != nil {
			return err
		}
		eventID = ev.ID
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": eventID}, nil
}

// ownMemberContent is the content of a member event a user PUTs for
// themself: join_authorised_via_users_server is the server's to set, so
// the client's is dropped (a join -> join, such as a displayname change,
// needs none), and a restricted join gets the local member authorising it.
func (s *Server) ownMemberContent(tx *store.Tx, roomID, userID string, content json.RawMessage) (json.RawMessage, error) {
	var c map[string]json.RawMessage
	if json.Unmarshal(content, &c) != nil {
		return content, nil // the auth rules refuse it
	}
	_, had := c[room.JoinAuthorisedVia]
	delete(c, room.JoinAuthorisedVia)
	var membership string
	_ = json.Unmarshal(c["membership"], &membership)
	if membership == "join" {
		via, err := s.Rooms.RestrictedJoinVia(tx, roomID, userID, s.Config.ServerName)
		switch {
		case errors.Is(err, room.ErrCannotAuthoriseJoin), errors.Is(err, room.ErrCannotGrantJoin), errors.Is(err, room.ErrJoinNotAllowed):
			return nil, errForbidden("%v", err)
		case err != nil && !errors.Is(err, room.ErrRoomNotFound):
			return nil, err
		case via != "":
			c[room.JoinAuthorisedVia], _ = json.Marshal(via)
			had = true
		}
	}
	if !had {
		return content, nil
	}
	return json.Marshal(c)
}

// checkCanonicalAlias enforces that a canonical alias points at this room.
func (s *Server) checkCanonicalAlias(tx *store.Tx, roomID string, content json.RawMessage) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if json.Unmarshal(content, &c) != nil {
		return errBadJSON("Invalid canonical alias content")
	}
	aliases := c.AltAliases
	if c.Alias != nil && *c.Alias != "" {
		aliases = append(aliases, *c.Alias)
	}
	for _, a := range aliases {
		if !strings.HasPrefix(a, "#") || !strings.Contains(a, ":") {
			return newErr(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid alias %q", a)
		}
		if !strings.HasSuffix(a, ":"+s.Config.ServerName) {
			continue // remote aliases cannot be checked locally
		}
		if target, err := tx.Alias(a); err != nil || target != roomID {
			return newErr(http.StatusBadRequest, "M_BAD_ALIAS", "Alias %s does not point to this room", a)
		}
	}
	return nil
}

// viewState is the state a user may read: current if joined, the state at
// their leave if they left, and for world-readable rooms the current state.
func (s *Server) viewState(tx *store.Tx, roomID, userID string) (*room.State, error) {
	_, st, err := s.roomState(tx, roomID)
	if errors.Is(err, room.ErrRoomNotFound) {
		return nil, errForbidden("You are not in room %s", roomID)
	} else if err != nil {
		return nil, err
	}
	if s.membershipIn(tx, st, userID) == "join" || s.stateContentField(tx, st, "m.room.history_visibility", "history_visibility") == "world_readable" {
		return st, nil
	}
	m, err := tx.Membership(userID, roomID)
	// Forgetting a room gives up its history (spec: POST /forget).
	if err == nil && !m.Forgotten && (m.Membership == "leave" || m.Membership == "ban") {
		ev, err := s.Rooms.Event(tx, m.Event)
		if err != nil {
			return nil, err
		}
		return s.Rooms.StateAfter(tx, ev)
	}
	return nil, errForbidden("You are not in room %s", roomID)
}

// getStateAll: GET /rooms/{roomId}/state
func (s *Server) getStateAll(r *http.Request, sess *Session) (any, error) {
	var out []*room.ClientEvent
	err := s.Store.View(func(tx *store.Tx) error {
		st, err := s.viewState(tx, r.PathValue("roomId"), sess.UserID)
		if err != nil {
			return err
		}
		evs, err := s.stateEvents(tx, st)
		out = s.renderAll(tx, evs, sess)
		return err
	})
	return out, err
}

// stateEvents loads every event of a state.
func (s *Server) stateEvents(tx *store.Tx, st *room.State) ([]*room.Event, error) {
	var evs []*room.Event
	var err error
	st.Each(func(_, nid uint64) bool {
		var ev *room.Event
		if ev, err = s.Rooms.Event(tx, nid); err != nil {
			return false
		}
		evs = append(evs, ev)
		return true
	})
	return evs, err
}

// getState: GET /rooms/{roomId}/state/{eventType}/{stateKey}
func (s *Server) getState(r *http.Request, sess *Session) (any, error) {
	var out any
	err := s.Store.View(func(tx *store.Tx) error {
		st, err := s.viewState(tx, r.PathValue("roomId"), sess.UserID)
		if err != nil {
			return err
		}
		ev, err := s.Rooms.StateEvent(tx, st, r.PathValue("eventType"), r.PathValue("stateKey"))
		if err != nil {
			return err
		}
		if ev == nil {
			return errNotFound("Event not found")
		}
		if r.URL.Query().Get("format") == "event" {
			out = s.render(tx, ev, sess)
		} else {
			out = ev.Content
		}
		return nil
	})
	return out, err
}

// getEvent: GET /rooms/{roomId}/event/{eventId}
func (s *Server) getEvent(r *http.Request, sess *Session) (any, error) {
	var out any
	roomID := r.PathValue("roomId")
	err := s.Store.View(func(tx *store.Tx) error {
		ev, err := s.Rooms.EventByID(tx, r.PathValue("eventId"))
		if err != nil || ev.RoomID != roomID {
			return errNotFound("Event not found")
		}
		if !s.newVisibility(tx, roomID, sess.UserID).canSee(ev) {
			return errNotFound("Event not found")
		}
		out = s.render(tx, ev, sess)
		return nil
	})
	return out, err
}

// members: GET /rooms/{roomId}/members
func (s *Server) members(r *http.Request, sess *Session) (any, error) {
	if s.AwaitFullState != nil {
		if err := s.AwaitFullState(r.Context(), r.PathValue("roomId")); err != nil {
			return nil, err
		}
	}
	q := r.URL.Query()
	membership, notMembership := q.Get("membership"), q.Get("not_membership")
	var chunk []*room.ClientEvent
	err := s.Store.View(func(tx *store.Tx) error {
		roomID := r.PathValue("roomId")
		st, err := s.viewState(tx, roomID, sess.UserID)
		if err != nil {
			return err
		}
		if at := q.Get("at"); at != "" {
			// Someone who left may look back, not past their leave.
			limit := uint64(math.MaxUint64)
			if vis := s.newVisibility(tx, roomID, sess.UserID); vis.current != "join" && vis.left != 0 {
				limit = vis.left
			}
			if st, err = s.stateAtToken(tx, roomID, at, limit, st); err != nil {
				return err
			}
		}
		evs, err := s.stateEvents(tx, st)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if ev.Type != "m.room.member" {
				continue
			}
			m := ev.Membership()
			if (membership != "" && m != membership) || (notMembership != "" && m == notMembership) {
				continue
			}
			chunk = append(chunk, s.render(tx, ev, sess))
		}
		return nil
	})
	if chunk == nil {
		chunk = []*room.ClientEvent{}
	}
	return map[string]any{"chunk": chunk}, err
}

// stateAtToken is the room state at a pagination or sync token, no later
// than stream position limit; fallback when the room had no events yet.
func (s *Server) stateAtToken(tx *store.Tx, roomID, token string, limit uint64, fallback *room.State) (*room.State, error) {
	pos, ok := parsePos(token)
	if !ok {
		return nil, errInvalidParam("Invalid token %q", token)
	}
	pos = min(pos, limit)
	r, err := tx.Room(roomID)
	if err != nil {
		return nil, err
	}
	var nid uint64
	tx.Timeline(r.NID, pos, true, func(_, n uint64) bool { nid = n; return false })
	if nid == 0 {
		// A token from before the room's first event (the prev_batch of a
		// timeline that starts at the create event): the room as it was
		// created, with its creator joined, rather than today's members
		// (Complement's TestGetRoomMembersAtPoint).
		tx.Timeline(r.NID, 0, false, func(_, n uint64) bool {
			ev, err := s.Rooms.Event(tx, n)
			if err == nil && ev.Type == "m.room.member" && ev.Membership() == "join" {
				nid = n
				return false
			}
			return err == nil && ev.Depth < 32 // only the creation's own events
		})
		if nid == 0 {
			return fallback, nil
		}
	}
	ev, err := s.Rooms.Event(tx, nid)
	if err != nil {
		return nil, err
	}
	return s.Rooms.StateAfter(tx, ev)
}

// joinedMembers: GET /rooms/{roomId}/joined_members
func (s *Server) joinedMembers(r *http.Request, sess *Session) (any, error) {
	if s.AwaitFullState != nil {
		if err := s.AwaitFullState(r.Context(), r.PathValue("roomId")); err != nil {
			return nil, err
		}
	}
	joined := map[string]any{}
	err := s.Store.View(func(tx *store.Tx) error {
		// The spec: "The current user must be in the room for it to work".
		_, st, err := s.requireJoined(tx, r.PathValue("roomId"), sess.UserID)
		if err != nil {
			return err
		}
		evs, err := s.stateEvents(tx, st)
		for _, ev := range evs {
			if ev.Type != "m.room.member" || ev.Membership() != "join" {
				continue
			}
			var c struct {
				DisplayName *string `json:"displayname"`
				AvatarURL   *string `json:"avatar_url"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			joined[*ev.StateKey] = map[string]any{"display_name": c.DisplayName, "avatar_url": c.AvatarURL}
		}
		return err
	})
	return map[string]any{"joined": joined}, err
}

// parsePos reads the stream position out of a sync or pagination token.
// Tokens look like "s123_456" (sync) or "t123" (pagination); the number
// after the first letter is a stream position. A sliding sync pos
// ("<conn>_<seq>_<stream>") is accepted too, as MSC4186 lets /messages
// and /relations take one.
func parsePos(token string) (uint64, bool) {
	if len(token) < 2 || (token[0] != 's' && token[0] != 't') {
		return posStream(token)
	}
	num := token[1:]
	if i := strings.IndexByte(num, '_'); i >= 0 {
		num = num[:i]
	}
	v, err := strconv.ParseUint(num, 10, 64)
	return v, err == nil
}

func pageToken(pos uint64) string { return "t" + strconv.FormatUint(pos, 10) }
