package roomfed

// History visibility for servers (client-server API, "Room History
// Visibility", server behaviour, applied to a server through its users):
// whether a server may read an event depends on the room's state at that
// event, not on the current state.

import (
	"encoding/json"

	"edge/edge/room"
	"edge/edge/store"
)

// serverView judges, for one asking server, which events of one room it
// may read. joinedNow is whether it has a joined member in the current
// state: "shared" history is open to a server in the room, as to a user
// who joined after the event was sent.
type serverView struct {
	e         *Engine
	tx        *store.Tx
	server    string
	joinedNow bool
	memo      map[uint64][2]string
}

func (e *Engine) newServerView(tx *store.Tx, r *store.Room, server string) (*serverView, error) {
	joined, err := e.serverJoined(tx, r, server)
	if err != nil {
		return nil, err
	}
	return &serverView{e: e, tx: tx, server: server, joinedNow: joined, memo: map[uint64][2]string{}}, nil
}

// at returns the history visibility in a snapshot and the best membership
// (join over invite over anything else) of the server's users in it.
// Joins come from the room service's per-snapshot counts; only an
// "invited" room without a joined member of the server walks the state
// for invites.
func (v *serverView) at(snap uint64) (hv, mem string) {
	if m, ok := v.memo[snap]; ok {
		return m[0], m[1]
	}
	hv = "shared"
	st, err := v.e.rooms.State(v.tx, snap)
	if err == nil {
		if ev, _ := v.e.rooms.StateEvent(v.tx, st, "m.room.history_visibility", ""); ev != nil {
			var c struct {
				V string `json:"history_visibility"`
			}
			if json.Unmarshal(ev.Content, &c) == nil {
				switch c.V {
				case "world_readable", "shared", "invited", "joined":
					hv = c.V
				}
			}
		}
		if joined, err := v.e.rooms.JoinedServers(v.tx, snap); err == nil && joined[v.server] > 0 {
			mem = "join"
		} else if hv == "invited" {
			st.Each(func(key, nid uint64) bool {
				t, sk, kerr := v.tx.StateKey(key)
				if kerr != nil || t != "m.room.member" || domainOf(sk) != v.server {
					return true
				}
				if ev, eerr := v.e.rooms.Event(v.tx, nid); eerr == nil && ev.Membership() == "invite" {
					mem = "invite"
					return false
				}
				return true
			})
		}
	}
	v.memo[snap] = [2]string{hv, mem}
	return hv, mem
}

// canSee applies the spec's rules at the event: world_readable, a joined
// member then, shared history to a server in the room now, invited
// history to an invited member then. A server always sees its own users'
// membership events. An outlier has no known state: like Synapse, it
// counts as "shared".
func (v *serverView) canSee(ev *room.Event) bool {
	if ev.Type == "m.room.member" && ev.StateKey != nil && domainOf(*ev.StateKey) == v.server {
		return true
	}
	hv, mem := "shared", ""
	if ev.Flags&store.FlagOutlier == 0 || ev.StateBefore != 0 {
		hv, mem = v.at(ev.StateBefore)
	}
	switch {
	case hv == "world_readable", mem == "join":
		return true
	case hv == "shared":
		return v.joinedNow
	case hv == "invited":
		return mem == "invite"
	}
	return false
}

// filter returns what the server gets of evs: each event it may see as
// it is, the others redacted. Redacting rather than omitting is Synapse's
// choice (filter_events_for_server with redact=True, used by /backfill,
// /get_missing_events and /event) and the better one: the asking server
// keeps the shape of the graph (prev_events, auth_events, the state keys
// and memberships the auth rules need) and can still check the
// signatures, since they cover the redacted form, but learns no content.
// The spec says nothing for servers beyond the client rules.
func (v *serverView) filter(evs []*room.Event) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		if v.canSee(ev) {
			out = append(out, ev.Raw)
			continue
		}
		red, err := room.Redact(ev)
		if err != nil {
			continue // cannot be shown safely: leave it out
		}
		out = append(out, red)
	}
	return out
}
