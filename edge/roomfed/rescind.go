package roomfed

// Rescinded invites: a local user invited to a room this server is not in
// hears of the inviter's side withdrawing the invite (a kick of the
// invitee) as a PDU of that unknown room, which queueLocal on the
// inviting server sends to the invitee's server for that reason.

import (
	"encoding/json"
	"fmt"

	"edge/edge/store"
)

// InviteRescinds lets the engine withdraw a local user's pending invite to
// a room this server is not in.
type InviteRescinds struct {
	// Pending is the sender of userID's pending invite to roomID and the
	// room's version (ok false: no such invite).
	Pending func(tx *store.Tx, userID, roomID string) (inviter, version string, ok bool)
	// Rescind records the withdrawal, the leave event (PDU) in hand.
	Rescind func(tx *store.Tx, userID, roomID, eventID string, pdu json.RawMessage) error
}

// OnRescind installs h.
func (e *Engine) OnRescind(h InviteRescinds) { e.rescinds = &h }

// receiveRescind takes a PDU of a room this server does not know when it
// is a leave or ban of a local user with a pending invite to it, sent by
// the inviter and passing the checks on receipt.
// handled false: the PDU is no such thing.
func (e *Engine) receiveRescind(roomID string, raw []byte) (evID string, handled bool, err error) {
	var h struct {
		Type     string  `json:"type"`
		StateKey *string `json:"state_key"`
		Sender   string  `json:"sender"`
		Content  struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	if json.Unmarshal(raw, &h) != nil || h.Type != "m.room.member" || h.StateKey == nil || domainOf(*h.StateKey) != e.name ||
		(h.Content.Membership != "leave" && h.Content.Membership != "ban") {
		return "", false, nil
	}
	userID := *h.StateKey
	var inviter, version string
	var ok bool
	_ = e.store.View(func(tx *store.Tx) error { inviter, version, ok = e.rescinds.Pending(tx, userID, roomID); return nil })
	if !ok {
		return "", false, nil
	}
	ev, err := e.check(version, roomID, raw)
	if ev == nil {
		return "", true, err
	} else if err != nil {
		return ev.ID, true, err
	}
	if ev.Sender != inviter {
		// As Synapse: the invitee is not told of another member's kick.
		return ev.ID, true, fmt.Errorf("%w: only the inviter withdraws an invite", ErrRejected)
	}
	return ev.ID, true, e.store.Write(func(tx *store.Tx) error {
		return e.rescinds.Rescind(tx, userID, roomID, ev.ID, ev.Raw)
	})
}
