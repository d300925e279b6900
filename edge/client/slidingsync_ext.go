package client

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"

	"edge/edge/store"
)

// Sliding sync extensions (MSC3884 to_device/e2ee, MSC3959 account_data,
// MSC3960 receipts, MSC3961 typing as MSC4186 keeps them, and MSC4308
// thread_subscriptions). Each is on when the request enables it; the
// account_data, receipts and typing extensions cover the rooms of the
// response's window (lists' ranges and room subscriptions).

const (
	threadSubsChangesPath  = "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions"
	threadSubsExtName      = "io.element.msc4308.thread_subscriptions"
	defaultThreadSubsLimit = 100
	maxThreadSubsLimit     = 1000
)

type ssExtensions struct {
	ToDevice    *ssToDeviceExt   `json:"to_device"`
	E2EE        *ssExtToggle     `json:"e2ee"`
	AccountData *ssExtToggle     `json:"account_data"`
	Receipts    *ssExtToggle     `json:"receipts"`
	Typing      *ssExtToggle     `json:"typing"`
	ThreadSubs  *ssThreadSubsExt `json:"io.element.msc4308.thread_subscriptions"`
}

type ssExtToggle struct {
	Enabled *bool `json:"enabled"`
	// Lists and Rooms narrow a per-room extension to the rooms of those
	// lists' windows and those room subscriptions ("*": all); with
	// neither, it covers every room of the response's window.
	Lists []string `json:"lists"`
	Rooms []string `json:"rooms"`
}

// scope picks the rooms of window an extension covers; inLists gives
// each room's lists, subs the room subscriptions.
func (t *ssExtToggle) scope(window []string, inLists map[string][]string, subs map[string]*ssRoomConfig) []string {
	if t.Lists == nil && t.Rooms == nil {
		return window
	}
	var out []string
	for _, id := range window {
		ok := false
		for _, l := range t.Lists {
			if l == "*" || slices.Contains(inLists[id], l) {
				ok = true
			}
		}
		for _, r := range t.Rooms {
			if _, sub := subs[id]; sub && (r == "*" || r == id) {
				ok = true
			}
		}
		if ok {
			out = append(out, id)
		}
	}
	return out
}

// on tells whether an extension is enabled (present, with enabled true).
func (t *ssExtToggle) on() bool { return t != nil && t.Enabled != nil && *t.Enabled }

type ssToDeviceExt struct {
	ssExtToggle
	Since string `json:"since"`
	// Limit caps the messages of one response (the rest follow with the
	// next since); Synapse's default is 100.
	Limit int `json:"limit"`
}

const (
	defaultToDeviceLimit = 100
	maxToDeviceLimit     = 1000
)

type ssThreadSubsExt struct {
	ssExtToggle
	Limit int `json:"limit"`
}

// ssExtensions answers the enabled extensions. rooms are the rooms of the
// response's window; base is the client's snapshot (nil: new connection).
func (s *Server) ssExtensions(tx *store.Tx, sess *Session, req *ssRequest, base *ssSnapshot, next syncToken, window []string, inLists map[string][]string, sentEvents map[string]map[string]bool) (map[string]any, bool) {
	out := map[string]any{}
	news := false
	since := uint64(0)
	if base != nil {
		since = base.stream.pos
	}
	// roomSince is where a room's stream starts for the client: from
	// scratch for a room it has not been sent before.
	roomSince := func(roomID string) (syncToken, bool) {
		if base == nil {
			return syncToken{}, false
		}
		prev, ok := base.rooms[roomID]
		if !ok {
			return syncToken{}, false
		}
		return syncToken{pos: prev.pos, typing: base.stream.typing}, true
	}
	ext := req.Extensions
	if ext.ToDevice != nil && ext.ToDevice.ssExtToggle.on() {
		from := uint64(0)
		if v, err := strconv.ParseUint(ext.ToDevice.Since, 10, 64); err == nil {
			from = v
		}
		limit := ext.ToDevice.Limit
		if limit <= 0 {
			limit = defaultToDeviceLimit
		}
		limit = min(limit, maxToDeviceLimit)
		var msgs []json.RawMessage
		upTo := next.pos
		if s.toDeviceAcks != nil {
			msgs, upTo = s.toDeviceLimited(tx, s.toDeviceAcks, sess, from, next.pos, limit)
		}
		if msgs == nil {
			msgs = []json.RawMessage{}
		}
		out["to_device"] = map[string]any{"next_batch": strconv.FormatUint(upTo, 10), "events": msgs}
		news = news || len(msgs) > 0
	}
	if ext.E2EE.on() {
		e := map[string]any{
			"device_one_time_keys_count":       otkCounts(tx, sess.UserID, sess.DeviceID),
			"device_unused_fallback_key_types": unusedFallbackTypes(tx, sess.UserID, sess.DeviceID),
			"device_lists":                     map[string]any{"changed": []string{}, "left": []string{}},
		}
		if base != nil {
			changed, left, err := s.deviceListChanges(tx, sess.UserID, since, next.pos)
			if err != nil {
				s.Log.Error("device list changes", "user", sess.UserID, "err", err)
			}
			e["device_lists"] = map[string]any{"changed": changed, "left": left}
			news = news || len(changed) > 0 || len(left) > 0
		}
		out["e2ee"] = e
	}
	if ext.AccountData.on() {
		global := []any{}
		ads, _ := tx.AccountDataSince(sess.UserID, since)
		for _, ad := range ads {
			if ad.RoomID == "" {
				global = append(global, map[string]any{"type": ad.Type, "content": ad.Content})
			}
		}
		byRoom := map[string]any{}
		roomAD := &roomAccountData{tx: tx, userID: sess.UserID}
		for _, id := range ext.AccountData.scope(window, inLists, req.RoomSubscriptions) {
			t, _ := roomSince(id)
			rads, _ := roomAD.room(id, t.pos)
			var evs []any
			for _, ad := range rads {
				evs = append(evs, map[string]any{"type": ad.Type, "content": ad.Content})
			}
			if len(evs) > 0 {
				byRoom[id] = evs
			}
		}
		out["account_data"] = map[string]any{"global": global, "rooms": byRoom}
		news = news || len(global) > 0 || len(byRoom) > 0
	}
	if ext.Receipts.on() || ext.Typing.on() {
		receipts, typing := map[string]any{}, map[string]any{}
		receiptRooms, typingRooms := map[string]bool{}, map[string]bool{}
		if ext.Receipts.on() {
			for _, id := range ext.Receipts.scope(window, inLists, req.RoomSubscriptions) {
				receiptRooms[id] = true
			}
		}
		if ext.Typing.on() {
			for _, id := range ext.Typing.scope(window, inLists, req.RoomSubscriptions) {
				typingRooms[id] = true
			}
		}
		for _, id := range window {
			wantR, wantT := receiptRooms[id], typingRooms[id]
			if !wantR && !wantT {
				continue
			}
			t, incremental := roomSince(id)
			for _, ev := range s.ephemeral(tx, sess, id, t, incremental, nil) {
				e, _ := ev.(map[string]any)
				switch e["type"] {
				case "m.typing":
					if wantT && (incremental || !noneTyping(e)) {
						typing[id] = e
					}
				case "m.receipt":
					if wantR {
						if !incremental {
							// A room new to the client: only receipts on the
							// events it is sent, and the user's own (a big
							// room's every receipt would swamp the response).
							e = trimReceipts(e, sentEvents[id], sess.UserID)
						}
						if e != nil {
							receipts[id] = mergeReceipts(receipts[id], e)
						}
					}
				}
			}
		}
		if ext.Receipts.on() {
			out["receipts"] = map[string]any{"rooms": receipts}
		}
		if ext.Typing.on() {
			out["typing"] = map[string]any{"rooms": typing}
		}
		news = news || len(receipts) > 0 || len(typing) > 0
	}
	if ext.ThreadSubs.ssExtToggleOn() {
		ts, tsNews := s.threadSubsExt(tx, sess, base, since, ext.ThreadSubs.Limit)
		out[threadSubsExtName] = ts
		news = news || tsNews
	}
	return out, news
}

// ssExtToggleOn is on() for the thread subscriptions extension, which
// MSC4308 turns on by its mere presence (Synapse wants enabled: true; an
// explicit false is honoured).
func (t *ssThreadSubsExt) ssExtToggleOn() bool {
	return t != nil && (t.Enabled == nil || *t.Enabled)
}

// noneTyping tells whether an m.typing event lists nobody.
func noneTyping(e map[string]any) bool {
	content, _ := e["content"].(map[string]any)
	users, _ := content["user_ids"].([]string)
	return len(users) == 0
}

// trimReceipts keeps, of an m.receipt event, the receipts on events in
// keep and those of self (nil: none left).
func trimReceipts(e map[string]any, keep map[string]bool, self string) map[string]any {
	content, _ := e["content"].(map[string]map[string]map[string]any)
	out := map[string]map[string]map[string]any{}
	for evID, byType := range content {
		for typ, users := range byType {
			for u, data := range users {
				if !keep[evID] && u != self {
					continue
				}
				if out[evID] == nil {
					out[evID] = map[string]map[string]any{}
				}
				if out[evID][typ] == nil {
					out[evID][typ] = map[string]any{}
				}
				out[evID][typ][u] = data
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return map[string]any{"type": "m.receipt", "content": out}
}

// mergeReceipts folds m.receipt event e into acc (one event per room, as
// the receipts extension sends; /sync sends one per thread).
func mergeReceipts(acc any, e map[string]any) map[string]any {
	prev, _ := acc.(map[string]any)
	if prev == nil {
		return e
	}
	content, _ := prev["content"].(map[string]map[string]map[string]any)
	more, _ := e["content"].(map[string]map[string]map[string]any)
	if content == nil {
		return e
	}
	for evID, byType := range more {
		if content[evID] == nil {
			content[evID] = byType
			continue
		}
		for typ, users := range byType {
			if content[evID][typ] == nil {
				content[evID][typ] = users
				continue
			}
			for u, data := range users {
				content[evID][typ][u] = data
			}
		}
	}
	return prev
}

// threadSubsExt lists the user's thread subscription changes after since
// (on a new connection, the current subscriptions), newest first, at most
// limit of them; prev_batch pages further back through
// threadSubscriptionChanges.
func (s *Server) threadSubsExt(tx *store.Tx, sess *Session, base *ssSnapshot, since uint64, limit int) (map[string]any, bool) {
	out, n, more, oldest := threadSubChanges(tx, sess.UserID, since, tx.Pos(), base == nil, limit)
	if more && oldest > 0 {
		out["prev_batch"] = strconv.FormatUint(oldest-1, 10)
	}
	return out, n > 0
}

// threadSubChanges lists the user's thread subscription changes at
// positions in (after, upTo], newest first, at most limit of them
// (currentOnly: only subscriptions, as a new connection needs); more
// tells whether older ones were left out, oldest is the oldest position
// included.
func threadSubChanges(tx *store.Tx, userID string, after, upTo uint64, currentOnly bool, limit int) (out map[string]any, n int, more bool, oldest uint64) {
	if limit <= 0 {
		limit = defaultThreadSubsLimit
	}
	limit = min(limit, maxThreadSubsLimit)
	type change struct {
		room, root string
		sub        threadSub
	}
	var changes []change
	prefix := userID + "\x1f"
	tx.ScanKV(threadSubsKV, prefix, func(key string, raw []byte) bool {
		roomID, rootID, ok := strings.Cut(strings.TrimPrefix(key, prefix), "\x1f")
		if !ok {
			return true
		}
		var sub threadSub
		if json.Unmarshal(raw, &sub) != nil {
			return true
		}
		if currentOnly {
			if !sub.Subscribed {
				return true
			}
		} else if sub.Pos <= after {
			return true
		}
		if sub.Pos > upTo {
			return true
		}
		changes = append(changes, change{roomID, rootID, sub})
		return true
	})
	sort.Slice(changes, func(i, j int) bool { return changes[i].sub.Pos > changes[j].sub.Pos })
	out = map[string]any{}
	if len(changes) > limit {
		changes, more = changes[:limit], true
	}
	subscribed, unsubscribed := map[string]map[string]any{}, map[string]map[string]any{}
	for _, c := range changes {
		target, entry := unsubscribed, map[string]any{"bump_stamp": c.sub.Pos}
		if c.sub.Subscribed {
			target = subscribed
			entry["automatic"] = c.sub.Automatic
		}
		if target[c.room] == nil {
			target[c.room] = map[string]any{}
		}
		target[c.room][c.root] = entry
		oldest = c.sub.Pos
	}
	if len(subscribed) > 0 {
		out["subscribed"] = subscribed
	}
	if len(unsubscribed) > 0 {
		out["unsubscribed"] = unsubscribed
	}
	return out, len(changes), more, oldest
}

// threadSubscriptionChanges: GET /_matrix/client/unstable/io.element.msc4308/thread_subscriptions
//
// Pages backwards (dir=b) through thread subscription changes: from (a
// prev_batch or end token; default: now) down to to (a sliding sync pos;
// default: the beginning).
func (s *Server) threadSubscriptionChanges(r *http.Request, sess *Session) (any, error) {
	q := r.URL.Query()
	if d := q.Get("dir"); d != "b" {
		return nil, errInvalidParam("dir must be b")
	}
	limit := defaultThreadSubsLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return nil, errInvalidParam("limit must be a positive integer")
		}
		limit = n
	}
	var to, from uint64
	if v := q.Get("to"); v != "" {
		var ok bool
		if to, ok = posStream(v); !ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, errInvalidParam("Invalid to token")
			}
			to = n
		}
	}
	var out map[string]any
	err := s.Store.View(func(tx *store.Tx) error {
		from = tx.Pos()
		if v := q.Get("from"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return errInvalidParam("Invalid from token")
			}
			from = n
		}
		var more bool
		var oldest uint64
		out, _, more, oldest = threadSubChanges(tx, sess.UserID, to, from, false, limit)
		if more && oldest > 0 {
			out["end"] = strconv.FormatUint(oldest-1, 10)
		}
		return nil
	})
	return out, err
}
