package room

import (
	"encoding/json"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// PowerLevels is a room's parsed m.room.power_levels with the create event
// attached, so room v12 creators count as all-powerful.
type PowerLevels struct {
	c *event.PowerLevelsEventContent
}

// PowerLevels reads the power levels of a state; without a power-levels
// event the creator has 100 and everyone else 0, as the spec says.
func (s *Service) PowerLevels(tx *store.Tx, st *State) (*PowerLevels, error) {
	create, err := s.StateEvent(tx, st, "m.room.create", "")
	if err != nil {
		return nil, err
	}
	pl, err := s.StateEvent(tx, st, "m.room.power_levels", "")
	if err != nil {
		return nil, err
	}
	c := &event.PowerLevelsEventContent{}
	if pl != nil {
		_ = json.Unmarshal(pl.Content, c)
	} else if create != nil {
		c.Users = map[id.UserID]int{id.UserID(create.Sender): 100}
	}
	if create != nil {
		ce := &event.Event{Sender: id.UserID(create.Sender), Type: event.StateCreate, StateKey: create.StateKey, ID: id.EventID(create.ID)}
		if err := json.Unmarshal(create.Content, &ce.Content); err == nil {
			_ = ce.Content.ParseRaw(event.StateCreate)
			c.CreateEvent = ce
		}
	}
	return &PowerLevels{c: c}, nil
}

// UserLevel is the power of userID.
func (p *PowerLevels) UserLevel(userID string) int { return p.c.GetUserLevel(id.UserID(userID)) }

// Redact is the level needed to redact others' events.
func (p *PowerLevels) Redact() int { return p.c.Redact() }

// Invite, Kick and Ban are the levels of those actions.
func (p *PowerLevels) Invite() int { return p.c.Invite() }
func (p *PowerLevels) Kick() int   { return p.c.Kick() }
func (p *PowerLevels) Ban() int    { return p.c.Ban() }

// EventLevel is the level needed to send an event of evType.
func (p *PowerLevels) EventLevel(evType string, state bool) int {
	class := event.MessageEventType
	if state {
		class = event.StateEventType
	}
	return p.c.GetEventLevel(event.Type{Type: evType, Class: class})
}

// NotificationLevel is the level needed for a notification key such as "room".
func (p *PowerLevels) NotificationLevel(key string) int {
	if key == "room" {
		return p.c.Notifications.Room()
	}
	return 50
}
