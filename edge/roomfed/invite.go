package roomfed

// Invites over federation (server-server API, "Inviting to a room"): the
// inviting server builds and signs the invite, the invitee's server
// countersigns it (PUT /_matrix/federation/v2/invite), and only then does
// the inviting server store it in the room.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// strippedTypes are the state events sent along with an invite, as the
// client API's invite_state shows them.
var strippedTypes = []string{"m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
	"m.room.canonical_alias", "m.room.encryption", "m.room.topic"}

// InviteAcceptor stores a countersigned invite (pdu, with this server's
// signature) for its local invitee, in tx; stripped is the room's
// invite_room_state. An error wrapping room.ErrForbidden refuses the
// invite with 403.
type InviteAcceptor func(tx *store.Tx, roomID, eventID string, pdu json.RawMessage, stripped []json.RawMessage) error

// Invite invites invitee, a user on another server, to roomID on behalf of
// sender (one of ours): the event is built on the current state, checked
// against the auth rules, sent to the invitee's server to be signed, and
// stored and sent to the room's other servers only once that signature
// verifies. It is the client API's remote invite hook. A refusal wraps
// room.ErrForbidden.
func (e *Engine) Invite(ctx context.Context, roomID, sender, invitee string, content json.RawMessage) error {
	sk := invitee
	var version string
	var tmpl json.RawMessage
	var stripped []json.RawMessage
	err := e.store.View(func(tx *store.Tx) error {
		var err error
		version, tmpl, err = e.rooms.Template(tx, roomID, room.Proto{Type: "m.room.member", StateKey: &sk, Sender: sender, Content: content})
		if err != nil {
			return err
		}
		stripped, err = e.strippedState(tx, roomID, sender)
		return err
	})
	if err != nil {
		return err
	}
	signed, eventID, err := e.rooms.SignPDU(version, tmpl)
	if err != nil {
		return err
	}
	body := map[string]any{"room_version": version, "event": json.RawMessage(signed), "invite_room_state": stripped}
	var resp struct {
		Event json.RawMessage `json:"event"`
	}
	dest := domainOf(invitee)
	path := "/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	if err := e.fed.Client.Put(ctx, dest, path, body, &resp); err != nil {
		return remoteErr(err)
	}
	ev, err := room.ParseEvent(version, stripUnsigned(resp.Event), "")
	if err != nil {
		return fmt.Errorf("%w: invite answer from %s: %v", room.ErrBadEvent, dest, err)
	}
	// Our signature and the content hash it covers prove the answer is
	// the event we sent; the invitee's server may only have signed it.
	if ev.ID != eventID || !ev.VerifyContentHash() {
		return fmt.Errorf("%w: %s answered another invite event", room.ErrBadEvent, dest)
	}
	for _, srv := range []string{e.name, dest} {
		if err := ev.VerifySignature(srv, e.fed.Keyring.GetKey); err != nil {
			return fmt.Errorf("%w: invite answer from %s: %s: %v", room.ErrForbidden, dest, srv, err)
		}
	}
	unlock := e.lock(roomID)
	defer unlock()
	return e.persistOwn(ev)
}

// persistOwn stores an event of ours built outside room.Service.Send (so
// signed by another server too) as the room's new head, after the auth
// rules at its auth events and at the current state, and queues it to
// the room's servers like a local event.
func (e *Engine) persistOwn(ev *room.Event) error {
	return e.store.Write(func(tx *store.Tx) error {
		before, err := e.rooms.StateBeforeEvent(tx, ev)
		if err != nil {
			return err
		}
		if err := e.authorizeAt(tx, ev, before); err != nil {
			return err
		}
		r, err := tx.Room(ev.RoomID)
		if err != nil {
			return err
		}
		cur, err := e.rooms.State(tx, r.State)
		if err != nil {
			return err
		}
		// The state may have moved on while the invitee's server signed.
		if err := e.authorizeAt(tx, ev, cur); err != nil {
			return err
		}
		if err := e.rooms.PersistRemote(tx, ev, before, 0); err != nil {
			return err
		}
		return e.queueLocal(tx, ev)
	})
}

// strippedState is the invite_room_state of a room: the stripped form
// (type, state_key, sender, content) of its current state events that an
// invitee sees, and the inviter's member event.
func (e *Engine) strippedState(tx *store.Tx, roomID, sender string) ([]json.RawMessage, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, room.ErrRoomNotFound
	} else if err != nil {
		return nil, err
	}
	st, err := e.rooms.State(tx, r.State)
	if err != nil {
		return nil, err
	}
	out := []json.RawMessage{}
	add := func(t, k string) error {
		ev, err := e.rooms.StateEvent(tx, st, t, k)
		if err != nil || ev == nil {
			return err
		}
		if t == "m.room.create" {
			// MSC4311: the create event goes whole, as a PDU, so the
			// invitee can check it against the room ID.
			out = append(out, json.RawMessage(ev.Raw))
			return nil
		}
		raw, err := json.Marshal(map[string]any{"type": ev.Type, "state_key": *ev.StateKey, "sender": ev.Sender, "content": ev.Content})
		out = append(out, raw)
		return err
	}
	for _, t := range strippedTypes {
		if err := add(t, ""); err != nil {
			return nil, err
		}
	}
	if err := add("m.room.member", sender); err != nil {
		return nil, err
	}
	return out, nil
}

// ServeInvites serves PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
// with accept storing the invites this server countersigns.
func (e *Engine) ServeInvites(accept InviteAcceptor) {
	e.fed.HandleRoom("PUT /_matrix/federation/v2/invite/{roomId}/{eventId}", func(r *federation.Request) (any, error) {
		return e.serveInvite(r, accept)
	})
}

// serveInvite answers PUT /_matrix/federation/v2/invite/{roomId}/{eventId}:
// an invite of one of our users, in a room version we support, well
// formed and signed by the sending server (the inviter's), gets our
// signature and is stored for the invitee; the answer is the event with
// our signature added.
func (e *Engine) serveInvite(r *federation.Request, accept InviteAcceptor) (any, error) {
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	var req struct {
		RoomVersion     string            `json:"room_version"`
		Event           json.RawMessage   `json:"event"`
		InviteRoomState []json.RawMessage `json:"invite_room_state"`
	}
	if err := json.Unmarshal(r.Body, &req); err != nil {
		return nil, fedErr(http.StatusBadRequest, "M_NOT_JSON", err.Error())
	}
	if req.RoomVersion == "" || len(req.Event) == 0 {
		return nil, fedErr(http.StatusBadRequest, "M_MISSING_PARAM", "room_version and event are required")
	}
	if !slices.Contains(room.SupportedVersions, req.RoomVersion) {
		return nil, errIncompatible(req.RoomVersion, "room version "+req.RoomVersion+" is not supported")
	}
	if len(req.Event) > room.MaxEventBytes {
		return nil, fedErr(http.StatusBadRequest, "M_TOO_LARGE", "event too large")
	}
	ev, err := room.ParseEvent(req.RoomVersion, stripUnsigned(req.Event), "")
	if err != nil {
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", err.Error())
	}
	switch {
	case ev.ID != eventID:
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", "the event ID does not match the path")
	case ev.RoomID != roomID || ev.Type != "m.room.member" || ev.StateKey == nil || ev.Membership() != "invite" || !validUserID(ev.Sender):
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", "not an invite event in this room")
	case domainOf(ev.Sender) != r.Origin:
		return nil, errForbidden("the inviter is not on the requesting server")
	case domainOf(*ev.StateKey) != e.name:
		return nil, errForbidden("the invited user is not on this server")
	case !ev.VerifyContentHash():
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", "content hash mismatch")
	}
	if err := ev.VerifySignature(r.Origin, e.fed.Keyring.GetKey); err != nil {
		return nil, errForbidden("signature check failed: " + err.Error())
	}
	signed, _, err := e.rooms.SignPDU(req.RoomVersion, ev.Raw)
	if err != nil {
		return nil, err
	}
	stripped := make([]json.RawMessage, 0, len(req.InviteRoomState))
	for _, raw := range req.InviteRoomState {
		var s struct {
			Type     string          `json:"type"`
			StateKey *string         `json:"state_key"`
			Sender   string          `json:"sender"`
			Content  json.RawMessage `json:"content"`
			// A full create event (MSC4311) keeps these for the client.
			OriginServerTS int64  `json:"origin_server_ts,omitzero"`
			RoomID         string `json:"room_id,omitzero"`
		}
		if json.Unmarshal(raw, &s) != nil || s.Type == "" || s.StateKey == nil || len(s.Content) == 0 || s.Content[0] != '{' {
			continue // not a stripped state event: leave it out
		}
		if s.Type != "m.room.create" {
			s.OriginServerTS, s.RoomID = 0, ""
		} else if s.OriginServerTS != 0 {
			s.RoomID = roomID // a v12 create PDU has none: its hash is the ID
		}
		clean, _ := json.Marshal(s)
		stripped = append(stripped, clean)
	}
	err = e.store.Write(func(tx *store.Tx) error {
		return accept(tx, roomID, eventID, signed, stripped)
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return map[string]any{"event": json.RawMessage(signed)}, nil
}
