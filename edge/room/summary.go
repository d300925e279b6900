package room

import (
	"cmp"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"edge/edge/store"
)

// Summary is what the space hierarchy (client and federation) and the
// room summary API tell about a room from its current state.
type Summary struct {
	RoomID            string
	Version           string
	Name              string
	Topic             string
	CanonicalAlias    string
	AvatarURL         string
	JoinRule          string
	HistoryVisibility string
	GuestCanJoin      bool
	RoomType          string
	Encryption        string
	NumJoinedMembers  int
	// Servers counts the joined members of each server.
	Servers map[string]int
	// AllowedRoomIDs are the rooms of a restricted join rule's
	// m.room_membership conditions.
	AllowedRoomIDs []string
	// Children are the valid m.space.child links (a non-empty via), in the
	// spec's order; only filled for spaces (room_type m.space).
	Children []SpaceChild
}

// SpaceChild is one m.space.child link of a space.
type SpaceChild struct {
	Event     *Event // nil for a link read from another server's answer
	RoomID    string
	Via       []string
	Suggested bool
	Order     string
	TS        int64
}

// WorldReadable reports history visibility world_readable.
func (s *Summary) WorldReadable() bool { return s.HistoryVisibility == "world_readable" }

// OpenToAll reports a join rule anyone may try (public, or a knock).
func (s *Summary) OpenToAll() bool {
	switch s.JoinRule {
	case "public", "knock", "knock_restricted":
		return true
	}
	return false
}

// Restricted reports a join rule that admits members of other rooms.
func (s *Summary) Restricted() bool {
	return s.JoinRule == "restricted" || s.JoinRule == "knock_restricted"
}

// Summarize reads a room's summary; ErrRoomNotFound if this server does
// not hold the room.
func (s *Service) Summarize(tx *store.Tx, roomID string) (*Summary, *State, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, ErrRoomNotFound
	} else if err != nil {
		return nil, nil, err
	}
	st, err := s.State(tx, r.State)
	if err != nil {
		return nil, nil, err
	}
	sum := &Summary{RoomID: roomID, Version: r.Version}
	field := func(evType, key string) string { return s.StateContentField(tx, st, evType, key) }
	sum.Name = field("m.room.name", "name")
	sum.Topic = field("m.room.topic", "topic")
	sum.CanonicalAlias = field("m.room.canonical_alias", "alias")
	sum.AvatarURL = field("m.room.avatar", "url")
	sum.JoinRule = field("m.room.join_rules", "join_rule")
	sum.HistoryVisibility = field("m.room.history_visibility", "history_visibility")
	sum.GuestCanJoin = field("m.room.guest_access", "guest_access") == "can_join"
	sum.RoomType = field("m.room.create", "type")
	sum.Encryption = field("m.room.encryption", "algorithm")
	counts, err := s.JoinedServers(tx, r.State)
	if err != nil {
		return nil, nil, err
	}
	sum.Servers = counts
	for _, n := range counts {
		sum.NumJoinedMembers += n
	}
	if sum.Restricted() {
		if ev, err := s.StateEvent(tx, st, "m.room.join_rules", ""); err == nil && ev != nil {
			var c struct {
				Allow []struct {
					Type   string `json:"type"`
					RoomID string `json:"room_id"`
				} `json:"allow"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			for _, a := range c.Allow {
				if a.Type == "m.room_membership" && strings.HasPrefix(a.RoomID, "!") && !slices.Contains(sum.AllowedRoomIDs, a.RoomID) {
					sum.AllowedRoomIDs = append(sum.AllowedRoomIDs, a.RoomID)
				}
			}
		}
	}
	if sum.RoomType == "m.space" {
		if sum.Children, err = s.spaceChildren(tx, st); err != nil {
			return nil, nil, err
		}
	}
	return sum, st, nil
}

// spaceChildren lists st's valid m.space.child links ordered as the spec
// says: by order (links without one last), then origin_server_ts, then
// room ID.
func (s *Service) spaceChildren(tx *store.Tx, st *State) ([]SpaceChild, error) {
	evs, err := s.StateEvents(tx, st)
	if err != nil {
		return nil, err
	}
	var out []SpaceChild
	for _, ev := range evs {
		if ev.Type != "m.space.child" || ev.StateKey == nil {
			continue
		}
		if ch, ok := spaceChild(*ev.StateKey, ev.Content, ev.OriginServerTS); ok {
			ch.Event = ev
			out = append(out, ch)
		}
	}
	sortChildren(out)
	return out, nil
}

// spaceChild reads one m.space.child link; false for an invalid or
// removed one (no via).
func spaceChild(stateKey string, content json.RawMessage, ts int64) (SpaceChild, bool) {
	if !strings.HasPrefix(stateKey, "!") {
		return SpaceChild{}, false
	}
	var c struct {
		Via       []string `json:"via"`
		Suggested bool     `json:"suggested"`
		Order     any      `json:"order"`
	}
	if json.Unmarshal(content, &c) != nil || len(c.Via) == 0 {
		return SpaceChild{}, false
	}
	ch := SpaceChild{RoomID: stateKey, Via: c.Via, Suggested: c.Suggested, TS: ts}
	// order must be a string of at most 50 printable ASCII characters.
	if o, ok := c.Order.(string); ok && len(o) <= 50 && printableASCII(o) {
		ch.Order = o
	}
	return ch, true
}

func sortChildren(out []SpaceChild) {
	slices.SortFunc(out, func(a, b SpaceChild) int {
		if (a.Order == "") != (b.Order == "") {
			if a.Order == "" {
				return 1
			}
			return -1
		}
		return cmp.Or(strings.Compare(a.Order, b.Order),
			cmp.Compare(a.TS, b.TS),
			strings.Compare(a.RoomID, b.RoomID))
	})
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// StrippedChild is one entry of a hierarchy room's children_state: the
// m.space.child event stripped to what clients and servers need.
type StrippedChild struct {
	Type           string          `json:"type"`
	StateKey       string          `json:"state_key"`
	Content        json.RawMessage `json:"content"`
	Sender         string          `json:"sender"`
	OriginServerTS int64           `json:"origin_server_ts"`
}

// HierarchyRoom is one room of a client or federation /hierarchy answer.
type HierarchyRoom struct {
	RoomID           string          `json:"room_id"`
	Name             string          `json:"name,omitempty"`
	Topic            string          `json:"topic,omitempty"`
	CanonicalAlias   string          `json:"canonical_alias,omitempty"`
	AvatarURL        string          `json:"avatar_url,omitempty"`
	NumJoinedMembers int             `json:"num_joined_members"`
	WorldReadable    bool            `json:"world_readable"`
	GuestCanJoin     bool            `json:"guest_can_join"`
	JoinRule         string          `json:"join_rule,omitempty"`
	RoomType         string          `json:"room_type,omitempty"`
	RoomVersion      string          `json:"room_version,omitempty"`
	Encryption       string          `json:"encryption,omitempty"`
	AllowedRoomIDs   []string        `json:"allowed_room_ids,omitempty"`
	ChildrenState    []StrippedChild `json:"children_state"`
}

// HierarchyAnswer is the federation /hierarchy answer.
type HierarchyAnswer struct {
	Room                 *HierarchyRoom   `json:"room"`
	Children             []*HierarchyRoom `json:"children"`
	InaccessibleChildren []string         `json:"inaccessible_children"`
}

// Hierarchy renders the summary as a hierarchy room; suggestedOnly keeps
// only the links marked suggested.
func (s *Summary) Hierarchy(suggestedOnly bool) *HierarchyRoom {
	h := &HierarchyRoom{RoomID: s.RoomID, Name: s.Name, Topic: s.Topic, CanonicalAlias: s.CanonicalAlias,
		AvatarURL: s.AvatarURL, NumJoinedMembers: s.NumJoinedMembers, WorldReadable: s.WorldReadable(),
		GuestCanJoin: s.GuestCanJoin, JoinRule: s.JoinRule, RoomType: s.RoomType, RoomVersion: s.Version,
		Encryption: s.Encryption, AllowedRoomIDs: s.AllowedRoomIDs, ChildrenState: []StrippedChild{}}
	if h.JoinRule == "" {
		h.JoinRule = "invite" // no join rules event: the auth rules' default
	}
	for _, ch := range s.Children {
		if suggestedOnly && !ch.Suggested {
			continue
		}
		h.ChildrenState = append(h.ChildrenState, StrippedChild{Type: "m.space.child", StateKey: ch.RoomID,
			Content: ch.Event.Content, Sender: ch.Event.Sender, OriginServerTS: ch.Event.OriginServerTS})
	}
	return h
}

// Links reads the valid m.space.child links of a hierarchy room (another
// server's answer), ordered as the spec says; suggestedOnly keeps only the
// suggested ones.
func (h *HierarchyRoom) Links(suggestedOnly bool) []SpaceChild {
	var out []SpaceChild
	for _, c := range h.ChildrenState {
		if c.Type != "m.space.child" {
			continue
		}
		if ch, ok := spaceChild(c.StateKey, c.Content, c.OriginServerTS); ok && (!suggestedOnly || ch.Suggested) {
			out = append(out, ch)
		}
	}
	sortChildren(out)
	return out
}

// StateContentField reads one string field of the content of state event
// (evType, ""); "" when the event or the field is missing.
func (s *Service) StateContentField(tx *store.Tx, st *State, evType, field string) string {
	ev, err := s.StateEvent(tx, st, evType, "")
	if err != nil || ev == nil {
		return ""
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(ev.Content, &c) != nil {
		return ""
	}
	var v string
	_ = json.Unmarshal(c[field], &v)
	return v
}
