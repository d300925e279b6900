package roomfed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// Join joins userID (one of ours) to a room this server does not know,
// or to one it cannot authorise the join to itself (restricted), asking servers in turn (make_join, then send_join) until one succeeds.
// It is client.Server.RemoteJoin. A refusal wraps room.ErrForbidden, an
// unknown room room.ErrRoomNotFound.
func (e *Engine) Join(ctx context.Context, userID, roomID string, servers []string) error {
	unlock := e.lock(roomID)
	defer unlock()
	var errs []error
	for _, srv := range servers {
		if srv == e.name || srv == "" {
			continue
		}
		err := e.joinVia(ctx, srv, userID, roomID)
		if err == nil {
			return nil
		}
		e.log.Info("remote join failed", "server", srv, "room_id", roomID, "user_id", userID, "err", err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: no server to join %s through", room.ErrRoomNotFound, roomID)
	}
	return errors.Join(errs...)
}

type sendJoinResp struct {
	State     []json.RawMessage `json:"state"`
	AuthChain []json.RawMessage `json:"auth_chain"`
	Event     json.RawMessage   `json:"event"`
	// MembersOmitted and ServersInRoom answer omit_members (MSC3706).
	MembersOmitted bool     `json:"members_omitted"`
	ServersInRoom  []string `json:"servers_in_room"`
}

func (e *Engine) joinVia(ctx context.Context, srv, userID, roomID string) error {
	q := url.Values{}
	for _, v := range room.SupportedVersions {
		q.Add("ver", v)
	}
	var mj struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + "?" + q.Encode()
	if err := e.fed.Client.Get(ctx, srv, path, &mj); err != nil {
		return remoteErr(err)
	}
	if mj.RoomVersion == "" {
		mj.RoomVersion = "1"
	}
	if !slices.Contains(room.SupportedVersions, mj.RoomVersion) {
		return fmt.Errorf("%w: %q", room.ErrUnsupported, mj.RoomVersion)
	}
	version := mj.RoomVersion
	var tmpl map[string]json.RawMessage
	if err := json.Unmarshal(mj.Event, &tmpl); err != nil || tmpl == nil {
		return fmt.Errorf("%w: make_join template from %s", room.ErrBadEvent, srv)
	}
	// The template's sender, state key, type, room and content must be
	// the join we asked for; the rest (prev/auth events, depth, time)
	// comes from the resident server.
	want := map[string]any{"sender": userID, "state_key": userID, "type": "m.room.member"}
	for k, v := range want {
		var got string
		if json.Unmarshal(tmpl[k], &got) != nil || got != v {
			return fmt.Errorf("%w: make_join template has a wrong %s", room.ErrBadEvent, k)
		}
	}
	// A restricted room's resident server names the member authorising
	// the join (auth rule 4.3.5.2 of room versions 8+); keep that.
	content := map[string]string{"membership": "join"}
	var tc struct {
		Via string `json:"join_authorised_via_users_server"`
	}
	if json.Unmarshal(tmpl["content"], &tc) == nil && tc.Via != "" {
		content["join_authorised_via_users_server"] = tc.Via
	}
	tmpl["content"], _ = json.Marshal(content)
	tmpl["origin"], _ = json.Marshal(e.name)
	if _, ok := tmpl["origin_server_ts"]; !ok {
		tmpl["origin_server_ts"], _ = json.Marshal(time.Now().UnixMilli())
	}
	delete(tmpl, "signatures")
	delete(tmpl, "hashes")
	raw, _ := json.Marshal(tmpl)
	signed, eventID, err := e.rooms.SignPDU(version, raw)
	if err != nil {
		return err
	}
	var sj sendJoinResp
	// Ask for a faster join: the members come later, in the background.
	path = "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	if e.fasterJoins {
		path += "?omit_members=true"
	}
	if err := e.fed.Client.Put(ctx, srv, path, json.RawMessage(signed), &sj); err != nil {
		return remoteErr(err)
	}
	join, err := room.ParseEvent(version, signed, eventID)
	if err != nil {
		return err
	}
	if len(sj.Event) > 0 {
		// The resident server's countersigned copy, when it is our event.
		if ev, err := room.ParseEvent(version, stripUnsigned(sj.Event), ""); err == nil && ev.ID == eventID &&
			ev.VerifyContentHash() && ev.VerifySignature(e.name, e.fed.Keyring.GetKey) == nil {
			join = ev
		}
	}
	if _, err := e.roomVersion(roomID); err == nil {
		// A room this server is in already: a local user's join that
		// only another server could authorise (a restricted room). The
		// join is one more event of the room, applied as received.
		_, err := e.receive(ctx, srv, roomID, join.Raw, true)
		return err
	}
	state, chain, err := e.verifyJoinState(version, roomID, join, sj)
	if err != nil {
		return err
	}
	state = slices.DeleteFunc(state, func(ev *room.Event) bool { return ev.ID == eventID })
	var partial *store.PartialState
	if sj.MembersOmitted {
		// The answering server first: it holds our join for certain.
		servers := []string{srv}
		for _, s := range sj.ServersInRoom {
			if s != e.name && !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		partial = &store.PartialState{RoomID: roomID, JoinEvent: eventID, Servers: servers, Since: nowMS()}
	}
	err = e.store.Write(func(tx *store.Tx) error {
		before, err := e.rooms.CreateFromJoin(tx, version, roomID, state, chain)
		if err != nil {
			return err
		}
		m, err := e.rooms.AuthStateFor(tx, join, before)
		if err != nil {
			return err
		}
		if partial != nil {
			// A restricted join's authorising member may be omitted.
			tx.SetPartialState(partial)
			fillFromAuthEvents(tx, e.rooms, join, m)
		}
		if err := room.AuthorizeAgainst(join, m, e.fed.Keyring.GetKey); err != nil {
			return err
		}
		return e.rooms.PersistRemote(tx, join, before, 0)
	})
	if err == nil && partial != nil {
		PartialStats.Joins.Add(1)
		e.log.Info("joined with partial state; fetching the members", "room_id", roomID, "server", srv,
			"state", len(state), "servers_in_room", len(sj.ServersInRoom))
		e.startResync(roomID)
	}
	return err
}

// verifyJoinState checks the state and auth chain of a send_join answer:
// every event's format, signature and content hash (redacted on
// mismatch), and its auth against its auth_events within the answer.
// Events failing a check are dropped, and with them the events they
// authorise (as Synapse does: a resident server's bad side events must
// not make the room unjoinable). What cannot be dropped: the room's
// create event, of the expected version, and the join's own auth events.
func (e *Engine) verifyJoinState(version, roomID string, join *room.Event, sj sendJoinResp) (state, chain []*room.Event, err error) {
	all := map[string]*room.Event{}
	parse := func(list []json.RawMessage) []*room.Event {
		out := make([]*room.Event, 0, len(list))
		for _, ev := range e.checkAll(version, roomID, list) {
			if all[ev.ID] == nil {
				all[ev.ID] = ev
			}
			out = append(out, all[ev.ID])
		}
		return out
	}
	chain = parse(sj.AuthChain)
	state = parse(sj.State)
	// Authorise oldest first so each event's auth events were judged.
	ordered := make([]*room.Event, 0, len(all))
	for _, ev := range all {
		ordered = append(ordered, ev)
	}
	slices.SortFunc(ordered, func(a, b *room.Event) int { return int(min(max(a.Depth-b.Depth, -1), 1)) })
	rejected := map[string]bool{}
	lookup := func(eid string) (*room.Event, error) {
		if ev := all[eid]; ev != nil && !rejected[eid] {
			return ev, nil
		}
		return nil, room.ErrEventNotFound
	}
	for _, ev := range ordered {
		if err := room.Authorize(ev, lookup, e.fed.Keyring.GetKey); err != nil {
			e.log.Info("send_join state event fails auth", "event_id", ev.ID, "err", err)
			rejected[ev.ID] = true
		}
	}
	state = slices.DeleteFunc(state, func(ev *room.Event) bool { return rejected[ev.ID] })
	chain = slices.DeleteFunc(chain, func(ev *room.Event) bool { return rejected[ev.ID] })
	for _, aid := range join.AuthEvents {
		if _, err := lookup(aid); err != nil {
			return nil, nil, fmt.Errorf("%w: send_join answer lacks a valid %s, an auth event of the join", room.ErrBadEvent, aid)
		}
	}
	var create *room.Event
	for _, ev := range state {
		if ev.Type == "m.room.create" && ev.StateKey != nil && *ev.StateKey == "" {
			create = ev
		}
	}
	if create == nil {
		return nil, nil, fmt.Errorf("%w: send_join state has no valid create event", room.ErrBadEvent)
	}
	var cc struct {
		Version string `json:"room_version"`
	}
	_ = json.Unmarshal(create.Content, &cc)
	if cc.Version == "" {
		cc.Version = "1"
	}
	if cc.Version != version {
		return nil, nil, fmt.Errorf("%w: create event says room version %q, make_join said %q", room.ErrBadEvent, cc.Version, version)
	}
	return state, chain, nil
}

// checkAll runs check on every event on every core (a join into a big
// room is bound by the signatures to verify, one per event) and returns
// those passing, in order; the others are logged and left out.
func (e *Engine) checkAll(version, roomID string, list []json.RawMessage) []*room.Event {
	out := make([]*room.Event, len(list))
	errs := make([]error, len(list))
	workers := min(runtime.GOMAXPROCS(0), max(1, len(list)/64))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(list); i = int(next.Add(1) - 1) {
				out[i], errs[i] = e.check(version, roomID, list[i])
			}
		})
	}
	wg.Wait()
	kept := out[:0]
	for i, ev := range out {
		if errs[i] != nil || ev == nil {
			eventID := ""
			if ev != nil {
				eventID = ev.ID
			}
			e.log.Info("send_join answer holds an invalid event; dropped", "event_id", eventID, "err", errs[i])
			continue
		}
		kept = append(kept, ev)
	}
	return kept
}

// remoteErr maps a resident server's refusal to the room layer's errors,
// which the client API turns into errcodes.
func remoteErr(err error) error {
	var re *federation.RemoteError
	if errors.As(err, &re) {
		switch {
		case re.Code == "M_INCOMPATIBLE_ROOM_VERSION":
			return fmt.Errorf("%w: %v", room.ErrUnsupported, err)
		case re.Status == http.StatusNotFound:
			return fmt.Errorf("%w: %v", room.ErrRoomNotFound, err)
		case re.Status >= 400 && re.Status < 500:
			// 403, and the 400s of restricted rooms
			// (M_UNABLE_TO_AUTHORISE_JOIN, M_UNABLE_TO_GRANT_JOIN): the
			// resident server refuses; the client is told so (403), not
			// that the server was unreachable (502).
			return fmt.Errorf("%w: %v", room.ErrForbidden, err)
		}
	}
	return err
}

func nowMS() int64 { return time.Now().UnixMilli() }
