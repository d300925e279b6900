package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

// noticeRoomNS maps a local user to their server notices room.
const noticeRoomNS = "server_notices.room"

func (s *Server) routesServerNotices() {
	s.admin("POST /_synapse/admin/v1/send_server_notice", s.sendServerNotice)
	s.admin("PUT /_synapse/admin/v1/send_server_notice/{txnId}", s.sendServerNotice)
}

// sendServerNotice: POST /_synapse/admin/v1/send_server_notice and
// PUT /_synapse/admin/v1/send_server_notice/{txnId} (idempotent per
// admin device and txnId) — Synapse's admin API. The notice is sent by
// the configured system user in the user's notices room: one per user,
// tagged m.server_notice, created and the user (re-)invited on demand.
func (s *Server) sendServerNotice(r *http.Request, sess *Session) (any, error) {
	cfg := s.Config.ServerNotices
	if cfg.SystemMXIDLocalpart == "" {
		return nil, newErr(http.StatusBadRequest, "M_UNKNOWN", "Server notices are not enabled on this server")
	}
	var req struct {
		UserID   string          `json:"user_id"`
		Content  json.RawMessage `json:"content"`
		Type     string          `json:"type"`
		StateKey *string         `json:"state_key"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.UserID == "" || len(req.Content) == 0 {
		return nil, errMissingParam("user_id and content are required")
	}
	if t := string(req.Content); t[0] != '{' {
		return nil, errBadJSON("content must be an object")
	}
	if !s.isLocalUser(req.UserID) {
		return nil, errInvalidParam("Server notices can only be sent to local users")
	}
	if req.Type == "" {
		req.Type = "m.room.message"
	}
	txnID := r.PathValue("txnId")
	const scope = "server_notice"
	system := s.userID(cfg.SystemMXIDLocalpart)
	var eventID string
	err := s.Store.Write(func(tx *store.Tx) error {
		eventID = ""
		if txnID != "" {
			if id, ok := tx.Txn(sess.UserID, sess.DeviceID, scope, txnID); ok {
				eventID = id
				return nil
			}
		}
		u, err := tx.User(localpart(req.UserID))
		if err != nil || u.Deactivated {
			return errNotFound("Unknown user %s", req.UserID)
		}
		roomID, err := s.noticeRoom(tx, system, req.UserID)
		if err != nil {
			return err
		}
		ev, err := s.Rooms.Send(tx, roomID, room.Proto{Type: req.Type, StateKey: req.StateKey, Sender: system, Content: req.Content})
		if err != nil {
			return err
		}
		eventID = ev.ID
		if txnID != "" {
			tx.PutTxn(sess.UserID, sess.DeviceID, scope, txnID, ev.ID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": eventID}, nil
}

// noticeRoom finds or makes userID's notices room and makes sure the user
// is in it or invited.
func (s *Server) noticeRoom(tx *store.Tx, system, userID string) (string, error) {
	cfg := s.Config.ServerNotices
	if _, err := tx.User(localpart(system)); errors.Is(err, store.ErrNotFound) {
		name := cfg.SystemMXIDDisplayName
		if name == "" {
			name = cfg.SystemMXIDLocalpart
		}
		if err := tx.CreateUser(&store.User{Localpart: localpart(system), CreatedTS: time.Now().UnixMilli(), DisplayName: name}); err != nil {
			return "", err
		}
	} else if err != nil {
		return "", err
	}
	if raw, err := tx.GetKV(noticeRoomNS, userID); err == nil {
		roomID := string(raw)
		_, st, err := s.roomState(tx, roomID)
		if err != nil {
			return "", err
		}
		switch s.membershipIn(tx, st, userID) {
		case "join", "invite":
		default:
			if _, err := s.sendMember(tx, roomID, system, userID, s.memberContent(tx, userID, "invite", "")); err != nil {
				return "", err
			}
		}
		return roomID, nil
	}
	roomID, err := s.Rooms.CreateRoom(tx, room.CreateOptions{
		Creator: system, Version: s.Config.Rooms.DefaultVersion, Preset: "private_chat",
		Name: cfg.RoomName, Invite: []string{userID},
		// Only the system user speaks in it.
		PowerLevelsOverride: json.RawMessage(`{"events_default":100}`),
	})
	if err != nil {
		return "", err
	}
	tx.PutKV(noticeRoomNS, userID, []byte(roomID))
	top, tags, err := roomTags(tx, userID, roomID)
	if err != nil {
		return "", err
	}
	tags["m.server_notice"] = json.RawMessage(`{}`)
	return roomID, s.writeTags(tx, userID, roomID, top, tags)
}

// isNoticeRoom tells whether roomID is userID's server notices room.
func isNoticeRoom(tx *store.Tx, userID, roomID string) bool {
	raw, err := tx.GetKV(noticeRoomNS, userID)
	return err == nil && string(raw) == roomID
}
