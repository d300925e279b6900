package roomfed

// Knocking upon a room this server is not in (server-server API,
// "Knocking upon a room"): make_knock and send_knock, asked of a resident
// server and served to knocking servers.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// serveMakeKnock answers GET /_matrix/federation/v1/make_knock/{roomId}/{userId}:
// a knock template built on the current state, if the room's version is
// one the asking server lists in ver= (400 M_INCOMPATIBLE_ROOM_VERSION),
// has knocking (v7 on; 403 otherwise, as Synapse answers) and the auth
// rules let the user knock (the join rule is knock or knock_restricted).
func (e *Engine) serveMakeKnock(r *federation.Request) (any, error) {
	roomID := r.PathValue("roomId")
	if err := e.refuseIfPartial(roomID); err != nil {
		return nil, err
	}
	vers := r.URL.Query()["ver"]
	if len(vers) == 0 {
		vers = []string{"1"}
	}
	version, err := e.roomVersion(roomID)
	if err != nil {
		return nil, errNotFound("unknown room")
	}
	if !slices.Contains(vers, version) {
		return nil, errIncompatible(version, "the room's version is "+version)
	}
	if !room.Features(version).Knocks() {
		return nil, errForbidden("room version " + version + " does not support knocking")
	}
	return e.makeMembership(r, "knock", nil)
}

// serveSendKnock answers PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}:
// the knock of a user of the asking server, checked like send_leave's
// leave, is stored and sent to the room's other servers. The answer's
// knock_room_state holds the room's create, join rules, name, avatar,
// canonical alias, encryption and topic events as PDUs (the spec asks for
// the create event in its room version's format since v1.16).
func (e *Engine) serveSendKnock(r *federation.Request) (any, error) {
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	if err := e.refuseIfPartial(roomID); err != nil {
		return nil, err // as make_join and send_join: we cannot vouch for the room yet
	}
	unlock := e.lock(roomID)
	defer unlock()
	version, err := e.roomVersion(roomID)
	if err != nil {
		return nil, errNotFound("unknown room")
	}
	if !room.Features(version).Knocks() {
		return nil, errForbidden("room version " + version + " does not support knocking")
	}
	ev, err := e.sentMembership(r, version, roomID, eventID, "knock")
	if err != nil {
		return nil, err
	}
	known, err := e.applySent(ev)
	if err != nil {
		return nil, err
	}
	var state []json.RawMessage
	err = e.store.Write(func(tx *store.Tx) error {
		if _, _, err := e.relaySent(tx, eventID, r.Origin, "knock", !known); err != nil {
			return err
		}
		state, err = e.knockState(tx, roomID)
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return map[string]any{"knock_room_state": state}, nil
}

// knockState is the room's current create, join rules, name, avatar,
// canonical alias, encryption and topic events, as PDUs.
func (e *Engine) knockState(tx *store.Tx, roomID string) ([]json.RawMessage, error) {
	r, err := tx.Room(roomID)
	if err != nil {
		return nil, room.ErrRoomNotFound
	}
	st, err := e.rooms.State(tx, r.State)
	if err != nil {
		return nil, err
	}
	out := []json.RawMessage{}
	for _, t := range strippedTypes {
		ev, err := e.rooms.StateEvent(tx, st, t, "")
		if err != nil {
			return nil, err
		}
		if ev != nil {
			out = append(out, ev.Raw)
		}
	}
	return out, nil
}

// Knock makes userID (one of ours) knock on a room this server is not in
// through the first of servers that accepts (make_knock, then
// send_knock). It returns the knock's event ID and PDU and the room's
// knock_room_state in stripped form (type, state_key, sender, content).
// It is the client API's RemoteKnock hook. A refusal wraps
// room.ErrForbidden, a room version we cannot use room.ErrUnsupported.
func (e *Engine) Knock(ctx context.Context, userID, roomID string, servers []string, reason string) (string, json.RawMessage, []json.RawMessage, error) {
	var errs []error
	for _, srv := range servers {
		if srv == e.name || srv == "" {
			continue
		}
		evID, pdu, state, err := e.knockVia(ctx, srv, userID, roomID, reason)
		if err == nil {
			return evID, pdu, state, nil
		}
		e.log.Info("remote knock failed", "server", srv, "room_id", roomID, "user_id", userID, "err", err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return "", nil, nil, fmt.Errorf("%w: no server to knock on %s through", room.ErrRoomNotFound, roomID)
	}
	// The first server's answer is the one to report (usually the room's own).
	return "", nil, nil, errs[0]
}

func (e *Engine) knockVia(ctx context.Context, srv, userID, roomID, reason string) (string, json.RawMessage, []json.RawMessage, error) {
	// Every version we know, as Synapse asks: a room without knocks is
	// then refused by the resident server with a clear 403.
	q := url.Values{"ver": room.SupportedVersions}
	var mk struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	path := "/_matrix/federation/v1/make_knock/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + "?" + q.Encode()
	if err := e.fed.Client.Get(ctx, srv, path, &mk); err != nil {
		return "", nil, nil, remoteErr(err)
	}
	if !slices.Contains(room.SupportedVersions, mk.RoomVersion) || !room.Features(mk.RoomVersion).Knocks() {
		return "", nil, nil, fmt.Errorf("%w: %q", room.ErrUnsupported, mk.RoomVersion)
	}
	signed, eventID, err := e.signMembership(mk.RoomVersion, mk.Event, srv, userID, roomID, "knock", reason)
	if err != nil {
		return "", nil, nil, err
	}
	var resp struct {
		KnockRoomState []json.RawMessage `json:"knock_room_state"`
	}
	path = "/_matrix/federation/v1/send_knock/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	if err := e.fed.Client.Put(ctx, srv, path, json.RawMessage(signed), &resp); err != nil {
		return "", nil, nil, remoteErr(err)
	}
	return eventID, signed, e.strippedKnockState(mk.RoomVersion, roomID, resp.KnockRoomState), nil
}

// strippedKnockState turns a knock_room_state into stripped state events.
// Entries that are PDUs must be of this room and carry a valid signature
// of their sender's server (the spec: improperly signed entries should be
// removed); bare stripped events from older servers are kept as they are.
func (e *Engine) strippedKnockState(version, roomID string, list []json.RawMessage) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(list))
	for _, raw := range list[:min(len(list), 50)] {
		var s struct {
			Type       string          `json:"type"`
			StateKey   *string         `json:"state_key"`
			Sender     string          `json:"sender"`
			Content    json.RawMessage `json:"content"`
			Signatures json.RawMessage `json:"signatures,omitzero"`
			TS         int64           `json:"origin_server_ts,omitzero"`
		}
		if json.Unmarshal(raw, &s) != nil || s.Type == "" || s.StateKey == nil || len(s.Content) == 0 || s.Content[0] != '{' {
			continue
		}
		if len(s.Signatures) > 0 {
			ev, err := room.ParseEvent(version, stripUnsigned(raw), "")
			if err != nil || ev.RoomID != roomID || ev.VerifySignature(domainOf(ev.Sender), e.fed.Keyring.GetKey) != nil {
				e.log.Info("knock_room_state entry dropped", "room_id", roomID, "type", s.Type)
				continue
			}
		}
		m := map[string]any{"type": s.Type, "state_key": *s.StateKey, "sender": s.Sender, "content": s.Content}
		if s.Type == "m.room.create" && s.TS != 0 {
			// MSC4311: the client gets the create event whole.
			m["origin_server_ts"], m["room_id"] = s.TS, roomID
		}
		clean, _ := json.Marshal(m)
		out = append(out, clean)
	}
	return out
}
