package keysfed

// The cache of remote users' device lists
// (https://spec.matrix.org/latest/server-server-api/#device-management).
// A remote user is tracked while they share a room with one of our users:
// their device keys, cross-signing keys and stream_id are fetched once
// with GET /user/devices/{userId} and then kept current by
// m.device_list_update (applied when its prev_id are all known, else a
// resync) and m.signing_key_update EDUs. A failed resync marks the list
// stale: the next /keys/query refreshes it, and a background loop retries
// with backoff. /keys/query answers tracked users from the cache.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"edge/edge/client"
	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// nsDeviceLists: remote user ID → cachedList (JSON).
const nsDeviceLists = "keysfed_devlists"

// seenIDs is how many recent stream IDs of a user are remembered, so an
// update whose prev_id is an older update we applied is not a gap.
const seenIDs = 32

// Retry backoff of stale lists, and how often untracking is checked.
var (
	retryMin      = time.Second
	retryMax      = 5 * time.Minute
	sweepInterval = time.Minute
)

// Stats counts what the cache did, per server (several nodes may share a
// process in tests).
type Stats struct {
	// Resyncs are full fetches of a list (GET /user/devices) that succeeded.
	Resyncs atomic.Int64
	// ResyncFailures are fetches that failed, leaving the list stale.
	ResyncFailures atomic.Int64
	// Gaps are m.device_list_update EDUs whose prev_id was unknown.
	Gaps atomic.Int64
	// Applied are m.device_list_update and m.signing_key_update EDUs
	// applied to a cached list.
	Applied atomic.Int64
	// CacheAnswers are users of /keys/query answered from the cache.
	CacheAnswers atomic.Int64
}

var allStats sync.Map // server name → *Stats

// StatsFor returns the device-list cache counters of the node named
// serverName.
func StatsFor(serverName string) *Stats {
	v, _ := allStats.LoadOrStore(serverName, &Stats{})
	return v.(*Stats)
}

// reasonQuery is the resync reason of a /keys/query for a list not cached
// or stale.
const reasonQuery = "keys query"

// cachedList is one remote user's device list.
type cachedList struct {
	StreamID int64                   `json:"stream_id"`
	Seen     []int64                 `json:"seen,omitempty"`
	Devices  map[string]cachedDevice `json:"devices"`
	Master   json.RawMessage         `json:"master_key,omitempty"`
	SelfSign json.RawMessage         `json:"self_signing_key,omitempty"`
	// Stale: the last resync failed; the list may be out of date.
	Stale bool `json:"stale,omitempty"`
}

type cachedDevice struct {
	Keys json.RawMessage `json:"keys,omitempty"`
	Name string          `json:"name,omitempty"`
}

func (l *cachedList) knows(id int64) bool {
	return id == l.StreamID || slices.Contains(l.Seen, id)
}

// advance records id as the list's newest stream ID.
func (l *cachedList) advance(id int64) {
	if l.StreamID != 0 {
		l.Seen = append(l.Seen, l.StreamID)
		if len(l.Seen) > seenIDs {
			l.Seen = l.Seen[len(l.Seen)-seenIDs:]
		}
	}
	l.StreamID = id
}

// cache is the device-list cache of one node.
type cache struct {
	st    *store.Store
	fed   *federation.Server
	cl    *client.Server
	rooms *room.Service
	local string
	log   *slog.Logger
	stats *Stats

	mu      sync.Mutex
	retry   map[string]retryState // stale users → next background attempt
	flights map[string]*flight    // resyncs in progress, by user
}

type retryState struct {
	at    time.Time
	delay time.Duration
}

// flight is one resync that concurrent callers wait for.
type flight struct {
	done    chan struct{}
	changed bool
	err     error
}

func newCache(d Deps, log *slog.Logger) *cache {
	return &cache{
		st: d.Client.Store, fed: d.Fed, cl: d.Client, rooms: d.Client.Rooms, local: d.Client.Config.ServerName,
		log: log, stats: StatsFor(d.Client.Config.ServerName),
		retry: map[string]retryState{}, flights: map[string]*flight{},
	}
}

// serverOf is the server part of a user ID.
func serverOf(userID string) string {
	if !strings.HasPrefix(userID, "@") {
		return ""
	}
	_, s, _ := strings.Cut(userID, ":")
	return s
}

func load(tx *store.Tx, userID string) (*cachedList, bool) {
	raw, err := tx.GetKV(nsDeviceLists, userID)
	if err != nil {
		return nil, false
	}
	var l cachedList
	if json.Unmarshal(raw, &l) != nil {
		return nil, false
	}
	if l.Devices == nil {
		l.Devices = map[string]cachedDevice{}
	}
	return &l, true
}

func save(tx *store.Tx, userID string, l *cachedList) {
	raw, _ := json.Marshal(l)
	tx.PutKV(nsDeviceLists, userID, raw)
}

// shared reports whether the remote userID and one of our users are both
// joined to some room. It walks every room: fine for a small server.
func (c *cache) shared(tx *store.Tx, userID string) bool {
	found := false
	_ = tx.Rooms(func(r *store.Room) bool {
		st, err := c.rooms.State(tx, r.State)
		if err != nil {
			return true
		}
		if ev, err := c.rooms.StateEvent(tx, st, "m.room.member", userID); err != nil || ev == nil || ev.Membership() != "join" {
			return true
		}
		st.Each(func(k, nid uint64) bool {
			evType, sk, err := tx.StateKey(k)
			if err != nil || evType != "m.room.member" || serverOf(sk) != c.local {
				return true
			}
			if ev, err := c.rooms.Event(tx, nid); err == nil && ev.Membership() == "join" {
				found = true
				return false
			}
			return true
		})
		return !found
	})
	return found
}

// notifyChanged puts userID in device_lists.changed of our users sharing
// a room with them.
func (c *cache) notifyChanged(userID string) {
	content, _ := json.Marshal(map[string]string{"user_id": userID})
	if err := c.cl.FederationDeviceListUpdate(serverOf(userID), content); err != nil {
		c.log.Warn("marking device list changed", "user", userID, "err", err)
	}
}

// userDevices is the answer of GET /_matrix/federation/v1/user/devices/{userId}.
type userDevices struct {
	UserID   string `json:"user_id"`
	StreamID int64  `json:"stream_id"`
	Devices  []struct {
		DeviceID string          `json:"device_id"`
		Keys     json.RawMessage `json:"keys"`
		Name     string          `json:"device_display_name"`
	} `json:"devices"`
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
}

// resync fetches userID's whole list from their server and replaces the
// cached one; concurrent calls for one user share a fetch. changed reports
// that the list differs from what was cached.
func (c *cache) resync(ctx context.Context, userID, reason string) (changed bool, err error) {
	c.mu.Lock()
	if f := c.flights[userID]; f != nil {
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.changed, f.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	c.flights[userID] = f
	c.mu.Unlock()
	defer func() {
		f.changed, f.err = changed, err
		c.mu.Lock()
		delete(c.flights, userID)
		c.mu.Unlock()
		close(f.done)
	}()

	server := serverOf(userID)
	var ans userDevices
	err = c.fed.Client.Get(ctx, server, "/_matrix/federation/v1/user/devices/"+url.PathEscape(userID), &ans)
	if err == nil && ans.UserID != userID {
		err = fmt.Errorf("%s answered the devices of %q for %q", server, ans.UserID, userID)
	}
	if err != nil {
		c.stats.ResyncFailures.Add(1)
		c.log.Info("device list resync failed; list is stale", "user", userID, "reason", reason, "err", err)
		werr := c.st.Write(func(tx *store.Tx) error {
			l, ok := load(tx, userID)
			if !ok {
				l = &cachedList{Devices: map[string]cachedDevice{}}
			}
			l.Stale = true
			save(tx, userID, l)
			return nil
		})
		if werr == nil {
			c.scheduleRetry(userID)
		}
		return false, err
	}
	fresh := &cachedList{StreamID: ans.StreamID, Devices: map[string]cachedDevice{}, Master: ans.MasterKey, SelfSign: ans.SelfSigningKey}
	for _, d := range ans.Devices {
		if d.DeviceID != "" {
			fresh.Devices[d.DeviceID] = cachedDevice{Keys: d.Keys, Name: d.Name}
		}
	}
	notify := false
	err = c.st.Write(func(tx *store.Tx) error {
		old, ok := load(tx, userID)
		changed = !ok || old.Stale || !sameList(old, fresh)
		// A first fetch for a /keys/query is news to no one: the asking
		// client gets the list in the answer.
		notify = changed && (ok || reason != reasonQuery)
		fresh.Seen = nil
		if ok {
			fresh.Seen = append(slices.Clone(old.Seen), old.StreamID)
			if len(fresh.Seen) > seenIDs {
				fresh.Seen = fresh.Seen[len(fresh.Seen)-seenIDs:]
			}
		}
		save(tx, userID, fresh)
		return nil
	})
	if err != nil {
		return false, err
	}
	c.stats.Resyncs.Add(1)
	c.log.Info("device list resynced", "user", userID, "reason", reason, "stream_id", ans.StreamID, "devices", len(fresh.Devices))
	c.mu.Lock()
	delete(c.retry, userID)
	c.mu.Unlock()
	if notify {
		c.notifyChanged(userID)
	}
	return changed, nil
}

func sameList(a, b *cachedList) bool {
	if !jsonEqual(a.Master, b.Master) || !jsonEqual(a.SelfSign, b.SelfSign) || len(a.Devices) != len(b.Devices) {
		return false
	}
	for id, da := range a.Devices {
		db, ok := b.Devices[id]
		if !ok || da.Name != db.Name || !jsonEqual(da.Keys, db.Keys) {
			return false
		}
	}
	return true
}

// jsonEqual compares two JSON values by meaning, not spelling.
func jsonEqual(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return string(a) == string(b)
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return string(ca) == string(cb)
}

// scheduleRetry plans the next background resync of a stale list,
// doubling the wait each time.
func (c *cache) scheduleRetry(userID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.retry[userID]
	if !ok {
		r.delay = retryMin
	} else {
		r.delay = min(r.delay*2, retryMax)
	}
	r.at = time.Now().Add(r.delay)
	c.retry[userID] = r
}

// deviceListUpdate is the content of an m.device_list_update EDU.
type deviceListUpdate struct {
	UserID   string          `json:"user_id"`
	DeviceID string          `json:"device_id"`
	StreamID int64           `json:"stream_id"`
	PrevID   []int64         `json:"prev_id"`
	Deleted  bool            `json:"deleted"`
	Keys     json.RawMessage `json:"keys"`
	Name     string          `json:"device_display_name"`
}

// onDeviceListUpdate applies an m.device_list_update from origin.
func (c *cache) onDeviceListUpdate(ctx context.Context, origin string, content json.RawMessage) error {
	var u deviceListUpdate
	if err := json.Unmarshal(content, &u); err != nil {
		return err
	}
	if serverOf(u.UserID) != origin || u.DeviceID == "" {
		return fmt.Errorf("device list update for %q (device %q) from %s", u.UserID, u.DeviceID, origin)
	}
	var action string // "" (nothing new), "apply", "resync", "untrack"
	err := c.st.Write(func(tx *store.Tx) error {
		action = ""
		if !c.shared(tx, u.UserID) {
			action = "untrack"
			tx.DeleteKV(nsDeviceLists, u.UserID)
			return nil
		}
		l, ok := load(tx, u.UserID)
		switch {
		case !ok || l.Stale:
			action = "resync"
			return nil
		case l.knows(u.StreamID) || u.StreamID < l.StreamID:
			return nil // already applied, or older than the list we hold
		}
		for _, p := range u.PrevID {
			if !l.knows(p) {
				action = "resync"
				return nil
			}
		}
		if u.Deleted {
			delete(l.Devices, u.DeviceID)
		} else {
			l.Devices[u.DeviceID] = cachedDevice{Keys: u.Keys, Name: u.Name}
		}
		l.advance(u.StreamID)
		save(tx, u.UserID, l)
		action = "apply"
		return nil
	})
	if err != nil {
		return err
	}
	switch action {
	case "apply":
		c.stats.Applied.Add(1)
		c.log.Debug("device list update applied", "user", u.UserID, "device", u.DeviceID, "stream_id", u.StreamID, "deleted", u.Deleted)
	case "resync":
		reason := "first update"
		if len(u.PrevID) > 0 {
			reason = "unknown prev_id"
			c.stats.Gaps.Add(1)
		}
		// The update is news even when the refetched list equals the
		// cached one (the origin says the list changed, and a client may
		// hold an older copy): resync tells only of a different list, so
		// the rest are told here. A failed resync leaves the list stale;
		// its users still hear that it changed.
		if changed, err := c.resync(ctx, u.UserID, reason); err != nil || !changed {
			c.notifyChanged(u.UserID)
		}
		return nil
	case "":
		return nil // nothing new
	}
	// Untracked users' changes are passed on too: the client API shows
	// them only to users who share a room.
	c.notifyChanged(u.UserID)
	return nil
}

// onSigningKeyUpdate applies an m.signing_key_update from origin.
func (c *cache) onSigningKeyUpdate(ctx context.Context, origin string, content json.RawMessage) error {
	var u struct {
		UserID         string          `json:"user_id"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(content, &u); err != nil {
		return err
	}
	if serverOf(u.UserID) != origin {
		return fmt.Errorf("signing key update for %q from %s", u.UserID, origin)
	}
	resync := false
	err := c.st.Write(func(tx *store.Tx) error {
		resync = false
		if !c.shared(tx, u.UserID) {
			tx.DeleteKV(nsDeviceLists, u.UserID)
			return nil
		}
		l, ok := load(tx, u.UserID)
		if !ok || l.Stale {
			resync = true
			return nil
		}
		// The same keys again stand for new signatures: Dendrite sends
		// this EDU alone (no m.device_list_update) when a user signs
		// their own device. Refetch the devices to get it.
		resync = (len(u.MasterKey) == 0 || samePublicKeys(l.Master, u.MasterKey)) &&
			(len(u.SelfSigningKey) == 0 || samePublicKeys(l.SelfSign, u.SelfSigningKey))
		if len(u.MasterKey) > 0 {
			l.Master = u.MasterKey
		}
		if len(u.SelfSigningKey) > 0 {
			l.SelfSign = u.SelfSigningKey
		}
		save(tx, u.UserID, l)
		return nil
	})
	if err != nil {
		return err
	}
	if resync {
		if _, err := c.resync(ctx, u.UserID, "signing key update"); err == nil {
			return nil
		}
	} else {
		c.stats.Applied.Add(1)
	}
	c.notifyChanged(u.UserID)
	return nil
}

// samePublicKeys reports whether two cross-signing keys hold the same
// public keys (whatever their signatures).
func samePublicKeys(a, b json.RawMessage) bool {
	var x, y struct {
		Keys map[string]string `json:"keys"`
	}
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && len(x.Keys) > 0 && maps.Equal(x.Keys, y.Keys)
}

// queryKeys answers a server's share of a /keys/query: users sharing a
// room with ours from the cache (fetched first when not cached yet or
// stale), the others with a live POST /user/keys/query.
func (c *cache) queryKeys(ctx context.Context, server string, users map[string][]string) (*client.RemoteKeys, error) {
	ans := &client.RemoteKeys{
		DeviceKeys:      map[string]map[string]json.RawMessage{},
		MasterKeys:      map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{},
	}
	tracked := map[string]bool{}
	var refresh []string // tracked but not cached, or stale
	err := c.st.View(func(tx *store.Tx) error {
		for u := range users {
			if serverOf(u) != server || !c.shared(tx, u) {
				continue
			}
			tracked[u] = true
			if l, ok := load(tx, u); !ok || l.Stale {
				refresh = append(refresh, u)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var firstErr error
	var failed []string
	for _, u := range refresh {
		if _, err := c.resync(ctx, u, reasonQuery); err != nil {
			failed = append(failed, u)
			firstErr = cmp(firstErr, err)
		}
	}
	live := map[string][]string{}
	for u, devs := range users {
		if !tracked[u] {
			live[u] = devs
		}
	}
	if err := c.st.View(func(tx *store.Tx) error {
		for u := range tracked {
			if slices.Contains(failed, u) {
				continue
			}
			l, ok := load(tx, u)
			if !ok || l.Stale {
				continue
			}
			c.stats.CacheAnswers.Add(1)
			ans.DeviceKeys[u] = l.answer(users[u])
			if len(l.Master) > 0 {
				ans.MasterKeys[u] = l.Master
			}
			if len(l.SelfSign) > 0 {
				ans.SelfSigningKeys[u] = l.SelfSign
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if len(live) > 0 {
		var got client.RemoteKeys
		if err := c.fed.Client.Post(ctx, server, "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": live}, &got); err != nil {
			firstErr = cmp(firstErr, err)
		} else {
			maps.Copy(ans.DeviceKeys, got.DeviceKeys)
			maps.Copy(ans.MasterKeys, got.MasterKeys)
			maps.Copy(ans.SelfSigningKeys, got.SelfSigningKeys)
		}
	}
	return ans, firstErr
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// answer renders the cached devices (all, or those listed) as /keys/query
// device_keys: devices without keys are left out, and the display name
// goes in unsigned as the origin would put it.
func (l *cachedList) answer(only []string) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for id, d := range l.Devices {
		if len(d.Keys) == 0 || (len(only) > 0 && !slices.Contains(only, id)) {
			continue
		}
		keys := d.Keys
		if d.Name != "" {
			var m map[string]json.RawMessage
			if json.Unmarshal(keys, &m) == nil {
				var unsigned map[string]any
				_ = json.Unmarshal(m["unsigned"], &unsigned)
				if unsigned == nil {
					unsigned = map[string]any{}
				}
				if _, has := unsigned["device_display_name"]; !has {
					unsigned["device_display_name"] = d.Name
					m["unsigned"], _ = json.Marshal(unsigned)
					keys, _ = json.Marshal(m)
				}
			}
		}
		out[id] = keys
	}
	return out
}

// run retries stale lists in the background and stops tracking users who
// share no room with ours any more, until the store is closed.
func (c *cache) run() {
	// Stale lists left by the last run are retried soon after start.
	_ = c.st.View(func(tx *store.Tx) error {
		tx.ScanKV(nsDeviceLists, "", func(k string, v []byte) bool {
			var l cachedList
			if json.Unmarshal(v, &l) == nil && l.Stale {
				c.retry[k] = retryState{at: time.Now().Add(retryMin), delay: retryMin}
			}
			return true
		})
		return nil
	})
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	nextSweep := time.Now().Add(sweepInterval)
	for range tick.C {
		now := time.Now()
		if now.After(nextSweep) {
			nextSweep = now.Add(sweepInterval)
			if closed(c.sweep()) {
				return
			}
		}
		c.mu.Lock()
		var due []string
		for u, r := range c.retry {
			if now.After(r.at) {
				due = append(due, u)
			}
		}
		c.mu.Unlock()
		for _, u := range due {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := c.resync(ctx, u, "background retry")
			cancel()
			if closed(err) {
				return
			}
		}
		// Probe the store so a closed node's loop ends.
		if closed(c.st.View(func(*store.Tx) error { return nil })) {
			return
		}
	}
}

// sweep stops tracking users who share no room with ours any more.
func (c *cache) sweep() error {
	return c.st.Write(func(tx *store.Tx) error {
		var gone []string
		tx.ScanKV(nsDeviceLists, "", func(k string, _ []byte) bool {
			if !c.shared(tx, k) {
				gone = append(gone, k)
			}
			return true
		})
		for _, u := range gone {
			tx.DeleteKV(nsDeviceLists, u)
		}
		tx.OnCommit(func() {
			c.mu.Lock()
			for _, u := range gone {
				delete(c.retry, u)
			}
			c.mu.Unlock()
		})
		return nil
	})
}

// closed reports an error of a store that was closed under us.
func closed(err error) bool {
	return err != nil && (errors.Is(err, store.ErrClosed) || strings.Contains(err.Error(), "database not open"))
}
