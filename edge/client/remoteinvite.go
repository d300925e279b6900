package client

// Invites across servers. Inviting a user of another server goes through
// the room federation engine, which has the invitee's server sign the
// invite before it is stored. An invite from another server to a room
// this server is not in has no room to live in: it is kept in the KV
// namespace remoteInviteNS until the user joins (the room then exists
// here) or rejects it (make_leave/send_leave through the inviter's
// server), and /sync shows it through a sync extension.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

// RemoteMembership is how the client API changes memberships through
// other servers; the node installs the room federation engine's.
type RemoteMembership struct {
	// Invite invites invitee (on another server) to roomID on behalf of
	// sender; the event must be signed by the invitee's server before it
	// is stored. content is the member event's content.
	Invite func(ctx context.Context, roomID, sender, invitee string, content json.RawMessage) error
	// Leave makes userID leave a room this server is not in (rejecting an
	// invite) through the first of servers that accepts; it returns the
	// leave event's ID and PDU.
	Leave func(ctx context.Context, userID, roomID string, servers []string, reason string) (string, json.RawMessage, error)
}

// SetRemoteMembership installs h and shows remote invites in /sync. Call
// it before serving.
func (s *Server) SetRemoteMembership(h RemoteMembership) {
	s.remoteHooks = &h
	s.SyncExtensions = append(s.SyncExtensions, s.remoteInviteSync)
}

func (s *Server) remoteMembership() *RemoteMembership {
	if s.remoteHooks != nil {
		return s.remoteHooks
	}
	return &RemoteMembership{}
}

const remoteInviteNS = "remote_invite"

// remoteInvite is an invite to a room this server is not in, or its
// rejection (Left).
type remoteInvite struct {
	Pos    uint64            `json:"pos"`
	Sender string            `json:"sender"`
	Invite map[string]any    `json:"invite"` // the invite, client format
	State  []json.RawMessage `json:"state"`  // invite_state, stripped
	Left   bool              `json:"left,omitempty"`
	// Depth is the invite event's: a membership event of the room this
	// server knows overtakes the invite only when it is deeper (a leave
	// sent before the invite may arrive after it).
	Depth   int64          `json:"depth,omitempty"`
	LeaveEv map[string]any `json:"leave_event,omitempty"`
}

func remoteInviteKey(userID, roomID string) string { return userID + " " + roomID }

// AcceptRemoteInvite stores an invite another server sent for one of our
// users (pdu countersigned by us, stripped its invite_room_state) and
// wakes the user's /sync. It is the engine's InviteAcceptor; an unknown
// or deactivated user is refused.
func (s *Server) AcceptRemoteInvite(tx *store.Tx, roomID, eventID string, pdu json.RawMessage, stripped []json.RawMessage) error {
	var ev struct {
		Type     string          `json:"type"`
		StateKey string          `json:"state_key"`
		Sender   string          `json:"sender"`
		Content  json.RawMessage `json:"content"`
		TS       int64           `json:"origin_server_ts"`
		Depth    int64           `json:"depth"`
	}
	if err := json.Unmarshal(pdu, &ev); err != nil {
		return fmt.Errorf("%w: %v", room.ErrBadEvent, err)
	}
	u, err := tx.User(localpart(ev.StateKey))
	if errors.Is(err, store.ErrNotFound) || (err == nil && u.Deactivated) || !s.isLocalUser(ev.StateKey) {
		return fmt.Errorf("%w: no such user %s", room.ErrForbidden, ev.StateKey)
	} else if err != nil {
		return err
	}
	switch s.inviteRuleFor(tx, ev.StateKey, ev.Sender) {
	case inviteBlock:
		return fmt.Errorf("%w: %s does not accept invites from %s", room.ErrForbidden, ev.StateKey, ev.Sender)
	case inviteIgnore:
		return nil // MSC4155: countersigned for the inviter, never shown to the invitee
	}
	clientEv := map[string]any{"type": ev.Type, "state_key": ev.StateKey, "sender": ev.Sender, "content": ev.Content,
		"event_id": eventID, "origin_server_ts": ev.TS, "room_id": roomID, "unsigned": map[string]any{}}
	self, _ := json.Marshal(map[string]any{"type": ev.Type, "state_key": ev.StateKey, "sender": ev.Sender, "content": ev.Content})
	ri := remoteInvite{Pos: tx.NextPos(), Sender: ev.Sender, Invite: clientEv, State: append(stripped, self), Depth: ev.Depth}
	raw, err := json.Marshal(ri)
	if err != nil {
		return err
	}
	tx.PutKV(remoteInviteNS, remoteInviteKey(ev.StateKey, roomID), raw)
	tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(ev.StateKey)) })
	return nil
}

// pendingRemoteInvite is userID's invite to roomID when it still stands:
// not rejected and not overtaken by a membership in a room we know.
func (s *Server) pendingRemoteInvite(tx *store.Tx, userID, roomID string) *remoteInvite {
	raw, err := tx.GetKV(remoteInviteNS, remoteInviteKey(userID, roomID))
	if err != nil {
		return nil
	}
	var ri remoteInvite
	if json.Unmarshal(raw, &ri) != nil || ri.Left || s.overtaken(tx, userID, roomID, &ri) {
		return nil
	}
	return &ri
}

// overtaken tells whether a membership record (the user joined, or the
// room is known here) is newer than the remote invite.
func (s *Server) overtaken(tx *store.Tx, userID, roomID string, ri *remoteInvite) bool {
	m, err := tx.Membership(userID, roomID)
	if err != nil {
		return false
	}
	if m.Membership == "join" || m.Membership == "invite" {
		return true
	}
	if m.Pos <= ri.Pos {
		return false
	}
	if ri.Depth > 0 {
		if ev, err := s.Rooms.Event(tx, m.Event); err == nil && ev.Depth < ri.Depth {
			return false // sent before the invite, arrived after it
		}
	}
	return true
}

// remoteInviteServers are the servers to join or leave a remotely invited
// room through: the inviter's.
func (s *Server) remoteInviteServers(userID, roomID string) []string {
	var out []string
	_ = s.Store.View(func(tx *store.Tx) error {
		if ri := s.pendingRemoteInvite(tx, userID, roomID); ri != nil {
			if _, domain, ok := strings.Cut(ri.Sender, ":"); ok {
				out = append(out, domain)
			}
		}
		return nil
	})
	return out
}

// sendRemoteInvite invites a user of another server through the hook.
func (s *Server) sendRemoteInvite(ctx context.Context, roomID, sender, invitee string, content map[string]any) error {
	raw, _ := json.Marshal(content)
	err := s.remoteMembership().Invite(ctx, roomID, sender, invitee, raw)
	switch {
	case err == nil, errors.Is(err, room.ErrForbidden), errors.Is(err, room.ErrUnsupported):
		return err
	}
	s.Log.Info("remote invite failed", "room_id", roomID, "invitee", invitee, "err", err)
	return newErr(http.StatusBadGateway, "M_UNKNOWN", "Could not invite %s through their server", invitee)
}

// rejectRemoteInvite rejects userID's invite to a room this server is not
// in: make_leave/send_leave through the inviter's server (and the room
// ID's), then the room moves to the user's left rooms. When no server
// takes the leave the invite is rejected here only, as Synapse does.
func (s *Server) rejectRemoteInvite(ctx context.Context, userID, roomID, reason string) error {
	leaveEv := s.leaveRemotely(ctx, userID, roomID, s.remoteInviteServers(userID, roomID), reason)
	return s.Store.Write(func(tx *store.Tx) error {
		ri := s.pendingRemoteInvite(tx, userID, roomID)
		if ri == nil {
			return nil // already rejected, or joined meanwhile
		}
		return s.markInviteLeft(tx, userID, roomID, ri, leaveEv)
	})
}

// leaveRemotely makes userID leave a room this server is not in through
// servers and the room ID's server (make_leave, send_leave) and returns
// the leave event rendered for /sync; nil when no server took the leave,
// and the invite or knock is then withdrawn here only, as Synapse does.
func (s *Server) leaveRemotely(ctx context.Context, userID, roomID string, servers []string, reason string) map[string]any {
	if _, domain, ok := strings.Cut(roomID, ":"); ok {
		servers = append(slices.Clone(servers), domain)
	}
	h := s.remoteMembership().Leave
	if h == nil {
		return nil
	}
	eventID, pdu, err := h(ctx, userID, roomID, servers, reason)
	if err != nil {
		s.Log.Info("remote leave failed; withdrawing locally", "room_id", roomID, "user_id", userID, "err", err)
		return nil
	}
	ev, _ := clientLeaveEvent(roomID, eventID, pdu)
	return ev
}

// clientLeaveEvent renders a leave PDU of a room this server is not in
// for /sync.
func clientLeaveEvent(roomID, eventID string, pdu json.RawMessage) (map[string]any, error) {
	var ev map[string]any
	if err := json.Unmarshal(pdu, &ev); err != nil {
		return nil, fmt.Errorf("%w: %v", room.ErrBadEvent, err)
	}
	return map[string]any{"type": ev["type"], "state_key": ev["state_key"], "sender": ev["sender"], "content": ev["content"],
		"event_id": eventID, "origin_server_ts": ev["origin_server_ts"], "room_id": roomID, "unsigned": map[string]any{}}, nil
}

// markInviteLeft moves a remote invite to the user's left rooms, with
// the leave event when there is one.
func (s *Server) markInviteLeft(tx *store.Tx, userID, roomID string, ri *remoteInvite, leaveEv map[string]any) error {
	ri.Pos, ri.Left, ri.LeaveEv = tx.NextPos(), true, leaveEv
	raw, err := json.Marshal(ri)
	if err != nil {
		return err
	}
	tx.PutKV(remoteInviteNS, remoteInviteKey(userID, roomID), raw)
	tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(userID)) })
	return nil
}

// remoteLeftRoom is rooms.leave's entry for a room left without this
// server being in it: the leave event, when there is one.
func remoteLeftRoom(leaveEv map[string]any) map[string]any {
	tl := []any{}
	if leaveEv != nil {
		tl = append(tl, leaveEv)
	}
	return map[string]any{"timeline": map[string]any{"events": tl, "limited": false},
		"state": eventsJSON{[]any{}}, "account_data": eventsJSON{[]any{}}}
}

// remoteInviteSync adds the user's remote invites (rooms.invite, with
// their invite_state) and rejections (rooms.leave, incremental syncs
// only, with the leave event when there is one) that are new since since.
func (s *Server) remoteInviteSync(tx *store.Tx, sess *Session, since, next uint64, initial bool, resp map[string]any) bool {
	rooms, _ := resp["rooms"].(map[string]any)
	invite, _ := rooms["invite"].(map[string]any)
	leave, _ := rooms["leave"].(map[string]any)
	if invite == nil || leave == nil {
		return false
	}
	news := false
	prefix := sess.UserID + " "
	tx.ScanKV(remoteInviteNS, prefix, func(key string, raw []byte) bool {
		roomID := strings.TrimPrefix(key, prefix)
		var ri remoteInvite
		if json.Unmarshal(raw, &ri) != nil || ri.Pos > next || (!initial && ri.Pos <= since) || s.overtaken(tx, sess.UserID, roomID, &ri) {
			return true
		}
		if ri.Left {
			// An initial sync leaves out rejected invites, but not ones
			// the inviter withdrew: like a kick, the user must hear of it.
			if sender, _ := ri.LeaveEv["sender"].(string); initial && (ri.LeaveEv == nil || sender == sess.UserID) {
				return true
			}
			leave[roomID] = remoteLeftRoom(ri.LeaveEv)
		} else {
			state := make([]any, len(ri.State))
			for i, st := range ri.State {
				state[i] = st
			}
			invite[roomID] = &invitedRoomJSON{InviteState: eventsJSON{state}}
		}
		news = true
		return true
	})
	return news
}

// PendingRemoteInviteFrom is the sender of userID's pending invite to
// roomID, a room this server is not in, and the room's version as the
// invite's stripped create event gives it (ok false: no such invite).
func (s *Server) PendingRemoteInviteFrom(tx *store.Tx, userID, roomID string) (inviter, version string, ok bool) {
	ri := s.pendingRemoteInvite(tx, userID, roomID)
	if ri == nil {
		return "", "", false
	}
	version = "1" // a create event without room_version
	for _, raw := range ri.State {
		var ev struct {
			Type    string `json:"type"`
			Content struct {
				RoomVersion string `json:"room_version"`
			} `json:"content"`
		}
		if json.Unmarshal(raw, &ev) == nil && ev.Type == "m.room.create" && ev.Content.RoomVersion != "" {
			version = ev.Content.RoomVersion
		}
	}
	return ri.Sender, version, true
}

// RescindRemoteInvite records that the inviter's side withdrew userID's
// pending invite to roomID with the leave event pdu: the room moves to
// the user's left rooms, as after a rejection.
func (s *Server) RescindRemoteInvite(tx *store.Tx, userID, roomID, eventID string, pdu json.RawMessage) error {
	ri := s.pendingRemoteInvite(tx, userID, roomID)
	if ri == nil {
		return nil
	}
	ev, err := clientLeaveEvent(roomID, eventID, pdu)
	if err != nil {
		return err
	}
	return s.markInviteLeft(tx, userID, roomID, ri, ev)
}
