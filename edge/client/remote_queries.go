package client

// The client API's half of the EDUs and queries that cross servers
// (https://spec.matrix.org/latest/server-server-api/#typing-notifications,
// #receipts, #presence, #query-api, #public-room-directory): typing
// notices and read receipts of local users go out as m.typing / m.receipt
// EDUs to every other server with a member in the room, presence changes
// as m.presence to the servers sharing a room with the user; inbound ones
// land in the typing tracker, the receipt store and the presence records.
// Profiles, aliases and room directories of other servers are asked for
// with /query/profile, /query/directory and /publicRooms. edge/edufed provides the transport
// and serves the federation routes with the Federation* methods here.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

// RemoteQueries is what typing, receipts, profiles and the directory need
// of the federation transport. Nil (Server.Remote) keeps them local.
type RemoteQueries struct {
	// SendEDUTx queues an EDU for server inside tx.
	SendEDUTx func(tx *store.Tx, server, eduType string, content any)
	// Get sends a signed GET to server and decodes the answer into out;
	// an answer of 404 is reported as ErrRemoteNotFound.
	Get func(ctx context.Context, server, path string, out any) error
	// Post is Get for a signed POST with a JSON body.
	Post func(ctx context.Context, server, path string, body, out any) error
	// NoPresence keeps presence on this server: no m.presence EDUs go out
	// and inbound ones are dropped.
	NoPresence bool

	presenceMu   sync.Mutex
	presenceSent map[string]sentPresence // local user → last m.presence sent
}

// ErrRemoteNotFound is a remote server's 404 through RemoteQueries.Get.
var ErrRemoteNotFound = errors.New("remote server answered 404")

// remoteQueryTimeout bounds a profile or alias query to another server.
// A server that does not answer makes the profile, alias or directory 404:
// the spec lists no other status for these endpoints (Synapse says 502).
const remoteQueryTimeout = 15 * time.Second

// otherServersIn lists the servers other than ours with a member joined
// to roomID, sorted — from the room service's per-snapshot counts, not a
// walk of the state. While the room has partial state (a faster join),
// the servers the resident server named are added: the state does not
// hold their members yet.
func (s *Server) otherServersIn(tx *store.Tx, roomID string) []string {
	r, err := tx.Room(roomID)
	if err != nil {
		return nil
	}
	counts, err := s.Rooms.JoinedServers(tx, r.State)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(counts))
	for srv := range counts {
		out = append(out, srv)
	}
	if ps, err := tx.PartialState(roomID); err == nil {
		out = append(out, ps.Servers...)
	}
	out = slices.DeleteFunc(out, func(srv string) bool { return srv == s.Config.ServerName })
	slices.Sort(out)
	return slices.Compact(out)
}

// federateTyping sends a local user's typing notice to the room's other
// servers. It is a durable write (the queue is in the store), so it runs
// after the local change, outside any transaction.
func (s *Server) federateTyping(roomID, userID string, typing bool, timeout time.Duration) {
	if s.Remote == nil {
		return
	}
	content := map[string]any{"room_id": roomID, "user_id": userID, "typing": typing}
	if typing {
		content["timeout"] = timeout.Milliseconds() // not in the spec, but Synapse reads it
	}
	var dests []string
	_ = s.Store.View(func(tx *store.Tx) error {
		dests = s.otherServersIn(tx, roomID)
		return nil
	})
	if len(dests) == 0 {
		return // no write for rooms of this server alone
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		for _, srv := range dests {
			s.Remote.SendEDUTx(tx, srv, "m.typing", content)
		}
		return nil
	})
	if err != nil {
		s.Log.Warn("queueing typing EDU", "room_id", roomID, "err", err)
	}
}

// federateReceipt queues a local user's public receipt for the room's
// other servers, inside the transaction that stores it. Private receipts
// (m.read.private) never leave the server.
func (s *Server) federateReceipt(tx *store.Tx, rc *store.Receipt) {
	if s.Remote == nil || rc.Type != receiptRead || !s.isLocalUser(rc.UserID) {
		return
	}
	data := map[string]any{"ts": rc.TS}
	if rc.ThreadID != "" {
		data["thread_id"] = rc.ThreadID
	}
	content := map[string]any{rc.RoomID: map[string]any{rc.Type: map[string]any{
		rc.UserID: map[string]any{"data": data, "event_ids": []string{rc.EventID}},
	}}}
	for _, srv := range s.otherServersIn(tx, rc.RoomID) {
		s.Remote.SendEDUTx(tx, srv, "m.receipt", content)
	}
}

// remoteJoined tells whether a remote user, of origin, counts as joined
// to roomID for their EDUs. While the room has partial state its members
// are mostly unknown: a user the state says nothing about counts as
// joined when origin is one of the servers the join named, as Synapse
// accepts typing and receipts during a resync.
func (s *Server) remoteJoined(tx *store.Tx, st *room.State, roomID, userID, origin string) bool {
	switch s.membershipIn(tx, st, userID) {
	case "join":
		return true
	case "":
		ps, err := tx.PartialState(roomID)
		return err == nil && slices.Contains(ps.Servers, origin)
	}
	return false
}

// FederationTyping applies an inbound m.typing EDU: the user must belong
// to the origin server and be joined to the room.
func (s *Server) FederationTyping(origin string, content json.RawMessage) error {
	var c struct {
		RoomID  string `json:"room_id"`
		UserID  string `json:"user_id"`
		Typing  bool   `json:"typing"`
		Timeout int64  `json:"timeout"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	if srv, ok := userServer(c.UserID); !ok || srv != origin {
		return fmt.Errorf("typing notice for %q from %s", c.UserID, origin)
	}
	if err := s.Store.View(func(tx *store.Tx) error {
		_, st, err := s.roomState(tx, c.RoomID)
		if err != nil {
			return err
		}
		if !s.remoteJoined(tx, st, c.RoomID, c.UserID, origin) {
			return fmt.Errorf("%s is not joined to %s", c.UserID, c.RoomID)
		}
		return nil
	}); err != nil {
		return err
	}
	timeout := defaultTypingTimeout
	if c.Timeout > 0 {
		timeout = time.Duration(c.Timeout) * time.Millisecond
	}
	s.Typing.Set(c.RoomID, c.UserID, c.Typing, timeout)
	return nil
}

// FederationReceipt applies an inbound m.receipt EDU: public read
// receipts of the origin's users joined to rooms we know are stored
// (a receipt never moves a marker backwards) and the rooms woken.
func (s *Server) FederationReceipt(origin string, content json.RawMessage) error {
	var c map[string]map[string]map[string]struct {
		Data struct {
			TS       int64  `json:"ts"`
			ThreadID string `json:"thread_id"`
		} `json:"data"`
		EventIDs []string `json:"event_ids"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	return s.Store.Write(func(tx *store.Tx) error {
		for roomID, byType := range c {
			_, st, err := s.roomState(tx, roomID)
			if err != nil {
				continue // a room we are not in
			}
			for rType, byUser := range byType {
				if rType != receiptRead {
					continue
				}
				for userID, r := range byUser {
					if srv, ok := userServer(userID); !ok || srv != origin || len(r.EventIDs) == 0 {
						continue
					}
					if !s.remoteJoined(tx, st, roomID, userID, origin) {
						continue
					}
					s.storeRemoteReceipt(tx, roomID, userID, r.Data.ThreadID, r.EventIDs[0], r.Data.TS)
				}
			}
		}
		return nil
	})
}

// storeRemoteReceipt stores a remote user's m.read receipt. The event may
// not have reached us yet; then it is stored as is, as Synapse does.
func (s *Server) storeRemoteReceipt(tx *store.Tx, roomID, userID, threadID, eventID string, ts int64) {
	if ev, err := s.Rooms.EventByID(tx, eventID); err == nil {
		if ev.RoomID != roomID {
			return
		}
		if old, err := tx.Receipt(roomID, receiptRead, userID, threadID); err == nil {
			if prev, err := s.Rooms.EventByID(tx, old.EventID); err == nil && prev.Pos > ev.Pos {
				return
			}
		}
	}
	if ts <= 0 {
		ts = time.Now().UnixMilli()
	}
	rc := &store.Receipt{RoomID: roomID, Type: receiptRead, UserID: userID, ThreadID: threadID, EventID: eventID, TS: ts}
	tx.PutReceipt(rc)
	s.feedReceipt(tx, rc)
	tx.OnCommit(func() { s.Notifier.Notify(notify.RoomKey(roomID)) })
}

// FederationProfile answers GET /_matrix/federation/v1/query/profile for
// a local user: the whole profile, or the one field asked for.
func (s *Server) FederationProfile(userID, field string) (map[string]json.RawMessage, error) {
	if field != "" {
		if err := checkProfileKey(field); err != nil {
			return nil, err
		}
	}
	if !validUserID(userID) {
		return nil, errInvalidParam("Invalid user ID %q", userID)
	}
	if !s.isLocalUser(userID) {
		return nil, errInvalidParam("User %s is not hosted on this server", userID)
	}
	var p map[string]json.RawMessage
	err := s.Store.View(func(tx *store.Tx) error {
		u, err := s.localProfileUser(tx, userID)
		if err != nil {
			return err
		}
		if u.Deactivated {
			return errNotFound("Profile not found")
		}
		p = profileOf(tx, u, userID)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if field != "" {
		v, ok := p[field]
		if !ok {
			return nil, errNotFound("Profile field %s not set", field)
		}
		return map[string]json.RawMessage{field: v}, nil
	}
	return p, nil
}

// remoteProfile asks userID's server for the profile (field "" for all).
func (s *Server) remoteProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error) {
	srv, ok := userServer(userID)
	if !ok || s.Remote == nil {
		return nil, errNotFound("Profile not found")
	}
	q := url.Values{"user_id": {userID}}
	if field != "" {
		q.Set("field", field)
	}
	ctx, cancel := context.WithTimeout(ctx, remoteQueryTimeout)
	defer cancel()
	var p map[string]json.RawMessage
	err := s.Remote.Get(ctx, srv, "/_matrix/federation/v1/query/profile?"+q.Encode(), &p)
	if errors.Is(err, ErrRemoteNotFound) {
		return nil, errNotFound("Profile not found")
	} else if err != nil {
		s.Log.Info("remote profile query failed", "user_id", userID, "err", err)
		return nil, errNotFound("Profile not found: %s did not answer", srv)
	}
	if field != "" {
		if v, ok := p[field]; ok {
			return map[string]json.RawMessage{field: v}, nil
		}
		return nil, errNotFound("Profile field %s not set", field)
	}
	if len(p) == 0 {
		return nil, errNotFound("Profile not found")
	}
	return p, nil
}

// aliasAnswer is a directory answer: a room and servers to join it through.
type aliasAnswer struct {
	RoomID  string   `json:"room_id"`
	Servers []string `json:"servers"`
}

// localAlias resolves one of our aliases: ours first in servers, then
// every server with a joined member.
func (s *Server) localAlias(alias string) (*aliasAnswer, error) {
	var ans *aliasAnswer
	err := s.Store.View(func(tx *store.Tx) error {
		roomID, err := tx.Alias(alias)
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("Room alias %s not found", alias)
		} else if err != nil {
			return err
		}
		ans = &aliasAnswer{RoomID: roomID, Servers: append([]string{s.Config.ServerName}, s.otherServersIn(tx, roomID)...)}
		return nil
	})
	return ans, err
}

// FederationDirectory answers GET /_matrix/federation/v1/query/directory.
func (s *Server) FederationDirectory(alias string) (*aliasAnswer, error) {
	server, ok := parseAlias(alias)
	if !ok {
		return nil, errInvalidParam("Room alias invalid")
	}
	if server != s.Config.ServerName {
		return nil, errInvalidParam("Room alias %s is not hosted on this server", alias)
	}
	return s.localAlias(alias)
}

// remoteAlias asks the alias's server to resolve it.
func (s *Server) remoteAlias(ctx context.Context, alias, server string) (*aliasAnswer, error) {
	if s.Remote == nil {
		return nil, errNotFound("Room alias %s not found", alias)
	}
	ctx, cancel := context.WithTimeout(ctx, remoteQueryTimeout)
	defer cancel()
	var ans aliasAnswer
	err := s.Remote.Get(ctx, server, "/_matrix/federation/v1/query/directory?"+url.Values{"room_alias": {alias}}.Encode(), &ans)
	if errors.Is(err, ErrRemoteNotFound) {
		return nil, errNotFound("Room alias %s not found", alias)
	} else if err != nil {
		s.Log.Info("remote alias query failed", "alias", alias, "err", err)
		return nil, errNotFound("Room alias %s not found: %s did not answer", alias, server)
	}
	if !validRoomID(ans.RoomID) {
		return nil, newErr(http.StatusBadGateway, "M_UNKNOWN", "%s answered no room for %s", server, alias)
	}
	if !slices.Contains(ans.Servers, server) {
		ans.Servers = append(ans.Servers, server)
	}
	return &ans, nil
}

// joinRemoteAlias joins the room another server's alias names: locally
// when this server is already in the room, else through the servers the
// alias's server answered.
func (s *Server) joinRemoteAlias(r *http.Request, sess *Session, alias string) (any, error) {
	server, ok := parseAlias(alias)
	if !ok {
		return nil, errInvalidParam("Room alias invalid")
	}
	if server == s.Config.ServerName {
		return nil, errNotFound("Room alias %s not found", alias)
	}
	ans, err := s.remoteAlias(r.Context(), alias, server)
	if err != nil {
		return nil, err
	}
	known := s.Store.View(func(tx *store.Tx) error {
		_, _, err := s.roomState(tx, ans.RoomID)
		return err
	}) == nil
	if known {
		return s.join(r, sess, ans.RoomID)
	}
	return s.remoteJoin(r, sess, ans.RoomID, ans.Servers...)
}

// isRemoteAlias tells whether alias is well formed and names another server.
func (s *Server) isRemoteAlias(alias string) bool {
	server, ok := parseAlias(alias)
	return ok && server != s.Config.ServerName && !strings.ContainsRune(alias, 0)
}

// presenceResend is how long an unchanged presence is not sent again.
const presenceResend = time.Minute

// sentPresence is what was last sent for a user, and when.
type sentPresence struct {
	presence, status string
	at               time.Time
}

// federatePresence queues a local user's presence change for every server
// sharing a room with them, inside the transaction that stores it. The
// same state again within presenceResend is not resent: clients that PUT
// their presence on every focus change would otherwise flood the queues.
func (s *Server) federatePresence(tx *store.Tx, userID string, rec presenceRecord) {
	q := s.Remote
	if q == nil || q.NoPresence || !s.isLocalUser(userID) {
		return
	}
	now := time.Now()
	sent := sentPresence{presence: rec.Presence, at: now}
	if rec.StatusMsg != nil {
		sent.status = *rec.StatusMsg
	}
	q.presenceMu.Lock()
	last, ok := q.presenceSent[userID]
	q.presenceMu.Unlock()
	if ok && last.presence == sent.presence && last.status == sent.status && now.Sub(last.at) < presenceResend {
		return
	}
	dests := s.remoteServersOf(tx, userID)
	if len(dests) == 0 {
		return
	}
	push := rec.content(now.UnixMilli())
	push["user_id"] = userID
	content := map[string]any{"push": []any{push}}
	for _, d := range dests {
		q.SendEDUTx(tx, d, "m.presence", content)
	}
	tx.OnCommit(func() {
		q.presenceMu.Lock()
		defer q.presenceMu.Unlock()
		if q.presenceSent == nil {
			q.presenceSent = map[string]sentPresence{}
		}
		q.presenceSent[userID] = sent
	})
}

// FederationPresence applies an inbound m.presence EDU: each pushed
// user must belong to the origin and share a room with this server; their
// record joins the local users' in the presence stream.
func (s *Server) FederationPresence(origin string, content json.RawMessage) error {
	if s.Remote != nil && s.Remote.NoPresence {
		return nil
	}
	var c struct {
		Push []struct {
			UserID        string  `json:"user_id"`
			Presence      string  `json:"presence"`
			StatusMsg     *string `json:"status_msg"`
			LastActiveAgo int64   `json:"last_active_ago"`
		} `json:"push"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	return s.Store.Write(func(tx *store.Tx) error {
		for _, p := range c.Push {
			if srv, ok := userServer(p.UserID); !ok || srv != origin || !validPresence(p.Presence) {
				continue
			}
			keys := s.roomsOfRemoteUser(tx, p.UserID)
			if len(keys) == 0 {
				continue // nobody here shares a room with them
			}
			rec := presenceRecord{Presence: p.Presence, StatusMsg: p.StatusMsg, LastActiveTS: now - max(p.LastActiveAgo, 0)}
			if err := s.storePresence(tx, p.UserID, rec, true); err != nil {
				return err
			}
			tx.OnCommit(func() { s.Notifier.Notify(keys...) })
		}
		return nil
	})
}

// remoteSharesJoined tells whether remote user userID is joined to one of
// rooms (the store indexes memberships of local users only).
func (s *Server) remoteSharesJoined(tx *store.Tx, userID string, rooms map[string]bool) bool {
	if s.isLocalUser(userID) {
		return false
	}
	for roomID := range rooms {
		if _, st, err := s.roomState(tx, roomID); err == nil && s.membershipIn(tx, st, userID) == "join" {
			return true
		}
	}
	return false
}

// FederationPublicRooms answers GET and POST /_matrix/federation/v1/publicRooms
// from our published rooms. query holds GET's parameters; body, when not
// nil, is POST's.
func (s *Server) FederationPublicRooms(query url.Values, body json.RawMessage) (any, error) {
	var pq publicRoomsQuery
	if body != nil {
		var req publicRoomsBody
		if err := json.Unmarshal(body, &req); err != nil {
			return nil, errBadJSON("%s", jsonMessage(err))
		}
		var err error
		if pq, err = req.query(); err != nil {
			return nil, err
		}
	} else {
		var err error
		if pq, err = publicRoomsFromQuery(query); err != nil {
			return nil, err
		}
	}
	// publicRooms reads only the server parameter of its request.
	return s.publicRooms(&http.Request{URL: &url.URL{}}, pq)
}

// remotePublicRooms asks server for its room directory (POST, which
// carries the filter too).
func (s *Server) remotePublicRooms(ctx context.Context, server string, pq publicRoomsQuery) (any, error) {
	if s.Remote == nil {
		return nil, errNotFound("Cannot list the room directory of %s", server)
	}
	if pq.Limit < 0 {
		return nil, errInvalidParam("limit must not be negative")
	}
	body := map[string]any{}
	if pq.Limit > 0 {
		body["limit"] = pq.Limit
	}
	if pq.Since != "" {
		body["since"] = pq.Since
	}
	if pq.IncludeAllNetworks {
		body["include_all_networks"] = true
	}
	if pq.ThirdPartyInstanceID != "" {
		body["third_party_instance_id"] = pq.ThirdPartyInstanceID
	}
	filter := map[string]any{}
	if pq.SearchTerm != "" {
		filter["generic_search_term"] = pq.SearchTerm
	}
	if pq.RoomTypesSet {
		filter["room_types"] = pq.RoomTypes
	}
	if len(filter) > 0 {
		body["filter"] = filter
	}
	ctx, cancel := context.WithTimeout(ctx, remoteQueryTimeout)
	defer cancel()
	var resp map[string]json.RawMessage
	err := s.Remote.Post(ctx, server, "/_matrix/federation/v1/publicRooms", body, &resp)
	if err != nil {
		s.Log.Info("remote room directory failed", "server", server, "err", err)
		return nil, errNotFound("Cannot list the room directory of %s: it did not answer", server)
	}
	if _, ok := resp["chunk"]; !ok {
		return nil, newErr(http.StatusBadGateway, "M_UNKNOWN", "%s answered no chunk", server)
	}
	return resp, nil
}
