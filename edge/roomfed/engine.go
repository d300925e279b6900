package roomfed

import (
	"cmp"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"

	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// Deps is what the engine needs from the node.
type Deps struct {
	Fed   *federation.Server
	Rooms *room.Service
	Store *store.Store
	Log   *slog.Logger
	// FasterJoins asks for partial-state joins (omit_members).
	FasterJoins bool
	// MaxJoinEvents bounds the state and auth chain events a join, or a
	// state fetch, takes (0: DefaultMaxJoinEvents).
	MaxJoinEvents int
}

// Engine federates the node's rooms. New plugs it into the federation
// transport (routes, OnPDUs) and the room service (InTx).
type Engine struct {
	fed   *federation.Server
	rooms *room.Service
	store *store.Store
	log   *slog.Logger
	name  string
	// fasterJoins, maxJoinEvents: see Deps.
	fasterJoins   bool
	maxJoinEvents int

	mu    sync.Mutex
	locks map[string]*roomLock

	partial partialRunner // faster joins' background resyncs (partial.go)

	rescinds *InviteRescinds // withdrawn invites to unknown rooms (rescind.go)
}

// roomLock serialises one room's inbound events.
type roomLock struct {
	sync.Mutex
	users int
}

// maxMissing bounds the events asked for in one get_missing_events.
const maxMissing = 20

// New builds the engine and installs its routes and hooks.
func New(d Deps) *Engine {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{fed: d.Fed, rooms: d.Rooms, store: d.Store, log: d.Log.With("component", "roomfed"),
		name: d.Rooms.ServerName(), locks: map[string]*roomLock{}, fasterJoins: d.FasterJoins,
		maxJoinEvents: cmp.Or(d.MaxJoinEvents, DefaultMaxJoinEvents)}
	d.Fed.OnPDUs = e.onPDUs
	d.Rooms.InTx = e.queueLocal
	e.routes()
	e.leaveRoutes()
	return e
}

// lock takes roomID's lock and returns its release.
func (e *Engine) lock(roomID string) func() {
	e.mu.Lock()
	l := e.locks[roomID]
	if l == nil {
		l = &roomLock{}
		e.locks[roomID] = l
	}
	l.users++
	e.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		e.mu.Lock()
		if l.users--; l.users == 0 {
			delete(e.locks, roomID)
		}
		e.mu.Unlock()
	}
}

// queueLocal queues a local user's event to every other server with a
// joined member before or after it (so a server whose last member leaves
// or is kicked still hears of it), in the event's own transaction.
func (e *Engine) queueLocal(tx *store.Tx, ev *room.Event) error {
	if domainOf(ev.Sender) != e.name {
		return nil
	}
	r, err := tx.Room(ev.RoomID)
	if err != nil {
		return err
	}
	dests := map[string]bool{}
	for _, snap := range []uint64{ev.StateBefore, r.State} {
		if err := e.joinedServers(tx, snap, dests); err != nil {
			return err
		}
	}
	e.addPartialServers(tx, ev.RoomID, dests)
	// A remote user's leave or ban reaches their server even when it has
	// no member in the room: it withdraws an invite (rescind.go).
	if ev.Type == "m.room.member" && ev.StateKey != nil {
		if m := ev.Membership(); m == "leave" || m == "ban" {
			dests[domainOf(*ev.StateKey)] = true
		}
	}
	delete(dests, e.name)
	if len(dests) == 0 {
		return nil
	}
	list := make([]string, 0, len(dests))
	for d := range dests {
		list = append(list, d)
	}
	e.fed.Queue.SendPDUTx(tx, list, json.RawMessage(ev.Raw))
	return nil
}

// joinedServers adds to out the servers of the members joined in snapshot
// (cached per snapshot by the room service).
func (e *Engine) joinedServers(tx *store.Tx, snapshot uint64, out map[string]bool) error {
	counts, err := e.rooms.JoinedServers(tx, snapshot)
	if err != nil {
		return err
	}
	for srv := range counts {
		out[srv] = true
	}
	return nil
}

// otherServers lists, sorted, the servers other than ours with a joined
// member in a state.
func (e *Engine) otherServers(tx *store.Tx, state uint64) ([]string, error) {
	joined := map[string]bool{}
	if err := e.joinedServers(tx, state, joined); err != nil {
		return nil, err
	}
	delete(joined, e.name)
	out := make([]string, 0, len(joined))
	for s := range joined {
		out = append(out, s)
	}
	slices.Sort(out)
	return out, nil
}

// serverJoined tells whether server has a joined member in the room's
// current state.
func (e *Engine) serverJoined(tx *store.Tx, r *store.Room, server string) (bool, error) {
	m := map[string]bool{}
	if err := e.joinedServers(tx, r.State, m); err != nil {
		return false, err
	}
	return m[server], nil
}

func domainOf(s string) string {
	if i := strings.IndexByte(s, ':'); i >= 0 {
		return s[i+1:]
	}
	return ""
}

func fedErr(status int, code, msg string) *federation.Error {
	return &federation.Error{Status: status, Code: code, Message: msg}
}

// errIncompatible answers a server that does not support the room's
// version, naming it (room_version, as the spec's make_join answer has it).
func errIncompatible(version, msg string) *federation.Error {
	e := fedErr(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", msg)
	e.RoomVersion = version
	return e
}

// errNotFound is the federation answer for unknown rooms and events.
func errNotFound(msg string) *federation.Error {
	return fedErr(http.StatusNotFound, "M_NOT_FOUND", msg)
}

func errForbidden(msg string) *federation.Error {
	return fedErr(http.StatusForbidden, "M_FORBIDDEN", msg)
}
