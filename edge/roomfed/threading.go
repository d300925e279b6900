package roomfed

// Threading over federation (MSC2836): /event_relationships served to
// other servers, and asked of them when a client's walk meets an event
// this server lacks. Answers carry the events' auth chain; what is
// fetched is stored as outliers, each checked like an inbound PDU and
// authorised against its auth events (rejected ones are kept rejected,
// so no walk shows them).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

const (
	threadPath = "/_matrix/federation/unstable/event_relationships"
	// threadAskServers bounds the servers one fetch tries in turn.
	threadAskServers = 3
)

// threadAnswer is the federation /event_relationships answer.
type threadAnswer struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	NextBatch string            `json:"next_batch,omitempty"`
	AuthChain []json.RawMessage `json:"auth_chain"`
}

// serveEventRelationships answers POST /_matrix/federation/unstable/event_relationships:
// the same walk as the client endpoint, over events the asking server may
// see (history visibility for servers), with each event's unsigned
// children count and hash and the auth chain of the events. It never asks
// other servers itself, as the MSC requires (two servers asking each
// other would loop).
func (e *Engine) serveEventRelationships(r *federation.Request) (any, error) {
	q := room.NewThreadQuery()
	if err := json.Unmarshal(r.Body, q); err != nil {
		return nil, fedErr(http.StatusBadRequest, "M_BAD_JSON", "body is not an event_relationships request")
	}
	if err := q.Normalize(); err != nil {
		return nil, fedErr(http.StatusBadRequest, "M_INVALID_PARAM", err.Error())
	}
	var out threadAnswer
	err := e.store.View(func(tx *store.Tx) error {
		anchor, err := e.rooms.EventByID(tx, q.EventID)
		if err != nil || (q.RoomID != "" && anchor.RoomID != q.RoomID) {
			return errNotFound("unknown event")
		}
		if err := e.fed.ACLCheck(r.Origin, anchor.RoomID); err != nil {
			return err
		}
		rm, err := e.visibleTo(tx, anchor.RoomID, r.Origin)
		if err != nil {
			return err
		}
		view, err := e.newServerView(tx, rm, r.Origin)
		if err != nil {
			return err
		}
		load := func(id string) *room.Event {
			ev, err := e.rooms.EventByID(tx, id)
			if err != nil || ev.RoomID != rm.RoomID || ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 || !view.canSee(ev) {
				return nil
			}
			return ev
		}
		if load(anchor.ID) == nil {
			return errNotFound("unknown event")
		}
		res := room.WalkThread(q, anchor, room.ThreadSource{
			Load:     load,
			Children: func(p *room.Event) []*room.Event { return e.rooms.ThreadChildren(tx, p.ID) },
		})
		out.Limited, out.NextBatch = res.Limited, res.NextBatch
		out.Events = make([]json.RawMessage, 0, len(res.Events))
		in := map[string]bool{}
		for _, ev := range res.Events {
			in[ev.ID] = true
			counts, hash := room.ThreadChildMeta(e.rooms.ThreadChildren(tx, ev.ID))
			out.Events = append(out.Events, withChildMeta(ev.Raw, counts, hash))
		}
		chain, err := e.rooms.AuthChain(tx, res.Events)
		if err != nil {
			return err
		}
		out.AuthChain = make([]json.RawMessage, 0, len(chain))
		for _, ev := range chain {
			if !in[ev.ID] {
				out.AuthChain = append(out.AuthChain, ev.Raw)
			}
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return out, nil
}

// withChildMeta sets unsigned.children and unsigned.children_hash on a
// PDU (unsigned is not signed, so the PDU still verifies).
func withChildMeta(raw []byte, counts map[string]int, hash string) json.RawMessage {
	if counts == nil {
		return raw
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	u := map[string]any{}
	if old, ok := m["unsigned"]; ok {
		_ = json.Unmarshal(old, &u)
	}
	u["children"], u["children_hash"] = counts, hash
	m["unsigned"], _ = json.Marshal(u)
	b, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return b
}

// EventRelationships asks the other servers in q.RoomID, in turn, for
// the thread around q.EventID, and stores the first answer: its events
// and their auth chain as outliers, and the children counts it claims
// (room.RecordThreadChildren). It is the client API's
// RemoteEventRelationships hook.
func (e *Engine) EventRelationships(ctx context.Context, q room.ThreadQuery) error {
	var version string
	var servers []string
	err := e.store.View(func(tx *store.Tx) error {
		r, err := tx.Room(q.RoomID)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrUnknownRoom, q.RoomID)
		}
		version = r.Version
		servers, err = e.otherServers(tx, r.State)
		return err
	})
	if err != nil {
		return err
	}
	q.Batch = ""
	lastErr := errors.New("no other server is in the room")
	for _, srv := range servers[:min(len(servers), threadAskServers)] {
		var ans threadAnswer
		if err := e.fed.Client.Post(ctx, srv, threadPath, q, &ans); err != nil {
			lastErr = remoteErr(err)
			continue
		}
		return e.storeThreadAnswer(q.RoomID, version, &ans)
	}
	return lastErr
}

// storeThreadAnswer checks and stores an /event_relationships answer
// for roomID: events of other rooms and events failing the PDU checks
// are dropped; the rest are stored as outliers, the auth chain first,
// oldest first, each authorised against its auth events.
func (e *Engine) storeThreadAnswer(roomID, version string, ans *threadAnswer) error {
	claims := map[string]int{}
	parse := func(raws []json.RawMessage, n int, keepClaims bool) []*room.Event {
		var evs []*room.Event
		for _, raw := range raws[:min(len(raws), n)] {
			claimed := childCountClaim(raw)
			ev, err := e.check(version, roomID, stripUnsigned(raw))
			if err != nil {
				if ev != nil {
					e.log.Info("event_relationships: event refused", "event_id", ev.ID, "err", err)
				}
				continue
			}
			if keepClaims && claimed > 0 {
				claims[ev.ID] = claimed
			}
			evs = append(evs, ev)
		}
		slices.SortStableFunc(evs, func(a, b *room.Event) int { return int(min(max(a.Depth-b.Depth, -1), 1)) })
		return evs
	}
	evs := append(parse(ans.AuthChain, maxAuthChain, false), parse(ans.Events, room.ThreadMaxLimit, true)...)
	unlock := e.lock(roomID)
	defer unlock()
	return e.store.Write(func(tx *store.Tx) error {
		r, err := tx.Room(roomID)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrUnknownRoom, roomID)
		}
		stored := 0
		if err := e.storeOutliers(tx, r, evs, &stored); err != nil {
			return err
		}
		for id, n := range claims {
			room.RecordThreadChildren(tx, id, n)
		}
		return nil
	})
}

// childCountClaim sums a PDU's unsigned.children counts (0 when absent
// or malformed).
func childCountClaim(raw []byte) int {
	var w struct {
		Unsigned struct {
			Children map[string]int `json:"children"`
		} `json:"unsigned"`
	}
	if json.Unmarshal(raw, &w) != nil {
		return 0
	}
	n := 0
	for _, c := range w.Unsigned.Children {
		if c > 0 && c < 1<<30 {
			n += c
		}
	}
	return n
}
