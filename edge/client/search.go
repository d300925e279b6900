package client

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"edge/edge/room"
	"edge/edge/store"
)

// Server-side search (POST /search, room_events only) over an inverted
// index in the store's KV space:
//
//	search_word: word NUL roomID NUL eventNID(16 hex) → field mask
//	search_pos:  roomID → stream position indexed up to (8 bytes)
//
// The index is brought up to date room by room just before a search, from
// each room's watermark to its newest event, so every way an event is
// stored (local sends, federation, backfill into the timeline) is covered
// without a hook in the persist path. Entries are never rewritten: a hit
// is checked against the event's current content, which drops redacted
// events.
const (
	searchWordNS = "search_word"
	searchPosNS  = "search_pos"

	searchDefaultLimit = 10
	searchMaxLimit     = 100
	searchMaxContext   = 100
	// searchPrefixMin: terms this long also match words they begin, as
	// Synapse's Postgres search does; shorter ones match whole words only.
	searchPrefixMin = 3
)

// searchFields are the searchable keys and their bit in the field mask.
var searchFields = map[string]byte{"content.body": 1, "content.name": 2, "content.topic": 4}

func (s *Server) routesSearch() {
	s.authed("POST /search", s.search)
}

type roomEventsCriteria struct {
	SearchTerm   *string  `json:"search_term"`
	Keys         []string `json:"keys"`
	OrderBy      string   `json:"order_by"`
	IncludeState bool     `json:"include_state"`
	Filter       *struct {
		Limit      *int     `json:"limit"`
		Rooms      []string `json:"rooms"`
		NotRooms   []string `json:"not_rooms"`
		Senders    []string `json:"senders"`
		NotSenders []string `json:"not_senders"`
		Types      []string `json:"types"`
		NotTypes   []string `json:"not_types"`
	} `json:"filter"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	Groupings *struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

type searchHit struct {
	ev   *room.Event
	rank float64
}

// search: POST /search
func (s *Server) search(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Categories *struct {
			RoomEvents *roomEventsCriteria `json:"room_events"`
		} `json:"search_categories"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Categories == nil {
		return nil, errBadJSON("Missing search_categories")
	}
	if req.Categories.RoomEvents == nil {
		return map[string]any{"search_categories": map[string]any{}}, nil
	}
	c := req.Categories.RoomEvents
	if c.SearchTerm == nil {
		return nil, errBadJSON("Missing search_term")
	}
	var offset int
	if nb := r.URL.Query().Get("next_batch"); nb != "" {
		v, err := strconv.Atoi(strings.TrimPrefix(nb, "o"))
		if !strings.HasPrefix(nb, "o") || err != nil || v < 0 {
			return nil, errInvalidParam("Invalid next_batch")
		}
		offset = v
	}
	switch c.OrderBy {
	case "":
		c.OrderBy = "rank"
	case "rank", "recent":
	default:
		return nil, errInvalidParam("order_by must be rank or recent")
	}
	var mask byte
	if len(c.Keys) == 0 {
		mask = 7
	}
	for _, k := range c.Keys {
		b, ok := searchFields[k]
		if !ok {
			return nil, errInvalidParam("Unknown search key %q", k)
		}
		mask |= b
	}
	limit := searchDefaultLimit
	if c.Filter != nil && c.Filter.Limit != nil {
		if *c.Filter.Limit < 0 {
			return nil, errInvalidParam("filter.limit must not be negative")
		}
		limit = min(*c.Filter.Limit, searchMaxLimit)
	}
	before, after := 5, 5
	if ec := c.EventContext; ec != nil {
		if ec.BeforeLimit != nil {
			before = *ec.BeforeLimit
		}
		if ec.AfterLimit != nil {
			after = *ec.AfterLimit
		}
		if before < 0 || after < 0 {
			return nil, errInvalidParam("Context limits must not be negative")
		}
		before, after = min(before, searchMaxContext), min(after, searchMaxContext)
	}
	groupByRoom := false
	if c.Groupings != nil {
		for _, g := range c.Groupings.GroupBy {
			switch g.Key {
			case "room_id":
				groupByRoom = true
			case "sender":
			default:
				return nil, errInvalidParam("Unknown grouping key %q", g.Key)
			}
		}
	}
	terms := words(*c.SearchTerm)

	// The rooms searched: those the user is or was in (history up to a
	// leave stays theirs, per visibility), narrowed by the filter.
	var rooms, stale []string
	err := s.Store.View(func(tx *store.Tx) error {
		ms, err := tx.Memberships(sess.UserID)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Forgotten || (m.Membership != "join" && m.Membership != "leave" && m.Membership != "ban") {
				continue
			}
			if c.Filter != nil && ((c.Filter.Rooms != nil && !slices.Contains(c.Filter.Rooms, m.RoomID)) || slices.Contains(c.Filter.NotRooms, m.RoomID)) {
				continue
			}
			rooms = append(rooms, m.RoomID)
			if s.indexBehind(tx, m.RoomID) {
				stale = append(stale, m.RoomID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(stale) > 0 {
		if err := s.Store.Write(func(tx *store.Tx) error {
			for _, roomID := range stale {
				s.indexRoom(tx, roomID)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}

	out := map[string]any{}
	err = s.Store.View(func(tx *store.Tx) error {
		hits := s.searchHits(tx, sess, rooms, terms, mask, c)
		if c.OrderBy == "recent" {
			slices.SortFunc(hits, func(a, b searchHit) int { return cmp.Compare(b.ev.Pos, a.ev.Pos) })
		} else {
			slices.SortFunc(hits, func(a, b searchHit) int {
				if a.rank != b.rank {
					return cmp.Compare(b.rank, a.rank)
				}
				return cmp.Compare(b.ev.Pos, a.ev.Pos)
			})
		}
		page := hits[min(offset, len(hits)):]
		more := len(page) > limit
		page = page[:min(limit, len(page))]
		results := make([]map[string]any, 0, len(page))
		groups := map[string]map[string]any{}
		for _, h := range page {
			res := map[string]any{"rank": h.rank, "result": s.render(tx, h.ev, sess)}
			if c.EventContext != nil {
				res["context"] = s.searchContext(tx, sess, h.ev, before, after, c.EventContext.IncludeProfile)
			}
			results = append(results, res)
			if groupByRoom {
				g := groups[h.ev.RoomID]
				if g == nil {
					g = map[string]any{"results": []string{}, "order": len(groups)}
					groups[h.ev.RoomID] = g
				}
				g["results"] = append(g["results"].([]string), h.ev.ID)
			}
		}
		re := map[string]any{"count": len(hits), "results": results, "highlights": highlights(terms, page, mask)}
		if more || (limit > 0 && len(page) == limit) {
			// A full page gets a token even when nothing follows, as in
			// Synapse: clients stop at the first empty page (Complement's
			// TestSearch counts on it).
			re["next_batch"] = "o" + strconv.Itoa(offset+limit)
		}
		if groupByRoom {
			re["groups"] = map[string]any{"room_id": groups}
		}
		if c.IncludeState {
			state := map[string]any{}
			for _, h := range page {
				if _, done := state[h.ev.RoomID]; done {
					continue
				}
				if st, err := s.viewState(tx, h.ev.RoomID, sess.UserID); err == nil {
					if evs, err := s.stateEvents(tx, st); err == nil {
						state[h.ev.RoomID] = s.renderAll(tx, evs, sess)
					}
				}
			}
			re["state"] = state
		}
		out["search_categories"] = map[string]any{"room_events": re}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// searchHits finds the events matching every term in the searched rooms
// that the user may see, with their rank (how often the terms occur).
func (s *Server) searchHits(tx *store.Tx, sess *Session, rooms []string, terms []string, mask byte, c *roomEventsCriteria) []searchHit {
	if len(terms) == 0 || len(rooms) == 0 {
		return nil
	}
	inRooms := map[string]bool{}
	for _, r := range rooms {
		inRooms[r] = true
	}
	var candidates map[uint64]bool
	for _, t := range terms {
		found := map[uint64]bool{}
		p := t + "\x00"
		if len(t) >= searchPrefixMin {
			p = t
		}
		tx.ScanKV(searchWordNS, p, func(key string, v []byte) bool {
			parts := strings.Split(key, "\x00")
			if len(parts) != 3 || !inRooms[parts[1]] || len(v) == 0 || v[0]&mask == 0 {
				return true
			}
			if nid, err := strconv.ParseUint(parts[2], 16, 64); err == nil && (candidates == nil || candidates[nid]) {
				found[nid] = true
			}
			return true
		})
		candidates = found
		if len(candidates) == 0 {
			return nil
		}
	}
	vis := map[string]*visibility{}
	var hits []searchHit
	for nid := range candidates {
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil || ev.Flags&store.FlagRedacted != 0 {
			continue
		}
		if f := c.Filter; f != nil {
			if (f.Types != nil && !slices.Contains(f.Types, ev.Type)) || slices.Contains(f.NotTypes, ev.Type) ||
				(f.Senders != nil && !slices.Contains(f.Senders, ev.Sender)) || slices.Contains(f.NotSenders, ev.Sender) {
				continue
			}
		}
		rank := matchRank(ev, terms, mask)
		if rank == 0 {
			continue // the content no longer says it (an edit of history, a redaction)
		}
		v := vis[ev.RoomID]
		if v == nil {
			v = s.newVisibility(tx, ev.RoomID, sess.UserID)
			vis[ev.RoomID] = v
		}
		if !v.canSee(ev) {
			continue
		}
		hits = append(hits, searchHit{ev: ev, rank: rank})
	}
	return hits
}

// searchableText returns the event's searchable fields by mask bit.
func searchableText(content json.RawMessage) map[byte]string {
	var c struct {
		Body  any `json:"body"`
		Name  any `json:"name"`
		Topic any `json:"topic"`
	}
	if json.Unmarshal(content, &c) != nil {
		return nil
	}
	out := map[byte]string{}
	for bit, v := range map[byte]any{1: c.Body, 2: c.Name, 4: c.Topic} {
		if s, ok := v.(string); ok && s != "" {
			out[bit] = s
		}
	}
	return out
}

// matchRank counts the occurrences of the terms in the event's searched
// fields; 0 unless every term occurs.
func matchRank(ev *room.Event, terms []string, mask byte) float64 {
	var ws []string
	for bit, text := range searchableText(ev.Content) {
		if bit&mask != 0 {
			ws = append(ws, words(text)...)
		}
	}
	total := 0
	for _, t := range terms {
		n := 0
		for _, w := range ws {
			if w == t || (len(t) >= searchPrefixMin && strings.HasPrefix(w, t)) {
				n++
			}
		}
		if n == 0 {
			return 0
		}
		total += n
	}
	return float64(total)
}

// highlights lists the words of the results that matched, for clients to
// emphasise.
func highlights(terms []string, page []searchHit, mask byte) []string {
	set := map[string]bool{}
	for _, t := range terms {
		set[t] = true
	}
	for _, h := range page {
		for bit, text := range searchableText(h.ev.Content) {
			if bit&mask == 0 {
				continue
			}
			for _, w := range words(text) {
				for _, t := range terms {
					if len(t) >= searchPrefixMin && strings.HasPrefix(w, t) {
						set[w] = true
					}
				}
			}
		}
	}
	out := make([]string, 0, len(set))
	for w := range set {
		out = append(out, w)
	}
	slices.Sort(out)
	return out
}

// indexWatermark is the stream position the room is indexed up to.
func indexWatermark(tx *store.Tx, roomID string) uint64 {
	if v, err := tx.GetKV(searchPosNS, roomID); err == nil && len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// indexBehind tells whether the room has events the index lacks.
func (s *Server) indexBehind(tx *store.Tx, roomID string) bool {
	rm, err := tx.Room(roomID)
	return err == nil && rm.LastPos > indexWatermark(tx, roomID)
}

// indexRoom adds the room's events after its watermark to the index.
func (s *Server) indexRoom(tx *store.Tx, roomID string) {
	rm, err := tx.Room(roomID)
	if err != nil {
		return
	}
	mark := indexWatermark(tx, roomID)
	if rm.LastPos <= mark {
		return
	}
	tx.Timeline(rm.NID, mark+1, false, func(pos, nid uint64) bool {
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil || ev.Flags&(store.FlagRejected|store.FlagRedacted) != 0 {
			return true
		}
		masks := map[string]byte{}
		for bit, text := range searchableText(ev.Content) {
			for _, w := range words(text) {
				masks[w] |= bit
			}
		}
		for w, m := range masks {
			if len(w) > 200 {
				continue // not a word anyone searches for; keeps keys bounded
			}
			tx.PutKV(searchWordNS, fmt.Sprintf("%s\x00%s\x00%016x", w, roomID, nid), []byte{m})
		}
		return true
	})
	v := make([]byte, 8)
	binary.BigEndian.PutUint64(v, rm.LastPos)
	tx.PutKV(searchPosNS, roomID, v)
}

// searchContext is a result's surrounding events the user may see.
func (s *Server) searchContext(tx *store.Tx, sess *Session, ev *room.Event, before, after int, profile bool) map[string]any {
	rm, err := tx.Room(ev.RoomID)
	if err != nil {
		return map[string]any{}
	}
	vis := s.newVisibility(tx, ev.RoomID, sess.UserID)
	collect := func(from uint64, backwards bool, n int) []*room.Event {
		var out []*room.Event
		if n == 0 {
			return out
		}
		tx.Timeline(rm.NID, from, backwards, func(pos, nid uint64) bool {
			if pos == ev.Pos {
				return true
			}
			e, err := s.Rooms.Event(tx, nid)
			if err == nil && vis.canSee(e) {
				out = append(out, e)
			}
			return len(out) < n
		})
		return out
	}
	bef := collect(ev.Pos, true, before)
	aft := collect(ev.Pos, false, after)
	start, end := ev.Pos-1, ev.Pos
	if len(bef) > 0 {
		start = bef[len(bef)-1].Pos - 1
	}
	if len(aft) > 0 {
		end = aft[len(aft)-1].Pos
	}
	ctx := map[string]any{
		"events_before": s.renderAll(tx, bef, sess),
		"events_after":  s.renderAll(tx, aft, sess),
		"start":         pageToken(start),
		"end":           pageToken(end),
	}
	if profile {
		info := map[string]any{}
		if st, err := s.Rooms.StateAfter(tx, ev); err == nil {
			for _, e := range append(append([]*room.Event{ev}, bef...), aft...) {
				if _, done := info[e.Sender]; done {
					continue
				}
				p := map[string]string{}
				if m, err := s.Rooms.StateEvent(tx, st, "m.room.member", e.Sender); err == nil && m != nil {
					var c struct {
						DisplayName string `json:"displayname"`
						AvatarURL   string `json:"avatar_url"`
					}
					_ = json.Unmarshal(m.Content, &c)
					if c.DisplayName != "" {
						p["displayname"] = c.DisplayName
					}
					if c.AvatarURL != "" {
						p["avatar_url"] = c.AvatarURL
					}
				}
				info[e.Sender] = p
			}
		}
		ctx["profile_info"] = info
	}
	return ctx
}
