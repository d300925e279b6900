package client

import (
	"sort"

	"edge/edge/filter"
	"edge/edge/room"
	"edge/edge/store"
)

// A full sync of a room (initial sync, a new join, full_state) shows a
// historical section of it, not the updates since a point: as Synapse
// does, its timeline is the newest events in topological order (depth,
// then stream position), so an old event that arrived late (a fork's, a
// gap's) does not come out as the newest; incremental syncs keep stream
// order, so every update reaches the client.

// collectTimelineTopological is collectTimeline for a full sync: up to
// limit visible events at or before stream position upper, newest by
// topological order, returned oldest first. firstPos is the smallest
// stream position walked, which prev_batch (a stream position, as
// /messages pages in stream order) goes back from.
func (s *Server) collectTimelineTopological(tx *store.Tx, sess *Session, r *store.Room, upper uint64, limit int, tf *filter.RoomEventFilter) (evs []*room.Event, limited bool, firstPos uint64, err error) {
	return s.walkTimeline(tx, sess, r, upper, limit, tf, func(fn func(pos, nid uint64) bool) {
		tx.TimelineTopological(r.NID, upper, fn)
	})
}

// fullSyncState is a full sync's state block: for each state key, the
// current event unless the timeline carries it, else the event at the
// timeline's start unless the timeline carries that. The current state
// matters because the timeline need not reach it: a state event on a
// fork merged later, or one the filter leaves out, is in no timeline
// event's past, and the client would never learn of it (Synapse takes the
// state at both ends for this; Complement's
// TestSyncOmitsStateChangeOnFilteredEvents).
func (s *Server) fullSyncState(tx *store.Tx, start, current *room.State, tl []*room.Event) ([]*room.Event, error) {
	inTimeline := make(map[uint64]bool, len(tl))
	for _, ev := range tl {
		inTimeline[ev.NID] = true
	}
	pick := map[uint64]uint64{}
	current.Each(func(k, nid uint64) bool {
		if !inTimeline[nid] {
			pick[k] = nid
		}
		return true
	})
	start.Each(func(k, nid uint64) bool {
		if _, ok := pick[k]; !ok && !inTimeline[nid] {
			pick[k] = nid
		}
		return true
	})
	out := make([]*room.Event, 0, len(pick))
	for _, nid := range pick {
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pos != out[j].Pos {
			return out[i].Pos < out[j].Pos
		}
		return out[i].NID < out[j].NID
	})
	return out, nil
}
