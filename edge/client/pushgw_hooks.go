package client

import (
	"encoding/json"
	"strings"

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
		// Nothing here walks the room's state: a message in a room with
		// 100k members must cost what it costs in a room of two. The
		// member count comes from the per-snapshot joined-server counts;
		// the candidates are the local users with a pusher, checked
		// against their membership.
		joined, err := s.Rooms.JoinedServers(tx, st.ID)
		if err != nil {
			return err
		}
		for _, n := range joined {
			base.MemberCount += n
		}
		stateEvent := func(evType, key string) *room.Event {
			e, _ := s.Rooms.StateEvent(tx, st, evType, key)
			return e
		}
		if m := stateEvent("m.room.member", ev.Sender); m != nil {
			info.SenderDisplayName = pushDisplayName(m.Content)
		}
		var c struct {
			Name  string `json:"name"`
			Alias string `json:"alias"`
		}
		if e := stateEvent("m.room.name", ""); e != nil && json.Unmarshal(e.Content, &c) == nil {
			info.RoomName = c.Name
		}
		if e := stateEvent("m.room.canonical_alias", ""); e != nil && json.Unmarshal(e.Content, &c) == nil {
			info.RoomAlias = c.Alias
		}
		names := map[string]string{}
		var local []string
		for _, userID := range usersWithPushers(tx) {
			if userID == ev.Sender {
				continue
			}
			if m, err := tx.Membership(userID, r.RoomID); err != nil || m.Membership != "join" {
				continue
			}
			local = append(local, userID)
			if m := stateEvent("m.room.member", userID); m != nil {
				names[userID] = pushDisplayName(m.Content)
			}
		}
		// An invite concerns its (local) invitee before they join: the
		// default .m.rule.invite_for_me is for them.
		if ev.Type == "m.room.member" && ev.StateKey != nil && ev.Membership() == "invite" &&
			*ev.StateKey != ev.Sender && s.isLocalUser(*ev.StateKey) {
			invitee := *ev.StateKey
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

// usersWithPushers lists the local users with at least one pusher (keys
// of the pusher namespace are "user\x1fapp\x1fpushkey").
func usersWithPushers(tx *store.Tx) []string {
	var out []string
	tx.ScanKV(pusherNamespace, "", func(k string, _ []byte) bool {
		if u, _, ok := strings.Cut(k, "\x1f"); ok && (len(out) == 0 || out[len(out)-1] != u) {
			out = append(out, u)
		}
		return true
	})
	return out
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
