package client

import (
	"slices"

	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

// FullStateReached is told, after the commit, that a room joined with
// partial state (our join event joinEventID, a faster join at stream
// position joinPos, through the resident servers named in servers) now
// has its full state. Its syncs wake (eager syncs show the room only
// now), and the device list changes local members made meanwhile go to
// the servers that may have been in the room while the partial state hid
// them (partialStateDests); and remote users who turn out not to share a
// room with ours stop being tracked.
func (s *Server) FullStateReached(roomID, joinEventID string, joinPos uint64, servers []string) {
	s.Notifier.Notify(notify.RoomKey(roomID))
	if s.e2eeFed() == nil {
		return
	}
	// Its own transaction, after the resync's.
	go func() {
		err := s.Store.Write(func(tx *store.Tx) error {
			_, st, err := s.roomState(tx, roomID)
			if err != nil {
				return err
			}
			dests, err := s.partialStateDests(tx, roomID, joinEventID, st, servers)
			if err != nil || len(dests) == 0 {
				return err
			}
			for _, u := range s.joinedUserIDs(tx, st) {
				if !s.isLocalUser(u) {
					continue
				}
				pk, err := tx.GetKV(nsDevListUser, e2eeKey(u, ""))
				if err != nil || parsePosKey(string(pk)) <= joinPos {
					continue // no change since the join
				}
				devices, err := tx.Devices(u)
				if err != nil {
					return err
				}
				for _, d := range devices {
					s.sendDeviceListUpdateTo(tx, dests, u, d.DeviceID, false)
				}
			}
			return nil
		})
		if err != nil {
			s.Log.Info("device lists after a faster join's resync", "room_id", roomID, "err", err)
		}
		// Remote users the partial state showed joined may not be.
		s.SweepRemoteDeviceLists()
	}()
}

// partialStateDests is, as Synapse reckons it once a room is no longer
// partial, the servers that may have been in the room at some time since
// our join without our knowing: those of the members whose membership
// differs between the (now full) state at the join and the current state
// (a server that joined and left meanwhile, or one the partial state
// wrongly showed kicked, still missed the changes made while it was in),
// and those joined now; less the servers the join named, which got every
// change as it happened, and ourselves.
func (s *Server) partialStateDests(tx *store.Tx, roomID, joinEventID string, cur *room.State, named []string) ([]string, error) {
	set := map[string]bool{}
	for _, srv := range s.otherServersIn(tx, roomID) {
		set[srv] = true
	}
	join, err := s.Rooms.EventByID(tx, joinEventID)
	if err != nil {
		return nil, err
	}
	atJoin, err := s.Rooms.State(tx, join.StateBefore)
	if err != nil {
		return nil, err
	}
	members := func(st *room.State) (map[string]uint64, error) {
		out := map[string]uint64{}
		var err error
		st.Each(func(k, nid uint64) bool {
			var evType, sk string
			if evType, sk, err = tx.StateKey(k); err != nil {
				return false
			}
			if evType == "m.room.member" {
				out[sk] = nid
			}
			return true
		})
		return out, err
	}
	before, err := members(atJoin)
	if err != nil {
		return nil, err
	}
	now, err := members(cur)
	if err != nil {
		return nil, err
	}
	changed := func(user string) {
		if srv, ok := userServer(user); ok {
			set[srv] = true
		}
	}
	for u, nid := range before {
		if now[u] != nid {
			changed(u)
		}
	}
	for u, nid := range now {
		if before[u] != nid {
			changed(u)
		}
	}
	delete(set, s.Config.ServerName)
	for _, srv := range named {
		delete(set, srv)
	}
	out := make([]string, 0, len(set))
	for srv := range set {
		out = append(out, srv)
	}
	slices.Sort(out)
	return out, nil
}
