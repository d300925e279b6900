package client

import (
	"encoding/json"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

// txnNamespace maps an event ID to the device and transaction ID that sent
// it, so the sending device sees unsigned.transaction_id.
const txnNamespace = "event_txn"

// render turns a stored event into the client format with its unsigned data
// as the viewer should see it.
func (s *Server) render(tx *store.Tx, ev *room.Event, viewer *Session) *room.ClientEvent {
	ce := ev.Client()
	u := map[string]any{}
	if ev.OriginServerTS > 0 {
		u["age"] = max(time.Now().UnixMilli()-ev.OriginServerTS, 0)
	}
	if ev.IsState() && ev.StateBefore != 0 {
		if st, err := s.Rooms.State(tx, ev.StateBefore); err == nil {
			if prev, err := s.Rooms.StateEvent(tx, st, ev.Type, *ev.StateKey); err == nil && prev != nil {
				u["replaces_state"] = prev.ID
				u["prev_content"] = prev.Content
				u["prev_sender"] = prev.Sender
			}
		}
	}
	if red := s.Rooms.RedactedBy(tx, ev); red != nil {
		rc := red.Client()
		u["redacted_because"] = rc
	}
	if rel := s.aggregations(tx, ev, viewer); rel != nil {
		u["m.relations"] = rel
	}
	if viewer != nil {
		if m := s.membershipAt(tx, ev, viewer.UserID); m != "" {
			u["membership"] = m
		}
	}
	if viewer != nil && ev.Sender == viewer.UserID {
		if v, err := tx.GetKV(txnNamespace, ev.ID); err == nil {
			var t struct {
				Device string `json:"d"`
				Txn    string `json:"t"`
			}
			if json.Unmarshal(v, &t) == nil && t.Device == viewer.DeviceID {
				u["transaction_id"] = t.Txn
			}
		}
	}
	if len(u) > 0 {
		ce.Unsigned = u
	}
	return ce
}

// renderAll renders a list of events.
func (s *Server) renderAll(tx *store.Tx, evs []*room.Event, viewer *Session) []*room.ClientEvent {
	out := make([]*room.ClientEvent, 0, len(evs))
	for _, ev := range evs {
		out = append(out, s.render(tx, ev, viewer))
	}
	return out
}

// membershipAt is the viewer's membership when ev was sent, after ev
// itself for the viewer's own member event (MSC4115, unsigned.membership;
// "leave" when the viewer had none), or "" when the event has no known
// state (an outlier).
func (s *Server) membershipAt(tx *store.Tx, ev *room.Event, userID string) string {
	if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == userID && ev.Flags&(store.FlagRejected|store.FlagSoftFailed) == 0 {
		return ev.Membership()
	}
	if ev.StateBefore == 0 {
		if ev.Type == "m.room.create" {
			return "leave" // nobody is in a room before its creation
		}
		return ""
	}
	st, err := s.Rooms.State(tx, ev.StateBefore)
	if err != nil {
		return ""
	}
	if m, err := s.Rooms.StateEvent(tx, st, "m.room.member", userID); err == nil && m != nil {
		return m.Membership()
	}
	return "leave"
}
