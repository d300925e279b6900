package client

import (
	"encoding/json"
	"errors"
	"net/http"

	"edge/edge/notify"
	"edge/edge/push"
	"edge/edge/room"
	"edge/edge/store"
)

// pushNamespace holds each user's push.State (their own rules and their
// changes to server defaults), keyed by user ID.
const pushNamespace = "push_rules"

// pushRulesType is the global account data event that mirrors the
// ruleset; Element reads push rules from /sync account_data.
const pushRulesType = "m.push_rules"

// routesPush registers the push rules API, the initial-sync m.push_rules
// fallback and the unread notification counts.
func (s *Server) routesPush() {
	s.authed("GET /pushrules/{$}", s.getPushRules)
	s.authed("GET /pushrules/{scope}/{$}", s.getPushRuleset)
	s.authed("GET /pushrules/{scope}/{kind}/{$}", s.getPushRuleKind)
	s.authed("GET /pushrules/{scope}/{kind}/{ruleId}", s.getPushRule)
	s.authed("PUT /pushrules/{scope}/{kind}/{ruleId}", s.putPushRule)
	s.authed("DELETE /pushrules/{scope}/{kind}/{ruleId}", s.deletePushRule)
	s.authed("GET /pushrules/{scope}/{kind}/{ruleId}/enabled", s.getPushRuleEnabled)
	s.authed("PUT /pushrules/{scope}/{kind}/{ruleId}/enabled", s.putPushRuleEnabled)
	s.authed("GET /pushrules/{scope}/{kind}/{ruleId}/actions", s.getPushRuleActions)
	s.authed("PUT /pushrules/{scope}/{kind}/{ruleId}/actions", s.putPushRuleActions)
	s.SyncExtensions = append(s.SyncExtensions, s.pushRulesSync)
	s.UnreadCounts = s.unreadCounts
	s.UnreadThreadCounts = s.unreadThreadCounts
	s.routesPushers()
}

// pushDefaults is the server-default ruleset for a user.
func pushDefaults(userID string) *push.Ruleset {
	// Legacy mention rules: Synapse still ships them, and clients that don't send m.mentions need them.
	return push.DefaultRulesetWith(userID, localpart(userID), push.DefaultOptions{LegacyMentions: true})
}

// loadPushRules binds a user's stored state to the server defaults.
func (s *Server) loadPushRules(tx *store.Tx, userID string) (*push.Rules, error) {
	blob, err := tx.GetKV(pushNamespace, userID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	st, err := push.LoadState(blob)
	if err != nil {
		return nil, err
	}
	return push.NewRules(st, pushDefaults(userID)), nil
}

// viewPushRules runs fn on a user's rules in a read transaction.
func (s *Server) viewPushRules(userID string, fn func(*push.Rules) (any, error)) (any, error) {
	var out any
	err := s.Store.View(func(tx *store.Tx) error {
		rules, err := s.loadPushRules(tx, userID)
		if err != nil {
			return err
		}
		out, err = fn(rules)
		return err
	})
	if err != nil {
		return nil, pushError(err)
	}
	return out, nil
}

// changePushRules applies change to a user's rules, stores the state and
// mirrors the whole ruleset into m.push_rules account data.
func (s *Server) changePushRules(userID string, change func(*push.Rules) error) (any, error) {
	err := s.Store.Write(func(tx *store.Tx) error {
		rules, err := s.loadPushRules(tx, userID)
		if err != nil {
			return err
		}
		if err := change(rules); err != nil {
			return err
		}
		return s.storePushRules(tx, userID, rules)
	})
	if err != nil {
		return nil, pushError(err)
	}
	return empty{}, nil
}

// storePushRules stores a user's changed rules and mirrors the whole
// ruleset into m.push_rules account data.
func (s *Server) storePushRules(tx *store.Tx, userID string, rules *push.Rules) error {
	blob, err := rules.State.Marshal()
	if err != nil {
		return err
	}
	content, err := json.Marshal(push.Rulesets{Global: rules.Ruleset()})
	if err != nil {
		return err
	}
	tx.PutKV(pushNamespace, userID, blob)
	tx.PutAccountData(userID, "", pushRulesType, content)
	tx.OnCommit(func() {
		s.forgetUnread(userID) // counted under the old rules
		s.Notifier.Notify(notify.UserKey(userID))
	})
	return nil
}

// pushError maps edge/push sentinels to Matrix errors. The spec's only
// 400 example (before/after) uses M_UNKNOWN.
func pushError(err error) error {
	switch {
	case errors.Is(err, push.ErrRuleNotFound):
		return errNotFound("%s", err.Error())
	case errors.Is(err, push.ErrBadBeforeAfter):
		return newErr(http.StatusBadRequest, "M_UNKNOWN", "%s", err.Error())
	case errors.Is(err, push.ErrInvalidRule), errors.Is(err, push.ErrUnknownKind), errors.Is(err, push.ErrUnknownScope):
		return errInvalidParam("%s", err.Error())
	case errors.Is(err, push.ErrBadJSON):
		return errBadJSON("%s", err.Error())
	}
	return err
}

// pushPath reads scope, kind and rule ID from the path, checking the scope.
func pushPath(r *http.Request) (push.Kind, string, error) {
	if err := push.CheckScope(r.PathValue("scope")); err != nil {
		return "", "", pushError(err)
	}
	return push.Kind(r.PathValue("kind")), r.PathValue("ruleId"), nil
}

// getPushRules: GET /pushrules/
func (s *Server) getPushRules(r *http.Request, sess *Session) (any, error) {
	return s.viewPushRules(sess.UserID, func(rules *push.Rules) (any, error) {
		return push.Rulesets{Global: rules.Ruleset()}, nil
	})
}

// getPushRuleset: GET /pushrules/global/
func (s *Server) getPushRuleset(r *http.Request, sess *Session) (any, error) {
	if err := push.CheckScope(r.PathValue("scope")); err != nil {
		return nil, pushError(err)
	}
	return s.viewPushRules(sess.UserID, func(rules *push.Rules) (any, error) {
		return rules.Ruleset(), nil
	})
}

// getPushRuleKind: GET /pushrules/global/{kind}/ (not in the spec; Synapse
// serves it and some clients call it).
func (s *Server) getPushRuleKind(r *http.Request, sess *Session) (any, error) {
	kind, _, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	if !kind.Valid() {
		return nil, errInvalidParam("Unknown push rule kind %q", string(kind))
	}
	return s.viewPushRules(sess.UserID, func(rules *push.Rules) (any, error) {
		list := rules.Ruleset().Rules(kind)
		if list == nil {
			list = []push.PushRule{}
		}
		return list, nil
	})
}

// getPushRule: GET /pushrules/global/{kind}/{ruleId}
func (s *Server) getPushRule(r *http.Request, sess *Session) (any, error) {
	kind, ruleID, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	return s.viewPushRules(sess.UserID, func(rules *push.Rules) (any, error) {
		rule, err := rules.Get(push.ScopeGlobal, kind, ruleID)
		if errors.Is(err, push.ErrUnknownKind) {
			// The spec's GET answers 200 or 404: a kind this server does not
			// have (e.g. MSC4306's postcontent) holds no such rule. Clients
			// probe for optional rules this way before disabling them.
			return nil, errNotFound("No push rule %s/%s", kind, ruleID)
		}
		return rule, err
	})
}

// putPushRule: PUT /pushrules/global/{kind}/{ruleId}?before=…&after=…
func (s *Server) putPushRule(r *http.Request, sess *Session) (any, error) {
	kind, ruleID, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	var body json.RawMessage
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	return s.changePushRules(sess.UserID, func(rules *push.Rules) error {
		return rules.Put(kind, ruleID, body, q.Get("before"), q.Get("after"))
	})
}

// deletePushRule: DELETE /pushrules/global/{kind}/{ruleId}
func (s *Server) deletePushRule(r *http.Request, sess *Session) (any, error) {
	kind, ruleID, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	return s.changePushRules(sess.UserID, func(rules *push.Rules) error {
		return rules.Delete(kind, ruleID)
	})
}

// getPushRuleEnabled: GET /pushrules/global/{kind}/{ruleId}/enabled
func (s *Server) getPushRuleEnabled(r *http.Request, sess *Session) (any, error) {
	kind, ruleID, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	return s.viewPushRules(sess.UserID, func(rules *push.Rules) (any, error) {
		enabled, err := rules.GetEnabled(kind, ruleID)
		return map[string]bool{"enabled": enabled}, err
	})
}

// putPushRuleEnabled: PUT /pushrules/global/{kind}/{ruleId}/enabled
func (s *Server) putPushRuleEnabled(r *http.Request, sess *Session) (any, error) {
	kind, ruleID, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Enabled *bool `json:"enabled"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Enabled == nil {
		return nil, errBadJSON("enabled must be a boolean")
	}
	return s.changePushRules(sess.UserID, func(rules *push.Rules) error {
		return rules.SetEnabled(kind, ruleID, *body.Enabled)
	})
}

// getPushRuleActions: GET /pushrules/global/{kind}/{ruleId}/actions
func (s *Server) getPushRuleActions(r *http.Request, sess *Session) (any, error) {
	kind, ruleID, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	return s.viewPushRules(sess.UserID, func(rules *push.Rules) (any, error) {
		actions, err := rules.GetActions(kind, ruleID)
		return map[string]push.Actions{"actions": actions}, err
	})
}

// putPushRuleActions: PUT /pushrules/global/{kind}/{ruleId}/actions
func (s *Server) putPushRuleActions(r *http.Request, sess *Session) (any, error) {
	kind, ruleID, err := pushPath(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Actions push.Actions `json:"actions"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	return s.changePushRules(sess.UserID, func(rules *push.Rules) error {
		return rules.SetActions(kind, ruleID, body.Actions) // nil (absent) is ErrInvalidRule
	})
}

// pushRulesSync puts m.push_rules into an initial sync's account data for
// a user who never changed a rule (and so has none stored): clients such
// as Element read the ruleset only from there.
func (s *Server) pushRulesSync(tx *store.Tx, sess *Session, _, _ uint64, initial bool, resp map[string]any) bool {
	if !initial {
		return false
	}
	if _, err := tx.AccountData(sess.UserID, "", pushRulesType); err == nil {
		return false // stored: the account-data stream (and its filter) has it
	}
	rules, err := s.loadPushRules(tx, sess.UserID)
	if err != nil {
		return false
	}
	content, err := json.Marshal(push.Rulesets{Global: rules.Ruleset()})
	if err != nil {
		return false
	}
	ev := map[string]any{"type": pushRulesType, "content": json.RawMessage(content)}
	ad, _ := resp["account_data"].(eventsJSON)
	for _, e := range ad.Events {
		if m, ok := e.(map[string]any); ok && m["type"] == pushRulesType {
			return false
		}
	}
	ad.Events = append(ad.Events, ev)
	resp["account_data"] = ad
	return false
}

// maxUnreadScan bounds how many timeline events unread counting reads per
// room and sync: a room with more unread events than this reports counts
// over the newest maxUnreadScan only.
const maxUnreadScan = 1000

// unreadCounts computes a joined room's unread_notifications: the events
// after the user's read-up-to mark (the later of m.read and
// m.read.private, per thread as the spec's threaded receipts say) that
// others sent and the user's push rules make notify or highlight.
// unreadMemo remembers a (user, room)'s counts up to a stream position,
// so each /sync evaluates only the events that arrived since, not the
// whole unread backlog. An entry is valid while its fingerprint (the
// user's membership event and read-up-to position) is unchanged; receipts
// and push-rule changes drop the user's entries (forgetUnread).
type unreadMemo struct {
	fingerprint [2]uint64
	upTo        uint64
	counts      [2]int
	scanned     int
	// threads holds per-thread counts in entries of unreadThreadCounts
	// (counts is then the main timeline's); never modified once stored.
	threads map[string][2]int
}

func (s *Server) forgetUnread(userID string) {
	s.unreadMu.Lock()
	for k := range s.unread {
		if k[0] == userID {
			delete(s.unread, k)
		}
	}
	s.unreadMu.Unlock()
}

func (s *Server) unreadCounts(tx *store.Tx, userID, roomID string) map[string]int {
	counts := map[string]int{"notification_count": 0, "highlight_count": 0}
	r, err := tx.Room(roomID)
	if err != nil {
		return counts
	}
	m, err := tx.Membership(userID, roomID)
	if err != nil {
		return counts
	}
	marks := &readMarks{s: s, tx: tx, userID: userID, roomID: roomID, threads: map[string]uint64{}}
	marks.unthreaded = marks.receiptPos("")
	// Nothing before the join notifies the user, nor anything read.
	floor := max(m.Pos, marks.unthreaded)
	key := [2]string{userID, roomID}
	fp := [2]uint64{m.Event, floor}
	now := tx.Pos()
	s.unreadMu.Lock()
	memo, ok := s.unread[key]
	s.unreadMu.Unlock()
	if ok && memo.fingerprint == fp && memo.upTo <= now {
		counts["notification_count"], counts["highlight_count"] = memo.counts[0], memo.counts[1]
		floor = max(floor, memo.upTo)
	} else {
		memo = unreadMemo{fingerprint: fp}
	}
	scanned := s.scanUnread(tx, userID, r, floor, now, memo.scanned, marks, func(_ string, highlight bool) {
		counts["notification_count"]++
		if highlight {
			counts["highlight_count"]++
		}
	})
	memo.upTo, memo.scanned = now, scanned
	memo.counts = [2]int{counts["notification_count"], counts["highlight_count"]}
	s.rememberUnread(key, memo)
	return counts
}

// scanUnread walks a room's timeline newest first down to just above
// floor, at most maxUnreadScan events counting scanned already, and calls
// found for each event others sent that the user has not read in its
// thread and that their push rules make notify. It returns scanned
// updated.
func (s *Server) scanUnread(tx *store.Tx, userID string, r *store.Room, floor, now uint64, scanned int, marks *readMarks, found func(thread string, highlight bool)) int {
	var pc *pushContext
	tx.Timeline(r.NID, now, true, func(pos, nid uint64) bool {
		if pos <= floor || scanned >= maxUnreadScan {
			return false
		}
		scanned++
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil || ev.Sender == userID || ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
			return true
		}
		thread, _ := s.threadOf(tx, ev)
		if pos <= marks.in(thread) {
			return true
		}
		if pc == nil {
			if pc, err = s.newPushContext(tx, userID, r); err != nil {
				return false
			}
		}
		actions, matched := push.Evaluate(pc.rules, push.RawEvent(ev.Raw), pc.forSender(ev.Sender))
		if matched && actions.Notify() {
			found(thread, actions.Highlight())
		}
		return true
	})
	return scanned
}

// unreadThreadCounts is unreadCounts split by thread, for a /sync whose
// filter sets unread_thread_notifications: the main timeline's counts
// (events outside any thread, thread roots included), and each thread
// with unread notifications by its root's event ID. It is memoised like
// unreadCounts, under its own key.
func (s *Server) unreadThreadCounts(tx *store.Tx, userID, roomID string) (map[string]int, map[string]map[string]int) {
	r, err := tx.Room(roomID)
	if err != nil {
		return map[string]int{"notification_count": 0, "highlight_count": 0}, nil
	}
	m, err := tx.Membership(userID, roomID)
	if err != nil {
		return map[string]int{"notification_count": 0, "highlight_count": 0}, nil
	}
	marks := &readMarks{s: s, tx: tx, userID: userID, roomID: roomID, threads: map[string]uint64{}}
	marks.unthreaded = marks.receiptPos("")
	floor := max(m.Pos, marks.unthreaded)
	key := [2]string{userID, splitUnreadKey + roomID}
	fp := [2]uint64{m.Event, floor}
	now := tx.Pos()
	s.unreadMu.Lock()
	memo, ok := s.unread[key]
	s.unreadMu.Unlock()
	var main [2]int
	threads := map[string][2]int{}
	if ok && memo.fingerprint == fp && memo.upTo <= now {
		main = memo.counts
		for k, v := range memo.threads {
			threads[k] = v
		}
		floor = max(floor, memo.upTo)
	} else {
		memo = unreadMemo{fingerprint: fp}
	}
	scanned := s.scanUnread(tx, userID, r, floor, now, memo.scanned, marks, func(thread string, highlight bool) {
		c := main
		if thread != mainThread {
			c = threads[thread]
		}
		c[0]++
		if highlight {
			c[1]++
		}
		if thread != mainThread {
			threads[thread] = c
		} else {
			main = c
		}
	})
	memo.upTo, memo.scanned, memo.counts, memo.threads = now, scanned, main, threads
	s.rememberUnread(key, memo)
	out := map[string]map[string]int{}
	for th, c := range threads {
		out[th] = map[string]int{"notification_count": c[0], "highlight_count": c[1]}
	}
	return map[string]int{"notification_count": main[0], "highlight_count": main[1]}, out
}

// splitUnreadKey prefixes the room ID in the memo key of per-thread counts
// (room IDs start with "!", so the two kinds of entry never collide).
const splitUnreadKey = "threads "

func (s *Server) rememberUnread(key [2]string, memo unreadMemo) {
	s.unreadMu.Lock()
	if s.unread == nil || len(s.unread) > maxUnreadMemos {
		s.unread = map[[2]string]unreadMemo{} // crude bound: start over
	}
	s.unread[key] = memo
	s.unreadMu.Unlock()
}

// maxUnreadMemos bounds the memo's memory (about 100 bytes an entry).
const maxUnreadMemos = 100000

// readMarks finds a user's read-up-to positions in one room.
type readMarks struct {
	s              *Server
	tx             *store.Tx
	userID, roomID string
	unthreaded     uint64
	threads        map[string]uint64
}

// receiptPos is the stream position of the later of the user's m.read and
// m.read.private receipts for threadID ("" for unthreaded).
func (m *readMarks) receiptPos(threadID string) uint64 {
	var best uint64
	for _, t := range []string{receiptRead, receiptReadPrivate} {
		rc, err := m.tx.Receipt(m.roomID, t, m.userID, threadID)
		if err != nil {
			continue
		}
		if ev, err := m.s.Rooms.EventByID(m.tx, rc.EventID); err == nil {
			best = max(best, ev.Pos)
		}
	}
	return best
}

// in is the read-up-to position for events of a thread: the unthreaded
// receipt or that thread's own, whichever is later.
func (m *readMarks) in(thread string) uint64 {
	p, ok := m.threads[thread]
	if !ok {
		p = m.receiptPos(thread)
		m.threads[thread] = p
	}
	return max(p, m.unthreaded)
}

// pushContext is what push evaluation needs about a room, for one user.
type pushContext struct {
	rules *push.Ruleset
	base  push.Context
	pl    *room.PowerLevels
}

func (s *Server) newPushContext(tx *store.Tx, userID string, r *store.Room) (*pushContext, error) {
	rules, err := s.loadPushRules(tx, userID)
	if err != nil {
		return nil, err
	}
	st, err := s.Rooms.State(tx, r.State)
	if err != nil {
		return nil, err
	}
	pl, err := s.Rooms.PowerLevels(tx, st)
	if err != nil {
		return nil, err
	}
	pc := &pushContext{rules: rules.Ruleset(), pl: pl, base: push.Context{
		RoomID:                  r.RoomID,
		NotificationPowerLevels: map[string]int64{"room": int64(pl.NotificationLevel("room"))},
	}}
	st.Each(func(k, nid uint64) bool {
		evType, stateKey, err := tx.StateKey(k)
		if err != nil || evType != "m.room.member" {
			return true
		}
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil || ev.Membership() != "join" {
			return true
		}
		pc.base.MemberCount++
		if stateKey == userID {
			var c struct {
				DisplayName string `json:"displayname"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			pc.base.DisplayName = c.DisplayName
		}
		return true
	})
	return pc, nil
}

func (pc *pushContext) forSender(sender string) push.Context {
	c := pc.base
	c.SenderPowerLevel = int64(pc.pl.UserLevel(sender))
	return c
}
