package store

import "encoding/json"

// partialStateNS is the KV namespace of rooms joined with partial state
// (MSC3706 faster joins), keyed by room ID.
const partialStateNS = "partial_state"

// PartialState marks a room this server joined with a send_join answer
// whose member events were omitted: its state lacks members until the
// full state before JoinEvent is fetched from one of Servers.
type PartialState struct {
	RoomID    string `json:"room_id"`
	JoinEvent string `json:"join_event"`
	// Servers are the resident servers to fetch the full state from (the
	// answer's servers_in_room, the one that answered first).
	Servers []string `json:"servers"`
	// Since is when the join happened, Unix milliseconds.
	Since int64 `json:"since"`
}

// SetPartialState flags a room as partial-state (or replaces its record).
func (t *Tx) SetPartialState(p *PartialState) {
	raw, err := json.Marshal(p)
	must(err)
	t.PutKV(partialStateNS, p.RoomID, raw)
}

// PartialState returns a room's partial-state record; ErrNotFound when the
// room has its full state.
func (t *Tx) PartialState(roomID string) (*PartialState, error) {
	raw, err := t.GetKV(partialStateNS, roomID)
	if err != nil {
		return nil, err
	}
	var p PartialState
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// ClearPartialState marks a room as having its full state.
func (t *Tx) ClearPartialState(roomID string) { t.DeleteKV(partialStateNS, roomID) }

// PartialStateRooms lists the partial-state records, in room ID order.
func (t *Tx) PartialStateRooms() []*PartialState {
	var out []*PartialState
	t.ScanKV(partialStateNS, "", func(_ string, v []byte) bool {
		var p PartialState
		if json.Unmarshal(v, &p) == nil {
			out = append(out, &p)
		}
		return true
	})
	return out
}

// fullStateNS records, per room, the stream position at which a
// partial-state room got its full state, so /sync can show it then.
const fullStateNS = "partial_state_done"

// CompletePartialState clears a room's partial-state flag and records
// the new stream position it happened at.
func (t *Tx) CompletePartialState(roomID string) uint64 {
	t.ClearPartialState(roomID)
	pos := t.NextPos()
	t.PutKV(fullStateNS, roomID, u64(pos))
	return pos
}

// FullStateAt is the stream position at which a room joined with partial
// state got its full state; 0 when it never had partial state.
func (t *Tx) FullStateAt(roomID string) uint64 {
	raw, err := t.GetKV(fullStateNS, roomID)
	if err != nil || len(raw) != 8 {
		return 0
	}
	return getU64(raw)
}
