package roomfed

// Gaps that get_missing_events cannot close (server-server API, "Receiving
// PDUs": a server may instead ask for the state at the missing events).
// Each missing prev event is fetched with the state before it (/state_ids,
// then /state or /event for what we lack); the state events are checked
// like any PDU and stored as outliers, and the prev event is stored as an
// outlier whose state is known, so the new event's state follows from it
// as from any other prev event. The history between stays a gap (filled
// later by backfill).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"edge/edge/room"
	"edge/edge/store"
)

// maxGapPrevs bounds the missing prev events filled for one event: an
// event citing more is rejected rather than costing a state fetch each.
const maxGapPrevs = 5

// fillGap fetches from srv each missing prev event of ev with its state.
func (e *Engine) fillGap(ctx context.Context, srv, version string, ev *room.Event, missing []string) error {
	if len(missing) > maxGapPrevs {
		return fmt.Errorf("%w: %d unknown prev events", ErrMissingPrev, len(missing))
	}
	for _, pid := range missing {
		if err := e.fetchWithState(ctx, srv, version, ev.RoomID, pid); err != nil {
			return fmt.Errorf("prev event %s: %w", pid, err)
		}
	}
	return nil
}

// fetchWithState stores eventID as an outlier with the state before it, as
// srv reports it.
func (e *Engine) fetchWithState(ctx context.Context, srv, version, roomID, eventID string) error {
	var one struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := e.fed.Client.Get(ctx, srv, "/_matrix/federation/v1/event/"+url.PathEscape(eventID), &one); err != nil {
		return err
	}
	if len(one.PDUs) != 1 {
		return fmt.Errorf("%w: /event answered %d PDUs", room.ErrBadEvent, len(one.PDUs))
	}
	prev, err := e.check(version, roomID, one.PDUs[0])
	if err != nil {
		return err
	}
	if prev.ID != eventID {
		return fmt.Errorf("%w: asked for %s, got %s", room.ErrBadEvent, eventID, prev.ID)
	}
	ids, err := e.fetchStateAt(ctx, srv, version, roomID, eventID)
	if err != nil {
		return err
	}
	return e.store.Write(func(tx *store.Tx) error {
		stored, err := tx.EventNID(prev.ID)
		var se *store.Event
		if err == nil {
			if se, err = tx.Event(stored); err != nil || se.StateBefore != 0 {
				return err // arrived meanwhile, with its state
			}
		}
		full, _, err := e.fullState(tx, roomID, ids.PDUs, ids.known)
		if err != nil {
			return err
		}
		entries := make([]store.StateEntry, 0, len(full))
		for k, v := range full {
			entries = append(entries, store.StateEntry{Key: k, Event: v})
		}
		before, err := e.rooms.State(tx, tx.PutSnapshot(0, entries))
		if err != nil {
			return err
		}
		if se != nil {
			// Stored meanwhile without a state — as one of the state
			// events of its own /state answer: it gets this one.
			se.StateBefore = before.ID
			tx.UpdateEvent(se)
			e.rooms.Evict(tx, stored)
			return nil
		}
		flags := store.FlagOutlier
		if err := e.authorizeOutlier(tx, prev, nil); err != nil {
			e.log.Info("gap: prev event fails auth", "event_id", prev.ID, "err", err)
			flags |= store.FlagRejected
		}
		return e.rooms.PersistRemote(tx, prev, before, flags)
	})
}

// fetchStateAt asks srv for the state before eventID (/state_ids) and
// stores, checked, the state and auth events we lack: with /state when
// many are missing, else one /event each.
func (e *Engine) fetchStateAt(ctx context.Context, srv, version, roomID, eventID string) (stateIDs, error) {
	q := "?event_id=" + url.QueryEscape(eventID)
	var ids stateIDs
	if err := e.fed.Client.Get(ctx, srv, "/_matrix/federation/v1/state_ids/"+url.PathEscape(roomID)+q, &ids); err != nil {
		return ids, err
	}
	// The IDs we lack, each once: /state's answer is read as a stream
	// and only these are kept of it (streamState).
	seen := make(map[string]bool, len(ids.PDUs)+len(ids.AuthChain))
	unknownSet := map[string]bool{}
	var unknown []string
	err := e.store.View(func(tx *store.Tx) error {
		for _, list := range [][]string{ids.AuthChain, ids.PDUs} {
			for _, eid := range list {
				if seen[eid] {
					continue
				}
				seen[eid] = true
				if _, err := tx.EventNID(eid); err != nil {
					unknown = append(unknown, eid)
					unknownSet[eid] = true
				}
			}
		}
		return nil
	})
	if err != nil {
		return ids, err
	}
	if len(unknown) <= stateFetchAbove {
		return ids, e.fetchEvents(ctx, srv, version, roomID, unknown)
	}
	ids.known, err = e.streamState(ctx, srv, version, roomID, "/_matrix/federation/v1/state/"+url.PathEscape(roomID)+q, unknownSet)
	return ids, err
}

// fetchEvents fetches from srv, checks and stores as outliers the events
// among ids that we do not hold. One the server does not give is left
// out (as Synapse does), and with it whatever it authorises: those fail
// their auth check for want of it.
func (e *Engine) fetchEvents(ctx context.Context, srv, version, roomID string, ids []string) error {
	wanted := map[string]bool{}
	var raws []json.RawMessage
	for _, eid := range ids {
		var known bool
		_ = e.store.View(func(tx *store.Tx) error { _, err := tx.EventNID(eid); known = err == nil; return nil })
		if known {
			continue
		}
		var one struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		if err := e.fed.Client.Get(ctx, srv, "/_matrix/federation/v1/event/"+url.PathEscape(eid), &one); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("event %s: %w", eid, err)
			}
			e.log.Info("gap: state event not fetched", "server", srv, "event_id", eid, "err", err)
			continue
		}
		wanted[eid] = true
		raws = append(raws, one.PDUs...)
	}
	if len(raws) == 0 {
		return nil
	}
	return e.storeFetched(version, roomID, raws, wanted)
}
