package roomfed

// Auth chains (server-server API, "Retrieving events": event_auth): served
// to other servers, and fetched when an event we are given names auth
// events we do not hold.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// maxAuthChain bounds the auth chain taken from one event_auth answer.
const maxAuthChain = 1000

// serveEventAuth answers GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}:
// the event's full auth chain. It is not filtered by history visibility:
// auth events are what any server in the room needs to check the event,
// and Synapse serves them whole to servers in the room.
func (e *Engine) serveEventAuth(r *federation.Request) (any, error) {
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	var chain []*room.Event
	err := e.store.View(func(tx *store.Tx) error {
		if _, err := e.visibleTo(tx, roomID, r.Origin); err != nil {
			return err
		}
		ev, err := e.rooms.EventByID(tx, eventID)
		if errors.Is(err, room.ErrEventNotFound) || (err == nil && ev.RoomID != roomID) {
			return errNotFound("unknown event")
		} else if err != nil {
			return err
		}
		chain, err = e.rooms.AuthChain(tx, []*room.Event{ev})
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return map[string]any{"auth_chain": raws(chain)}, nil
}

// fetchAuth asks srv for the auth chain of eventID and stores the events
// of it we lack as outliers, oldest first, each checked like an inbound
// PDU (format, signature, hash) and against its own auth events; those
// failing auth are kept rejected. It returns how many it stored.
func (e *Engine) fetchAuth(ctx context.Context, srv, version, roomID, eventID string) (int, error) {
	var resp struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	path := "/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	if err := e.fed.Client.Get(ctx, srv, path, &resp); err != nil {
		return 0, remoteErr(err)
	}
	var evs []*room.Event
	for _, raw := range resp.AuthChain[:min(len(resp.AuthChain), maxAuthChain)] {
		ev, err := e.check(version, roomID, raw)
		if err != nil {
			if ev != nil {
				e.log.Info("event_auth: event refused", "event_id", ev.ID, "err", err)
			}
			continue
		}
		evs = append(evs, ev)
	}
	slices.SortStableFunc(evs, func(a, b *room.Event) int { return int(min(max(a.Depth-b.Depth, -1), 1)) })
	return e.storeRoomOutliers(roomID, evs)
}

// storeRoomOutliers stores evs as outliers of roomID in one transaction
// (see storeOutliers) and returns how many were new.
func (e *Engine) storeRoomOutliers(roomID string, evs []*room.Event) (int, error) {
	stored := 0
	err := e.store.Write(func(tx *store.Tx) error {
		stored = 0
		r, err := tx.Room(roomID)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrUnknownRoom, roomID)
		}
		return e.storeOutliers(tx, r, evs, &stored)
	})
	return stored, err
}

// storeOutliers stores evs (oldest first) that tx does not hold yet as
// outliers of room r, rejected when they fail auth against their auth
// events (looked up in tx, then among evs already accepted).
func (e *Engine) storeOutliers(tx *store.Tx, r *store.Room, evs []*room.Event, stored *int) error {
	accepted := map[string]*room.Event{}
	for _, ev := range evs {
		if _, err := tx.EventNID(ev.ID); err == nil {
			continue
		}
		flags := store.FlagOutlier
		if err := e.authorizeOutlier(tx, ev, accepted); err != nil {
			e.log.Info("outlier fails auth", "event_id", ev.ID, "err", err)
			flags |= store.FlagRejected
		} else {
			accepted[ev.ID] = ev
		}
		se := &store.Event{EventID: ev.ID, RoomNID: r.NID, Flags: flags, JSON: ev.Raw}
		if err := tx.PutEvent(se); err != nil {
			return err
		}
		if flags&store.FlagRejected == 0 {
			// a thread's events fetched by /event_relationships are
			// outliers that later walks find by their parent
			room.IndexRelations(tx, ev, se.NID)
		}
		*stored++
	}
	return nil
}

// authorizeOutlier checks ev against its auth events, found in tx or in
// extra; a rejected auth event fails it.
func (e *Engine) authorizeOutlier(tx *store.Tx, ev *room.Event, extra map[string]*room.Event) error {
	var bad bool
	lookup := func(eid string) (*room.Event, error) {
		if x := extra[eid]; x != nil {
			return x, nil
		}
		x, err := e.rooms.EventByID(tx, eid)
		if err == nil && x.Flags&store.FlagRejected != 0 {
			bad = true
		}
		return x, err
	}
	if err := room.Authorize(ev, lookup, e.fed.Keyring.GetKey); err != nil {
		return err
	}
	if bad {
		return fmt.Errorf("%w: an auth event was rejected", ErrRejected)
	}
	return nil
}
