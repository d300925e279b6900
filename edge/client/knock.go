package client

// Knocking (client-server API, "Knocking on rooms"). A knock on a room
// this server knows is a member event sent here; on a room it does not
// know it goes through a resident server (Server.RemoteKnock, the room
// federation engine's make_knock/send_knock), and, with no room here to
// hold it, is kept in the KV namespace remoteKnockNS and shown in /sync's
// rooms.knock until an invite or a membership overtakes it.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

const remoteKnockNS = "remote_knock"

// remoteKnock is a knock on a room this server is not in, or its
// retraction (Left).
type remoteKnock struct {
	Pos     uint64            `json:"pos"`
	State   []json.RawMessage `json:"state"`             // knock_state, stripped, the knock last
	Servers []string          `json:"servers,omitempty"` // the room's servers we knocked through
	Left    bool              `json:"left,omitempty"`
	LeaveEv map[string]any    `json:"leave_event,omitempty"`
}

func (s *Server) routesKnock() {
	s.authed("POST /knock/{roomIdOrAlias}", s.knock)
	s.SyncExtensions = append(s.SyncExtensions, s.remoteKnockSync)
}

// knock: POST /knock/{roomIdOrAlias}
func (s *Server) knock(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Reason string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	target := r.PathValue("roomIdOrAlias")
	q := r.URL.Query()
	servers := append(q["server_name"], q["via"]...)
	roomID := target
	switch {
	case strings.HasPrefix(target, "#"):
		err := s.Store.View(func(tx *store.Tx) error {
			var err error
			roomID, err = tx.Alias(target)
			return err
		})
		if errors.Is(err, store.ErrNotFound) && s.isRemoteAlias(target) {
			server, _ := parseAlias(target)
			ans, err := s.remoteAlias(r.Context(), target, server)
			if err != nil {
				return nil, err
			}
			roomID, servers = ans.RoomID, append(servers, ans.Servers...)
		} else if errors.Is(err, store.ErrNotFound) {
			return nil, errNotFound("Room alias %s not found", target)
		} else if err != nil {
			return nil, err
		}
	case !strings.HasPrefix(target, "!"):
		return nil, errInvalidParam("%q is not a room ID or alias", target)
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		if roomBlocked(tx, roomID) {
			return errRoomBlocked()
		}
		_, err := s.sendMember(tx, roomID, sess.UserID, sess.UserID, s.memberContent(tx, sess.UserID, "knock", req.Reason))
		return err
	})
	if errors.Is(err, room.ErrRoomNotFound) {
		return s.remoteKnockVia(r, sess, roomID, servers, req.Reason)
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

// remoteKnockVia knocks on an unknown room through servers (and the room
// ID's domain, which room IDs before v12 carry), then records the knock
// for /sync.
func (s *Server) remoteKnockVia(r *http.Request, sess *Session, roomID string, servers []string, reason string) (any, error) {
	if _, domain, ok := strings.Cut(roomID, ":"); ok {
		servers = append(servers, domain)
	}
	seen := map[string]bool{}
	var uniq []string
	for _, srv := range servers {
		if srv != "" && !seen[srv] && srv != s.Config.ServerName {
			seen[srv] = true
			uniq = append(uniq, srv)
		}
	}
	if s.RemoteKnock == nil || len(uniq) == 0 {
		return nil, errNotFound("No known room %s", roomID)
	}
	_, pdu, state, err := s.RemoteKnock(r.Context(), sess.UserID, roomID, uniq, reason)
	switch {
	case errors.Is(err, room.ErrRoomNotFound):
		return nil, errNotFound("No server could knock on %s", roomID)
	case errors.Is(err, room.ErrForbidden), errors.Is(err, room.ErrUnsupported):
		return nil, err
	case err != nil:
		s.Log.Info("remote knock failed", "room_id", roomID, "user_id", sess.UserID, "err", err)
		return nil, newErr(http.StatusBadGateway, "M_UNKNOWN", "Could not knock on the room through its servers")
	}
	var ev struct {
		Type     string          `json:"type"`
		StateKey string          `json:"state_key"`
		Sender   string          `json:"sender"`
		Content  json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(pdu, &ev); err != nil {
		return nil, err
	}
	self, _ := json.Marshal(ev)
	err = s.Store.Write(func(tx *store.Tx) error {
		raw, err := json.Marshal(remoteKnock{Pos: tx.NextPos(), State: append(state, self), Servers: uniq})
		if err != nil {
			return err
		}
		tx.PutKV(remoteKnockNS, remoteInviteKey(sess.UserID, roomID), raw)
		tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(sess.UserID)) })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

// knockOvertaken tells whether something newer than the remote knock
// stands for the room: a membership here (the room became known) or an
// invite from the room's servers (how a knock is accepted).
func (s *Server) knockOvertaken(tx *store.Tx, userID, roomID string, k *remoteKnock) bool {
	if m, err := tx.Membership(userID, roomID); err == nil && m.Pos > k.Pos {
		return true
	}
	ri := s.pendingRemoteInvite(tx, userID, roomID)
	return ri != nil && ri.Pos > k.Pos
}

// pendingRemoteKnock is userID's knock on roomID when it still stands:
// not retracted and not overtaken.
func (s *Server) pendingRemoteKnock(tx *store.Tx, userID, roomID string) *remoteKnock {
	raw, err := tx.GetKV(remoteKnockNS, remoteInviteKey(userID, roomID))
	if err != nil {
		return nil
	}
	var k remoteKnock
	if json.Unmarshal(raw, &k) != nil || k.Left || s.knockOvertaken(tx, userID, roomID, &k) {
		return nil
	}
	return &k
}

// retractRemoteKnock withdraws userID's knock on a room this server is
// not in: a leave through the servers knocked through (make_leave,
// send_leave), then the room moves to rooms.leave in /sync. If no server
// can be reached the knock is withdrawn here only, as a rejected remote
// invite is.
func (s *Server) retractRemoteKnock(ctx context.Context, userID, roomID string, k *remoteKnock, reason string) error {
	servers := k.Servers
	if _, domain, ok := strings.Cut(roomID, ":"); ok {
		servers = append(servers, domain)
	}
	var leaveEv map[string]any
	if h := s.remoteMembership().Leave; h != nil {
		eventID, pdu, err := h(ctx, userID, roomID, servers, reason)
		if err != nil {
			s.Log.Info("remote knock retraction failed; withdrawing it locally", "room_id", roomID, "user_id", userID, "err", err)
		} else {
			leaveEv = clientLeaveEvent(roomID, eventID, pdu)
		}
	}
	return s.Store.Write(func(tx *store.Tx) error {
		k := s.pendingRemoteKnock(tx, userID, roomID)
		if k == nil {
			return nil // withdrawn already, or overtaken meanwhile
		}
		k.Pos, k.Left, k.LeaveEv = tx.NextPos(), true, leaveEv
		raw, err := json.Marshal(k)
		if err != nil {
			return err
		}
		tx.PutKV(remoteKnockNS, remoteInviteKey(userID, roomID), raw)
		tx.OnCommit(func() { s.Notifier.Notify(notify.UserKey(userID)) })
		return nil
	})
}

// remoteKnockSync adds the user's standing remote knocks new since since
// to rooms.knock, with their knock_state, and retractions to rooms.leave
// (incremental syncs only).
func (s *Server) remoteKnockSync(tx *store.Tx, sess *Session, since, next uint64, initial bool, resp map[string]any) bool {
	rooms, _ := resp["rooms"].(map[string]any)
	knock, _ := rooms["knock"].(map[string]any)
	leave, _ := rooms["leave"].(map[string]any)
	if knock == nil || leave == nil {
		return false
	}
	news := false
	prefix := sess.UserID + " "
	tx.ScanKV(remoteKnockNS, prefix, func(key string, raw []byte) bool {
		roomID := strings.TrimPrefix(key, prefix)
		var k remoteKnock
		if json.Unmarshal(raw, &k) != nil || k.Pos > next || (!initial && k.Pos <= since) || s.knockOvertaken(tx, sess.UserID, roomID, &k) {
			return true
		}
		if k.Left {
			if !initial {
				leave[roomID] = remoteLeftRoom(k.LeaveEv)
				news = true
			}
			return true
		}
		state := make([]any, len(k.State))
		for i, st := range k.State {
			state[i] = st
		}
		knock[roomID] = &knockedRoomJSON{KnockState: eventsJSON{state}}
		news = true
		return true
	})
	return news
}
