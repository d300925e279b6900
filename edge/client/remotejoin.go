package client

import (
	"errors"
	"net/http"
	"strings"

	"edge/edge/room"
)

// A room this server does not know is joined through other servers: the
// node sets Server.RemoteJoin (the room federation engine's join), with
// the signature
//
//	func(ctx context.Context, userID, roomID string, servers []string) error
//
// which makes userID join roomID through the first of servers that
// accepts (make_join/send_join), storing the room and the join. Nil
// leaves unknown rooms 404.

// remoteJoin joins an unknown room through the servers the request names
// (server_name, or via) and extra, or when the request names none, extra
// and the room ID's domain (room IDs before v12 carry one). Servers the
// client named are all it asked for: a join through them that fails must
// not succeed through another (Synapse; Complement's
// TestRestrictedRoomsRemoteJoinFailOver). It answers like join.
func (s *Server) remoteJoin(r *http.Request, sess *Session, roomID string, extra ...string) (any, error) {
	q := r.URL.Query()
	named := append(q["server_name"], q["via"]...)
	servers := append(named, extra...)
	if _, domain, ok := strings.Cut(roomID, ":"); ok && len(named) == 0 {
		servers = append(servers, domain)
	}
	return s.remoteJoinVia(r, sess, roomID, servers)
}

// remoteJoinVia joins roomID through servers, in order, other than this
// one. It answers like join.
func (s *Server) remoteJoinVia(r *http.Request, sess *Session, roomID string, servers []string) (any, error) {
	seen := map[string]bool{}
	var uniq []string
	for _, srv := range servers {
		if !seen[srv] && srv != s.Config.ServerName {
			seen[srv] = true
			uniq = append(uniq, srv)
		}
	}
	if s.RemoteJoin == nil || len(uniq) == 0 {
		return nil, errNotFound("No known room %s", roomID)
	}
	err := s.RemoteJoin(r.Context(), sess.UserID, roomID, uniq)
	switch {
	case errors.Is(err, room.ErrRoomNotFound):
		return nil, errNotFound("No server could join %s", roomID)
	case errors.Is(err, room.ErrForbidden), errors.Is(err, room.ErrUnsupported), errors.Is(err, room.ErrTooComplex):
		return nil, err
	case err != nil:
		s.Log.Info("remote join failed", "room_id", roomID, "user_id", sess.UserID, "err", err)
		return nil, newErr(http.StatusBadGateway, "M_UNKNOWN", "Could not join the room through its servers")
	}
	return map[string]string{"room_id": roomID}, nil
}
