package room

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jsonv2 "encoding/json/v2"

	lru "github.com/hashicorp/golang-lru/v2"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// Errors callers map to Matrix errcodes.
var (
	ErrRoomNotFound  = errors.New("room not found")
	ErrEventNotFound = errors.New("event not found")
	ErrForbidden     = errors.New("forbidden by the room's auth rules")
	ErrTooLarge      = errors.New("event exceeds 65536 bytes")
	ErrUnsupported   = errors.New("unsupported room version")
	// ErrTooComplex refuses a join whose answer holds more events than
	// this server is configured to take.
	ErrTooComplex = errors.New("room too large to join")
)

// Signer is the identity that signs this node's events.
type Signer struct {
	ServerName string
	KeyID      string
	Key        ed25519.PrivateKey
}

// Service builds, authorises and stores the events of every room on the node.
type Service struct {
	signer Signer
	states *stateCache
	events *lru.Cache[uint64, *Event]
	// evictVer is the Version of the latest write that evicted an event:
	// a reader from an older snapshot may hold the record as it was, and
	// does not cache it. evictMu orders that check and the caching
	// against evictions.
	evictMu  sync.Mutex
	evictVer uint64
	// chains and resolutions serve the resolutions of forks (forks.go).
	chains      *AuthChainLRU
	resolutions *weighted[string, uint64]
	// joined holds the joined servers per snapshot (joined.go).
	joined *weighted[uint64, map[string]int]
	// GetKey verifies other servers' signatures where an auth rule needs one
	// (restricted joins); federation installs it. Nil: only our own key.
	GetKey pdu.GetKeyFunc
	// OnEvent runs after an event is durable, for notification and fan-out.
	OnEvent func(ev *Event)
	// InTx runs inside the transaction that stores a local event (Send,
	// CreateRoom), so federation queues it atomically; an error aborts it.
	InTx func(tx *store.Tx, ev *Event) error
	now  func() time.Time
	// lastStamp is the latest origin_server_ts this server read from its
	// clock for an event it built (LastStamp).
	lastStamp atomic.Int64
}

// LastStamp is the latest origin_server_ts, in ms, that this server took
// from its clock for an event it built (not one a sender chose).
func (s *Service) LastStamp() int64 { return s.lastStamp.Load() }

// noteStamp records ts as taken from the clock.
func (s *Service) noteStamp(ts int64) {
	for {
		old := s.lastStamp.Load()
		if ts <= old || s.lastStamp.CompareAndSwap(old, ts) {
			return
		}
	}
}

// New makes a Service with the given cache sizes.
func New(signer Signer, sizes CacheSizes) *Service {
	ec, _ := lru.New[uint64, *Event](max(sizes.Events, 1))
	return &Service{
		signer:      signer,
		states:      newStateCache(sizes.StateSnapshots, sizes.StateEntries),
		events:      ec,
		chains:      newAuthChainLRU(sizes.AuthChainIDs, &Stats.AuthChainCache),
		resolutions: newWeighted[string](sizes.Resolutions, sizes.Resolutions, func(uint64) int { return 1 }, &Stats.ResolutionCache),
		// A snapshot's servers are few; bound by snapshots and by servers held.
		joined: newWeighted[uint64](4*sizes.StateSnapshots, 64*sizes.StateSnapshots, func(m map[string]int) int { return len(m) + 1 }, &Stats.JoinedCache),
		now:    time.Now,
	}
}

// Evict drops a stored event whose record the caller rewrites in tx from
// the event cache, now and again when tx commits (a reader may have cached
// the old record meanwhile). Cached events are shared and never mutated.
func (s *Service) Evict(tx *store.Tx, nid uint64) {
	s.evictMu.Lock()
	s.evictVer = max(s.evictVer, tx.Version())
	s.events.Remove(nid)
	s.evictMu.Unlock()
	tx.OnCommit(func() { s.events.Remove(nid) })
}

// ServerName is the name this node signs as.
func (s *Service) ServerName() string { return s.signer.ServerName }

// Proto is what a caller asks to send; the service fills in the rest.
type Proto struct {
	Type     string
	StateKey *string
	Sender   string
	Content  json.RawMessage
	Redacts  string
	// TS overrides origin_server_ts (application services' ?ts=); 0: now.
	TS int64
}

// Event loads a stored event by NID through the cache.
func (s *Service) Event(tx *store.Tx, nid uint64) (*Event, error) {
	if ev, ok := s.events.Get(nid); ok {
		Stats.EventCache.Hits.Add(1)
		return ev, nil
	}
	Stats.EventCache.Misses.Add(1)
	se, err := tx.Event(nid)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrEventNotFound
	} else if err != nil {
		return nil, err
	}
	r, err := s.roomByNID(tx, se.RoomNID)
	if err != nil {
		return nil, err
	}
	ev, err := ParseEvent(r, se.JSON, se.EventID)
	if err != nil {
		return nil, err
	}
	ev.NID, ev.Pos, ev.StateBefore, ev.Flags = se.NID, se.Pos, se.StateBefore, se.Flags
	if tx.Writable() {
		tx.OnCommit(func() { s.events.Add(nid, ev) })
	} else {
		// A read that began before a write rewrote this record (its
		// snapshot is older) would cache the old record after the
		// write's commit-time eviction, for every later reader: a
		// partial-state room's join kept its partial state that way.
		s.evictMu.Lock()
		if tx.Version() >= s.evictVer {
			s.events.Add(nid, ev)
		}
		s.evictMu.Unlock()
	}
	return ev, nil
}

// roomByNID returns a room's version; versions never change, so it is cached.
func (s *Service) roomByNID(tx *store.Tx, roomNID uint64) (string, error) {
	roomID, err := tx.RoomID(roomNID)
	if err != nil {
		return "", err
	}
	r, err := tx.Room(roomID)
	if err != nil {
		return "", err
	}
	return r.Version, nil
}

// EventByID loads a stored event by ID.
func (s *Service) EventByID(tx *store.Tx, eventID string) (*Event, error) {
	nid, err := tx.EventNID(eventID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrEventNotFound
	} else if err != nil {
		return nil, err
	}
	return s.Event(tx, nid)
}

// State loads a snapshot.
func (s *Service) State(tx *store.Tx, snapshot uint64) (*State, error) {
	return s.states.load(tx, snapshot)
}

// StateEvent returns the event at (type, stateKey) in st, or nil.
func (s *Service) StateEvent(tx *store.Tx, st *State, evType, stateKey string) (*Event, error) {
	key, err := tx.StateKeyNID(evType, stateKey, false)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	nid, ok := st.Get(key)
	if !ok {
		return nil, nil
	}
	return s.Event(tx, nid)
}

// StateAfter is the state after ev: its state before, plus ev if it is a state event.
func (s *Service) StateAfter(tx *store.Tx, ev *Event) (*State, error) {
	st, err := s.states.load(tx, ev.StateBefore)
	if err != nil || !ev.IsState() || ev.Flags&(store.FlagRejected|store.FlagSoftFailed) != 0 {
		return st, err
	}
	// An outlier's type and key may be new to the store (nothing put it
	// in a snapshot yet): a writer creates them.
	key, err := tx.StateKeyNID(ev.Type, *ev.StateKey, tx.Writable())
	if err != nil {
		return nil, err
	}
	if cur, ok := st.Get(key); ok && cur == ev.NID {
		return st, nil
	}
	delta := make(map[uint64]uint64, len(st.delta)+1)
	for k, v := range st.delta {
		delta[k] = v
	}
	delta[key] = ev.NID
	return &State{ID: 0, baseID: st.baseID, base: st.base, delta: delta}, nil
}

// Send builds an event from p on top of the room's current state, checks it
// against the auth rules, and stores it, all within tx.
func (s *Service) Send(tx *store.Tx, roomID string, p Proto) (*Event, error) {
	r, err := tx.Room(roomID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrRoomNotFound
	} else if err != nil {
		return nil, err
	}
	st, err := s.states.load(tx, r.State)
	if err != nil {
		return nil, err
	}
	ev, err := s.build(tx, r, st, p)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(tx, ev); err != nil {
		return nil, err
	}
	if err := s.persist(tx, r, st, ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// maxDepth is the largest depth an event can carry: canonical JSON's
// integer range (room versions 6+; Synapse caps older ones the same way).
const maxDepth = 1<<53 - 1

// build makes a signed PDU of the room's version.
func (s *Service) build(tx *store.Tx, r *store.Room, st *State, p Proto) (*Event, error) {
	if len(p.Content) == 0 || p.Content[0] != '{' {
		return nil, fmt.Errorf("%w: content must be a JSON object", ErrBadEvent)
	}
	// What this server signs has canonical JSON's numbers in every room
	// version: v1-v5 allowed floats and big integers, but how they are
	// written (and so signed) would depend on each peer's encoder.
	if _, err := canonicaljson.CanonicalJSON(p.Content); err != nil {
		return nil, fmt.Errorf("%w: content: floats and integers beyond 2^53 are not allowed", ErrBadEvent)
	}
	rv := Features(r.Version)
	probe := &pdu.PDU{Type: p.Type, StateKey: p.StateKey, Sender: id.UserID(p.Sender), Content: jsonValue(p.Content)}
	var authIDs []string
	for _, k := range probe.AuthEventSelection(rv) {
		ev, err := s.StateEvent(tx, st, k.Type, k.StateKey)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			authIDs = append(authIDs, ev.ID)
		}
	}
	var prevIDs []string
	depth := int64(0)
	for _, nid := range r.Extremities {
		prev, err := s.Event(tx, nid)
		if err != nil {
			return nil, err
		}
		prevIDs = append(prevIDs, prev.ID)
		depth = max(depth, prev.Depth)
	}
	// A peer may send an event at the largest depth canonical JSON allows;
	// going deeper would make every later event of the room unsignable.
	depth = min(depth+1, maxDepth)
	ts := s.now().UnixMilli()
	if p.TS > 0 {
		ts = p.TS
	} else {
		s.noteStamp(ts)
	}
	var redacts *id.EventID
	content := p.Content
	if p.Redacts != "" {
		rid := id.EventID(p.Redacts)
		redacts = &rid
		if rv.RedactsInContent() {
			content = withField(content, "redacts", p.Redacts)
		}
	}
	var raw []byte
	var eventID string
	if rv.EventIDFormat() == id.EventIDFormatCustom {
		v1 := &pdu.RoomV1PDU{
			Content: jsonValue(content), Depth: depth, OriginServerTS: ts, Redacts: redacts,
			RoomID: id.RoomID(r.RoomID), Sender: id.UserID(p.Sender), StateKey: p.StateKey, Type: p.Type,
			EventID: id.EventID("$" + randomString(18) + ":" + s.signer.ServerName),
		}
		var err error
		if v1.AuthEvents, err = s.v1Refs(tx, authIDs); err != nil {
			return nil, err
		}
		if v1.PrevEvents, err = s.v1Refs(tx, prevIDs); err != nil {
			return nil, err
		}
		if err := v1.Sign(rv, s.signer.ServerName, id.KeyID(s.signer.KeyID), s.signer.Key); err != nil {
			return nil, err
		}
		if raw, err = jsonv2.Marshal(v1); err != nil {
			return nil, err
		}
		eventID = string(v1.EventID)
	} else {
		pd := &pdu.PDU{
			AuthEvents: toEventIDs(authIDs), Content: jsonValue(content), Depth: depth,
			OriginServerTS: ts, PrevEvents: toEventIDs(prevIDs), RoomID: id.RoomID(r.RoomID),
			Sender: id.UserID(p.Sender), StateKey: p.StateKey, Type: p.Type,
		}
		if !rv.RedactsInContent() {
			pd.Redacts = redacts
		}
		if err := pd.Sign(rv, s.signer.ServerName, id.KeyID(s.signer.KeyID), s.signer.Key); err != nil {
			return nil, err
		}
		evID, err := pd.GetEventID(rv)
		if err != nil {
			return nil, err
		}
		if raw, err = jsonv2.Marshal(pd); err != nil {
			return nil, err
		}
		eventID = string(evID)
	}
	if len(raw) > MaxEventBytes {
		return nil, ErrTooLarge
	}
	return ParseEvent(r.Version, raw, eventID)
}

func (s *Service) v1Refs(tx *store.Tx, ids []string) ([]pdu.V1EventReference, error) {
	refs := make([]pdu.V1EventReference, 0, len(ids))
	for _, eid := range ids {
		ev, err := s.EventByID(tx, eid)
		if err != nil {
			return nil, err
		}
		var h struct {
			Hashes pdu.Hashes `json:"hashes"`
		}
		if err := jsonv2.Unmarshal(ev.Raw, &h); err != nil {
			return nil, err
		}
		refs = append(refs, pdu.V1EventReference{ID: id.EventID(eid), Hashes: h.Hashes})
	}
	return refs, nil
}

// authorize runs the spec's auth rules against the event's auth_events.
func (s *Service) authorize(tx *store.Tx, ev *Event) error {
	return Authorize(ev, func(eventID string) (*Event, error) { return s.EventByID(tx, eventID) }, s.getKey)
}

// Authorize checks ev against the auth rules of its room version, looking
// its auth events (and, from v12, its create event) up with lookup, which
// returns ErrEventNotFound for unknown events. It is pure: state
// resolution, federation and the vectors' tests call it with their own lookups.
func Authorize(ev *Event, lookup func(eventID string) (*Event, error), getKey pdu.GetKeyFunc) error {
	return authorizeEvent(ev, lookup, getKey)
}

func (s *Service) getKey(serverName string, keyID id.KeyID, minValid time.Time) (id.SigningKey, time.Time, error) {
	if serverName == s.signer.ServerName && string(keyID) == s.signer.KeyID {
		pub := s.signer.Key.Public().(ed25519.PublicKey)
		return id.SigningKey(base64.RawStdEncoding.EncodeToString(pub)), s.now().Add(24 * time.Hour), nil
	}
	if s.GetKey != nil {
		return s.GetKey(serverName, keyID, minValid)
	}
	return "", time.Time{}, nil
}

// persist stores an authorised event as the room's new head.
func (s *Service) persist(tx *store.Tx, r *store.Room, st *State, ev *Event) error {
	pos := tx.NextPos()
	se := &store.Event{EventID: ev.ID, RoomNID: r.NID, Pos: pos, StateBefore: st.ID, JSON: ev.Raw}
	if err := tx.PutEvent(se); err != nil {
		return err
	}
	ev.NID, ev.Pos, ev.StateBefore = se.NID, pos, st.ID
	tx.AppendTimeline(r.NID, pos, ev.NID)
	if ev.IsState() {
		key, err := tx.StateKeyNID(ev.Type, *ev.StateKey, true)
		if err != nil {
			return err
		}
		r.State = s.states.with(tx, st, map[uint64]uint64{key: ev.NID})
		old, _ := st.Get(key)
		s.deriveJoined(tx, st.ID, r.State, old, ev)
		if ev.Type == "m.room.member" && isLocal(*ev.StateKey, s.signer.ServerName) {
			tx.SetMembership(*ev.StateKey, &store.Membership{RoomID: r.RoomID, Membership: ev.Membership(), Pos: pos, Event: ev.NID})
		}
	}
	r.Extremities = []uint64{ev.NID}
	r.Depth = max(r.Depth, ev.Depth)
	r.LastPos = pos
	tx.PutRoom(r)
	IndexRelations(tx, ev, ev.NID)
	if err := s.redactions(tx, r, ev); err != nil {
		return err
	}
	if s.InTx != nil {
		if err := s.InTx(tx, ev); err != nil {
			return err
		}
	}
	tx.OnCommit(func() {
		Stats.LocalEvents.Add(1)
		s.events.Add(ev.NID, ev)
		if s.OnEvent != nil {
			s.OnEvent(ev)
		}
	})
	return nil
}

// applyRedaction strips the target's content per the room version's
// redaction algorithm. Permission was checked by the caller (clients) or
// is checked here against the sender's server (federation rule).
func (s *Service) applyRedaction(tx *store.Tx, r *store.Room, red *Event) error {
	target, err := s.EventByID(tx, red.Redacts)
	if errors.Is(err, ErrEventNotFound) {
		return nil // not seen yet; nothing to strip
	} else if err != nil {
		return err
	}
	if target.RoomID != red.RoomID || target.Type == "m.room.create" {
		return nil
	}
	redacted, err := Redact(target)
	if err != nil {
		return err
	}
	se, err := tx.Event(target.NID)
	if err != nil {
		return err
	}
	se.JSON = redacted
	se.Flags |= store.FlagRedacted
	tx.UpdateEvent(se)
	tx.AddRelation(target.ID, relRedactedBy, red.NID)
	s.Evict(tx, target.NID)
	return nil
}

// relRedactedBy indexes the redaction of an event among its relations.
const relRedactedBy = "edge.redacted_by"

// RedactedBy returns the redaction event of a redacted event, if any.
func (s *Service) RedactedBy(tx *store.Tx, ev *Event) *Event {
	if ev.Flags&store.FlagRedacted == 0 {
		return nil
	}
	nids := tx.Relations(ev.ID, relRedactedBy)
	if len(nids) == 0 {
		return nil
	}
	red, err := s.Event(tx, nids[0])
	if err != nil {
		return nil
	}
	return red
}

// Redact returns the redacted form of an event's JSON for its room version
// (https://spec.matrix.org/latest/rooms/v11/#redactions): top-level keys
// outside the version's list are dropped, content is pruned by mautrix's
// per-type rules. Working on the raw object keeps both event formats (v1/v2
// reference pairs, v3+ IDs) exactly as they were.
func Redact(ev *Event) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(ev.Raw, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	rv := Features(ev.Version)
	keep := redactionKeepsTopLevel
	if rv.UpdatedRedactionRules() {
		keep = redactionKeepsTopLevelV11
	}
	out := make(map[string]json.RawMessage, len(keep))
	for _, k := range keep {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	var evType string
	_ = json.Unmarshal(m["type"], &evType)
	if c, ok := m["content"]; ok {
		out["content"] = json.RawMessage(pdu.RedactContent(evType, []byte(c), rv))
	}
	return json.Marshal(out)
}

// The top-level keys the redaction algorithm keeps: v1–v10, and v11+
// (MSC2176 dropped origin, membership and prev_state).
var (
	redactionKeepsTopLevel = []string{"event_id", "type", "room_id", "sender", "state_key", "hashes",
		"signatures", "depth", "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts", "membership"}
	redactionKeepsTopLevelV11 = []string{"event_id", "type", "room_id", "sender", "state_key", "hashes",
		"signatures", "depth", "prev_events", "auth_events", "origin_server_ts"}
)

// Relation is content.m.relates_to.
type Relation struct {
	RelType string `json:"rel_type"`
	EventID string `json:"event_id"`
	Key     string `json:"key,omitempty"`
}

func relatesTo(content json.RawMessage) Relation {
	var c struct {
		R Relation `json:"m.relates_to"`
	}
	_ = json.Unmarshal(content, &c)
	return c.R
}

func isLocal(userID, serverName string) bool {
	i := strings.IndexByte(userID, ':')
	return i > 0 && userID[i+1:] == serverName
}

func toEventIDs(ids []string) []id.EventID {
	out := make([]id.EventID, len(ids))
	for i, v := range ids {
		out[i] = id.EventID(v)
	}
	return out
}

func jsonValue(b json.RawMessage) []byte { return []byte(b) }

func withField(obj json.RawMessage, key string, value any) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil || m == nil {
		m = map[string]json.RawMessage{}
	}
	v, _ := json.Marshal(value)
	m[key] = v
	out, _ := json.Marshal(m)
	return out
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
