package appservice

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"edge/edge/store"
)

// Ephemeral data for application services (MSC2409 typing, receipts and
// presence; MSC4203 to-device messages; MSC3202 device lists and key
// counts). Like room events it waits in the store until the AS accepts
// it, but a dead AS must not grow the store without limit, so each AS's
// queue of ephemeral events and to-device messages is capped: past the
// cap the oldest entries are dropped (room events never are).
const (
	nsEphQueue  = "appservice.ephq"      // "<as>/<seq>" → ephRecord
	nsEphMeta   = "appservice.ephmeta"   // "<as>" → ephMeta
	nsDevLists  = "appservice.devlists"  // "<as>/<user>" → "changed" or "left"
	nsKeyCounts = "appservice.keycounts" // "<as>/<user>\x1f<device>" → keyCounts

	// DefaultMaxEphemeral is the per-AS cap of queued ephemeral events
	// and to-device messages.
	DefaultMaxEphemeral = 10000
	// maxEphBatch bounds the ephemeral events, to-device messages, device
	// list entries and key counts of one transaction (each).
	maxEphBatch = 100
)

type ephRecord struct {
	ToDevice bool            `json:"td,omitempty"`
	Event    json.RawMessage `json:"ev"`
}

type ephMeta struct {
	Next  uint64 `json:"next"`
	Count int    `json:"count"`
}

type keyCounts struct {
	OTK      map[string]int `json:"otk"`
	Fallback []string       `json:"fallback"`
}

// edu is a typing, receipt or presence event waiting to be queued.
type edu struct {
	typ, roomID, sender string
	raw                 json.RawMessage
}

// EDU hands over a typing (room_id), receipt (room_id) or presence
// (sender) event after it was stored; the services that asked for
// ephemeral data and are interested in the room or user get it.
func (p *Pusher) EDU(typ, roomID, sender string, content any) {
	if !p.anyEphemeral {
		return
	}
	ev := map[string]any{"type": typ, "content": content}
	if roomID != "" {
		ev["room_id"] = roomID
	}
	if sender != "" {
		ev["sender"] = sender
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.edus = append(p.edus, edu{typ: typ, roomID: roomID, sender: sender, raw: raw})
	p.mu.Unlock()
	select {
	case p.more <- struct{}{}:
	default:
	}
}

// ToDevice takes a to-device message for a device of a user an AS with
// ephemeral data owns exclusively, in the transaction that would put it
// into the device's inbox; true means the AS has it instead (it is
// delivered once, as /sync would).
func (p *Pusher) ToDevice(tx *store.Tx, sender, evType, userID, deviceID string, content json.RawMessage) bool {
	for _, r := range p.o.Regs {
		if p.wake[r.ID] == nil || !r.Ephemeral() || !r.OwnsExclusively(userID) {
			continue
		}
		raw, err := json.Marshal(map[string]any{"type": evType, "sender": sender, "content": content,
			"to_user_id": userID, "to_device_id": deviceID})
		if err != nil {
			return false
		}
		p.putEph(tx, r, true, raw)
		return true
	}
	return false
}

// DeviceListChanged notes, for the services that asked for MSC3202 data,
// that userID's devices or keys changed, when the user is theirs or
// shares a room with one of their users.
func (p *Pusher) DeviceListChanged(tx *store.Tx, userID string) {
	for _, r := range p.o.Regs {
		if p.wake[r.ID] != nil && r.MSC3202 && (r.InterestedInUser(userID) || p.sharesRoom(tx, r, userID)) {
			p.putDevList(tx, r, userID, "changed")
		}
	}
}

// DeviceKeys records a device's one-time key counts and unused fallback
// key types after they changed, for the MSC3202 service owning the user.
func (p *Pusher) DeviceKeys(tx *store.Tx, userID, deviceID string, counts func() (map[string]int, []string)) {
	var otk map[string]int
	var fallback []string
	read := false
	for _, r := range p.o.Regs {
		if p.wake[r.ID] == nil || !r.MSC3202 || !r.OwnsUser(userID) {
			continue
		}
		if !read {
			otk, fallback = counts()
			read = true
		}
		if otk == nil {
			otk = map[string]int{}
		}
		if fallback == nil {
			fallback = []string{}
		}
		raw, _ := json.Marshal(keyCounts{OTK: otk, Fallback: fallback})
		tx.PutKV(nsKeyCounts, r.ID+"/"+userID+"\x1f"+deviceID, raw)
		p.wakeOnCommit(tx, r)
	}
}

func (p *Pusher) wakeOnCommit(tx *store.Tx, r *Registration) {
	ch := p.wake[r.ID]
	tx.OnCommit(func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	})
}

func (p *Pusher) putDevList(tx *store.Tx, r *Registration, userID, what string) {
	tx.PutKV(nsDevLists, r.ID+"/"+userID, []byte(what))
	p.wakeOnCommit(tx, r)
}

// putEph queues one ephemeral event or to-device message for r, dropping
// the oldest queued one when the queue is at its cap.
func (p *Pusher) putEph(tx *store.Tx, r *Registration, toDevice bool, raw json.RawMessage) {
	var m ephMeta
	if v, err := tx.GetKV(nsEphMeta, r.ID); err == nil {
		_ = json.Unmarshal(v, &m)
	}
	dropped := 0
	for m.Count >= p.o.MaxEphemeral {
		var oldest string
		tx.ScanKV(nsEphQueue, r.ID+"/", func(k string, _ []byte) bool {
			oldest = k
			return false
		})
		if oldest == "" {
			m.Count = 0
			break
		}
		tx.DeleteKV(nsEphQueue, oldest)
		m.Count--
		dropped++
	}
	m.Next++
	m.Count++
	rec, _ := json.Marshal(ephRecord{ToDevice: toDevice, Event: raw})
	tx.PutKV(nsEphQueue, fmt.Sprintf("%s/%020d", r.ID, m.Next), rec)
	mv, _ := json.Marshal(m)
	tx.PutKV(nsEphMeta, r.ID, mv)
	if dropped > 0 {
		tx.OnCommit(func() { p.noteDropped(r.ID, dropped) })
	}
	p.wakeOnCommit(tx, r)
}

// dropLogEvery spaces the log lines about dropped entries: a dead service
// would otherwise log one per typing notice.
const dropLogEvery = time.Minute

// noteDropped counts entries dropped from asID's queue and logs the count
// at most every dropLogEvery.
func (p *Pusher) noteDropped(asID string, n int) {
	p.dropMu.Lock()
	p.dropped[asID] += n
	total := p.dropped[asID]
	if time.Since(p.dropLogged[asID]) < dropLogEvery {
		p.dropMu.Unlock()
		return
	}
	p.dropped[asID], p.dropLogged[asID] = 0, time.Now()
	p.dropMu.Unlock()
	p.o.Log.Warn("appservice: ephemeral queue full (is the service down?), dropped the oldest entries",
		"as", asID, "dropped", total, "cap", p.o.MaxEphemeral)
}

// eduInterested: presence of the AS's users or of users sharing a room
// with them; typing and receipts of rooms in its namespace or with one
// of its users joined.
func (p *Pusher) eduInterested(tx *store.Tx, r *Registration, e edu) bool {
	if e.typ == "m.presence" {
		return r.InterestedInUser(e.sender) || p.sharesRoom(tx, r, e.sender)
	}
	return r.InterestedInRoom(e.roomID) || p.hasASRoom(r, e.roomID)
}

// sharesRoom tells whether userID is joined to a room one of r's users
// is joined to. A local user's memberships are indexed; a remote user is
// looked up in each room with one of r's users. It runs inside writes,
// so it reads the in-memory room sets rather than room states.
func (p *Pusher) sharesRoom(tx *store.Tx, r *Registration, userID string) bool {
	if len(r.Namespaces.Users) == 0 && r.Sender == "" {
		return false
	}
	if ms, err := tx.Memberships(userID); err == nil && len(ms) > 0 {
		for _, m := range ms {
			if m.Membership == "join" && p.hasASRoom(r, m.RoomID) {
				return true
			}
		}
		return false
	}
	for _, roomID := range p.asRooms(r) {
		if p.membership(tx, roomID, userID) == "join" {
			return true
		}
	}
	return false
}

// membership is userID's membership in roomID's current state.
func (p *Pusher) membership(tx *store.Tx, roomID, userID string) string {
	rm, err := tx.Room(roomID)
	if err != nil {
		return ""
	}
	st, err := p.o.Rooms.State(tx, rm.State)
	if err != nil {
		return ""
	}
	ev, err := p.o.Rooms.StateEvent(tx, st, "m.room.member", userID)
	if err != nil || ev == nil {
		return ""
	}
	return ev.Membership()
}

// asRooms lists the rooms one of r's users is joined to, as last seen.
func (p *Pusher) asRooms(r *Registration) []string {
	p.roomsMu.Lock()
	defer p.roomsMu.Unlock()
	out := make([]string, 0, len(p.rooms[r.ID]))
	for id := range p.rooms[r.ID] {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// loadRooms finds, once at start, the rooms each AS's users are joined to;
// member events keep the sets current afterwards.
func (p *Pusher) loadRooms() {
	_ = p.o.Store.View(func(tx *store.Tx) error {
		return tx.Rooms(func(rm *store.Room) bool {
			for _, r := range p.o.Regs {
				if p.wake[r.ID] != nil && p.roomHasUser(tx, r, rm.RoomID) {
					p.setASRoom(r, rm.RoomID, true)
				}
			}
			return true
		})
	})
}

// hasASRoom tells whether one of r's users is joined to roomID, as last seen.
func (p *Pusher) hasASRoom(r *Registration, roomID string) bool {
	p.roomsMu.Lock()
	defer p.roomsMu.Unlock()
	return p.rooms[r.ID][roomID]
}

func (p *Pusher) setASRoom(r *Registration, roomID string, in bool) {
	p.roomsMu.Lock()
	defer p.roomsMu.Unlock()
	if in {
		if p.rooms[r.ID] == nil {
			p.rooms[r.ID] = map[string]bool{}
		}
		p.rooms[r.ID][roomID] = true
	} else {
		delete(p.rooms[r.ID], roomID)
	}
}

// takeEphemeral moves up to maxEphBatch queued ephemeral events,
// to-device messages, device list entries and key counts of r into the
// body of a new transaction; nil when there are none.
func (p *Pusher) takeEphemeral(tx *store.Tx, r *Registration) map[string]json.RawMessage {
	body := map[string]json.RawMessage{}
	var edus, toDevice []json.RawMessage
	var keys []string
	tx.ScanKV(nsEphQueue, r.ID+"/", func(k string, v []byte) bool {
		var rec ephRecord
		if json.Unmarshal(v, &rec) == nil {
			if rec.ToDevice {
				toDevice = append(toDevice, rec.Event)
			} else {
				edus = append(edus, rec.Event)
			}
		}
		keys = append(keys, k)
		return len(keys) < maxEphBatch
	})
	if len(keys) > 0 {
		for _, k := range keys {
			tx.DeleteKV(nsEphQueue, k)
		}
		var m ephMeta
		if v, err := tx.GetKV(nsEphMeta, r.ID); err == nil {
			_ = json.Unmarshal(v, &m)
		}
		m.Count = max(m.Count-len(keys), 0)
		mv, _ := json.Marshal(m)
		tx.PutKV(nsEphMeta, r.ID, mv)
	}
	// Both names, as the stable one is new and bridges read either.
	if len(edus) > 0 {
		raw, _ := json.Marshal(edus)
		body["ephemeral"], body["de.sorunome.msc2409.ephemeral"] = raw, raw
	}
	if len(toDevice) > 0 {
		raw, _ := json.Marshal(toDevice)
		body["to_device"], body["de.sorunome.msc2409.to_device"] = raw, raw
	}

	changed, left := []string{}, []string{}
	keys = keys[:0]
	tx.ScanKV(nsDevLists, r.ID+"/", func(k string, v []byte) bool {
		u := strings.TrimPrefix(k, r.ID+"/")
		if string(v) == "left" {
			left = append(left, u)
		} else {
			changed = append(changed, u)
		}
		keys = append(keys, k)
		return len(keys) < maxEphBatch
	})
	for _, k := range keys {
		tx.DeleteKV(nsDevLists, k)
	}
	if len(changed)+len(left) > 0 {
		raw, _ := json.Marshal(map[string][]string{"changed": changed, "left": left})
		body["org.matrix.msc3202.device_lists"] = raw
	}

	otk := map[string]map[string]map[string]int{}
	fallback := map[string]map[string][]string{}
	keys = keys[:0]
	tx.ScanKV(nsKeyCounts, r.ID+"/", func(k string, v []byte) bool {
		user, device, ok := strings.Cut(strings.TrimPrefix(k, r.ID+"/"), "\x1f")
		var kc keyCounts
		if ok && json.Unmarshal(v, &kc) == nil {
			if otk[user] == nil {
				otk[user], fallback[user] = map[string]map[string]int{}, map[string][]string{}
			}
			otk[user][device], fallback[user][device] = kc.OTK, kc.Fallback
		}
		keys = append(keys, k)
		return len(keys) < maxEphBatch
	})
	for _, k := range keys {
		tx.DeleteKV(nsKeyCounts, k)
	}
	if len(otk) > 0 {
		raw, _ := json.Marshal(otk)
		// Synapse also sends the older misspelt name.
		body["org.matrix.msc3202.device_one_time_keys_count"], body["org.matrix.msc3202.device_one_time_key_counts"] = raw, raw
		raw, _ = json.Marshal(fallback)
		body["org.matrix.msc3202.device_unused_fallback_key_types"] = raw
	}
	if len(body) == 0 {
		return nil
	}
	return body
}

// memberChange keeps r's room set current and, for an MSC3202 service,
// notes device list changes: a user newly sharing a room with its users
// is "changed", one sharing none any more is "left".
func (p *Pusher) memberChange(tx *store.Tx, r *Registration, roomID, userID, membership string) {
	if r.InterestedInUser(userID) {
		// A cache of what the store says: set at once, so that ephemeral
		// data handled in the same batch already sees the room.
		p.setASRoom(r, roomID, p.roomHasUser(tx, r, roomID))
	}
	if !r.MSC3202 || r.InterestedInUser(userID) {
		return
	}
	switch membership {
	case "join":
		if p.hasASRoom(r, roomID) {
			p.putDevList(tx, r, userID, "changed")
		}
	case "leave", "ban":
		if p.hasASRoom(r, roomID) && !p.sharesRoom(tx, r, userID) {
			p.putDevList(tx, r, userID, "left")
		}
	}
}
