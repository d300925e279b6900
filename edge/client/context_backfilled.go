package client

import (
	"edge/edge/room"
	"edge/edge/store"
)

// contextBackfilled is /context for an event of the room's backfilled
// history (seq N; see messages for the tokens): start is b<N+1>, just
// older than it, and end b<N>, just newer, so /messages continues from
// either — how a client reads around an event timestamp_to_event found on
// another server.
func (s *Server) contextBackfilled(tx *store.Tx, rm *store.Room, ev *room.Event, seq uint64, limit int, f *roomEventFilter, vis *visibility, sess *Session) (map[string]any, error) {
	keep := func(e *room.Event) bool { return vis.canSee(e) && f.matchRoomEvent(e) }
	var before []*room.Event
	start := backfillToken(seq + 1)
	if n := limit / 2; n > 0 {
		tx.Backfilled(rm.NID, seq+1, func(sq, nid uint64) bool {
			if len(before) >= n {
				return false
			}
			start = backfillToken(sq + 1)
			if e, err := s.Rooms.Event(tx, nid); err == nil && keep(e) {
				before = append(before, e)
			}
			return true
		})
	}
	// Newer: backfilled seqs N-1 … 1, then the timeline.
	var after []*room.Event
	end := backfillToken(seq)
	if n := limit - limit/2; n > 0 {
		var newer []uint64
		tx.Backfilled(rm.NID, 1, func(sq, nid uint64) bool {
			if sq >= seq {
				return false
			}
			newer = append(newer, nid)
			return true
		})
		for i := len(newer) - 1; i >= 0 && len(after) < n; i-- {
			end = backfillToken(seq - uint64(len(newer)-i))
			if e, err := s.Rooms.Event(tx, newer[i]); err == nil && keep(e) {
				after = append(after, e)
			}
		}
		if len(after) < n {
			tx.Timeline(rm.NID, 0, false, func(pos, nid uint64) bool {
				if len(after) >= n {
					return false
				}
				end = pageToken(pos)
				if e, err := s.Rooms.Event(tx, nid); err == nil && keep(e) {
					after = append(after, e)
				}
				return true
			})
		}
	}
	var state []*room.Event
	if st, err := s.Rooms.StateAfter(tx, ev); err == nil {
		if state, err = s.stateEvents(tx, st); err != nil {
			return nil, err
		}
	}
	return map[string]any{
		"event":         s.render(tx, ev, sess),
		"events_before": s.renderAll(tx, before, sess),
		"events_after":  s.renderAll(tx, after, sess),
		"start":         start,
		"end":           end,
		"state":         s.renderAll(tx, state, sess),
	}, nil
}
