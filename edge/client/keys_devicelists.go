package client

import (
	"sort"

	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

// Device-list tracking
// (https://spec.matrix.org/latest/client-server-api/#tracking-the-device-list-for-a-user).
// Every change of a user's devices, device keys or cross-signing keys is
// logged at a stream position, one entry per (user, viewer): a new change
// replaces the user's older entry, so the log stays as long as the number
// of users. A change with a viewer (a user-signing signature of someone
// else's key) is shown to that viewer only.

// markDeviceListChange logs a change of userID's keys and wakes the syncs
// that should hear of it.
func (s *Server) markDeviceListChange(tx *store.Tx, userID, viewer string) {
	uk := e2eeKey(userID, viewer)
	if old, err := tx.GetKV(nsDevListUser, uk); err == nil {
		tx.DeleteKV(nsDevListPos, string(old))
	}
	pk := posKey(tx.NextPos())
	tx.PutKV(nsDevListPos, pk, []byte(uk))
	tx.PutKV(nsDevListUser, uk, []byte(pk))
	if viewer == "" && s.AppServiceFeed != nil {
		s.AppServiceFeed.DeviceListChanged(tx, userID)
	}
	keys := []string{notify.UserKey(userID)}
	if viewer != "" {
		keys = []string{notify.UserKey(viewer)}
	} else if ms, err := tx.Memberships(userID); err == nil {
		for _, m := range ms {
			if m.Membership == "join" {
				keys = append(keys, notify.RoomKey(m.RoomID))
			}
		}
	}
	tx.OnCommit(func() { s.Notifier.Notify(keys...) })
}

// deviceListChanges computes device_lists for userID over the positions
// (from, to]: changed are users sharing a room with userID whose keys
// changed, who joined a shared room, or who share a room userID joined,
// plus userID itself after its own changes or its join of a room; left
// are users who left (or whose room userID left) and now share no room
// with userID.
func (s *Server) deviceListChanges(tx *store.Tx, userID string, from, to uint64) (changed, left []string, err error) {
	changed, left = []string{}, []string{}
	private := map[string]bool{} // viewer-specific changes: shown whatever the rooms
	var logged []string
	tx.ScanKVFrom(nsDevListPos, posKey(from+1), func(k string, v []byte) bool {
		if parsePosKey(k) > to {
			return false
		}
		parts := splitKey(string(v))
		if len(parts) != 2 {
			return true
		}
		switch parts[1] {
		case "":
			logged = append(logged, parts[0])
		case userID:
			private[parts[0]] = true
		}
		return true
	})
	ms, err := tx.Memberships(userID)
	if err != nil {
		return changed, left, err
	}
	joined, parted := map[string]bool{}, map[string]bool{}
	newRoom := false
	for _, m := range ms {
		switch {
		case m.Membership == "join" && m.Pos > from:
			// A room joined since from: everyone in it is newly shared.
			newRoom = true
			for _, u := range s.e2eeRoomMembers(tx, m.RoomID) {
				joined[u] = true
			}
		case m.Membership == "join":
			s.memberChanges(tx, m.RoomID, from, to, joined, parted)
		case (m.Membership == "leave" || m.Membership == "ban") && m.Pos > from && m.Pos <= to:
			// A room left since from: its members may share nothing else.
			for _, u := range s.e2eeRoomMembers(tx, m.RoomID) {
				parted[u] = true
			}
		}
	}
	set := map[string]bool{}
	for u := range private {
		set[u] = true
	}
	shares := s.sharesRoomWith(tx, ms)
	for _, u := range logged {
		if u == userID || shares(u) {
			set[u] = true
		}
	}
	for u := range joined {
		if u != userID && shares(u) {
			set[u] = true
		}
	}
	if newRoom {
		// The user too, as Synapse lists every member of a newly joined
		// room (Complement's TestDeviceListsUpdateOverFederation).
		set[userID] = true
	}
	for u := range parted {
		if u != userID && !shares(u) {
			left = append(left, u)
			delete(set, u)
		}
	}
	for u := range set {
		changed = append(changed, u)
	}
	sort.Strings(changed)
	sort.Strings(left)
	return changed, left, nil
}

// memberChanges walks a room's timeline over (from, to] and sorts the
// users whose membership changed into joined and parted.
func (s *Server) memberChanges(tx *store.Tx, roomID string, from, to uint64, joined, parted map[string]bool) {
	r, err := tx.Room(roomID)
	if err != nil || r.LastPos <= from {
		return
	}
	tx.Timeline(r.NID, to, true, func(pos, nid uint64) bool {
		if pos <= from {
			return false
		}
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil || ev.Type != "m.room.member" || ev.StateKey == nil || ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
			return true
		}
		switch ev.Membership() {
		case "join":
			joined[*ev.StateKey] = true
		case "leave", "ban":
			parted[*ev.StateKey] = true
		}
		return true
	})
}

// sharesRoomWith returns a memoised test of whether a user is joined to
// any of the rooms in ms that their owner is joined to. It looks up the one
// member event per room rather than listing every member.
func (s *Server) sharesRoomWith(tx *store.Tx, ms []*store.Membership) func(userID string) bool {
	var states []*room.State
	loaded := false
	memo := map[string]bool{}
	return func(userID string) bool {
		if v, ok := memo[userID]; ok {
			return v
		}
		if !loaded {
			loaded = true
			for _, m := range ms {
				if m.Membership != "join" {
					continue
				}
				if _, st, err := s.roomState(tx, m.RoomID); err == nil {
					states = append(states, st)
				}
			}
		}
		shared := false
		for _, st := range states {
			if s.membershipIn(tx, st, userID) == "join" {
				shared = true
				break
			}
		}
		memo[userID] = shared
		return shared
	}
}

// e2eeRoomMembers lists the users joined to a room now.
func (s *Server) e2eeRoomMembers(tx *store.Tx, roomID string) []string {
	_, st, err := s.roomState(tx, roomID)
	if err != nil {
		return nil
	}
	return s.joinedUserIDs(tx, st)
}
