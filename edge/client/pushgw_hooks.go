package client

import (
	"encoding/json"

	"edge/edge/push"
	"edge/edge/room"
	"edge/edge/store"
)

// PushEvent is what a push notification says about an event beyond the
// event itself: names as the room's state has them.
type PushEvent struct {
	SenderDisplayName string
	RoomName          string
	RoomAlias         string
}

// PushTarget is a local user whose push rules say an event notifies them,
// and who has pushers to tell.
type PushTarget struct {
	UserID string
	// UserIsTarget: the event is a member event whose state_key is UserID.
	UserIsTarget bool
	Actions      push.Actions
	// Unread is the user's notification count summed over joined rooms.
	Unread int
	// Pushers are the user's pushers as stored by POST /pushers/set.
	Pushers []json.RawMessage
}

// PushTargets evaluates ev against the push rules of each local member of
// its room — joined, or invited by ev itself — other than the sender, and
// returns those it notifies who have pushers. It reads the store, so call
// it off the event path.
func (s *Server) PushTargets(ev *room.Event) (PushEvent, []PushTarget, error) {
	var info PushEvent
	var out []PushTarget
	err := s.Store.View(func(tx *store.Tx) error {
		info, out = PushEvent{}, nil
		r, err := tx.Room(ev.RoomID)
		if err != nil {
			return err
		}
		st, err := s.Rooms.StateAfter(tx, ev)
		if err != nil {
			return err
		}
		pl, err := s.Rooms.PowerLevels(tx, st)
		if err != nil {
			return err
		}
		base := push.Context{
			RoomID:                  r.RoomID,
			NotificationPowerLevels: map[string]int64{"room": int64(pl.NotificationLevel("room"))},
			SenderPowerLevel:        int64(pl.UserLevel(ev.Sender)),
		}
		// One pass over the state: member count, local members and their
		// display names, the sender's name, the room's name and alias.
		names := map[string]string{}
		var local []string
		st.Each(func(k, nid uint64) bool {
			evType, stateKey, err := tx.StateKey(k)
			if err != nil {
				return true
			}
			switch evType {
			case "m.room.member":
				m, err := s.Rooms.Event(tx, nid)
				if err != nil {
					return true
				}
				if stateKey == ev.Sender {
					info.SenderDisplayName = pushDisplayName(m.Content)
				}
				if m.Membership() != "join" {
					return true
				}
				base.MemberCount++
				if s.isLocalUser(stateKey) && stateKey != ev.Sender {
					local = append(local, stateKey)
					names[stateKey] = pushDisplayName(m.Content)
				}
			case "m.room.name", "m.room.canonical_alias":
				if stateKey != "" {
					return true
				}
				e, err := s.Rooms.Event(tx, nid)
				if err != nil {
					return true
				}
				var c struct {
					Name  string `json:"name"`
					Alias string `json:"alias"`
				}
				_ = json.Unmarshal(e.Content, &c)
				if evType == "m.room.name" {
					info.RoomName = c.Name
				} else {
					info.RoomAlias = c.Alias
				}
			}
			return true
		})
		// An invite concerns its (local) invitee before they join: the
		// default .m.rule.invite_for_me is for them.
		var invitee string
		if ev.Type == "m.room.member" && ev.StateKey != nil && ev.Membership() == "invite" &&
			*ev.StateKey != ev.Sender && s.isLocalUser(*ev.StateKey) {
			invitee = *ev.StateKey
			local = append(local, invitee)
			names[invitee] = pushDisplayName(ev.Content)
		}
		for _, userID := range local {
			var pushers []json.RawMessage
			tx.ScanKV(pusherNamespace, userID+"\x1f", func(_ string, v []byte) bool {
				pushers = append(pushers, json.RawMessage(append([]byte(nil), v...)))
				return true
			})
			if len(pushers) == 0 {
				continue // nobody to tell: skip the rules
			}
			rules, err := s.loadPushRules(tx, userID)
			if err != nil {
				return err
			}
			c := base
			c.DisplayName = names[userID]
			actions, matched := push.Evaluate(rules.Ruleset(), push.RawEvent(ev.Raw), c)
			if !matched || !actions.Notify() {
				continue
			}
			out = append(out, PushTarget{
				UserID:       userID,
				UserIsTarget: ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == userID,
				Actions:      actions,
				Unread:       s.totalUnread(tx, userID),
				Pushers:      pushers,
			})
		}
		return nil
	})
	return info, out, err
}

// totalUnread sums notification_count over the user's joined rooms: the
// badge the spec's counts.unread asks for.
func (s *Server) totalUnread(tx *store.Tx, userID string) int {
	ms, err := tx.Memberships(userID)
	if err != nil {
		return 0
	}
	total := 0
	for _, m := range ms {
		if m.Membership == "join" {
			total += s.unreadCounts(tx, userID, m.RoomID)["notification_count"]
		}
	}
	return total
}

func pushDisplayName(content json.RawMessage) string {
	var c struct {
		DisplayName string `json:"displayname"`
	}
	_ = json.Unmarshal(content, &c)
	return c.DisplayName
}

// RemovePusher deletes a user's pusher: what a push gateway's "rejected"
// answer asks for. A pusher already gone is not an error.
func (s *Server) RemovePusher(userID, appID, pushKey string) error {
	return s.Store.Write(func(tx *store.Tx) error {
		tx.DeleteKV(pusherNamespace, pusherKey(userID, appID, pushKey))
		return nil
	})
}
