package client

// Threading (MSC2836): POST /_matrix/client/unstable/event_relationships
// walks the tree that content["m.relationship"] builds from one event (see
// room.WalkThread). Events this server lacks (a parent it never received,
// children another server counts but this one does not hold) are asked
// of the room's other servers through RemoteEventRelationships, which
// stores what they answer; the walk then reads the store again.

import (
	"context"
	"net/http"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

const (
	// threadRemoteAsks bounds the requests to other servers one client
	// request may cause (each asks up to a few servers in turn).
	threadRemoteAsks = 5
	// threadRemoteTimeout bounds the time one client request spends on them.
	threadRemoteTimeout = 20 * time.Second
)

// threadWalk is one client request's view of a thread: events of one
// room, as one user may see them.
type threadWalk struct {
	s      *Server
	ctx    context.Context
	sess   *Session
	q      *room.ThreadQuery
	roomID string
	// remote: the user is joined, so other servers may be asked; asks
	// counts down the requests left.
	remote bool
	asks   int
}

// eventRelationships: POST /_matrix/client/unstable/event_relationships
func (s *Server) eventRelationships(r *http.Request, sess *Session) (any, error) {
	q := room.NewThreadQuery()
	if err := decode(r, q); err != nil {
		return nil, err
	}
	if err := q.Normalize(); err != nil {
		if q.EventID == "" {
			return nil, errMissingParam("%s", err)
		}
		return nil, errInvalidParam("%s", err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), threadRemoteTimeout)
	defer cancel()
	w := &threadWalk{s: s, ctx: ctx, sess: sess, q: q, roomID: q.RoomID, asks: threadRemoteAsks}
	forbidden := errForbidden("Event does not exist or you are not allowed to see it")
	var known *room.Event
	_ = s.Store.View(func(tx *store.Tx) error {
		known, _ = s.Rooms.EventByID(tx, q.EventID)
		return nil
	})
	switch {
	case known != nil && w.roomID != "" && known.RoomID != w.roomID:
		return nil, forbidden
	case known != nil:
		w.roomID = known.RoomID
	case w.roomID == "":
		return nil, forbidden // nobody to ask: the room is unknown
	}
	_ = s.Store.View(func(tx *store.Tx) error {
		_, _, err := s.requireJoined(tx, w.roomID, sess.UserID)
		w.remote = err == nil && s.RemoteEventRelationships != nil
		return nil
	})
	anchor := w.load(q.EventID)
	if anchor == nil {
		return nil, forbidden
	}
	res := room.WalkThread(q, anchor, room.ThreadSource{Load: w.load, Children: w.children})
	events := make([]*room.ClientEvent, 0, len(res.Events))
	err := s.Store.View(func(tx *store.Tx) error {
		for _, ev := range res.Events {
			ce := s.render(tx, ev, sess)
			if counts, hash := room.ThreadChildMeta(s.Rooms.ThreadChildren(tx, ev.ID)); counts != nil {
				if ce.Unsigned == nil {
					ce.Unsigned = map[string]any{}
				}
				ce.Unsigned["children"] = counts
				ce.Unsigned["children_hash"] = hash
			}
			events = append(events, ce)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := map[string]any{"events": events, "limited": res.Limited}
	if res.NextBatch != "" {
		out["next_batch"] = res.NextBatch
	}
	return out, nil
}

// load returns eventID if it is in the walk's room and the user may see
// it. An unknown event is first asked of other servers, and so are the
// children of a known one that another server counted more of than this
// one holds (the MSC's "unexplored" event).
func (w *threadWalk) load(eventID string) *room.Event {
	ev, unexplored := w.local(eventID)
	switch {
	case ev == nil && w.ask(eventID, false):
		ev, _ = w.local(eventID)
	case ev != nil && unexplored && w.ask(eventID, true):
		_ = w.s.Store.Write(func(tx *store.Tx) error {
			room.MarkThreadExplored(tx, eventID)
			return nil
		})
	}
	if ev == nil {
		return nil
	}
	visible := false
	_ = w.s.Store.View(func(tx *store.Tx) error {
		visible = w.s.threadVisible(tx, ev, w.sess.UserID)
		return nil
	})
	if !visible {
		return nil
	}
	return ev
}

// local reads eventID from the store: nil unless it is in the walk's
// room and not rejected; unexplored as room.ThreadUnexplored.
func (w *threadWalk) local(eventID string) (ev *room.Event, unexplored bool) {
	_ = w.s.Store.View(func(tx *store.Tx) error {
		e, err := w.s.Rooms.EventByID(tx, eventID)
		if err != nil || e.RoomID != w.roomID || e.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
			return nil
		}
		ev = e
		unexplored = room.ThreadUnexplored(tx, eventID, len(w.s.Rooms.ThreadChildren(tx, eventID)))
		return nil
	})
	return ev, unexplored
}

// ask fetches eventID's part of the thread from other servers: with the
// client's walk for an unknown event, its children for an unexplored one.
// It reports whether it asked.
func (w *threadWalk) ask(eventID string, children bool) bool {
	if !w.remote || w.asks <= 0 || w.ctx.Err() != nil {
		return false
	}
	if w.asks == threadRemoteAsks && w.s.checkSend(w.sess) != nil {
		w.remote = false // over the user's rate: answer from what is held
		return false
	}
	w.asks--
	q := room.ThreadQuery{
		EventID: eventID, RoomID: w.roomID, Direction: w.q.Direction,
		MaxDepth: w.q.MaxDepth, MaxBreadth: w.q.MaxBreadth, Limit: w.q.Limit,
		DepthFirst: w.q.DepthFirst, RecentFirst: w.q.RecentFirst,
	}
	if children {
		q.Direction, q.MaxDepth, q.MaxBreadth, q.Limit = "down", 1, room.ThreadMaxBreadth, room.ThreadMaxLimit
	}
	if err := w.s.RemoteEventRelationships(w.ctx, q); err != nil {
		w.s.Log.Info("event_relationships: other servers did not answer", "event_id", eventID, "err", err)
	}
	return true
}

// children lists a parent's children as held (visibility is load's).
func (w *threadWalk) children(parent *room.Event) []*room.Event {
	var out []*room.Event
	_ = w.s.Store.View(func(tx *store.Tx) error {
		out = w.s.Rooms.ThreadChildren(tx, parent.ID)
		return nil
	})
	return out
}

// threadVisible applies history visibility to an event of a thread. An
// event with no known state (an outlier fetched for the thread) is judged
// by the room's current visibility: world_readable, or shared to a user
// joined now; "invited" and "joined" history cannot be judged without the
// state at the event, so it is not shown.
func (s *Server) threadVisible(tx *store.Tx, ev *room.Event, userID string) bool {
	vis := s.newVisibility(tx, ev.RoomID, userID)
	if ev.StateBefore != 0 {
		return vis.canSee(ev)
	}
	if ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 || (!ev.IsState() && vis.ignored[ev.Sender]) {
		return false
	}
	_, st, err := s.roomState(tx, ev.RoomID)
	if err != nil {
		return false
	}
	hv := s.stateContentField(tx, st, "m.room.history_visibility", "history_visibility")
	switch hv {
	case "world_readable":
		return true
	case "shared", "":
		return vis.current == "join"
	}
	return false
}
