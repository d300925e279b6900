package client

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

// Delayed events (MSC4140): a client sends a message or state event with
// ?org.matrix.msc4140.delay=<ms>; the server keeps it and sends it when
// the delay runs out, unless it is cancelled, restarted or sent early
// through /delayed_events/{delay_id}/{action} first. The delay ID is the
// capability for those actions, which need no access token (a client
// hands it to a third party, e.g. a call's focus, for a "dead man's
// switch"). Pending events live in the store, so they survive restarts;
// RunDelayedEvents sends them when due.

const (
	msc4140Prefix = "/_matrix/client/unstable/org.matrix.msc4140"
	delayParam    = "org.matrix.msc4140.delay"

	nsDelayed       = "delayed"       // delay ID → delayedEvent
	nsDelayedByUser = "delayed_user"  // user \x00 delay ID → ""
	nsDelayedDue    = "delayed_due"   // 16 hex digits of due ms, delay ID → ""
	delayedTxnScope = "delayed_send:" // + room ID, for the txn ID map

	// maxEventDelay bounds how long an event may wait (Synapse makes this
	// max_event_delay_duration; M_MAX_DELAY_EXCEEDED above it).
	maxEventDelay = 7 * 24 * time.Hour
	// maxDelayedPerUser bounds the pending events of one user, so a client
	// cannot fill the store with events nobody will ever send.
	maxDelayedPerUser = 100
	// delayedPoll is how often the loop looks at the store even when no
	// write woke it (a safety net; writes wake it at once).
	delayedPoll = 5 * time.Second
)

// delayedEvent is one pending event as stored.
type delayedEvent struct {
	DelayID      string          `json:"delay_id"`
	UserID       string          `json:"user_id"`
	DeviceID     string          `json:"device_id"`
	RoomID       string          `json:"room_id"`
	Type         string          `json:"type"`
	StateKey     *string         `json:"state_key,omitempty"`
	Content      json.RawMessage `json:"content"`
	Delay        int64           `json:"delay"`         // ms
	RunningSince int64           `json:"running_since"` // ms since the epoch
}

func (d *delayedEvent) due() int64 { return d.RunningSince + d.Delay }

func dueKey(due int64, delayID string) string {
	return fmt.Sprintf("%016x", max(due, 0)) + delayID
}

// routesDelayed registers MSC4140's endpoints.
func (s *Server) routesDelayed() {
	s.authed("GET "+msc4140Prefix+"/delayed_events", s.listDelayed)
	s.handle("POST "+msc4140Prefix+"/delayed_events/{delayId}/{action}", s.updateDelayed)
}

// delayFromQuery reads ?org.matrix.msc4140.delay: ok is false when the
// request is not delayed.
func delayFromQuery(r *http.Request) (delay time.Duration, ok bool, err error) {
	v := r.URL.Query().Get(delayParam)
	if v == "" {
		return 0, false, nil
	}
	ms, perr := strconv.ParseInt(v, 10, 64)
	if perr != nil || ms < 0 {
		return 0, true, errInvalidParam("%s must be a non-negative integer", delayParam)
	}
	if ms > maxEventDelay.Milliseconds() {
		e := newErr(http.StatusBadRequest, "M_MAX_DELAY_EXCEEDED", "The delay may be at most %d ms", maxEventDelay.Milliseconds())
		return 0, true, e
	}
	return time.Duration(ms) * time.Millisecond, true, nil
}

// delayedTxnResult answers a repeated PUT /send with a delay and a txn ID
// already used by this device, before its body is read (a retry may come
// without one).
func (s *Server) delayedTxnResult(sess *Session, roomID, txnID string) (any, bool) {
	var delayID string
	_ = s.Store.View(func(tx *store.Tx) error {
		delayID, _ = tx.Txn(sess.UserID, sess.DeviceID, delayedTxnScope+roomID, txnID)
		return nil
	})
	if delayID == "" {
		return nil, false
	}
	return map[string]string{"delay_id": delayID}, true
}

// scheduleDelayed stores a delayed event for sess's user and answers its
// delay ID. txnID is "" for state events, which have none.
func (s *Server) scheduleDelayed(sess *Session, roomID string, p room.Proto, delay time.Duration, txnID string) (any, error) {
	if err := check(s.limits.send, sess.UserID); err != nil {
		return nil, err
	}
	d := &delayedEvent{
		DelayID: "syd_" + strings.ToLower(rand.Text()), UserID: sess.UserID, DeviceID: sess.DeviceID,
		RoomID: roomID, Type: p.Type, StateKey: p.StateKey, Content: p.Content,
		Delay: delay.Milliseconds(), RunningSince: time.Now().UnixMilli(),
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		if txnID != "" {
			if id, ok := tx.Txn(sess.UserID, sess.DeviceID, delayedTxnScope+d.RoomID, txnID); ok {
				d.DelayID = id
				return nil
			}
		}
		// The sender must be able to send now; whether the event is still
		// allowed is checked again when it is sent.
		r, st, err := s.requireJoined(tx, d.RoomID, sess.UserID)
		if err != nil {
			return err
		}
		if d.StateKey != nil {
			if err := s.checkStatePut(tx, r, st, d.Type, *d.StateKey, d.Content); err != nil {
				return err
			}
		}
		n := 0
		tx.ScanKV(nsDelayedByUser, sess.UserID+"\x00", func(string, []byte) bool { n++; return n < maxDelayedPerUser })
		if n >= maxDelayedPerUser {
			return newErr(http.StatusBadRequest, "M_LIMIT_EXCEEDED", "Too many delayed events pending")
		}
		putDelayed(tx, d)
		if txnID != "" {
			tx.PutTxn(sess.UserID, sess.DeviceID, delayedTxnScope+d.RoomID, txnID, d.DelayID)
		}
		tx.OnCommit(s.wakeDelayed)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"delay_id": d.DelayID}, nil
}

func putDelayed(tx *store.Tx, d *delayedEvent) {
	b, _ := json.Marshal(d)
	tx.PutKV(nsDelayed, d.DelayID, b)
	tx.PutKV(nsDelayedByUser, d.UserID+"\x00"+d.DelayID, nil)
	tx.PutKV(nsDelayedDue, dueKey(d.due(), d.DelayID), nil)
}

func deleteDelayed(tx *store.Tx, d *delayedEvent) {
	tx.DeleteKV(nsDelayed, d.DelayID)
	tx.DeleteKV(nsDelayedByUser, d.UserID+"\x00"+d.DelayID)
	tx.DeleteKV(nsDelayedDue, dueKey(d.due(), d.DelayID))
}

func loadDelayed(tx *store.Tx, delayID string) (*delayedEvent, error) {
	b, err := tx.GetKV(nsDelayed, delayID)
	if err != nil {
		return nil, err
	}
	var d delayedEvent
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// listDelayed: GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events
func (s *Server) listDelayed(r *http.Request, sess *Session) (any, error) {
	out := []any{}
	err := s.Store.View(func(tx *store.Tx) error {
		var ids []string
		tx.ScanKV(nsDelayedByUser, sess.UserID+"\x00", func(k string, _ []byte) bool {
			ids = append(ids, strings.TrimPrefix(k, sess.UserID+"\x00"))
			return true
		})
		for _, id := range ids {
			d, err := loadDelayed(tx, id)
			if err != nil {
				continue
			}
			ev := map[string]any{
				"delay_id": d.DelayID, "room_id": d.RoomID, "type": d.Type, "content": d.Content,
				"delay": d.Delay, "running_since": d.RunningSince,
			}
			if d.StateKey != nil {
				ev["state_key"] = *d.StateKey
			}
			out = append(out, ev)
		}
		return nil
	})
	return map[string]any{"delayed_events": out}, err
}

// updateDelayed: POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/{action}
//
// action is cancel, restart or send. No access token: knowing the delay
// ID is the permission, so requests are rate limited per client address.
func (s *Server) updateDelayed(r *http.Request) (any, error) {
	action := r.PathValue("action")
	if action != "cancel" && action != "restart" && action != "send" {
		return nil, errUnrecognized(http.StatusNotFound)
	}
	if err := check(s.limits.delayed, clientIP(r)); err != nil {
		return nil, err
	}
	delayID := r.PathValue("delayId")
	var send *delayedEvent
	err := s.Store.Write(func(tx *store.Tx) error {
		send = nil
		d, err := loadDelayed(tx, delayID)
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("No delayed event with this ID")
		} else if err != nil {
			return err
		}
		switch action {
		case "cancel":
			deleteDelayed(tx, d)
		case "restart":
			tx.DeleteKV(nsDelayedDue, dueKey(d.due(), d.DelayID))
			d.RunningSince = time.Now().UnixMilli()
			putDelayed(tx, d)
			tx.OnCommit(s.wakeDelayed)
		case "send":
			send = d
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if send != nil {
		if err := s.sendDelayed(send.DelayID, ""); err != nil {
			return nil, err
		}
	}
	return empty{}, nil
}

// sendDelayed sends a pending event and forgets it, in one transaction.
// The timer loop passes the due-index key it found (dueIdx): the event
// then stays pending if its delay has not run out (a restart raced the
// timer), and that index key goes in every case, so the loop never sees
// it twice. An event the room no longer allows is dropped, and the error
// is returned.
func (s *Server) sendDelayed(delayID, dueIdx string) error {
	var d *delayedEvent
	err := s.Store.Write(func(tx *store.Tx) error {
		var err error
		if dueIdx != "" {
			tx.DeleteKV(nsDelayedDue, dueIdx)
		}
		if d, err = loadDelayed(tx, delayID); errors.Is(err, store.ErrNotFound) {
			d = nil
			return nil // cancelled or sent meanwhile
		} else if err != nil {
			return err
		}
		if dueIdx != "" && d.due() > time.Now().UnixMilli() {
			d = nil
			return nil
		}
		deleteDelayed(tx, d)
		if _, _, err := s.requireJoined(tx, d.RoomID, d.UserID); err != nil {
			return err
		}
		if d.Type == "m.room.canonical_alias" && d.StateKey != nil && *d.StateKey == "" {
			if err := s.checkCanonicalAlias(tx, d.RoomID, d.Content); err != nil {
				return err
			}
		}
		_, err = s.Rooms.Send(tx, d.RoomID, room.Proto{Type: d.Type, StateKey: d.StateKey, Sender: d.UserID, Content: d.Content})
		return err
	})
	if err == nil {
		return nil
	}
	// Refused: forget it all the same, or it would be retried forever.
	_ = s.Store.Write(func(tx *store.Tx) error {
		if dueIdx != "" {
			tx.DeleteKV(nsDelayedDue, dueIdx)
		}
		if cur, lerr := loadDelayed(tx, delayID); lerr == nil {
			deleteDelayed(tx, cur)
		}
		return nil
	})
	return err
}

// wakeDelayed tells RunDelayedEvents that the earliest due time may have
// changed.
func (s *Server) wakeDelayed() {
	select {
	case s.delayedWake <- struct{}{}:
	default:
	}
}

// RunDelayedEvents sends delayed events as they fall due, until ctx is
// done. Events that fell due while the server was down go out at once.
func (s *Server) RunDelayedEvents(ctx context.Context) {
	for {
		var due []string // due-index keys
		next := time.Now().Add(delayedPoll)
		now := time.Now().UnixMilli()
		_ = s.Store.View(func(tx *store.Tx) error {
			tx.ScanKV(nsDelayedDue, "", func(k string, _ []byte) bool {
				if len(k) < 16 {
					return true
				}
				at, err := strconv.ParseInt(k[:16], 16, 64)
				if err != nil {
					return true
				}
				if at > now {
					if t := time.UnixMilli(at); t.Before(next) {
						next = t
					}
					return false
				}
				due = append(due, k)
				return true
			})
			return nil
		})
		for _, k := range due {
			if err := s.sendDelayed(k[16:], k); err != nil {
				s.Log.Warn("delayed event dropped", "delay_id", k[16:], "err", err)
			}
		}
		if len(due) > 0 {
			continue // look again: sending took time
		}
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-s.delayedWake:
		case <-timer.C:
		}
		timer.Stop()
	}
}
