package roomfed

import (
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// maxHeroes is how many members stand in for a nameless room's name in a
// members-omitted send_join answer (the client API's m.heroes).
const maxHeroes = 5

// serveMakeJoin answers GET /_matrix/federation/v1/make_join/{roomId}/{userId}:
// a join template built on the current state, if the room's version is
// one the asking server supports (its ver= parameters, "1" when absent)
// and the auth rules let the user join.
func (e *Engine) serveMakeJoin(r *federation.Request) (any, error) {
	vers := r.URL.Query()["ver"]
	if len(vers) == 0 {
		vers = []string{"1"}
	}
	if err := e.refuseIfPartial(r.PathValue("roomId")); err != nil {
		return nil, err
	}
	return e.makeMembership(r, "join", vers)
}

// refuseIfPartial answers 404 for a room whose state we are still
// fetching, as if we were not in it (as Synapse does): a join built on a
// partial state could not be checked, nor its send_join answered.
func (e *Engine) refuseIfPartial(roomID string) error {
	if e.isPartial(roomID) {
		return errNotFound("this server is not fully joined to the room yet")
	}
	return nil
}

// makeMembership answers make_join and make_leave: a member-event template
// for a user of the asking server, built on the current state. With
// versions set, the room's version must be one of them.
func (e *Engine) makeMembership(r *federation.Request, membership string, versions []string) (any, error) {
	roomID, userID := r.PathValue("roomId"), r.PathValue("userId")
	if domainOf(userID) != r.Origin {
		return nil, errForbidden("the user is not on the requesting server")
	}
	content, _ := json.Marshal(map[string]string{"membership": membership})
	sk := userID
	var version string
	var tmpl json.RawMessage
	err := e.store.View(func(tx *store.Tx) error {
		if versions != nil {
			rm, err := tx.Room(roomID)
			if errors.Is(err, store.ErrNotFound) {
				return room.ErrRoomNotFound
			} else if err != nil {
				return err
			}
			if !slices.Contains(versions, rm.Version) {
				return errIncompatible(rm.Version, "the room's version is "+rm.Version)
			}
		}
		var err error
		if membership == "join" {
			if content, err = e.restrictedJoinContent(tx, roomID, userID); err != nil {
				return err
			}
		}
		version, tmpl, err = e.rooms.Template(tx, roomID, room.Proto{Type: "m.room.member", StateKey: &sk, Sender: userID, Content: content})
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return map[string]any{"room_version": version, "event": tmpl}, nil
}

// serveSendJoin answers PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}:
// the join event, checked like any inbound PDU plus the join's own rules,
// is countersigned, stored and sent to the other servers in the room; the
// answer is the state before it and the auth chain. With omit_members=true
// (MSC3706) the answer is the lighter one of a faster join: the state
// without member events (but the heroes', for a room without a name), the
// auth chain without the events already in the state, and the servers in
// the room to fetch the rest from.
func (e *Engine) serveSendJoin(r *federation.Request) (any, error) {
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	omit := r.URL.Query().Get("omit_members") == "true"
	unlock := e.lock(roomID)
	defer unlock()
	version, err := e.roomVersion(roomID)
	if err != nil {
		return nil, errNotFound("unknown room")
	}
	if err := e.refuseIfPartial(roomID); err != nil {
		return nil, err
	}
	ev, err := e.sentMembership(r, version, roomID, eventID, "join")
	if err != nil {
		return nil, err
	}
	signed, _, err := e.rooms.SignPDU(version, ev.Raw)
	if err != nil {
		return nil, err
	}
	if ev, err = room.ParseEvent(version, signed, eventID); err != nil {
		return nil, err
	}
	known, err := e.applySent(ev)
	if err != nil {
		return nil, err
	}
	var resp any
	err = e.store.Write(func(tx *store.Tx) error {
		stored, servers, err := e.relaySent(tx, eventID, r.Origin, "join", !known)
		if err != nil {
			return err
		}
		servers[e.name] = true
		list := make([]string, 0, len(servers))
		for s := range servers {
			list = append(list, s)
		}
		slices.Sort(list)
		st, err := e.rooms.State(tx, stored.StateBefore)
		if err != nil {
			return err
		}
		if !omit {
			// The full state: streamed from the store after this
			// transaction, not built here.
			a := &sendJoinStream{e: e, version: version, event: stored.Raw, servers: list, authEvents: stored.AuthEvents}
			st.Each(func(_, nid uint64) bool { a.state = append(a.state, nid); return true })
			resp = a
			return nil
		}
		state, err := e.rooms.StateEvents(tx, st)
		if err != nil {
			return err
		}
		state = omitMembers(state, stored.StateKey)
		chain, err := e.rooms.AuthChain(tx, append(slices.Clone(state), stored))
		if err != nil {
			return err
		}
		// The spec lets events already in state go from the chain.
		inState := make(map[string]bool, len(state))
		for _, s := range state {
			inState[s.ID] = true
		}
		chain = slices.DeleteFunc(chain, func(c *room.Event) bool { return inState[c.ID] })
		resp = map[string]any{
			"origin": e.name, "event": json.RawMessage(stored.Raw), "state": raws(state),
			"auth_chain": raws(chain), "members_omitted": true, "servers_in_room": list,
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	if omit {
		e.log.Debug("send_join answered with members omitted", "room_id", roomID, "origin", r.Origin)
	}
	return resp, nil
}

// sendJoinStream is a send_join answer with the full state, written from
// the store as it goes: a big room's answer (100k events) is never held
// whole, and the joining server checks its first events while the rest
// are still being read. The auth chain is walked as the state is written,
// reading only each event's auth_events.
type sendJoinStream struct {
	e          *Engine
	version    string
	event      []byte
	servers    []string
	authEvents []string // the join's
	state      []uint64 // event NIDs
}

// WriteJSON implements federation.StreamedJSON.
func (a *sendJoinStream) WriteJSON(w io.Writer) error {
	head, err := json.Marshal(map[string]any{"origin": a.e.name, "event": json.RawMessage(a.event), "members_omitted": false, "servers_in_room": a.servers})
	if err != nil {
		return err
	}
	return a.e.store.View(func(tx *store.Tx) error {
		bw := &listWriter{w: w}
		bw.raw(head[:len(head)-1])
		bw.raw([]byte(`,"state":[`))
		queue := slices.Clone(a.authEvents)
		// emit writes an event and queues its auth events.
		emit := func(raw []byte) error {
			bw.item(raw)
			ids, err := room.AuthEventIDs(a.version, raw)
			queue = append(queue, ids...)
			return err
		}
		for _, nid := range a.state {
			se, err := tx.Event(nid)
			if err != nil {
				return err
			}
			if err := emit(se.JSON); err != nil {
				return err
			}
		}
		bw.end()
		bw.raw([]byte(`,"auth_chain":[`))
		seen := map[string]bool{}
		for len(queue) > 0 {
			eid := queue[len(queue)-1]
			queue = queue[:len(queue)-1]
			if seen[eid] {
				continue
			}
			seen[eid] = true
			se, err := tx.EventByID(eid)
			if errors.Is(err, store.ErrNotFound) {
				continue // not ours to give: the chain is what we hold
			} else if err != nil {
				return err
			}
			if err := emit(se.JSON); err != nil {
				return err
			}
		}
		bw.end()
		bw.raw([]byte(`}`))
		return bw.err
	})
}

// listWriter writes a JSON array's items with their commas, keeping the
// first write error.
type listWriter struct {
	w   io.Writer
	n   int
	err error
}

func (l *listWriter) raw(b []byte) {
	if l.err == nil {
		_, l.err = l.w.Write(b)
	}
}

func (l *listWriter) item(b []byte) {
	if l.n > 0 {
		l.raw([]byte{','})
	}
	l.n++
	l.raw(b)
}

// end closes the array and starts the count again for the next.
func (l *listWriter) end() {
	l.raw([]byte{']'})
	l.n = 0
}

// omitMembers drops the member events from a state, keeping those of the
// room's heroes when it has neither a name nor a canonical alias (the
// spec asks for them, so the joining server can name the room at once),
// and the joining user's own earlier membership.
func omitMembers(state []*room.Event, joiner *string) []*room.Event {
	named := false
	var members []*room.Event
	out := make([]*room.Event, 0, len(state))
	for _, ev := range state {
		switch ev.Type {
		case "m.room.member":
			if joiner != nil && ev.StateKey != nil && *ev.StateKey == *joiner {
				out = append(out, ev)
			} else if m := ev.Membership(); m == "join" || m == "invite" {
				members = append(members, ev)
			}
			continue
		case "m.room.name":
			var c struct {
				Name string `json:"name"`
			}
			named = named || (json.Unmarshal(ev.Content, &c) == nil && c.Name != "")
		case "m.room.canonical_alias":
			var c struct {
				Alias string `json:"alias"`
			}
			named = named || (json.Unmarshal(ev.Content, &c) == nil && c.Alias != "")
		}
		out = append(out, ev)
	}
	if !named {
		// Heroes: the earliest members, as the client API orders them.
		slices.SortFunc(members, func(a, b *room.Event) int { return cmp.Compare(a.NID, b.NID) })
		out = append(out, members[:min(len(members), maxHeroes)]...)
	}
	return out
}
