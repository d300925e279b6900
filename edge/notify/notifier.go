package notify

import "sync"

// Notifier delivers wake-ups keyed by strings such as "r:!room" or "u:@user".
// Listen before checking for news, then wait on C: a change committed
// between the check and the wait still wakes the listener.
type Notifier struct {
	mu      sync.Mutex
	waiters map[string]map[*Waiter]struct{}
}

// New makes a Notifier.
func New() *Notifier { return &Notifier{waiters: map[string]map[*Waiter]struct{}{}} }

// Waiter is one listener; C receives at most one pending wake-up.
type Waiter struct {
	C    chan struct{}
	keys []string
	n    *Notifier
}

// Listen registers a waiter for keys.
func (n *Notifier) Listen(keys ...string) *Waiter {
	w := &Waiter{C: make(chan struct{}, 1), keys: keys, n: n}
	n.mu.Lock()
	for _, k := range keys {
		set := n.waiters[k]
		if set == nil {
			set = map[*Waiter]struct{}{}
			n.waiters[k] = set
		}
		set[w] = struct{}{}
	}
	n.mu.Unlock()
	return w
}

// Close unregisters the waiter.
func (w *Waiter) Close() {
	w.n.mu.Lock()
	for _, k := range w.keys {
		if set := w.n.waiters[k]; set != nil {
			delete(set, w)
			if len(set) == 0 {
				delete(w.n.waiters, k)
			}
		}
	}
	w.n.mu.Unlock()
}

// Notify wakes every waiter listening on any of keys.
func (n *Notifier) Notify(keys ...string) {
	n.mu.Lock()
	for _, k := range keys {
		for w := range n.waiters[k] {
			select {
			case w.C <- struct{}{}:
			default:
			}
		}
	}
	n.mu.Unlock()
}

// RoomKey and UserKey name the two kinds of things a sync watches.
func RoomKey(roomID string) string { return "r:" + roomID }
func UserKey(userID string) string { return "u:" + userID }
