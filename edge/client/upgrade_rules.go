package client

import (
	"encoding/json"

	"edge/edge/store"
)

// CopyPushRulesOnJoin gives a local user who has just joined the
// replacement of an upgraded room (its create event names a predecessor)
// copies of their push rules for the old room, as Synapse does, so a muted
// room stays muted after an upgrade (Complement's TestPushRuleRoomUpgrade).
// It runs after the join committed, for local and remote joins alike.
func (s *Server) CopyPushRulesOnJoin(roomID, userID string) {
	if !s.isLocalUser(userID) {
		return
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		_, st, err := s.roomState(tx, roomID)
		if err != nil {
			return err
		}
		create, err := s.Rooms.StateEvent(tx, st, "m.room.create", "")
		if err != nil || create == nil {
			return err
		}
		var c struct {
			Predecessor struct {
				RoomID string `json:"room_id"`
			} `json:"predecessor"`
		}
		if json.Unmarshal(create.Content, &c) != nil || c.Predecessor.RoomID == "" {
			return nil
		}
		rules, err := s.loadPushRules(tx, userID)
		if err != nil {
			return err
		}
		if !rules.CopyRoomRules(c.Predecessor.RoomID, roomID) {
			return nil
		}
		return s.storePushRules(tx, userID, rules)
	})
	if err != nil {
		s.Log.Warn("push rules not copied to upgraded room", "room_id", roomID, "user_id", userID, "err", err)
	}
}
