package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"

	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

// routesEphemeral registers the modules whose data lives beside the room
// graph: typing, receipts, read markers and presence.
func (s *Server) routesEphemeral() {
	s.authed("PUT /rooms/{roomId}/typing/{userId}", s.putTyping)
	s.authed("POST /rooms/{roomId}/receipt/{receiptType}/{eventId}", s.postReceipt)
	s.authed("POST /rooms/{roomId}/read_markers", s.postReadMarkers)
	s.routesPresence()
}

// defaultTypingTimeout applies when typing=true comes without a timeout;
// the spec makes timeout optional and Synapse uses 30s.
const defaultTypingTimeout = 30 * time.Second

// putTyping: PUT /rooms/{roomId}/typing/{userId}
func (s *Server) putTyping(r *http.Request, sess *Session) (any, error) {
	roomID, userID := r.PathValue("roomId"), r.PathValue("userId")
	if userID != sess.UserID {
		return nil, errForbidden("Cannot set another user's typing state")
	}
	var body struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Typing == nil {
		return nil, errBadJSON("typing must be a boolean")
	}
	timeout := defaultTypingTimeout
	if body.Timeout != nil {
		timeout = time.Duration(max(*body.Timeout, 0)) * time.Millisecond
	}
	if err := s.Store.View(func(tx *store.Tx) error {
		_, _, err := s.requireJoined(tx, roomID, sess.UserID)
		return err
	}); err != nil {
		return nil, err
	}
	s.Typing.Set(roomID, sess.UserID, *body.Typing, timeout) // wakes the room's syncs itself
	s.federateTyping(roomID, sess.UserID, *body.Typing, timeout)
	return empty{}, nil
}

// Receipt types a client may send (receipts.yaml, receiptType enum).
const (
	receiptRead        = "m.read"
	receiptReadPrivate = "m.read.private"
	receiptFullyRead   = "m.fully_read"
)

// mainThread is the thread ID of the main timeline (spec: threaded read receipts).
const mainThread = "main"

// postReceipt: POST /rooms/{roomId}/receipt/{receiptType}/{eventId}
func (s *Server) postReceipt(r *http.Request, sess *Session) (any, error) {
	roomID, rType, eventID := r.PathValue("roomId"), r.PathValue("receiptType"), r.PathValue("eventId")
	switch rType {
	case receiptRead, receiptReadPrivate, receiptFullyRead:
	default:
		return nil, errInvalidParam("Receipt type must be one of m.read, m.read.private, m.fully_read")
	}
	raw, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, errBadJSON("Body must be a JSON object")
	}
	threadID := ""
	if v, ok := body["thread_id"]; ok {
		if json.Unmarshal(v, &threadID) != nil || threadID == "" {
			return nil, errInvalidParam("thread_id field must be a non-empty string")
		}
		if rType == receiptFullyRead {
			return nil, errInvalidParam("thread_id is not compatible with m.fully_read")
		}
	}
	err = s.Store.Write(func(tx *store.Tx) error {
		if _, _, err := s.requireJoined(tx, roomID, sess.UserID); err != nil {
			return err
		}
		ev, err := s.roomEvent(tx, roomID, eventID)
		if err != nil {
			return err
		}
		if threadID != "" && !s.inThread(tx, ev, threadID) {
			return errInvalidParam("event_id %s is not related to thread %s", eventID, threadID)
		}
		if rType == receiptFullyRead {
			s.putFullyRead(tx, sess.UserID, roomID, eventID)
		} else {
			s.putReceipt(tx, sess.UserID, rType, threadID, ev)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

// postReadMarkers: POST /rooms/{roomId}/read_markers
func (s *Server) postReadMarkers(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	var body struct {
		FullyRead   *string `json:"m.fully_read"`
		Read        *string `json:"m.read"`
		ReadPrivate *string `json:"m.read.private"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	// Empty values are skipped, as Synapse does; unknown keys are ignored
	// so receipt types can be added later.
	set := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	fullyRead, read, readPrivate := set(body.FullyRead), set(body.Read), set(body.ReadPrivate)
	err := s.Store.Write(func(tx *store.Tx) error {
		if _, _, err := s.requireJoined(tx, roomID, sess.UserID); err != nil {
			return err
		}
		for _, m := range []struct{ rType, eventID string }{
			{receiptFullyRead, fullyRead}, {receiptRead, read}, {receiptReadPrivate, readPrivate},
		} {
			if m.eventID == "" {
				continue
			}
			ev, err := s.roomEvent(tx, roomID, m.eventID)
			if err != nil {
				return err
			}
			if m.rType == receiptFullyRead {
				s.putFullyRead(tx, sess.UserID, roomID, ev.ID)
			} else {
				s.putReceipt(tx, sess.UserID, m.rType, "", ev)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

// roomEvent loads an event that must belong to roomID (404 otherwise,
// as Synapse answers for events the user cannot see).
func (s *Server) roomEvent(tx *store.Tx, roomID, eventID string) (*room.Event, error) {
	ev, err := s.Rooms.EventByID(tx, eventID)
	if errors.Is(err, room.ErrEventNotFound) || (err == nil && ev.RoomID != roomID) {
		return nil, errNotFound("Event %s not found in room %s", eventID, roomID)
	}
	return ev, err
}

// putReceipt stores a read receipt and wakes the room. Like Synapse, a
// receipt older than the one it would replace is ignored: read-up-to
// markers do not move backwards.
func (s *Server) putReceipt(tx *store.Tx, userID, rType, threadID string, ev *room.Event) {
	if old, err := tx.Receipt(ev.RoomID, rType, userID, threadID); err == nil {
		if prev, err := s.Rooms.EventByID(tx, old.EventID); err == nil && prev.Pos > ev.Pos {
			return
		}
	}
	rc := &store.Receipt{RoomID: ev.RoomID, Type: rType, UserID: userID, ThreadID: threadID,
		EventID: ev.ID, TS: time.Now().UnixMilli()}
	tx.PutReceipt(rc)
	s.federateReceipt(tx, rc)
	s.feedReceipt(tx, rc)
	roomID := ev.RoomID
	tx.OnCommit(func() {
		s.forgetUnread(userID) // a threaded receipt changes what counts
		s.Notifier.Notify(notify.RoomKey(roomID))
	})
}

// putFullyRead moves the m.fully_read marker (room account data); it may
// move backwards, so a user can undo an accidental "mark as read".
func (s *Server) putFullyRead(tx *store.Tx, userID, roomID, eventID string) {
	content, _ := json.Marshal(map[string]string{"event_id": eventID})
	tx.PutAccountData(userID, roomID, receiptFullyRead, content)
	tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(userID)) })
}

// maxThreadHops bounds how far threadOf follows relations; the spec
// recommends 3 hops.
const maxThreadHops = 3

// relationOf reads an event's m.relates_to.
func relationOf(content json.RawMessage) (relType, parent string) {
	var c struct {
		RelatesTo *struct {
			RelType string `json:"rel_type"`
			EventID string `json:"event_id"`
		} `json:"m.relates_to"`
	}
	if json.Unmarshal(content, &c) != nil || c.RelatesTo == nil {
		return "", ""
	}
	return c.RelatesTo.RelType, c.RelatesTo.EventID
}

// threadOf returns the thread an event is in (mainThread outside any) and
// the events its non-thread relations lead through on the way.
func (s *Server) threadOf(tx *store.Tx, ev *room.Event) (string, []string) {
	var chain []string
	cur := ev
	for range maxThreadHops {
		relType, parent := relationOf(cur.Content)
		if parent == "" {
			break
		}
		if relType == "m.thread" {
			return parent, chain
		}
		chain = append(chain, parent)
		next, err := s.Rooms.EventByID(tx, parent)
		if err != nil || next.RoomID != ev.RoomID {
			break
		}
		cur = next
	}
	return mainThread, chain
}

// inThread tells whether a receipt for threadID may point at ev: ev is
// in that thread, is its root, or relates to the root (as Synapse checks).
func (s *Server) inThread(tx *store.Tx, ev *room.Event, threadID string) bool {
	thread, chain := s.threadOf(tx, ev)
	if threadID == mainThread {
		return thread == mainThread
	}
	return thread == threadID || ev.ID == threadID || slices.Contains(chain, threadID)
}
