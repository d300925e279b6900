package client

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

// Relations, their aggregations in unsigned.m.relations, and the thread list
// (client-server API "Relationships" and "Threading" modules). The store
// indexes every child under its parent at persist time (tx.AddRelation);
// everything here reads that index and re-checks the child's own
// m.relates_to, so children whose relation was redacted away drop out.

const (
	relationsDefaultLimit = 5
	// relationsMaxDepth bounds recurse=true, as Synapse does (3).
	relationsMaxDepth = 3
	// threadsScanLimit bounds how many timeline events one /threads page
	// walks looking for thread replies.
	threadsScanLimit = 20000
)

func (s *Server) routesRelations() {
	const base = "/_matrix/client/v1/rooms/{roomId}"
	s.authed("GET "+base+"/relations/{eventId}", s.relations)
	s.authed("GET "+base+"/relations/{eventId}/{relType}", s.relations)
	s.authed("GET "+base+"/relations/{eventId}/{relType}/{eventType}", s.relations)
	s.authed("GET "+base+"/threads", s.threads)
	s.authed("POST /_matrix/client/unstable/event_relationships", s.eventRelationships)
}

// eventRelation reads content.m.relates_to of an event.
func eventRelation(ev *room.Event) (relType, parent string) {
	var c struct {
		R struct {
			RelType string `json:"rel_type"`
			EventID string `json:"event_id"`
		} `json:"m.relates_to"`
	}
	_ = json.Unmarshal(ev.Content, &c)
	return c.R.RelType, c.R.EventID
}

// children loads the timeline events relating to parent with relType (""
// for any), oldest first, skipping outliers, rejected events and children
// whose content no longer names the relation (redacted).
func (s *Server) children(tx *store.Tx, parent *room.Event, relType string) []*room.Event {
	var out []*room.Event
	for _, nid := range tx.Relations(parent.ID, relType) {
		ev, err := s.Rooms.Event(tx, nid)
		if err != nil || ev.Pos == 0 || ev.RoomID != parent.RoomID || ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
			continue
		}
		rt, p := eventRelation(ev)
		if p != parent.ID || rt == "" || (relType != "" && rt != relType) {
			continue
		}
		out = append(out, ev)
	}
	slices.SortFunc(out, func(a, b *room.Event) int { return cmp.Compare(a.Pos, b.Pos) })
	return out
}

// visibleEvent loads eventID in roomID if the user may see it: 404 otherwise,
// so that events of rooms the user cannot see do not leak.
func (s *Server) visibleEvent(tx *store.Tx, roomID, eventID, userID string) (*room.Event, *visibility, error) {
	vis := s.newVisibility(tx, roomID, userID)
	notFound := errNotFound("Event not found")
	if vis.current != "join" && vis.left == 0 {
		if _, err := s.viewState(tx, roomID, userID); err != nil {
			return nil, nil, notFound
		}
	}
	ev, err := s.Rooms.EventByID(tx, eventID)
	if err != nil || ev.RoomID != roomID || !vis.canSee(ev) {
		return nil, nil, notFound
	}
	return ev, vis, nil
}

// relations: GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]
//
// Tokens are /messages tokens: backwards from t<P> returns positions ≤ P,
// forwards returns positions > P.
func (s *Server) relations(r *http.Request, sess *Session) (any, error) {
	q := r.URL.Query()
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	relType, eventType := r.PathValue("relType"), r.PathValue("eventType")
	dir := q.Get("dir")
	if dir == "" {
		dir = "b"
	}
	if dir != "b" && dir != "f" {
		return nil, errInvalidParam("dir must be b or f")
	}
	limit, err := pageLimit(q, relationsDefaultLimit, 0)
	if err != nil {
		return nil, err
	}
	var from, to uint64
	hasFrom, hasTo := false, false
	if t := q.Get("from"); t != "" {
		p, ok := parsePos(t)
		if !ok {
			return nil, errInvalidParam("Invalid from token")
		}
		from, hasFrom = p, true
	}
	if t := q.Get("to"); t != "" {
		p, ok := parsePos(t)
		if !ok {
			return nil, errInvalidParam("Invalid to token")
		}
		to, hasTo = p, true
	}
	recurse := false
	switch q.Get("recurse") {
	case "", "false":
	case "true":
		recurse = true
	default:
		return nil, errInvalidParam("recurse must be true or false")
	}
	resp := map[string]any{}
	err = s.Store.View(func(tx *store.Tx) error {
		parent, vis, err := s.visibleEvent(tx, roomID, eventID, sess.UserID)
		if err != nil {
			return err
		}
		// Direct children only carry relType's filter; with recurse, deeper
		// levels follow every relation and the filter applies to the result.
		var all []*room.Event
		seen := map[string]bool{parent.ID: true}
		level := []*room.Event{parent}
		depth := 1
		if recurse {
			depth = relationsMaxDepth
		}
		for d := 0; d < depth && len(level) > 0; d++ {
			var next []*room.Event
			for _, p := range level {
				rt := relType
				if recurse {
					rt = ""
				}
				for _, c := range s.children(tx, p, rt) {
					if seen[c.ID] {
						continue
					}
					seen[c.ID] = true
					next = append(next, c)
					all = append(all, c)
				}
			}
			level = next
		}
		var matched []*room.Event
		for _, ev := range all {
			rt, _ := eventRelation(ev)
			if relType != "" && rt != relType {
				continue
			}
			if eventType != "" && ev.Type != eventType {
				continue
			}
			if !vis.canSee(ev) {
				continue
			}
			matched = append(matched, ev)
		}
		slices.SortFunc(matched, func(a, b *room.Event) int { return cmp.Compare(a.Pos, b.Pos) })
		backwards := dir == "b"
		if backwards {
			slices.Reverse(matched)
		}
		var chunk []*room.Event
		more := false
		for _, ev := range matched {
			if backwards {
				if hasFrom && ev.Pos > from {
					continue
				}
				if hasTo && ev.Pos <= to {
					break
				}
			} else {
				if hasFrom && ev.Pos <= from {
					continue
				}
				if hasTo && ev.Pos > to {
					break
				}
			}
			if len(chunk) == limit {
				more = true
				break
			}
			chunk = append(chunk, ev)
		}
		resp["chunk"] = s.renderAll(tx, chunk, sess)
		if more && len(chunk) > 0 {
			last := chunk[len(chunk)-1].Pos
			if backwards {
				resp["next_batch"] = pageToken(last - 1)
			} else {
				resp["next_batch"] = pageToken(last)
			}
		}
		if hasFrom {
			resp["prev_batch"] = q.Get("from")
		}
		if q.Has("recurse") {
			resp["recursion_depth"] = depth // spec: present whenever the client sent recurse
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// aggregations is render's hook: the server-side aggregations of an event's
// children the viewer may see (unsigned.m.relations), or nil. Per the spec
// (v1.7+) an m.replace edit is bundled whole and the original's content is
// left as it is; m.annotation is not aggregated (clients read /relations).
func (s *Server) aggregations(tx *store.Tx, ev *room.Event, viewer *Session) map[string]any {
	// Per type, so that reactions (often the most numerous) are never loaded.
	var kids []*room.Event
	for _, rt := range []string{"m.thread", "m.replace", "m.reference"} {
		kids = append(kids, s.children(tx, ev, rt)...)
	}
	if len(kids) == 0 {
		return nil
	}
	var vis *visibility
	if viewer != nil {
		vis = s.newVisibility(tx, ev.RoomID, viewer.UserID)
	}
	out := map[string]any{}
	var thread []*room.Event
	var edits []*room.Event
	var refs []map[string]string
	participated := viewer != nil && ev.Sender == viewer.UserID
	for _, c := range kids {
		if vis != nil && !vis.canSee(c) {
			continue
		}
		rt, _ := eventRelation(c)
		switch rt {
		case "m.thread":
			thread = append(thread, c)
			if viewer != nil && c.Sender == viewer.UserID {
				participated = true
			}
		case "m.replace":
			edits = append(edits, c)
		case "m.reference":
			refs = append(refs, map[string]string{"event_id": c.ID})
		}
	}
	if len(thread) > 0 {
		out["m.thread"] = map[string]any{
			"latest_event":              s.renderBundled(tx, thread[len(thread)-1], viewer),
			"count":                     len(thread),
			"current_user_participated": participated,
		}
	}
	if edit := latestEdit(ev, edits); edit != nil {
		out["m.replace"] = s.renderBundled(tx, edit, viewer)
	}
	if len(refs) > 0 {
		out["m.reference"] = map[string]any{"chunk": refs}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// latestEdit picks the most recent valid edit among an event's m.replace
// children: greatest origin_server_ts, then greatest event ID. A redacted
// original bundles none, whatever became of its edits.
func latestEdit(orig *room.Event, edits []*room.Event) *room.Event {
	if orig.Flags&store.FlagRedacted != 0 {
		return nil
	}
	var best *room.Event
	for _, c := range edits {
		if isValidEdit(orig, c) && (best == nil || c.OriginServerTS > best.OriginServerTS ||
			(c.OriginServerTS == best.OriginServerTS && c.ID > best.ID)) {
			best = c
		}
	}
	return best
}

// isValidEdit applies the spec's rules for m.replace: same sender and type,
// no state key, m.new_content present, and the original not itself an edit.
func isValidEdit(orig, edit *room.Event) bool {
	if edit.Sender != orig.Sender || edit.Type != orig.Type || edit.IsState() || orig.IsState() {
		return false
	}
	if rt, _ := eventRelation(orig); rt == "m.replace" {
		return false
	}
	var c struct {
		New json.RawMessage `json:"m.new_content"`
	}
	return json.Unmarshal(edit.Content, &c) == nil && len(c.New) > 0 && c.New[0] == '{'
}

// renderBundled renders an event placed inside another's aggregations. It
// carries age and redaction but no aggregations of its own, which bounds
// the recursion and keeps /sync small; an edit of a thread's latest event
// is bundled as the spec recommends.
func (s *Server) renderBundled(tx *store.Tx, ev *room.Event, viewer *Session) *room.ClientEvent {
	ce := ev.Client()
	u := map[string]any{}
	if ev.OriginServerTS > 0 {
		if age := time.Now().UnixMilli() - ev.OriginServerTS; age > 0 {
			u["age"] = age
		}
	}
	if red := s.Rooms.RedactedBy(tx, ev); red != nil {
		u["redacted_because"] = red.Client()
	}
	if edit := latestEdit(ev, s.children(tx, ev, "m.replace")); edit != nil {
		u["m.relations"] = map[string]any{"m.replace": edit.Client()}
	}
	if len(u) > 0 {
		ce.Unsigned = u
	}
	return ce
}

// threads: GET /_matrix/client/v1/rooms/{roomId}/threads
//
// Thread roots come newest-activity first. The timeline is walked backwards
// and a root is listed at its latest visible reply, so each root appears
// exactly once across pages; next_batch is a /messages token just before
// the last reply looked at.
func (s *Server) threads(r *http.Request, sess *Session) (any, error) {
	q := r.URL.Query()
	roomID := r.PathValue("roomId")
	include := q.Get("include")
	if include == "" {
		include = "all"
	}
	if include != "all" && include != "participated" {
		return nil, errInvalidParam("include must be all or participated")
	}
	limit, err := pageLimit(q, 10, 1)
	if err != nil {
		return nil, err
	}
	resp := map[string]any{}
	err = s.Store.View(func(tx *store.Tx) error {
		rm, err := tx.Room(roomID)
		if err != nil {
			return errForbidden("You are not in room %s", roomID)
		}
		vis := s.newVisibility(tx, roomID, sess.UserID)
		if vis.current != "join" && vis.left == 0 {
			if _, err := s.viewState(tx, roomID, sess.UserID); err != nil {
				return err
			}
		}
		from := tx.Pos()
		if t := q.Get("from"); t != "" {
			p, ok := parsePos(t)
			if !ok {
				return errInvalidParam("Invalid from token")
			}
			from = p
		}
		if vis.current != "join" && vis.left != 0 {
			from = min(from, vis.left)
		}
		var roots []*room.Event
		scanned := 0
		var lastPos uint64
		more := false
		tx.Timeline(rm.NID, from, true, func(pos, nid uint64) bool {
			if len(roots) == limit || scanned == threadsScanLimit {
				more = true
				return false
			}
			scanned++
			lastPos = pos
			ev, err := s.Rooms.Event(tx, nid)
			if err != nil {
				return true
			}
			rt, rootID := eventRelation(ev)
			if rt != "m.thread" || !vis.canSee(ev) {
				return true
			}
			root, err := s.Rooms.EventByID(tx, rootID)
			if err != nil || root.RoomID != roomID || !vis.canSee(root) {
				return true
			}
			// Listed only at the root's latest visible reply.
			var latest *room.Event
			participated := root.Sender == sess.UserID
			for _, c := range s.children(tx, root, "m.thread") {
				if !vis.canSee(c) {
					continue
				}
				latest = c
				if c.Sender == sess.UserID {
					participated = true
				}
			}
			if latest == nil || latest.ID != ev.ID {
				return true
			}
			if include == "participated" && !participated {
				return true
			}
			roots = append(roots, root)
			return true
		})
		resp["chunk"] = s.renderAll(tx, roots, sess)
		if more && lastPos > 1 {
			resp["next_batch"] = pageToken(lastPos - 1)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
