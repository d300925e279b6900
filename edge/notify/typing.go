package notify

import (
	"sort"
	"sync"
	"time"
)

// Typing tracks who is typing in each room. It lives in memory only: after a
// restart nobody is typing, which is the truth.
type Typing struct {
	mu     sync.Mutex
	serial uint64
	rooms  map[string]*roomTyping
	n      *Notifier
	now    func() time.Time
	// OnChange, if set before use, hears each room's typing users after
	// a change (application services get them as m.typing).
	OnChange func(roomID string, userIDs []string)
}

type roomTyping struct {
	serial uint64               // serial of the last change in this room
	until  map[string]time.Time // user → when the typing notice expires
}

// NewTyping makes a typing tracker that wakes syncs through n.
func NewTyping(n *Notifier) *Typing {
	// Serials start at the clock so that they keep growing across restarts
	// and a client's old since token never hides new notices.
	return &Typing{rooms: map[string]*roomTyping{}, n: n, now: time.Now, serial: uint64(time.Now().UnixMilli())}
}

// MaxTypingTimeout caps how long one notice lasts.
const MaxTypingTimeout = 30 * time.Second

// Set marks userID as typing in roomID for timeout, or stops it.
func (t *Typing) Set(roomID, userID string, typing bool, timeout time.Duration) {
	t.mu.Lock()
	rt := t.rooms[roomID]
	if rt == nil {
		rt = &roomTyping{until: map[string]time.Time{}}
		t.rooms[roomID] = rt
	}
	_, was := rt.until[userID]
	if typing {
		rt.until[userID] = t.now().Add(min(max(timeout, time.Second), MaxTypingTimeout))
	} else {
		delete(rt.until, userID)
	}
	changed := was != typing
	var users []string
	if changed {
		t.serial++
		rt.serial = t.serial
		users = rt.users()
	}
	t.mu.Unlock()
	if changed {
		t.n.Notify(RoomKey(roomID))
		if t.OnChange != nil {
			t.OnChange(roomID, users)
		}
	}
	if typing {
		time.AfterFunc(min(max(timeout, time.Second), MaxTypingTimeout)+10*time.Millisecond, t.expire)
	}
}

// expire drops notices whose timeout passed, waking the rooms they were in.
func (t *Typing) expire() {
	now := t.now()
	var woke []string
	changes := map[string][]string{}
	t.mu.Lock()
	for roomID, rt := range t.rooms {
		changed := false
		for u, until := range rt.until {
			if !now.Before(until) {
				delete(rt.until, u)
				changed = true
			}
		}
		if changed {
			t.serial++
			rt.serial = t.serial
			woke = append(woke, RoomKey(roomID))
			changes[roomID] = rt.users()
		}
	}
	t.mu.Unlock()
	t.n.Notify(woke...)
	if t.OnChange != nil {
		for roomID, users := range changes {
			t.OnChange(roomID, users)
		}
	}
}

// Serial is the latest typing stream position.
func (t *Typing) Serial() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.serial
}

// Since returns the users typing in roomID if it changed after since.
func (t *Typing) Since(roomID string, since uint64) (users []string, changed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.rooms[roomID]
	if rt == nil || (since != 0 && rt.serial <= since) || (since == 0 && len(rt.until) == 0) {
		return nil, false
	}
	return rt.users(), true
}

// users lists who is typing, sorted; the caller holds t.mu.
func (rt *roomTyping) users() []string {
	users := make([]string, 0, len(rt.until))
	for u := range rt.until {
		users = append(users, u)
	}
	sort.Strings(users)
	return users
}
