package stateres

import (
	"crypto/ed25519"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"edge/edge/room"
)

// The synthetic room: `members` joined users besides alice (creator, 100),
// bob (50) and charlie (0). On fork A alice raises bob to 75 and charlie
// to 25, kicks forks/2 members and sets the topic; on fork B bob bans
// forks/2 other members, forks/2 members change their display name and
// charlie sets the topic. It is edge/room's srForkRoom (the room of
// BenchmarkStateResFork10k) as signed PDUs with real event IDs.
const (
	members = 10000
	forks   = 50
)

// versions are the room versions both resolvers implement with state
// resolution v2 (gomatrixserverlib at this pin has no room v12).
var versions = []string{"10", "11"}

// input is one resolution in the forms each resolver takes.
type input struct {
	version string
	sets    []room.StateMap
	byID    map[string]*room.Event // edge's fetch
	raw     map[string][]byte      // the PDUs' JSON by event ID
	// gomatrixserverlib's arguments as Dendrite builds them: every event
	// of the state sets, and the auth chains of the conflicted ones.
	events, authEvents []gmsl.PDU
	conflicted         int
}

func (in *input) fetch(eventID string) (*room.Event, error) {
	if ev, ok := in.byID[eventID]; ok {
		return ev, nil
	}
	return nil, room.ErrEventNotFound
}

// parsingFetch parses each event from its JSON on first use, so nothing
// parsed outlives one resolution (edge memoises power levels content on
// its events, gomatrixserverlib re-reads it every resolution).
func (in *input) parsingFetch() func(string) (*room.Event, error) {
	parsed := map[string]*room.Event{}
	return func(eventID string) (*room.Event, error) {
		if ev, ok := parsed[eventID]; ok {
			return ev, nil
		}
		raw, ok := in.raw[eventID]
		if !ok {
			return nil, room.ErrEventNotFound
		}
		ev, err := room.ParseEvent(in.version, raw, eventID)
		if err != nil {
			return nil, err
		}
		parsed[eventID] = ev
		return ev, nil
	}
}

var (
	inputsMu sync.Mutex
	inputs   = map[string]*input{}
)

// load builds the input of a room version once per process: signing 10k
// events takes a while, and the test and the benchmarks must see the same
// bytes.
func load(tb testing.TB, version string) *input {
	tb.Helper()
	inputsMu.Lock()
	defer inputsMu.Unlock()
	if in, ok := inputs[version]; ok {
		return in
	}
	in := build(tb, version)
	inputs[version] = in
	return in
}

// gen makes signed PDUs with gomatrixserverlib's event builder.
type gen struct {
	tb      testing.TB
	ver     gmsl.IRoomVersion
	roomID  string
	key     ed25519.PrivateKey
	ts      time.Time
	pdus    map[string]gmsl.PDU
	depth   map[string]int64
	tip     string // the previous event of the branch being built
	version string
}

func sk(s string) *string { return &s }

// ev builds an event on the current branch and returns its ID.
func (g *gen) ev(typ string, stateKey *string, sender, content string, auth ...string) string {
	g.tb.Helper()
	g.ts = g.ts.Add(time.Millisecond) // distinct timestamps, as real events mostly have
	prev := []string{}
	depth := int64(1)
	if g.tip != "" {
		prev = []string{g.tip}
		depth = g.depth[g.tip] + 1
	}
	b := g.ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
		SenderID: sender, RoomID: g.roomID, Type: typ, StateKey: stateKey,
		PrevEvents: prev, AuthEvents: append([]string{}, auth...), Depth: depth,
		Content: spec.RawJSON(content),
	})
	p, err := b.Build(g.ts, "example.com", "ed25519:bench", g.key)
	if err != nil {
		g.tb.Fatalf("%s %v: %v", typ, stateKey, err)
	}
	id := p.EventID()
	g.pdus[id] = p
	g.depth[id] = depth
	g.tip = id
	return id
}

func build(tb testing.TB, version string) *input {
	ver, err := gmsl.GetRoomVersion(gmsl.RoomVersion(version))
	if err != nil {
		tb.Fatal(err)
	}
	g := &gen{
		tb: tb, ver: ver, version: version, roomID: "!bench:example.com",
		key:  ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)),
		ts:   time.UnixMilli(1_700_000_000_000),
		pdus: map[string]gmsl.PDU{}, depth: map[string]int64{},
	}
	alice, bob, charlie := "@alice:example.com", "@bob:example.com", "@charlie:example.com"
	createContent := `{"room_version":"` + version + `"}`
	if version == "10" {
		createContent = `{"creator":"@alice:example.com","room_version":"10"}`
	}
	base := room.StateMap{}
	set := func(m room.StateMap, eventID string) {
		p := g.pdus[eventID]
		m[room.StateKeyPair{Type: p.Type(), StateKey: *p.StateKey()}] = eventID
	}
	cr := g.ev("m.room.create", sk(""), alice, createContent)
	ima := g.ev("m.room.member", sk(alice), alice, `{"membership":"join"}`, cr)
	ipl := g.ev("m.room.power_levels", sk(""), alice, `{"users":{"@alice:example.com":100,"@bob:example.com":50}}`, cr, ima)
	ijr := g.ev("m.room.join_rules", sk(""), alice, `{"join_rule":"public"}`, cr, ima, ipl)
	imb := g.ev("m.room.member", sk(bob), bob, `{"membership":"join"}`, cr, ipl, ijr)
	imc := g.ev("m.room.member", sk(charlie), charlie, `{"membership":"join"}`, cr, ipl, ijr)
	for _, e := range []string{cr, ima, ipl, ijr, imb, imc} {
		set(base, e)
	}
	users := make([]string, members)
	joins := make([]string, members)
	for i := range users {
		users[i] = fmt.Sprintf("@u%05d:example.com", i)
		joins[i] = g.ev("m.room.member", sk(users[i]), users[i], `{"membership":"join"}`, cr, ipl, ijr)
		set(base, joins[i])
	}
	baseTip := g.tip
	a, b := maps.Clone(base), maps.Clone(base)

	set(a, g.ev("m.room.power_levels", sk(""), alice,
		`{"users":{"@alice:example.com":100,"@bob:example.com":75,"@charlie:example.com":25}}`, cr, ipl, ima))
	for i := range forks / 2 {
		set(a, g.ev("m.room.member", sk(users[i]), alice, `{"membership":"leave"}`, cr, ipl, ima, joins[i]))
	}
	set(a, g.ev("m.room.topic", sk(""), alice, `{"topic":"a"}`, cr, ipl, ima))

	g.tip = baseTip
	for i := range forks / 2 {
		u := forks/2 + i
		set(b, g.ev("m.room.member", sk(users[u]), bob, `{"membership":"ban"}`, cr, ipl, imb, joins[u]))
		v := forks + i
		set(b, g.ev("m.room.member", sk(users[v]), users[v], `{"membership":"join","displayname":"v"}`, cr, ipl, ijr, joins[v]))
	}
	set(b, g.ev("m.room.topic", sk(""), charlie, `{"topic":"b"}`, cr, ipl, imc))

	in := &input{
		version: version, sets: []room.StateMap{a, b},
		byID: make(map[string]*room.Event, len(g.pdus)), raw: make(map[string][]byte, len(g.pdus)),
	}
	// edge parses the same bytes and must derive the same event IDs.
	for id, p := range g.pdus {
		ev, err := room.ParseEvent(version, p.JSON(), "")
		if err != nil {
			tb.Fatalf("edge parsing %s: %v", id, err)
		}
		if ev.ID != id {
			tb.Fatalf("edge computes event ID %s, gomatrixserverlib %s", ev.ID, id)
		}
		in.byID[id] = ev
		in.raw[id] = p.JSON()
	}

	// gomatrixserverlib's inputs, made outside the timed loop: the union of
	// the state sets, and the auth chains of the conflicted events, which
	// Dendrite loads from its database before calling the resolver.
	seen := map[string]bool{}
	var conflicted []string
	for _, st := range in.sets {
		for k, id := range st {
			if !seen[id] {
				seen[id] = true
				in.events = append(in.events, g.pdus[id])
			}
			if a[k] != b[k] && !slices.Contains(conflicted, id) {
				conflicted = append(conflicted, id)
			}
		}
	}
	in.conflicted = len(conflicted)
	inChain := map[string]bool{}
	var walk func(id string)
	walk = func(id string) {
		for _, aid := range g.pdus[id].AuthEventIDs() {
			if !inChain[aid] {
				inChain[aid] = true
				in.authEvents = append(in.authEvents, g.pdus[aid])
				walk(aid)
			}
		}
	}
	for _, id := range conflicted {
		walk(id)
	}
	return in
}

func userIDForSender(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(s), true)
}

func notRejected(string) bool { return false }

func resolveGMSL(in *input) (room.StateMap, error) {
	out, err := gmsl.ResolveConflicts(gmsl.RoomVersion(in.version), in.events, in.authEvents, userIDForSender, notRejected)
	if err != nil {
		return nil, err
	}
	m := make(room.StateMap, len(out))
	for _, p := range out {
		m[room.StateKeyPair{Type: p.Type(), StateKey: *p.StateKey()}] = p.EventID()
	}
	return m, nil
}

func resolveEdge(in *input) (room.StateMap, error) {
	return room.ResolveState(in.version, in.sets, in.fetch, nil)
}

// TestSameResolvedState: both resolvers agree on the whole resolved state,
// and it is the one the auth rules give (alice's power levels, kicks and
// topic, bob's bans, the renames; charlie, at 25, may not set the topic).
func TestSameResolvedState(t *testing.T) {
	for _, version := range versions {
		t.Run("v"+version, func(t *testing.T) {
			in := load(t, version)
			if in.conflicted != 2*(2+3*forks/2) {
				t.Fatalf("%d conflicted events, want %d", in.conflicted, 2*(2+3*forks/2))
			}
			e, err := resolveEdge(in)
			if err != nil {
				t.Fatal(err)
			}
			cold, err := room.ResolveState(version, in.sets, in.parsingFetch(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(cold, e) {
				t.Error("edge resolves differently from freshly parsed events")
			}
			g, err := resolveGMSL(in)
			if err != nil {
				t.Fatal(err)
			}
			if want := members + 6 + 1; len(e) != want || len(g) != want {
				t.Errorf("edge resolved %d entries, gomatrixserverlib %d, want %d", len(e), len(g), want)
			}
			diffs := 0
			for _, k := range slices.SortedFunc(maps.Keys(merge(e, g)), cmpKey) {
				if e[k] != g[k] {
					if diffs++; diffs <= 10 {
						t.Errorf("(%s, %q): edge %q, gomatrixserverlib %q", k.Type, k.StateKey, e[k], g[k])
					}
				}
			}
			if diffs > 0 {
				t.Fatalf("%d entries differ", diffs)
			}
			a, b := in.sets[0], in.sets[1]
			for k, want := range map[room.StateKeyPair]string{
				{Type: "m.room.power_levels"}:                            a[room.StateKeyPair{Type: "m.room.power_levels"}],
				{Type: "m.room.topic"}:                                   a[room.StateKeyPair{Type: "m.room.topic"}],
				{Type: "m.room.member", StateKey: "@u00000:example.com"}: a[room.StateKeyPair{Type: "m.room.member", StateKey: "@u00000:example.com"}],
				{Type: "m.room.member", StateKey: "@u00025:example.com"}: b[room.StateKeyPair{Type: "m.room.member", StateKey: "@u00025:example.com"}],
				{Type: "m.room.member", StateKey: "@u00050:example.com"}: b[room.StateKeyPair{Type: "m.room.member", StateKey: "@u00050:example.com"}],
			} {
				if e[k] != want {
					t.Errorf("(%s, %q) resolved to %s, want %s", k.Type, k.StateKey, e[k], want)
				}
			}
			// The fork entries really conflict: otherwise the checks above
			// would pass whichever side won.
			if a[room.StateKeyPair{Type: "m.room.topic"}] == b[room.StateKeyPair{Type: "m.room.topic"}] {
				t.Fatal("the forks agree on the topic")
			}
		})
	}
}

func merge(a, b room.StateMap) room.StateMap {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}

func cmpKey(a, b room.StateKeyPair) int {
	if a.Type != b.Type {
		if a.Type < b.Type {
			return -1
		}
		return 1
	}
	switch {
	case a.StateKey < b.StateKey:
		return -1
	case a.StateKey > b.StateKey:
		return 1
	}
	return 0
}

// BenchmarkStateRes resolves the two forks with each resolver. edge starts
// cold (no auth-chain cache) and walks the auth chains itself;
// gomatrixserverlib gets them ready-made, as Dendrite hands them over.
func BenchmarkStateRes(b *testing.B) {
	for _, version := range versions {
		in := load(b, version)
		b.Run("v"+version+"/edge", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := resolveEdge(in); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("v"+version+"/edge-parse-on-fetch", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := room.ResolveState(version, in.sets, in.parsingFetch(), nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("v"+version+"/edge-cached-chains", func(b *testing.B) {
			lru, err := room.NewAuthChainLRU(4096)
			if err != nil {
				b.Fatal(err)
			}
			r := &room.Resolver{Fetch: in.fetch, Chains: lru}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Resolve(version, in.sets); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("v"+version+"/gomatrixserverlib", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := resolveGMSL(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
