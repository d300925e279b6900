package room

import (
	"encoding/json"
	"fmt"

	"edge/edge/store"
)

// copiedOnUpgrade is the state a room upgrade carries over, as the spec's
// room-upgrade section lists it.
var copiedOnUpgrade = []string{
	"m.room.server_acl", "m.room.encryption", "m.room.name", "m.room.avatar", "m.room.topic",
	"m.room.guest_access", "m.room.history_visibility", "m.room.join_rules",
}

// Upgrade replaces oldRoomID with a new room of newVersion: the new room
// gets the old one's important state and a predecessor link, the old one a
// tombstone and power levels that stop ordinary users from talking.
func (s *Service) Upgrade(tx *store.Tx, oldRoomID, sender, newVersion string, additionalCreators []string) (string, error) {
	if !supported(newVersion) {
		return "", fmt.Errorf("%w: %q", ErrUnsupported, newVersion)
	}
	old, err := tx.Room(oldRoomID)
	if err != nil {
		return "", ErrRoomNotFound
	}
	st, err := s.states.load(tx, old.State)
	if err != nil {
		return "", err
	}
	// Probe the tombstone's authorisation first so a user without the
	// power to upgrade gets M_FORBIDDEN before anything is created.
	sk := ""
	probe, err := s.build(tx, old, st, Proto{Type: "m.room.tombstone", StateKey: &sk, Sender: sender, Content: json.RawMessage(`{}`)})
	if err != nil {
		return "", err
	}
	if err := s.authorize(tx, probe); err != nil {
		return "", err
	}
	rv := Features(newVersion)
	createContent := map[string]any{}
	if oldCreate, _ := s.StateEvent(tx, st, "m.room.create", ""); oldCreate != nil {
		var c map[string]any
		_ = json.Unmarshal(oldCreate.Content, &c)
		for _, k := range []string{"m.federate", "type"} {
			if v, ok := c[k]; ok {
				createContent[k] = v
			}
		}
	}
	// The predecessor names the old room's last event, which v12 made
	// optional but older versions' clients use to stitch timelines.
	// (MSC4291: a v12 room's predecessor names only the room.)
	predecessor := map[string]any{"room_id": oldRoomID}
	if len(old.Extremities) > 0 && !rv.RoomIDIsCreateEventID() {
		if last, err := s.Event(tx, old.Extremities[0]); err == nil {
			predecessor["event_id"] = last.ID
		}
	}
	createContent["predecessor"] = predecessor
	if rv.PrivilegedRoomCreators() && len(additionalCreators) > 0 {
		createContent["additional_creators"] = additionalCreators
	}
	var initial []StateEvent
	for _, t := range copiedOnUpgrade {
		if ev, _ := s.StateEvent(tx, st, t, ""); ev != nil {
			initial = append(initial, StateEvent{Type: t, Content: ev.Content})
		}
	}
	var plOverride json.RawMessage
	if pl, _ := s.StateEvent(tx, st, "m.room.power_levels", ""); pl != nil {
		var c map[string]any
		_ = json.Unmarshal(pl.Content, &c)
		if users, ok := c["users"].(map[string]any); ok && rv.PrivilegedRoomCreators() {
			delete(users, sender) // creators are implicitly all-powerful in v12 rooms
			for _, u := range additionalCreators {
				delete(users, u)
			}
		} else if ok {
			users[sender] = 100
		}
		plOverride, _ = json.Marshal(c)
	}
	newID, err := s.CreateRoom(tx, CreateOptions{
		Creator: sender, Version: newVersion, Preset: "private_chat",
		CreationContent: mustJSON(createContent), PowerLevelsOverride: plOverride, InitialState: initial,
	})
	if err != nil {
		return "", err
	}
	if _, err := s.Send(tx, oldRoomID, Proto{Type: "m.room.tombstone", StateKey: &sk, Sender: sender,
		Content: mustJSON(map[string]any{"body": "This room has been replaced", "replacement_room": newID})}); err != nil {
		return "", err
	}
	// Restrict the old room: only moderators may speak or invite.
	if st, err = s.states.load(tx, mustRoom(tx, oldRoomID).State); err == nil {
		if pl, _ := s.StateEvent(tx, st, "m.room.power_levels", ""); pl != nil {
			var c map[string]any
			_ = json.Unmarshal(pl.Content, &c)
			level := 50.0
			if ud, ok := c["users_default"].(float64); ok && ud+1 > level {
				level = ud + 1
			}
			c["events_default"], c["invite"] = level, level
			_, _ = s.Send(tx, oldRoomID, Proto{Type: "m.room.power_levels", StateKey: &sk, Sender: sender, Content: mustJSON(c)})
		}
	}
	return newID, nil
}

func mustRoom(tx *store.Tx, roomID string) *store.Room {
	r, err := tx.Room(roomID)
	if err != nil {
		return &store.Room{}
	}
	return r
}
