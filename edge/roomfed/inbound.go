package roomfed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"runtime/debug"
	"slices"
	"sync"

	"maunium.net/go/mautrix/id"

	"edge/edge/room"
	"edge/edge/store"
)

// Reasons an inbound PDU is refused, for the /send answer and the logs.
var (
	ErrUnknownRoom  = errors.New("room not known to this server")
	ErrBadSignature = errors.New("signature check failed")
	ErrMissingPrev  = errors.New("prev_events missing and could not be fetched")
	ErrMissingAuth  = errors.New("auth_events unknown")
	ErrRejected     = errors.New("rejected by the auth rules")
	// errStoredRejected marks a rejection after which the event is stored
	// (flagged rejected): the PDU was processed, so /send answers it
	// without an error, as Synapse does.
	errStoredRejected = errors.New("stored as rejected")
)

// onPDUs is federation.Server.OnPDUs: each room's PDUs in order under the
// room's lock, the rooms in parallel.
func (e *Engine) onPDUs(ctx context.Context, origin string, pdus []json.RawMessage) map[string]error {
	byRoom := map[string][]json.RawMessage{}
	var order []string
	for _, raw := range pdus {
		var h struct {
			RoomID string `json:"room_id"`
		}
		_ = json.Unmarshal(raw, &h)
		if _, ok := byRoom[h.RoomID]; !ok {
			order = append(order, h.RoomID)
		}
		byRoom[h.RoomID] = append(byRoom[h.RoomID], raw)
	}
	results := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, roomID := range order {
		wg.Go(func() {
			unlock := e.lock(roomID)
			defer unlock()
			for _, raw := range byRoom[roomID] {
				evID, err := e.receiveSafely(ctx, origin, roomID, raw)
				if err != nil {
					e.log.Info("inbound PDU refused", "origin", origin, "room_id", roomID, "event_id", evID, "err", err)
					if errors.Is(err, ErrRejected) && e.storedRejected(evID) {
						// Handled: a rejection stored is no error of the
						// transaction, as Synapse answers (MSC3618).
						err = nil
					}
				}
				if errors.Is(err, errStoredRejected) {
					err = nil
				}
				if evID != "" {
					mu.Lock()
					results[evID] = err
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return results
}

// storedRejected tells whether eventID is stored, flagged rejected.
func (e *Engine) storedRejected(eventID string) bool {
	var ok bool
	_ = e.store.View(func(tx *store.Tx) error {
		ev, err := e.rooms.EventByID(tx, eventID)
		ok = err == nil && ev.Flags&store.FlagRejected != 0
		return nil
	})
	return ok
}

// receiveSafely is receive with a panic — a bug of ours or of a
// dependency, reached by remote input — turned into the refusal of that
// one PDU: a peer must not be able to take the node down.
func (e *Engine) receiveSafely(ctx context.Context, origin, roomID string, raw []byte) (evID string, err error) {
	defer func() {
		if p := recover(); p != nil {
			e.log.Error("panic on an inbound PDU", "origin", origin, "room_id", roomID, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: internal error", ErrRejected)
		}
	}()
	return e.receive(ctx, origin, roomID, raw, true, nil)
}

// roomVersion returns the version of a room we know.
func (e *Engine) roomVersion(roomID string) (string, error) {
	var v string
	err := e.store.View(func(tx *store.Tx) error {
		r, err := tx.Room(roomID)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrUnknownRoom, roomID)
		} else if err != nil {
			return err
		}
		v = r.Version
		return nil
	})
	return v, err
}

// receive checks and applies one PDU of a room the caller holds the lock
// of. With fetch set (a pushed PDU), missing prev_events are asked of
// origin; without (one get_missing_events brought), the state at missing
// prev events is fetched instead, unless one of them is in noFill.
func (e *Engine) receive(ctx context.Context, origin, roomID string, raw []byte, fetch bool, noFill map[string]bool) (string, error) {
	version, err := e.roomVersion(roomID)
	if errors.Is(err, ErrUnknownRoom) && e.rescinds != nil {
		if evID, handled, err := e.receiveRescind(roomID, raw); handled {
			return evID, err
		}
	}
	if err != nil {
		return "", err
	}
	ev, err := e.check(version, roomID, raw)
	if ev == nil {
		return "", err
	} else if err != nil {
		return ev.ID, err
	}
	var known bool
	var missing []string
	err = e.store.View(func(tx *store.Tx) error {
		if _, err := tx.EventNID(ev.ID); err == nil {
			known = true
			return nil
		}
		missing = e.unknownPrevs(tx, ev.PrevEvents)
		return nil
	})
	if err != nil || known {
		return ev.ID, err
	}
	switch {
	case len(missing) > 0 && fetch:
		// A pushed event: its prev events are asked for (get_missing_events).
		// What those cannot reach is the gap's oldest pulled event's to
		// fill (below); a pushed event is never trusted with a state fetch
		// of its own (as Synapse: its sender has no excuse for not
		// giving its prev events).
		e.fetchMissing(ctx, origin, ev)
		_ = e.store.View(func(tx *store.Tx) error { missing = e.unknownPrevs(tx, ev.PrevEvents); return nil })
	case len(missing) > 0 && !slices.ContainsFunc(missing, func(id string) bool { return noFill[id] }):
		// A pulled event whose prev events get_missing_events did not
		// reach (or left as outliers without state): the state at each
		// is fetched instead (gap.go), as Synapse does.
		if err := e.fillGap(ctx, origin, version, ev, missing); err != nil {
			e.log.Info("gap not filled", "origin", origin, "event_id", ev.ID, "err", err)
		}
		_ = e.store.View(func(tx *store.Tx) error { missing = e.unknownPrevs(tx, ev.PrevEvents); return nil })
	}
	if len(missing) > 0 {
		return ev.ID, fmt.Errorf("%w: %v", ErrMissingPrev, missing)
	}
	var missingAuth []string
	_ = e.store.View(func(tx *store.Tx) error { missingAuth = e.unknown(tx, ev.AuthEvents); return nil })
	if len(missingAuth) > 0 {
		// The sender holds the event, so it can give its auth chain.
		if _, err := e.fetchAuth(ctx, origin, version, roomID, ev.ID); err != nil {
			e.log.Info("event_auth failed", "origin", origin, "event_id", ev.ID, "err", err)
		}
	}
	return ev.ID, e.apply(ev)
}

// unknownPrevs lists the prev events we lack or hold only as outliers
// without a state (fetched as some state or auth event): an event's
// state follows from its prev events', so those are missing too.
func (e *Engine) unknownPrevs(tx *store.Tx, ids []string) []string {
	var out []string
	for _, eid := range ids {
		nid, err := tx.EventNID(eid)
		if err == nil {
			if se, err := tx.Event(nid); err == nil && (se.StateBefore != 0 || se.Flags&store.FlagOutlier == 0) {
				continue
			}
		}
		out = append(out, eid)
	}
	return out
}

func (e *Engine) unknown(tx *store.Tx, ids []string) []string {
	var out []string
	for _, eid := range ids {
		if _, err := tx.EventNID(eid); err != nil {
			out = append(out, eid)
		}
	}
	return out
}

// check runs the spec's checks on receipt that need no room state: size,
// format, the sending server's signature (and, for v1/v2 event IDs, the
// event ID's server), and the content hash, whose failure leaves the
// redacted event. A non-nil event with an error was refused.
func (e *Engine) check(version, roomID string, raw []byte) (*room.Event, error) {
	if len(raw) > room.MaxEventBytes {
		return nil, room.ErrTooLarge
	}
	c, err := room.CheckPDU(version, raw)
	if err != nil {
		return nil, err
	}
	ev := c.Event
	if ev.RoomID != roomID {
		return ev, fmt.Errorf("%w: room_id %q", room.ErrBadEvent, ev.RoomID)
	}
	if ev.Type == "" || !validUserID(ev.Sender) || ev.Depth < 0 || ev.Depth > 1<<53-1 {
		return ev, fmt.Errorf("%w: type, sender or depth invalid", room.ErrBadEvent)
	}
	servers := []string{domainOf(ev.Sender)}
	if room.Features(version).EventIDFormat() == id.EventIDFormatCustom {
		if d := domainOf(ev.ID); d != servers[0] {
			servers = append(servers, d)
		}
	}
	for _, srv := range servers {
		if err := c.VerifySignature(srv, e.fed.Keyring.GetKey); err != nil {
			return ev, fmt.Errorf("%w: %s: %v", ErrBadSignature, srv, err)
		}
	}
	if !c.ContentHashOK {
		redacted, err := room.Redact(ev)
		if err != nil {
			return ev, err
		}
		e.log.Info("content hash mismatch: keeping the redacted event", "event_id", ev.ID)
		rev, err := room.ParseEvent(version, redacted, ev.ID)
		if err != nil {
			return ev, err
		}
		ev = rev
	}
	return ev, nil
}

// stripUnsigned drops the sender's unsigned data: not covered by the
// signature, and ours to compute.
func stripUnsigned(raw []byte) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	if _, ok := m["unsigned"]; !ok {
		return raw
	}
	delete(m, "unsigned")
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}

// apply authorises ev (its prev events stored) and stores it: against its
// auth_events and the state before it (failure: rejected), against the
// current state (failure: soft-failed), else as the room's new head.
func (e *Engine) apply(ev *room.Event) error {
	var outcome error
	err := e.store.Write(func(tx *store.Tx) error {
		outcome = nil
		var authRejected bool
		lookup := func(eid string) (*room.Event, error) {
			ae, err := e.rooms.EventByID(tx, eid)
			if err == nil && ae.Flags&store.FlagRejected != 0 {
				authRejected = true
			}
			return ae, err
		}
		before, err := e.rooms.StateBeforeEvent(tx, ev)
		if err != nil {
			return err
		}
		if err := room.Authorize(ev, lookup, e.fed.Keyring.GetKey); err != nil {
			if errors.Is(err, room.ErrEventNotFound) {
				// receive asked the sender for them (event_auth) already.
				return fmt.Errorf("%w: %v", ErrMissingAuth, err)
			}
			if !errors.Is(err, room.ErrForbidden) {
				return err
			}
			outcome = fmt.Errorf("%w: auth_events: %v", ErrRejected, err)
		} else if authRejected {
			outcome = fmt.Errorf("%w: an auth event was rejected", ErrRejected)
		} else if err := e.authorizeState(tx, ev, before); err != nil {
			outcome = fmt.Errorf("%w: state before the event: %v", ErrRejected, err)
		}
		if outcome != nil {
			outcome = fmt.Errorf("%w (%w)", outcome, errStoredRejected)
			return e.rooms.PersistRemote(tx, ev, before, store.FlagRejected)
		}
		r, err := tx.Room(ev.RoomID)
		if err != nil {
			return err
		}
		cur, err := e.rooms.State(tx, r.State)
		if err != nil {
			return err
		}
		if err := e.authorizeState(tx, ev, cur); err != nil {
			e.log.Info("soft-failing event", "event_id", ev.ID, "err", err)
			return e.rooms.PersistRemote(tx, ev, before, store.FlagSoftFailed)
		}
		return e.rooms.PersistRemote(tx, ev, before, 0)
	})
	if err != nil {
		return err
	}
	return outcome
}

// authorizeAt checks ev against the auth rules with st as the room state.
func (e *Engine) authorizeAt(tx *store.Tx, ev *room.Event, st *room.State) error {
	m, err := e.rooms.AuthStateFor(tx, ev, st)
	if err != nil {
		return err
	}
	return room.AuthorizeAgainst(ev, m, e.fed.Keyring.GetKey)
}

// fetchMissing asks origin for the events between the room's forward
// extremities and ev, and applies what comes back oldest first.
func (e *Engine) fetchMissing(ctx context.Context, origin string, ev *room.Event) {
	var earliest []string
	_ = e.store.View(func(tx *store.Tx) error {
		r, err := tx.Room(ev.RoomID)
		if err != nil {
			return err
		}
		for _, nid := range r.Extremities {
			if x, err := e.rooms.Event(tx, nid); err == nil {
				earliest = append(earliest, x.ID)
			}
		}
		return nil
	})
	var resp struct {
		Events []json.RawMessage `json:"events"`
	}
	body := map[string]any{"earliest_events": orEmpty(earliest), "latest_events": []string{ev.ID}, "limit": maxMissing, "min_depth": 0}
	path := "/_matrix/federation/v1/get_missing_events/" + url.PathEscape(ev.RoomID)
	if err := e.fed.Client.Post(ctx, origin, path, body, &resp); err != nil {
		e.log.Info("get_missing_events failed", "origin", origin, "room_id", ev.RoomID, "err", err)
		return
	}
	type item struct {
		depth int64
		raw   json.RawMessage
	}
	items := make([]item, 0, min(len(resp.Events), maxMissing))
	for _, raw := range resp.Events[:min(len(resp.Events), maxMissing)] {
		var h struct {
			Depth int64 `json:"depth"`
		}
		_ = json.Unmarshal(raw, &h)
		items = append(items, item{h.Depth, raw})
	}
	slices.SortStableFunc(items, func(a, b item) int { return int(min(max(a.depth-b.depth, -1), 1)) })
	// An event refused here is not fetched again (with its state) for
	// the events after it.
	refused := map[string]bool{}
	for _, it := range items {
		if id, err := e.receive(ctx, origin, ev.RoomID, it.raw, false, refused); err != nil {
			e.log.Info("missing event refused", "event_id", id, "err", err)
			if id != "" {
				refused[id] = true
			}
		}
	}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func validUserID(u string) bool {
	return len(u) > 2 && u[0] == '@' && domainOf(u) != "" && len(u) <= 255
}
