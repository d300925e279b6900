package client

import (
	"encoding/json"
	"net/http"
	"strings"

	"edge/edge/notify"
	"edge/edge/store"
)

// Thread subscriptions (MSC4306, unstable prefix io.element.msc4306): a
// user subscribes to a thread by hand, or a client subscribes them
// automatically because of an event in the thread (e.g. a mention). An
// unsubscription remembers the stream position it happened at, so an
// automatic subscription caused by an event the user had already seen
// when they unsubscribed is refused rather than undoing their choice.

const (
	threadSubsKV   = "threadsub"
	threadSubsBase = "/_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription"
)

// threadSub is one user's record for one thread.
type threadSub struct {
	Subscribed bool `json:"subscribed"`
	Automatic  bool `json:"automatic,omitempty"`
	// UnsubscribedAt is the stream position at the last unsubscription
	// (0: never unsubscribed).
	UnsubscribedAt uint64 `json:"unsubscribed_at,omitempty"`
	// Pos is the stream position of the last change, for sliding sync's
	// thread_subscriptions extension (MSC4308): its bump_stamp.
	Pos uint64 `json:"pos,omitempty"`
}

func (s *Server) routesThreadSubscriptions() {
	s.authed("GET "+threadSubsBase, s.getThreadSubscription)
	s.authed("PUT "+threadSubsBase, s.putThreadSubscription)
	s.authed("DELETE "+threadSubsBase, s.deleteThreadSubscription)
}

func threadSubKey(userID, roomID, rootID string) string {
	return strings.Join([]string{userID, roomID, rootID}, "\x1f")
}

func loadThreadSub(tx *store.Tx, key string) threadSub {
	var sub threadSub
	if raw, err := tx.GetKV(threadSubsKV, key); err == nil {
		_ = json.Unmarshal(raw, &sub)
	}
	return sub
}

// saveThreadSub stores a changed record at a new stream position and
// wakes the user's syncs, which carry the change (MSC4308).
func (s *Server) saveThreadSub(tx *store.Tx, userID, key string, sub threadSub) {
	sub.Pos = tx.NextPos()
	raw, _ := json.Marshal(sub)
	tx.PutKV(threadSubsKV, key, raw)
	tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(userID)) })
}

// threadRoot checks that the path's thread root is an event of the room
// the user may see: 404 otherwise, as for any event lookup.
func (s *Server) threadRoot(tx *store.Tx, r *http.Request, sess *Session) (string, error) {
	roomID, rootID := r.PathValue("roomId"), r.PathValue("threadRootId")
	if _, _, err := s.visibleEvent(tx, roomID, rootID, sess.UserID); err != nil {
		return "", err
	}
	return threadSubKey(sess.UserID, roomID, rootID), nil
}

// getThreadSubscription: GET /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription
func (s *Server) getThreadSubscription(r *http.Request, sess *Session) (any, error) {
	var resp map[string]bool
	err := s.Store.View(func(tx *store.Tx) error {
		key, err := s.threadRoot(tx, r, sess)
		if err != nil {
			return err
		}
		sub := loadThreadSub(tx, key)
		if !sub.Subscribed {
			return errNotFound("Not subscribed to this thread")
		}
		resp = map[string]bool{"automatic": sub.Automatic}
		return nil
	})
	return resp, err
}

// putThreadSubscription: PUT /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription
//
// An empty body subscribes by hand (replacing an automatic subscription);
// {"automatic": "$event"} subscribes because of $event, which must be in
// the thread and newer than the last unsubscription. An automatic
// subscription never downgrades a manual one.
func (s *Server) putThreadSubscription(r *http.Request, sess *Session) (any, error) {
	var body struct {
		Automatic *string `json:"automatic"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Automatic != nil && *body.Automatic == "" {
		return nil, errInvalidParam("automatic must be an event ID")
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		key, err := s.threadRoot(tx, r, sess)
		if err != nil {
			return err
		}
		sub := loadThreadSub(tx, key)
		if body.Automatic == nil {
			sub.Subscribed, sub.Automatic = true, false
			s.saveThreadSub(tx, sess.UserID, key, sub)
			return nil
		}
		cause, _, err := s.visibleEvent(tx, r.PathValue("roomId"), *body.Automatic, sess.UserID)
		if err != nil {
			return err
		}
		if rel, parent := eventRelation(cause); rel != "m.thread" || parent != r.PathValue("threadRootId") {
			return newErr(http.StatusBadRequest, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD", "The automatic subscription's cause is not in this thread")
		}
		if sub.UnsubscribedAt != 0 && cause.Pos <= sub.UnsubscribedAt {
			return newErr(http.StatusConflict, "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION",
				"The user unsubscribed from this thread after its cause event")
		}
		if sub.Subscribed {
			return nil // already subscribed; a manual subscription stays manual
		}
		sub.Subscribed, sub.Automatic = true, true
		s.saveThreadSub(tx, sess.UserID, key, sub)
		return nil
	})
}

// deleteThreadSubscription: DELETE /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription
//
// Succeeds whether or not the user was subscribed, and records when.
func (s *Server) deleteThreadSubscription(r *http.Request, sess *Session) (any, error) {
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		key, err := s.threadRoot(tx, r, sess)
		if err != nil {
			return err
		}
		sub := loadThreadSub(tx, key)
		sub.Subscribed, sub.Automatic, sub.UnsubscribedAt = false, false, tx.Pos()
		s.saveThreadSub(tx, sess.UserID, key, sub)
		return nil
	})
}
