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
