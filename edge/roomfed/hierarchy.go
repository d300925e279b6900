package roomfed

// Space hierarchy over federation, both roles: serving
// GET /_matrix/federation/v1/hierarchy/{roomId} for the spaces this
// server is in, and asking other servers about rooms it is not in (the
// client API's /hierarchy and room summary call Hierarchy).

import (
	"context"
	"errors"
	"net/url"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// maxHierarchyVia bounds the servers asked about one room.
const maxHierarchyVia = 5

// serveHierarchy answers GET /_matrix/federation/v1/hierarchy/{roomId}:
// the room (404 if this server is not in it or the asking server could
// not peek or join it) and those of its children this server is in,
// split into the ones the asking server could peek or join and the rest.
// Children this server is not in are left out; the asker asks their via
// servers itself.
func (e *Engine) serveHierarchy(r *federation.Request) (any, error) {
	roomID := r.PathValue("roomId")
	suggested := r.URL.Query().Get("suggested_only") == "true"
	ans := &room.HierarchyAnswer{Children: []*room.HierarchyRoom{}, InaccessibleChildren: []string{}}
	err := e.store.View(func(tx *store.Tx) error {
		sum, err := e.localSummary(tx, roomID)
		if err != nil {
			return err
		}
		if sum == nil || !e.serverMayPeek(tx, sum, r.Origin) {
			return errNotFound("room unknown or not visible to the requesting server")
		}
		ans.Room = sum.Hierarchy(suggested)
		for _, ch := range sum.Children {
			if suggested && !ch.Suggested {
				continue
			}
			csum, err := e.localSummary(tx, ch.RoomID)
			if err != nil {
				return err
			}
			switch {
			case csum == nil: // not ours to describe
			case e.serverMayPeek(tx, csum, r.Origin):
				ans.Children = append(ans.Children, csum.Hierarchy(suggested))
			default:
				ans.InaccessibleChildren = append(ans.InaccessibleChildren, ch.RoomID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return ans, nil
}

// localSummary summarises a room this server is joined to; nil if it
// holds no current copy (unknown, or every local member left).
func (e *Engine) localSummary(tx *store.Tx, roomID string) (*room.Summary, error) {
	sum, _, err := e.rooms.Summarize(tx, roomID)
	if errors.Is(err, room.ErrRoomNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if sum.Servers[e.name] == 0 {
		return nil, nil
	}
	return sum, nil
}

// serverMayPeek tells whether a user of server could peek into or join
// the room as far as this server knows: anyone may (public, knock,
// world-readable), the server has a member in it, or the join rule is
// restricted to a room where the server has a member (which this server
// must be in to tell). In a room joined with partial state the servers
// the join named stand for the members its state lacks.
func (e *Engine) serverMayPeek(tx *store.Tx, sum *room.Summary, server string) bool {
	if sum.OpenToAll() || sum.WorldReadable() || sum.Servers[server] > 0 || inPartialServers(tx, sum.RoomID, server) {
		return true
	}
	if !sum.Restricted() {
		return false
	}
	for _, allowed := range sum.AllowedRoomIDs {
		r, err := tx.Room(allowed)
		if err != nil {
			continue
		}
		if ok, err := e.serverJoined(tx, r, server); err == nil && ok || inPartialServers(tx, allowed, server) {
			return true
		}
	}
	return false
}

// inPartialServers tells whether a room joined with partial state (its
// state lacks members) named server among those in the room.
func inPartialServers(tx *store.Tx, roomID, server string) bool {
	ps, err := tx.PartialState(roomID)
	return err == nil && slices.Contains(ps.Servers, server)
}

// Hierarchy asks the via servers (the first few, never this one) for a
// room's federation hierarchy and returns the first answer that describes
// it.
func (e *Engine) Hierarchy(ctx context.Context, roomID string, via []string, suggestedOnly bool) (*room.HierarchyAnswer, error) {
	path := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(roomID)
	if suggestedOnly {
		path += "?suggested_only=true"
	}
	var lastErr error = errNotFound("no server to ask about the room")
	asked := 0
	for _, srv := range slices.Compact(slices.Clone(via)) {
		if srv == e.name || srv == "" {
			continue
		}
		if asked++; asked > maxHierarchyVia {
			break
		}
		var ans room.HierarchyAnswer
		if err := e.fed.Client.Get(ctx, srv, path, &ans); err != nil {
			e.log.DebugContext(ctx, "hierarchy request failed", "room_id", roomID, "server", srv, "err", err)
			lastErr = err
			continue
		}
		if ans.Room == nil || ans.Room.RoomID != roomID {
			lastErr = errNotFound("the server's answer is about another room")
			continue
		}
		return &ans, nil
	}
	return nil, lastErr
}
