package room

// Threading (MSC2836): events name a parent in content["m.relationship"],
// and /event_relationships walks the tree they form from one event, up
// (parents) or down (children), within a window (max_depth, max_breadth)
// and a limit. The walk is shared by the client endpoint and the
// federation one; where events come from (the store, other servers) and
// who may see them is the caller's, through a ThreadSource.

import (
	"cmp"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"edge/edge/store"
)

// Bounds a request cannot exceed (the MSC lets the server override the
// client's values): a walk costs a lookup per event it visits, and on a
// client request possibly a request to another server.
const (
	ThreadDefaultLimit      = 100
	ThreadMaxLimit          = 100
	ThreadDefaultMaxDepth   = 3
	ThreadMaxDepth          = 50
	ThreadDefaultMaxBreadth = 10
	ThreadMaxBreadth        = 100
	// ThreadMaxWindow bounds how far next_batch tokens page into one
	// walk (each page walks again from the anchor).
	ThreadMaxWindow = 1000
	// threadMaxVisits bounds the events one walk looks at, visible or not.
	threadMaxVisits = 4 * ThreadMaxWindow
)

// ErrThreadQuery is a malformed /event_relationships request (the
// message says which field).
var ErrThreadQuery = errors.New("invalid event_relationships request")

// ThreadQuery is the body of POST /event_relationships, client and
// federation alike.
type ThreadQuery struct {
	EventID         string `json:"event_id"`
	RoomID          string `json:"room_id,omitempty"`
	MaxDepth        int    `json:"max_depth"`
	MaxBreadth      int    `json:"max_breadth"`
	Limit           int    `json:"limit"`
	DepthFirst      bool   `json:"depth_first"`
	RecentFirst     bool   `json:"recent_first"`
	IncludeParent   bool   `json:"include_parent"`
	IncludeChildren bool   `json:"include_children"`
	Direction       string `json:"direction"`
	Batch           string `json:"batch,omitempty"`

	offset int // from Batch
}

// NewThreadQuery is a query with the MSC's defaults, to decode a body into.
func NewThreadQuery() *ThreadQuery {
	return &ThreadQuery{
		MaxDepth: ThreadDefaultMaxDepth, MaxBreadth: ThreadDefaultMaxBreadth, Limit: ThreadDefaultLimit,
		RecentFirst: true, Direction: "down",
	}
}

// Normalize validates a decoded query and brings its numbers within the
// server's bounds: negative depth or breadth (the MSC's "unbounded") and
// anything too large take the bound; a limit below 1 takes the default.
func (q *ThreadQuery) Normalize() error {
	if q.EventID == "" {
		return fmt.Errorf("%w: event_id is required", ErrThreadQuery)
	}
	if !strings.HasPrefix(q.EventID, "$") || len(q.EventID) > 255 {
		return fmt.Errorf("%w: event_id is not an event ID", ErrThreadQuery)
	}
	if q.RoomID != "" && (!strings.HasPrefix(q.RoomID, "!") || len(q.RoomID) > 255) {
		return fmt.Errorf("%w: room_id is not a room ID", ErrThreadQuery)
	}
	if q.Direction != "up" && q.Direction != "down" {
		return fmt.Errorf("%w: direction must be up or down", ErrThreadQuery)
	}
	bound := func(v, hi int) int {
		if v < 0 || v > hi {
			return hi
		}
		return v
	}
	q.MaxDepth = bound(q.MaxDepth, ThreadMaxDepth)
	q.MaxBreadth = bound(q.MaxBreadth, ThreadMaxBreadth)
	if q.Limit <= 0 {
		q.Limit = ThreadDefaultLimit
	}
	q.Limit = min(q.Limit, ThreadMaxLimit)
	q.offset = 0
	if q.Batch != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(q.Batch, "o"))
		if err != nil || !strings.HasPrefix(q.Batch, "o") || n < 1 || n >= ThreadMaxWindow {
			return fmt.Errorf("%w: unknown batch token", ErrThreadQuery)
		}
		q.offset = n
	}
	return nil
}

// ThreadParent reads content["m.relationship"] of an event: the parent it
// names and the relation type ("" when there is none).
func ThreadParent(ev *Event) (relType, parentID string) {
	var c struct {
		R struct {
			RelType string `json:"rel_type"`
			EventID string `json:"event_id"`
		} `json:"m.relationship"`
	}
	if json.Unmarshal(ev.Content, &c) != nil || c.R.EventID == ev.ID || !strings.HasPrefix(c.R.EventID, "$") {
		return "", ""
	}
	return c.R.RelType, c.R.EventID
}

// IndexRelations puts ev (stored as nid) in the store's parent → child
// index under the parent its m.relates_to names and, when it differs in
// parent or type, under the one its m.relationship (MSC2836) names. Both
// share the index: readers re-check the child's content for the field
// they follow, so neither sees the other's children.
func IndexRelations(tx *store.Tx, ev *Event, nid uint64) {
	rel := relatesTo(ev.Content)
	if rel.EventID != "" && rel.RelType != "" {
		tx.AddRelation(rel.EventID, rel.RelType, nid)
	}
	if rt, p := ThreadParent(ev); rt != "" && (p != rel.EventID || rt != rel.RelType) {
		tx.AddRelation(p, rt, nid)
	}
}

// ThreadChildren lists the stored events whose m.relationship names
// parentID, in any order, leaving out rejected and soft-failed ones.
func (s *Service) ThreadChildren(tx *store.Tx, parentID string) []*Event {
	var out []*Event
	seen := map[uint64]bool{}
	for _, nid := range tx.Relations(parentID, "") {
		if seen[nid] {
			continue
		}
		seen[nid] = true
		ev, err := s.Event(tx, nid)
		if err != nil || ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
			continue
		}
		if rt, p := ThreadParent(ev); rt != "" && p == parentID {
			out = append(out, ev)
		}
	}
	return out
}

// ThreadChildMeta is an event's unsigned "children" (count per rel_type)
// and "children_hash" (unpadded base64 of SHA-256 over the children's
// sorted event IDs), or nil, "" when it has none.
func ThreadChildMeta(children []*Event) (map[string]int, string) {
	if len(children) == 0 {
		return nil, ""
	}
	counts := map[string]int{}
	ids := make([]string, 0, len(children))
	for _, c := range children {
		rt, _ := ThreadParent(c)
		counts[rt]++
		ids = append(ids, c.ID)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	sum := sha256.Sum256([]byte(strings.Join(ids, "")))
	return counts, base64.RawStdEncoding.EncodeToString(sum[:])
}

// Another server's claim of how many children an event has (its
// unsigned.children in an /event_relationships answer), and whether this
// server has since asked for them: an event with more children claimed
// than held is "unexplored" and worth one request for them.
const threadRemoteNS = "msc2836_remote_children"

type threadRemote struct {
	N        int  `json:"n"`
	Explored bool `json:"x,omitempty"`
}

// RecordThreadChildren notes that another server counts n children of
// eventID; a larger count than known before makes it unexplored again.
func RecordThreadChildren(tx *store.Tx, eventID string, n int) {
	var cur threadRemote
	if v, err := tx.GetKV(threadRemoteNS, eventID); err == nil {
		_ = json.Unmarshal(v, &cur)
	}
	if n <= cur.N {
		return
	}
	b, _ := json.Marshal(threadRemote{N: n})
	tx.PutKV(threadRemoteNS, eventID, b)
}

// ThreadUnexplored tells whether another server counted more children of
// eventID than the held ones and nobody has asked for them since.
func ThreadUnexplored(tx *store.Tx, eventID string, held int) bool {
	v, err := tx.GetKV(threadRemoteNS, eventID)
	if err != nil {
		return false
	}
	var cur threadRemote
	return json.Unmarshal(v, &cur) == nil && !cur.Explored && cur.N > held
}

// MarkThreadExplored records that eventID's children were asked for,
// whatever the answer: the MSC's guard against asking forever for
// children no server holds.
func MarkThreadExplored(tx *store.Tx, eventID string) {
	var cur threadRemote
	if v, err := tx.GetKV(threadRemoteNS, eventID); err == nil {
		_ = json.Unmarshal(v, &cur)
	}
	cur.Explored = true
	b, _ := json.Marshal(cur)
	tx.PutKV(threadRemoteNS, eventID, b)
}

// ThreadSource gives a walk its events.
type ThreadSource struct {
	// Load returns the event if the asker may see it, else nil (unknown,
	// not visible, or in another room).
	Load func(eventID string) *Event
	// Children returns an event's children, in any order, unfiltered:
	// each is passed through Load before it is used.
	Children func(parent *Event) []*Event
}

// ThreadResult is one page of a walk.
type ThreadResult struct {
	Events    []*Event
	Limited   bool
	NextBatch string
}

// WalkThread answers q from anchor (already loaded and visible): the
// anchor, its parent and children when asked, then the walk in
// q.Direction, breadth or depth first, each event at most once, the
// events closest to the anchor first. An event the asker may not see is
// neither returned nor followed.
func WalkThread(q *ThreadQuery, anchor *Event, src ThreadSource) ThreadResult {
	want := min(q.offset+q.Limit, ThreadMaxWindow)
	var out []*Event
	seen := map[string]bool{}
	limited := false
	// add appends ev unless the page is full; once full, one more event
	// found means the answer is limited.
	add := func(ev *Event) bool {
		if seen[ev.ID] {
			return true
		}
		if len(out) >= want {
			limited = true
			return false
		}
		seen[ev.ID] = true
		out = append(out, ev)
		return true
	}
	children := func(ev *Event) []*Event {
		cs := src.Children(ev)
		slices.SortFunc(cs, func(a, b *Event) int {
			c := cmp.Compare(a.OriginServerTS, b.OriginServerTS)
			if q.RecentFirst {
				c = -c
			}
			return cmp.Or(c, strings.Compare(a.ID, b.ID))
		})
		return cs
	}
	visits := 0
	load := func(id string) *Event {
		if visits >= threadMaxVisits {
			return nil
		}
		visits++
		return src.Load(id)
	}

	full := !add(anchor)
	if !full && q.IncludeParent {
		if _, pid := ThreadParent(anchor); pid != "" {
			if p := load(pid); p != nil {
				full = !add(p)
			}
		}
	}
	if !full && q.IncludeChildren {
		for _, c := range children(anchor) {
			if ev := load(c.ID); ev != nil && !add(ev) {
				full = true
				break
			}
		}
	}

	type step struct {
		id    string
		depth int
	}
	expanded := map[string]bool{anchor.ID: true}
	next := func(ev *Event, depth int) []step {
		if depth > q.MaxDepth {
			return nil
		}
		var ids []string
		if q.Direction == "up" {
			if _, pid := ThreadParent(ev); pid != "" {
				ids = append(ids, pid)
			}
		} else {
			for _, c := range children(ev) {
				ids = append(ids, c.ID)
			}
		}
		ids = ids[:min(len(ids), q.MaxBreadth)]
		steps := make([]step, 0, len(ids))
		for _, id := range ids {
			if !expanded[id] {
				steps = append(steps, step{id, depth})
			}
		}
		return steps
	}
	pending := next(anchor, 1)
	for !full && len(pending) > 0 && visits < threadMaxVisits {
		st := pending[0]
		pending = pending[1:]
		if expanded[st.id] {
			continue
		}
		expanded[st.id] = true
		ev := load(st.id)
		if ev == nil {
			continue
		}
		if !add(ev) {
			break
		}
		more := next(ev, st.depth+1)
		if q.DepthFirst {
			pending = append(more, pending...)
		} else {
			pending = append(pending, more...)
		}
	}

	res := ThreadResult{Limited: limited}
	if q.offset < len(out) {
		res.Events = out[q.offset:]
	}
	if limited && want < ThreadMaxWindow {
		res.NextBatch = "o" + strconv.Itoa(want)
	}
	return res
}
