package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"

	"edge/edge/notify"
	"edge/edge/store"
)

// Send-to-device messaging
// (https://spec.matrix.org/latest/client-server-api/#send-to-device-messaging).
//
// A message is stored in the recipient device's inbox at the stream
// position of the request that sent it. A /sync with since S and next
// batch N delivers the messages at positions in (S, N]; a later /sync whose
// since is ≥ a message's position acknowledges it, and only then is it
// deleted. A client that retries with its old since gets the same
// messages again. Every pending message is delivered at once rather than
// 100 at a time: with one shared stream position in the sync token, a
// partial delivery could not be told apart from an acknowledgement.

// maxToDeviceMessages bounds one /sendToDevice request (recipient devices
// after "*" is expanded). matrix-rust-sdk sends at most 250 per request and
// Element Web's legacy crypto 20 users' devices, so this only stops abuse.
const maxToDeviceMessages = 10000

// toDeviceMessage is a stored message, in its /sync form.
type toDeviceMessage struct {
	Sender  string          `json:"sender"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// validPathValue rejects path values that are not UTF-8 (PathValue
// unescapes %FF), which would not survive JSON and could break KV keys.
func validPathValue(v string) bool { return v != "" && utf8.ValidString(v) }

// sendToDevice: PUT /sendToDevice/{eventType}/{txnId}
func (s *Server) sendToDevice(r *http.Request, sess *Session) (any, error) {
	evType, txnID := r.PathValue("eventType"), r.PathValue("txnId")
	if !validPathValue(evType) || !validPathValue(txnID) {
		return nil, errInvalidParam("Invalid event type or transaction ID")
	}
	var req struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Messages == nil {
		return nil, errMissingParam("Missing messages")
	}
	n := 0
	for userID, devices := range req.Messages {
		if _, ok := userServer(userID); !ok {
			return nil, errInvalidParam("Invalid user ID %q", userID)
		}
		for deviceID, content := range devices {
			if deviceID == "" || !isJSONObject(content) {
				return nil, errBadJSON("Message for %s %q must be an object", userID, deviceID)
			}
			n++
		}
	}
	if n > maxToDeviceMessages {
		return nil, newErr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "At most %d messages per request", maxToDeviceMessages)
	}
	const scope = "sendToDevice"
	// The EDU's message_id: unique per sender, and the same if this
	// transaction is retried (it is then not sent again anyway).
	messageID := sess.DeviceID + "/" + txnID
	err := s.Store.Write(func(tx *store.Tx) error {
		if _, done := tx.Txn(sess.UserID, sess.DeviceID, scope, txnID); done {
			return nil
		}
		tx.PutTxn(sess.UserID, sess.DeviceID, scope, txnID, evType)
		var pos uint64
		index := 0
		var woken []string
		remote := map[string]map[string]map[string]json.RawMessage{} // server → user → device → content
		for userID, devices := range req.Messages {
			if !s.isLocalUser(userID) {
				server, _ := userServer(userID)
				if remote[server] == nil {
					remote[server] = map[string]map[string]json.RawMessage{}
				}
				remote[server][userID] = devices
				continue
			}
			ok, err := s.storeToDevice(tx, sess.UserID, evType, userID, devices, &pos, &index)
			if err != nil {
				return err
			}
			if ok {
				woken = append(woken, notify.UserKey(userID))
			}
		}
		s.queueRemoteToDevice(tx, sess.UserID, evType, messageID, remote)
		tx.OnCommit(func() { s.Notifier.Notify(woken...) })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

// storeToDevice puts one local user's messages into their devices' inboxes
// at *pos (allocated on first use), numbering them from *index; it reports
// whether any device got one.
func (s *Server) storeToDevice(tx *store.Tx, sender, evType, userID string, devices map[string]json.RawMessage, pos *uint64, index *int) (bool, error) {
	targets, err := toDeviceTargets(tx, userID, devices)
	if err != nil {
		return false, err
	}
	for _, t := range targets {
		if s.AppServiceFeed != nil && s.AppServiceFeed.ToDevice(tx, sender, evType, userID, t.deviceID, t.content) {
			continue // an application service's device: the AS gets it
		}
		if *pos == 0 {
			*pos = tx.NextPos()
		}
		msg, _ := json.Marshal(toDeviceMessage{Sender: sender, Type: evType, Content: t.content})
		tx.PutKV(nsToDevice, e2eeKey(userID, t.deviceID, posKey(*pos), fmt.Sprintf("%08x", *index)), msg)
		*index++
	}
	return len(targets) > 0, nil
}

type toDeviceTarget struct {
	deviceID string
	content  json.RawMessage
}

// toDeviceTargets resolves one user's device → content map against the
// user's devices: unknown devices are dropped, "*" reaches every device
// not addressed by name (one message per device per request).
func toDeviceTargets(tx *store.Tx, userID string, devices map[string]json.RawMessage) ([]toDeviceTarget, error) {
	all, err := tx.Devices(userID)
	if err != nil {
		return nil, err
	}
	var out []toDeviceTarget
	star, hasStar := devices["*"]
	for _, d := range all {
		if c, ok := devices[d.DeviceID]; ok {
			out = append(out, toDeviceTarget{d.DeviceID, c})
		} else if hasStar {
			out = append(out, toDeviceTarget{d.DeviceID, star})
		}
	}
	return out, nil
}

// toDeviceAcks remembers acknowledgements whose deletion has not committed
// yet, so a retry with an older since does not see acknowledged messages
// in the meantime. /sync reads in a read-only transaction, so deleting
// happens in a write of its own.
type toDeviceAcks struct {
	mu   sync.Mutex
	upTo map[string]uint64 // user, device → acknowledged up to this position
}

func newToDeviceAcks() *toDeviceAcks { return &toDeviceAcks{upTo: map[string]uint64{}} }

// acked returns the position up to which a device's messages are acknowledged
// but maybe not yet deleted.
func (a *toDeviceAcks) acked(key string) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.upTo[key]
}

// ack deletes a device's messages up to pos in the background.
func (s *Server) ackToDevice(a *toDeviceAcks, userID, deviceID string, pos uint64) {
	key := e2eeKey(userID, deviceID)
	a.mu.Lock()
	if a.upTo[key] >= pos {
		a.mu.Unlock()
		return
	}
	a.upTo[key] = pos
	a.mu.Unlock()
	go func() {
		err := s.Store.Write(func(tx *store.Tx) error {
			p := e2eePrefix(userID, deviceID)
			var keys []string
			tx.ScanKV(nsToDevice, p, func(k string, _ []byte) bool {
				if parsePosKey(strings.SplitN(strings.TrimPrefix(k, p), e2eeSep, 2)[0]) > pos {
					return false
				}
				keys = append(keys, k)
				return true
			})
			for _, k := range keys {
				tx.DeleteKV(nsToDevice, k)
			}
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrClosed) {
			s.Log.Warn("deleting acknowledged to-device messages", "user", userID, "device", deviceID, "err", err)
		}
		a.mu.Lock()
		if a.upTo[key] == pos {
			delete(a.upTo, key) // committed (or failed: the next sync acks again)
		}
		a.mu.Unlock()
	}()
}

// toDeviceSince returns the syncing device's messages at positions in
// (since, next], and acknowledges those at or before since.
func (s *Server) toDeviceSince(tx *store.Tx, acks *toDeviceAcks, sess *Session, since, next uint64) []json.RawMessage {
	out, _ := s.toDeviceLimited(tx, acks, sess, since, next, 0)
	return out
}

// toDeviceLimited is toDeviceSince with at most limit messages (0: no
// limit), cut only between stream positions; upTo is the position the
// messages returned reach (next when none were held back), for the
// client's next since.
func (s *Server) toDeviceLimited(tx *store.Tx, acks *toDeviceAcks, sess *Session, since, next uint64, limit int) (out []json.RawMessage, upTo uint64) {
	out, upTo = []json.RawMessage{}, next
	p := e2eePrefix(sess.UserID, sess.DeviceID)
	lower := max(since, acks.acked(e2eeKey(sess.UserID, sess.DeviceID)))
	stale := false
	tx.ScanKV(nsToDevice, p, func(k string, _ []byte) bool {
		stale = parsePosKey(strings.SplitN(strings.TrimPrefix(k, p), e2eeSep, 2)[0]) <= since
		return false
	})
	if stale {
		s.ackToDevice(acks, sess.UserID, sess.DeviceID, since)
	}
	var last uint64
	tx.ScanKVFrom(nsToDevice, p+posKey(lower+1), func(k string, v []byte) bool {
		if !strings.HasPrefix(k, p) {
			return false
		}
		pos := parsePosKey(strings.SplitN(strings.TrimPrefix(k, p), e2eeSep, 2)[0])
		if pos > next {
			return false
		}
		if limit > 0 && len(out) >= limit && pos != last {
			upTo = last
			return false
		}
		last = pos
		out = append(out, bytes.Clone(v)) // v lives only as long as tx
		return true
	})
	return out, upTo
}
