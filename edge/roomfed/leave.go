package roomfed

// Leaving rooms this server is not in (server-server API, "Leaving
// rooms"): rejecting an invite goes through a resident server with
// make_leave and send_leave, which this file serves too.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

func (e *Engine) leaveRoutes() {
	e.fed.HandleRoom("GET /_matrix/federation/v1/make_leave/{roomId}/{userId}", e.serveMakeLeave)
	e.fed.HandleRoom("PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}", e.serveSendLeave)
	e.fed.HandleRoom("PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}", v1Answer(e.serveSendLeave))
}

// Leave makes userID (one of ours) leave a room this server is not in,
// typically rejecting an invite, through the first of servers that
// accepts (make_leave, then send_leave). It returns the leave event's ID
// and PDU. It is the client API's remote leave hook.
func (e *Engine) Leave(ctx context.Context, userID, roomID string, servers []string, reason string) (string, json.RawMessage, error) {
	var errs []error
	for _, srv := range servers {
		if srv == e.name || srv == "" {
			continue
		}
		evID, pdu, err := e.leaveVia(ctx, srv, userID, roomID, reason)
		if err == nil {
			return evID, pdu, nil
		}
		e.log.Info("remote leave failed", "server", srv, "room_id", roomID, "user_id", userID, "err", err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return "", nil, fmt.Errorf("%w: no server to leave %s through", room.ErrRoomNotFound, roomID)
	}
	return "", nil, errors.Join(errs...)
}

func (e *Engine) leaveVia(ctx context.Context, srv, userID, roomID, reason string) (string, json.RawMessage, error) {
	var ml struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	path := "/_matrix/federation/v1/make_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID)
	if err := e.fed.Client.Get(ctx, srv, path, &ml); err != nil {
		return "", nil, remoteErr(err)
	}
	if ml.RoomVersion == "" {
		ml.RoomVersion = "1"
	}
	if !slices.Contains(room.SupportedVersions, ml.RoomVersion) {
		return "", nil, fmt.Errorf("%w: %q", room.ErrUnsupported, ml.RoomVersion)
	}
	signed, eventID, err := e.signMembership(ml.RoomVersion, ml.Event, srv, userID, roomID, "leave", reason)
	if err != nil {
		return "", nil, err
	}
	path = "/_matrix/federation/v2/send_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	var resp json.RawMessage
	if err := e.fed.Client.Put(ctx, srv, path, json.RawMessage(signed), &resp); err != nil {
		return "", nil, remoteErr(err)
	}
	return eventID, signed, nil
}

// applySent stores the membership event a send_join, send_leave or
// send_knock carries, as an inbound PDU, unless it is stored already (a
// retried request); a refusal by the auth rules is 403.
func (e *Engine) applySent(ev *room.Event) (known bool, err error) {
	_ = e.store.View(func(tx *store.Tx) error {
		_, err := tx.EventNID(ev.ID)
		known = err == nil
		return nil
	})
	if known {
		return true, nil
	}
	if err := e.apply(ev); err != nil {
		if errors.Is(err, ErrRejected) {
			return false, errForbidden(err.Error())
		}
		return false, mapErr(err)
	}
	return false, nil
}

// relaySent loads the membership event a send_join, send_leave or
// send_knock stored, refuses it if it was rejected or soft-failed, and,
// unless it was known before (relay false), queues it to the servers
// joined before it other than the asking one and ours. It returns the
// stored event and every server joined before it.
func (e *Engine) relaySent(tx *store.Tx, eventID, origin, what string, relay bool) (*room.Event, map[string]bool, error) {
	stored, err := e.rooms.EventByID(tx, eventID)
	if err != nil {
		return nil, nil, err
	}
	if stored.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
		return nil, nil, errForbidden("the " + what + " was not accepted")
	}
	servers := map[string]bool{}
	if err := e.joinedServers(tx, stored.StateBefore, servers); err != nil {
		return nil, nil, err
	}
	var others []string
	for s := range servers {
		if s != origin && s != e.name {
			others = append(others, s)
		}
	}
	if relay && len(others) > 0 {
		e.fed.Queue.SendPDUTx(tx, others, json.RawMessage(stored.Raw))
	}
	return stored, servers, nil
}

// serveMakeLeave answers GET /_matrix/federation/v1/make_leave/{roomId}/{userId}:
// a leave template built on the current state, if the auth rules let the
// user (on the asking server) leave.
func (e *Engine) serveMakeLeave(r *federation.Request) (any, error) {
	return e.makeMembership(r, "leave", nil)
}

// serveSendLeave answers PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}:
// the leave event of a user of the asking server, checked like any
// inbound PDU, is stored and sent to the room's other servers. The answer
// is an empty object.
func (e *Engine) serveSendLeave(r *federation.Request) (any, error) {
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	unlock := e.lock(roomID)
	defer unlock()
	version, err := e.roomVersion(roomID)
	if err != nil {
		return nil, errNotFound("unknown room")
	}
	ev, err := e.sentMembership(r, version, roomID, eventID, "leave")
	if err != nil {
		return nil, err
	}
	if known, err := e.applySent(ev); err != nil {
		return nil, err
	} else if known {
		return map[string]any{}, nil
	}
	err = e.store.Write(func(tx *store.Tx) error {
		_, _, err := e.relaySent(tx, eventID, r.Origin, "leave", true)
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return map[string]any{}, nil
}

// signMembership fills a make_leave or make_knock template from srv with
// userID's membership (and reason) and signs it. The template's sender,
// state key, type and room must be the event asked for; the rest (prev
// and auth events, depth) is the resident server's.
func (e *Engine) signMembership(version string, template json.RawMessage, srv, userID, roomID, membership, reason string) ([]byte, string, error) {
	var tmpl map[string]json.RawMessage
	if err := json.Unmarshal(template, &tmpl); err != nil || tmpl == nil {
		return nil, "", fmt.Errorf("%w: make_%s template from %s", room.ErrBadEvent, membership, srv)
	}
	want := map[string]string{"sender": userID, "state_key": userID, "type": "m.room.member", "room_id": roomID}
	for k, v := range want {
		var got string
		if json.Unmarshal(tmpl[k], &got) != nil || got != v {
			return nil, "", fmt.Errorf("%w: make_%s template has a wrong %s", room.ErrBadEvent, membership, k)
		}
	}
	content := map[string]string{"membership": membership}
	if reason != "" {
		content["reason"] = reason
	}
	tmpl["content"], _ = json.Marshal(content)
	tmpl["origin"], _ = json.Marshal(e.name)
	tmpl["origin_server_ts"], _ = json.Marshal(time.Now().UnixMilli())
	delete(tmpl, "signatures")
	delete(tmpl, "hashes")
	raw, _ := json.Marshal(tmpl)
	return e.rooms.SignPDU(version, raw)
}
