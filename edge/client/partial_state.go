package client

import (
	"slices"

	"edge/edge/notify"
	"edge/edge/store"
)

// FullStateReached is told, after the commit, that a room joined with
// partial state (a faster join at stream position joinPos, through the
// resident servers named in servers) now has its full state. Its syncs
// wake (eager syncs show the room only now), and the device list changes
// local members made meanwhile go to the room's servers the partial state
// did not show, which missed them (as Synapse does once a room is no
// longer partial); and remote users who turn out not to share a room with
// ours stop being tracked.
func (s *Server) FullStateReached(roomID string, joinPos uint64, servers []string) {
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
			var dests []string
			for _, srv := range s.otherServersIn(tx, roomID) {
				if !slices.Contains(servers, srv) {
					dests = append(dests, srv)
				}
			}
			if len(dests) == 0 {
				return nil
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
