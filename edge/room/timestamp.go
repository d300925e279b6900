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
// of them and backward the last, as Synapse orders them. Nil when there
// is none.
func (s *Service) EventAtTimestamp(tx *store.Tx, roomID string, ts int64, forward bool) (*Event, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrRoomNotFound
	} else if err != nil {
		return nil, err
	}
	// The store's timestamp ordering (timeline and backfilled events, by
	// origin_server_ts, depth, then order in the room) gives the answer in
	// one seek; an event that cannot be loaded is passed over.
	var best *Event
	var ferr error
	tx.EventsByTimestamp(r.NID, ts, forward, func(nid uint64) bool {
		ev, err := s.Event(tx, nid)
		if errors.Is(err, ErrEventNotFound) {
			return true
		} else if err != nil {
			ferr = err
			return false
		}
		best = ev
		return false
	})
	return best, ferr
}
