package client

// Spaces: GET /_matrix/client/v1/rooms/{roomId}/hierarchy walks a space's
// m.space.child links depth first, in the spec's child order, listing the
// rooms the user could peek into or join; rooms this server is not in are
// asked of their via servers over federation (RemoteHierarchy). The room
// summary API (GET /_matrix/client/v1/room_summary/{roomIdOrAlias}, and
// MSC3266's unstable paths) describes one room the same way.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

const (
	// defaultHierarchyLimit and maxHierarchyLimit bound one page's rooms.
	defaultHierarchyLimit = 50
	maxHierarchyLimit     = 100
	// maxHierarchyRemote bounds the rooms one page asks other servers
	// about, so a space full of unreachable rooms cannot hold a request
	// for minutes.
	maxHierarchyRemote = 20
	// hierarchyRemoteTimeout bounds one remote hierarchy request, and
	// hierarchyWalkTimeout one page's walk: what is left goes to the next
	// page.
	hierarchyRemoteTimeout = 10 * time.Second
	hierarchyWalkTimeout   = 20 * time.Second
	// maxHierarchyVisited bounds the rooms one walk remembers (and so the
	// size of its pagination token).
	maxHierarchyVisited = 2000
)

func (s *Server) routesHierarchy() {
	s.authed("GET /_matrix/client/v1/rooms/{roomId}/hierarchy", s.hierarchy)
	s.handle("GET /_matrix/client/v1/room_summary/{roomIdOrAlias}", s.roomSummaryAPI)
	s.handle("GET /_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary", s.roomSummaryAPI)
	s.handle("GET /_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}", s.roomSummaryAPI)
}

// hierarchyQueued is a room waiting in the walk's stack.
type hierarchyQueued struct {
	RoomID string   `json:"r"`
	Via    []string `json:"v,omitempty"`
	Depth  int      `json:"d"`
}

// hierarchyToken is the walk's state between pages; it carries the
// request's parameters so that a token is refused with others.
type hierarchyToken struct {
	Root      string            `json:"root"`
	Suggested bool              `json:"s"`
	MaxDepth  int               `json:"md"`
	Queue     []hierarchyQueued `json:"q"`
	Visited   []string          `json:"seen"`
}

func (t *hierarchyToken) encode() string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeHierarchyToken(s string) (*hierarchyToken, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, false
	}
	var t hierarchyToken
	if json.Unmarshal(b, &t) != nil {
		return nil, false
	}
	return &t, true
}

// hierarchy: GET /_matrix/client/v1/rooms/{roomId}/hierarchy
func (s *Server) hierarchy(r *http.Request, sess *Session) (any, error) {
	roomID := r.PathValue("roomId")
	if !validRoomID(roomID) {
		return nil, errInvalidParam("%q is not a room ID", roomID)
	}
	q := r.URL.Query()
	suggested := false
	switch q.Get("suggested_only") {
	case "", "false":
	case "true":
		suggested = true
	default:
		return nil, errInvalidParam("suggested_only must be true or false")
	}
	limit := defaultHierarchyLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, errInvalidParam("limit must be a positive integer")
		}
		limit = min(n, maxHierarchyLimit)
	}
	maxDepth := -1 // unbounded: the visited set stops cycles
	if v := q.Get("max_depth"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, errInvalidParam("max_depth must be a non-negative integer")
		}
		maxDepth = n
	}
	ctx := r.Context()
	tok := &hierarchyToken{Root: roomID, Suggested: suggested, MaxDepth: maxDepth}
	if from := q.Get("from"); from != "" {
		t, ok := decodeHierarchyToken(from)
		if !ok || t.Root != roomID || t.Suggested != suggested || t.MaxDepth != maxDepth {
			return nil, errInvalidParam("from does not belong to this request")
		}
		tok = t
	}
	// known holds the rooms other servers' answers described as children,
	// so that walking to them asks no one again.
	known := map[string]*room.HierarchyRoom{}
	var (
		rootEntry *room.HierarchyRoom
		rootLinks []room.SpaceChild
	)
	if tok.Queue == nil && tok.Visited == nil {
		// The root must be visible to the user at all.
		if rootEntry, rootLinks, _ = s.hierarchyEntry(ctx, sess.UserID, roomID, nil, suggested, known); rootEntry == nil {
			return nil, errForbidden("You cannot view room %s", roomID)
		}
		tok.Queue = []hierarchyQueued{{RoomID: roomID}}
	}
	deadline := time.Now().Add(hierarchyWalkTimeout)
	visited := make(map[string]bool, len(tok.Visited))
	for _, id := range tok.Visited {
		visited[id] = true
	}
	rooms := []*room.HierarchyRoom{}
	remote := 0
	for len(tok.Queue) > 0 && len(rooms) < limit && remote < maxHierarchyRemote && len(visited) < maxHierarchyVisited && time.Now().Before(deadline) {
		next := tok.Queue[len(tok.Queue)-1]
		tok.Queue = tok.Queue[:len(tok.Queue)-1]
		if visited[next.RoomID] {
			continue
		}
		visited[next.RoomID] = true
		tok.Visited = append(tok.Visited, next.RoomID)
		entry, links, asked := rootEntry, rootLinks, false
		if next.RoomID != roomID || rootEntry == nil {
			entry, links, asked = s.hierarchyEntry(ctx, sess.UserID, next.RoomID, next.Via, suggested, known)
		}
		if asked {
			remote++
		}
		if entry == nil {
			continue
		}
		rooms = append(rooms, entry)
		if maxDepth >= 0 && next.Depth >= maxDepth {
			continue
		}
		// Push in reverse so that the first child is walked first.
		for i := len(links) - 1; i >= 0; i-- {
			if !visited[links[i].RoomID] {
				tok.Queue = append(tok.Queue, hierarchyQueued{RoomID: links[i].RoomID, Via: links[i].Via, Depth: next.Depth + 1})
			}
		}
	}
	resp := map[string]any{"rooms": rooms}
	if len(tok.Queue) > 0 && len(visited) < maxHierarchyVisited {
		resp["next_batch"] = tok.encode()
	}
	return resp, nil
}

// hierarchyEntry describes one room of the walk for userID: nil if the
// user could neither peek into nor join it, or no server describes it.
// links are the room's children to walk (spaces only); asked tells
// whether another server was asked. Rooms in known were described by an
// earlier answer; this one's children are added to it.
func (s *Server) hierarchyEntry(ctx context.Context, userID, roomID string, via []string, suggested bool, known map[string]*room.HierarchyRoom) (entry *room.HierarchyRoom, links []room.SpaceChild, asked bool) {
	local := false
	err := s.Store.View(func(tx *store.Tx) error {
		sum, st, err := s.Rooms.Summarize(tx, roomID)
		if err != nil || sum.Servers[s.Config.ServerName] == 0 {
			return err
		}
		local = true
		if !s.userMayPeek(tx, sum, st, userID) {
			return nil
		}
		entry = sum.Hierarchy(suggested)
		for _, ch := range sum.Children {
			if !suggested || ch.Suggested {
				links = append(links, ch)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, room.ErrRoomNotFound) {
		s.Log.WarnContext(ctx, "hierarchy: summarising a room failed", "room_id", roomID, "err", err)
		return nil, nil, false
	}
	if local || s.RemoteHierarchy == nil {
		return entry, links, false
	}
	if len(via) == 0 {
		// A room named without a via (the walk's root): ask the server
		// of its ID, the only hint there is.
		if _, srv, ok := strings.Cut(roomID, ":"); ok {
			via = []string{srv}
		}
	}
	h, ok := known[roomID]
	if !ok {
		rctx, cancel := context.WithTimeout(ctx, hierarchyRemoteTimeout)
		defer cancel()
		ans, err := s.RemoteHierarchy(rctx, roomID, via, suggested)
		if err != nil || ans.Room == nil {
			return nil, nil, true
		}
		// Only children the room links to: an answer may not speak for
		// rooms it was not asked about.
		linked := map[string]bool{}
		for _, l := range ans.Room.Links(false) {
			linked[l.RoomID] = true
		}
		for _, c := range ans.Children {
			if c != nil && linked[c.RoomID] {
				known[c.RoomID] = c
			}
		}
		h, asked = ans.Room, true
	}
	if !s.userMayPeekRemote(userID, h) {
		return nil, nil, asked
	}
	if h.RoomType == "m.space" && h.ChildrenState != nil {
		links = h.Links(suggested)
	} else {
		h.ChildrenState = []room.StrippedChild{}
	}
	return h, links, asked
}

// userMayPeek tells whether userID could peek into or join a room this
// server is in: anyone may (public, knock, world-readable), the user is
// joined or invited, or the user is joined to one of a restricted join
// rule's rooms.
func (s *Server) userMayPeek(tx *store.Tx, sum *room.Summary, st *room.State, userID string) bool {
	if sum.OpenToAll() || sum.WorldReadable() {
		return true
	}
	switch s.membershipIn(tx, st, userID) {
	case "join", "invite":
		return true
	}
	return sum.Restricted() && s.joinedToAny(tx, userID, sum.AllowedRoomIDs)
}

// userMayPeekRemote is userMayPeek for a room this server is not in,
// described by another server: its rules, and what this server knows of
// the user (membership of the allowed rooms, a pending invite).
func (s *Server) userMayPeekRemote(userID string, h *room.HierarchyRoom) bool {
	switch h.JoinRule {
	case "public", "knock", "knock_restricted":
		return true
	}
	if h.WorldReadable {
		return true
	}
	ok := false
	_ = s.Store.View(func(tx *store.Tx) error {
		if len(h.AllowedRoomIDs) > 0 && s.joinedToAny(tx, userID, h.AllowedRoomIDs) {
			ok = true
			return nil
		}
		if _, st, err := s.roomState(tx, h.RoomID); err == nil {
			m := s.membershipIn(tx, st, userID)
			ok = m == "join" || m == "invite"
		}
		return nil
	})
	return ok
}

// joinedToAny tells whether userID is joined to one of rooms on this server.
func (s *Server) joinedToAny(tx *store.Tx, userID string, rooms []string) bool {
	for _, id := range rooms {
		if _, st, err := s.roomState(tx, id); err == nil && s.membershipIn(tx, st, userID) == "join" {
			return true
		}
	}
	return false
}

// roomSummaryAPI: GET /_matrix/client/v1/room_summary/{roomIdOrAlias}
// (and MSC3266's GET /_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary):
// the room's summary if the caller could peek into or join it, else 404.
// A token is optional; without one only rooms anyone may see answer.
func (s *Server) roomSummaryAPI(r *http.Request) (any, error) {
	userID := ""
	if r.Header.Get("Authorization") != "" || r.URL.Query().Has("access_token") {
		sess, err := s.authenticate(r)
		if err != nil {
			return nil, err
		}
		userID = sess.UserID
	}
	target := r.PathValue("roomIdOrAlias")
	via := r.URL.Query()["via"]
	if len(via) == 0 {
		via = r.URL.Query()["server_name"] // MSC3266's earlier name
	}
	roomID := target
	switch {
	case strings.HasPrefix(target, "#"):
		server, ok := parseAlias(target)
		if !ok {
			return nil, errInvalidParam("Room alias invalid")
		}
		if server == s.Config.ServerName {
			err := s.Store.View(func(tx *store.Tx) error {
				id, err := tx.Alias(target)
				if errors.Is(err, store.ErrNotFound) {
					return errNotFound("Room alias %s not found", target)
				}
				roomID = id
				return err
			})
			if err != nil {
				return nil, err
			}
		} else {
			ans, err := s.remoteAlias(r.Context(), target, server)
			if err != nil {
				return nil, err
			}
			roomID, via = ans.RoomID, append(via, ans.Servers...)
		}
	case !validRoomID(target):
		return nil, errInvalidParam("%q is neither a room ID nor an alias", target)
	}
	var (
		out        map[string]any
		local      bool
		membership string
	)
	err := s.Store.View(func(tx *store.Tx) error {
		sum, st, err := s.Rooms.Summarize(tx, roomID)
		if errors.Is(err, room.ErrRoomNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if userID != "" {
			membership = s.membershipIn(tx, st, userID)
		}
		if sum.Servers[s.Config.ServerName] == 0 && membership != "join" {
			return nil // our copy is stale: ask a server still in the room
		}
		local = true
		if !(sum.OpenToAll() || sum.WorldReadable() || (userID != "" && s.userMayPeek(tx, sum, st, userID))) {
			return nil
		}
		out = summaryJSON(sum.Hierarchy(false))
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !local && s.RemoteHierarchy != nil {
		if len(via) == 0 {
			if _, srv, ok := strings.Cut(roomID, ":"); ok {
				via = []string{srv}
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), hierarchyRemoteTimeout)
		defer cancel()
		if ans, err := s.RemoteHierarchy(ctx, roomID, via, false); err == nil && ans.Room != nil {
			open := ans.Room.WorldReadable || slices.Contains([]string{"public", "knock", "knock_restricted"}, ans.Room.JoinRule)
			if open || (userID != "" && s.userMayPeekRemote(userID, ans.Room)) {
				out = summaryJSON(ans.Room)
			}
		}
	}
	if out == nil {
		return nil, errNotFound("Room %s not found or not visible", target)
	}
	if membership != "" {
		out["membership"] = membership
	}
	return out, nil
}

// summaryJSON is a hierarchy room without its children, as the room
// summary API answers.
func summaryJSON(h *room.HierarchyRoom) map[string]any {
	b, _ := json.Marshal(h)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	delete(m, "children_state")
	return m
}
