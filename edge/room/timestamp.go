package room

import (
	"errors"

	"edge/edge/store"
)

// EventAtTimestamp finds the event of roomID this server holds (timeline
// and backfilled history) closest to ts in a direction (spec: jump to
// date): forward, the first with origin_server_ts >= ts; backward, the
// last with origin_server_ts <= ts. Events with the same timestamp are
// ordered topologically (depth, then arrival), so forward takes the first
// of them and backward the last. Nil when there is none. It reads every
// event of the room: a linear scan, fine for the rooms a small server holds.
func (s *Service) EventAtTimestamp(tx *store.Tx, roomID string, ts int64, forward bool) (*Event, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrRoomNotFound
	} else if err != nil {
		return nil, err
	}
	type key struct {
		ts, depth int64
		order     int64
	}
	less := func(a, b key) bool {
		if a.ts != b.ts {
			return a.ts < b.ts
		}
		if a.depth != b.depth {
			return a.depth < b.depth
		}
		return a.order < b.order
	}
	var best *Event
	var bestKey key
	var ferr error
	consider := func(nid uint64, order int64) bool {
		ev, err := s.Event(tx, nid)
		if errors.Is(err, ErrEventNotFound) {
			return true
		} else if err != nil {
			ferr = err
			return false
		}
		k := key{ev.OriginServerTS, ev.Depth, order}
		if forward && ev.OriginServerTS >= ts && (best == nil || less(k, bestKey)) ||
			!forward && ev.OriginServerTS <= ts && (best == nil || less(bestKey, k)) {
			best, bestKey = ev, k
		}
		return true
	}
	// Backfilled history is older than the timeline; its seq grows towards
	// the past.
	tx.Backfilled(r.NID, 0, func(seq, nid uint64) bool { return consider(nid, -int64(seq)) })
	if ferr != nil {
		return nil, ferr
	}
	tx.Timeline(r.NID, 0, false, func(pos, nid uint64) bool { return consider(nid, int64(pos)) })
	return best, ferr
}
