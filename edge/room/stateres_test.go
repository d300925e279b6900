package room

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"edge/edge/store"
)

// The state resolution vectors (testdata/vectors/stateres, see its
// README.md): Synapse's and ruma's scenarios for v2 and v2.1 and room v12
// ports of Synapse's. Every file must pass in every form it offers.

type srVectorFile struct {
	Name        string              `json:"name"`
	RoomVersion string              `json:"room_version"`
	Format      string              `json:"format"`
	Events      []json.RawMessage   `json:"events"`
	StateSets   []map[string]string `json:"state_sets"`
	Expected    map[string]string   `json:"expected_state"`
	Dag         struct {
		ResolveStateBefore string   `json:"resolve_state_before"`
		Leaves             []string `json:"leaves"`
	} `json:"dag"`
	Intermediate map[string]struct {
		PrevEvents []string            `json:"prev_events"`
		StateSets  []map[string]string `json:"state_sets"`
		Resolved   map[string]string   `json:"resolved_state"`
	} `json:"intermediate_resolutions"`
	Alternative struct {
		OneStateMapPerEvent *struct {
			StateSets []map[string]string `json:"state_sets"`
		} `json:"one_state_map_per_event"`
	} `json:"alternative_inputs"`
	Graph         map[string][]string        `json:"graph"`
	ExpectedOrder []string                   `json:"expected_order"`
	DerivedNotes  map[string]json.RawMessage `json:"derived_notes"`
}

// srPool is a vector file's events as a fetch function.
type srPool struct {
	version string
	byID    map[string]*Event
	order   []*Event
	fetches int
}

func (p *srPool) fetch(eventID string) (*Event, error) {
	p.fetches++
	if ev, ok := p.byID[eventID]; ok {
		return ev, nil
	}
	return nil, ErrEventNotFound
}

func newSRPool(t testing.TB, version string, raws []json.RawMessage) *srPool {
	t.Helper()
	p := &srPool{version: version, byID: map[string]*Event{}}
	for _, raw := range raws {
		var head struct {
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal(raw, &head); err != nil || head.EventID == "" {
			t.Fatalf("vector event without event_id: %s", raw)
		}
		ev, err := ParseEvent(version, raw, head.EventID)
		if err != nil {
			t.Fatalf("%s: %v", head.EventID, err)
		}
		p.byID[ev.ID] = ev
		p.order = append(p.order, ev)
	}
	return p
}

// srMap converts a vector state map ("type|state_key" keys, split on the
// first "|").
func srMap(t testing.TB, m map[string]string) StateMap {
	t.Helper()
	out := make(StateMap, len(m))
	for k, v := range m {
		typ, key, ok := strings.Cut(k, "|")
		if !ok {
			t.Fatalf("state key %q has no |", k)
		}
		out[StateKeyPair{typ, key}] = v
	}
	return out
}

func srMaps(t testing.TB, ms []map[string]string) []StateMap {
	out := make([]StateMap, len(ms))
	for i, m := range ms {
		out[i] = srMap(t, m)
	}
	return out
}

// srDiff describes how got differs from want, "" if equal.
func srDiff(got, want StateMap) string {
	var b strings.Builder
	for _, k := range slices.SortedFunc(maps.Keys(want), compareKeys) {
		if g, ok := got[k]; !ok {
			fmt.Fprintf(&b, "\n  (%s,%q): missing, want %s", k.Type, k.StateKey, want[k])
		} else if g != want[k] {
			fmt.Fprintf(&b, "\n  (%s,%q): %s, want %s", k.Type, k.StateKey, g, want[k])
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(got), compareKeys) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "\n  (%s,%q): %s, want none", k.Type, k.StateKey, got[k])
		}
	}
	return b.String()
}

func srResolve(t testing.TB, p *srPool, sets []StateMap) StateMap {
	t.Helper()
	got, err := ResolveState(p.version, sets, p.fetch, nil)
	if err != nil {
		t.Fatalf("ResolveState: %v", err)
	}
	return got
}

func srVectorFiles(t *testing.T) []string {
	files, err := filepath.Glob(filepath.Join("testdata", "vectors", "stateres", "*.json"))
	if err != nil || len(files) < 26 {
		t.Fatalf("state resolution vectors: %d files, %v", len(files), err)
	}
	return files
}

// TestStateResVectors resolves each file's state sets, replays its DAG
// the way its source built it, and checks its intermediate resolutions
// and alternative inputs.
func TestStateResVectors(t *testing.T) {
	checks := 0
	for _, path := range srVectorFiles(t) {
		var f srVectorFile
		loadJSON(t, strings.TrimPrefix(path, filepath.Join("testdata", "vectors")+"/"), &f)
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			if f.Format == "topological_sort" {
				srCheckTopoSort(t, f)
				checks++
				return
			}
			p := newSRPool(t, f.RoomVersion, f.Events)
			want := srMap(t, f.Expected)
			if len(f.StateSets) == 0 || len(want) == 0 {
				t.Fatalf("format %s: %d state sets, %d expected entries", f.Format, len(f.StateSets), len(want))
			}
			t.Run("state_sets", func(t *testing.T) {
				if d := srDiff(srResolve(t, p, srMaps(t, f.StateSets)), want); d != "" {
					t.Errorf("resolved state differs:%s", d)
				}
				checks++
			})
			for at, ir := range f.Intermediate {
				t.Run("intermediate "+at, func(t *testing.T) {
					if d := srDiff(srResolve(t, p, srMaps(t, ir.StateSets)), srMap(t, ir.Resolved)); d != "" {
						t.Errorf("resolved state differs:%s", d)
					}
					checks++
				})
			}
			if alt := f.Alternative.OneStateMapPerEvent; alt != nil {
				t.Run("one_state_map_per_event", func(t *testing.T) {
					if len(alt.StateSets) != len(f.Events) {
						t.Fatalf("%d maps for %d events", len(alt.StateSets), len(f.Events))
					}
					if d := srDiff(srResolve(t, p, srMaps(t, alt.StateSets)), want); d != "" {
						t.Errorf("resolved state differs:%s", d)
					}
					checks++
				})
			}
			if f.Format == "dag" {
				t.Run("dag", func(t *testing.T) {
					srCheckDAG(t, f, p, want)
					checks++
				})
			}
			srCheckContrast(t, f, p)
		})
	}
	if checks < 50 {
		t.Fatalf("only %d state resolution checks ran", checks)
	}
}

// srCheckDAG walks the DAG oldest first, resolving at every merge, as the
// Synapse harness (state_after = state_before + E) or ruma's iterative
// mode (state_after = resolve(state_before, state_before + E)) does.
func srCheckDAG(t *testing.T, f srVectorFile, p *srPool, want StateMap) {
	ruma := f.Dag.ResolveStateBefore == ""
	before := map[string]StateMap{}
	after := map[string]StateMap{}
	for _, ev := range p.order {
		var st StateMap
		switch len(ev.PrevEvents) {
		case 0:
			st = StateMap{}
		case 1:
			st = after[ev.PrevEvents[0]]
		default:
			var sets []StateMap
			for _, pe := range ev.PrevEvents {
				sets = append(sets, after[pe])
			}
			st = srResolve(t, p, sets)
			if ir, ok := f.Intermediate[ev.ID]; ok {
				if d := srDiff(st, srMap(t, ir.Resolved)); d != "" {
					t.Errorf("state before %s differs from the file's intermediate resolution:%s", ev.ID, d)
				}
			}
		}
		if st == nil {
			t.Fatalf("%s: a prev event is not earlier in the file", ev.ID)
		}
		before[ev.ID] = st
		next := st
		if ev.IsState() {
			next = maps.Clone(st)
			next[StateKeyPair{ev.Type, *ev.StateKey}] = ev.ID
			if ruma {
				next = srResolve(t, p, []StateMap{st, next})
				if next[StateKeyPair{ev.Type, *ev.StateKey}] != ev.ID {
					t.Errorf("%s did not enter the state after it", ev.ID)
				}
			}
		}
		after[ev.ID] = next
	}
	var got StateMap
	if ruma {
		if len(f.Dag.Leaves) == 0 {
			t.Fatal("no leaves")
		}
		var sets []StateMap
		for _, l := range f.Dag.Leaves {
			sets = append(sets, after[l])
		}
		got = srResolve(t, p, sets)
	} else {
		got = before[f.Dag.ResolveStateBefore]
	}
	if d := srDiff(got, want); d != "" {
		t.Errorf("state from walking the DAG differs:%s", d)
	}
}

// srCheckContrast runs a v2.1 file with the v2.0 algorithm (room v12 auth
// rules) where the file gives that result, which differs from v2.1's.
func srCheckContrast(t *testing.T, f srVectorFile, p *srPool) {
	raw, ok := f.DerivedNotes["result_with_room_v12_auth_rules_but_state_res_v2.0_algorithm (reference impl, for contrast)"]
	if !ok {
		return
	}
	t.Run("v2.0 contrast", func(t *testing.T) {
		var m map[string]string
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		r := &Resolver{Fetch: p.fetch}
		s := &resolution{g: r.newGraph(), rv: "12", version: "12", authBuf: map[StateKeyPair]*Event{}}
		got, err := s.resolveV2(srMaps(t, f.StateSets), false)
		if err != nil {
			t.Fatal(err)
		}
		if d := srDiff(got, srMap(t, m)); d != "" {
			t.Errorf("v2.0 result differs:%s", d)
		}
		if srDiff(got, srMap(t, f.Expected)) == "" {
			t.Error("v2.0 gives the v2.1 result; the file says they differ")
		}
	})
}

func srCheckTopoSort(t *testing.T, f srVectorFile) {
	names := slices.Sorted(maps.Keys(f.Graph))
	idx := map[string]int32{}
	for i, n := range names {
		idx[n] = int32(i)
	}
	nodes := make([]int32, len(names))
	for i := range names {
		nodes[i] = int32(i)
	}
	deps := func(n int32) ([]int32, error) {
		var out []int32
		for _, d := range f.Graph[names[n]] {
			out = append(out, idx[d])
		}
		return out, nil
	}
	order, err := topoSort(nodes, deps, func(int32) bool { return true }, func(a, b int32) bool { return names[a] < names[b] })
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range order {
		got = append(got, names[n])
	}
	if !slices.Equal(got, f.ExpectedOrder) {
		t.Errorf("order %v, want %v", got, f.ExpectedOrder)
	}
}

// TestStateResVectorTraces compares the intermediate results of v2 with
// those the vectors list: the full conflicted set, and the orders of the
// power events and of the other events.
func TestStateResVectorTraces(t *testing.T) {
	compared := 0
	for _, path := range srVectorFiles(t) {
		var f srVectorFile
		loadJSON(t, strings.TrimPrefix(path, filepath.Join("testdata", "vectors")+"/"), &f)
		if len(f.DerivedNotes) == 0 || f.Format == "topological_sort" {
			continue
		}
		want := map[string][]string{}
		for k, raw := range f.DerivedNotes {
			var ids []string
			if json.Unmarshal(raw, &ids) != nil {
				continue
			}
			switch {
			case strings.HasPrefix(k, "full_conflicted_set"):
				want["full_conflicted_set"] = ids
			case k == "sorted_power_events":
				want["sorted_power_events"] = ids
			case strings.HasPrefix(k, "sorted_other_events"):
				want["sorted_other_events"] = ids
			case k == "conflicted_state_subgraph":
				want["conflicted_state_subgraph"] = ids
			}
		}
		if len(want) == 0 {
			continue
		}
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			p := newSRPool(t, f.RoomVersion, f.Events)
			got := map[string][]string{}
			r := &Resolver{Fetch: p.fetch, trace: func(step string, ids []string) { got[step] = ids }}
			if _, err := r.Resolve(f.RoomVersion, srMaps(t, f.StateSets)); err != nil {
				t.Fatal(err)
			}
			for step, ids := range want {
				g := got[step]
				if step == "full_conflicted_set" || step == "conflicted_state_subgraph" {
					g, ids = slices.Sorted(slices.Values(g)), slices.Sorted(slices.Values(ids))
				}
				if len(g) == 0 && len(ids) == 0 {
					continue
				}
				if !slices.Equal(g, ids) {
					t.Errorf("%s: %v\n  want %v", step, g, ids)
				}
				compared++
			}
		})
	}
	if compared < 40 {
		t.Fatalf("only %d traces compared", compared)
	}
}

// srBuild makes vector-style events for the unit tests and benchmarks.
type srBuild struct {
	t       testing.TB
	version string
	room    string
	pool    *srPool
	ts      int64
}

func newSRBuild(t testing.TB, version, room string) *srBuild {
	return &srBuild{t: t, version: version, room: room, pool: &srPool{version: version, byID: map[string]*Event{}}}
}

func srSK(s string) *string { return &s }

// ev adds an event (depth 0: its timestamp); a v12 create gets no room_id.
func (b *srBuild) ev(eventID, typ string, stateKey *string, sender, content string, depth int64, auth ...string) *Event {
	b.t.Helper()
	b.ts++
	if depth == 0 {
		depth = b.ts
	}
	m := map[string]any{
		"event_id": eventID, "type": typ, "sender": sender, "content": json.RawMessage(content),
		"prev_events": []string{}, "auth_events": append([]string{}, auth...),
		"origin_server_ts": b.ts, "depth": depth,
	}
	if stateKey != nil {
		m["state_key"] = *stateKey
	}
	if typ != "m.room.create" || b.version != "12" {
		m["room_id"] = b.room
	}
	raw, err := json.Marshal(m)
	if err != nil {
		b.t.Fatal(err)
	}
	ev, err := ParseEvent(b.version, raw, eventID)
	if err != nil {
		b.t.Fatalf("%s: %v", eventID, err)
	}
	b.pool.byID[eventID] = ev
	b.pool.order = append(b.pool.order, ev)
	return ev
}

// srState makes a state map of events.
func srState(evs ...*Event) StateMap {
	m := StateMap{}
	for _, ev := range evs {
		m[StateKeyPair{ev.Type, *ev.StateKey}] = ev.ID
	}
	return m
}

func srWith(base StateMap, evs ...*Event) StateMap {
	m := maps.Clone(base)
	maps.Copy(m, srState(evs...))
	return m
}

// srBaseRoom is a public room: alice creator (100), bob 50, charlie 0.
func srBaseRoom(b *srBuild, dom string) StateMap {
	id := func(s string) string { return "$" + s + dom }
	alice, bob, charlie := "@alice:example.com", "@bob:example.com", "@charlie:example.com"
	var create *Event
	users := `{"@alice:example.com":100,"@bob:example.com":50}`
	if b.version == "12" {
		create = b.ev("$CREATE", "m.room.create", srSK(""), alice, `{"room_version":"12"}`, 0)
		users = `{"@bob:example.com":50}`
	} else {
		create = b.ev(id("CREATE"), "m.room.create", srSK(""), alice, `{"creator":"@alice:example.com"}`, 0)
	}
	c := func(auth ...string) []string {
		if b.version == "12" {
			return auth
		}
		return append([]string{create.ID}, auth...)
	}
	ima := b.ev(id("IMA"), "m.room.member", srSK(alice), alice, `{"membership":"join"}`, 0, c()...)
	ipl := b.ev(id("IPL"), "m.room.power_levels", srSK(""), alice, `{"users":`+users+`}`, 0, c(ima.ID)...)
	ijr := b.ev(id("IJR"), "m.room.join_rules", srSK(""), alice, `{"join_rule":"public"}`, 0, c(ima.ID, ipl.ID)...)
	imb := b.ev(id("IMB"), "m.room.member", srSK(bob), bob, `{"membership":"join"}`, 0, c(ipl.ID, ijr.ID)...)
	imc := b.ev(id("IMC"), "m.room.member", srSK(charlie), charlie, `{"membership":"join"}`, 0, c(ipl.ID, ijr.ID)...)
	return srState(create, ima, ipl, ijr, imb, imc)
}

func TestStateResTrivialInputs(t *testing.T) {
	b := newSRBuild(t, "10", "!r:example.com")
	base := srBaseRoom(b, "")
	none, err := ResolveState("10", nil, b.pool.fetch, nil)
	if err != nil || len(none) != 0 {
		t.Fatalf("no sets: %v, %v", none, err)
	}
	one, err := ResolveState("10", []StateMap{base}, b.pool.fetch, nil)
	if err != nil || srDiff(one, base) != "" {
		t.Fatalf("single set: %v%s", err, srDiff(one, base))
	}
	one[createKey] = "$changed"
	if base[createKey] == "$changed" {
		t.Fatal("the result aliases the input set")
	}
	// Identical sets need no event at all.
	noFetch := func(string) (*Event, error) { return nil, errors.New("fetched") }
	same, err := ResolveState("10", []StateMap{base, maps.Clone(base), maps.Clone(base)}, noFetch, nil)
	if err != nil || srDiff(same, base) != "" {
		t.Fatalf("identical sets: %v%s", err, srDiff(same, base))
	}
}

func TestStateResBadInput(t *testing.T) {
	b := newSRBuild(t, "10", "!r:example.com")
	base := srBaseRoom(b, "")
	topic := b.ev("$T", "m.room.topic", srSK(""), "@alice:example.com", `{"topic":"x"}`, 0, base[createKey], base[plKey], base[StateKeyPair{"m.room.member", "@alice:example.com"}])
	orphan := b.ev("$ORPHAN", "m.room.topic", srSK(""), "@alice:example.com", `{"topic":"y"}`, 0, base[createKey], "$NOWHERE")
	fetch := b.pool.fetch
	cases := []struct {
		name    string
		version string
		sets    []StateMap
		want    error
	}{
		{"unknown event in a set", "10", []StateMap{srWith(base, topic), srWith(base, &Event{Type: "m.room.topic", StateKey: srSK(""), ID: "$UNKNOWN"})}, ErrEventNotFound},
		{"unknown auth event", "10", []StateMap{srWith(base, topic), srWith(base, orphan)}, ErrEventNotFound},
		{"unknown room version", "99", []StateMap{base, base}, ErrUnsupported},
		{"too many sets", "10", make([]StateMap, MaxStateSets+1), ErrStateResTooLarge},
		{"key of another event", "10", []StateMap{srWith(base, topic), {StateKeyPair{"m.room.name", ""}: topic.ID}}, ErrStateResInput},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ResolveState(c.version, c.sets, fetch, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, %v; want %v", got, err, c.want)
			}
		})
	}
	t.Run("event bound", func(t *testing.T) {
		r := &Resolver{Fetch: fetch, MaxEvents: 3}
		if _, err := r.Resolve("10", []StateMap{srWith(base, topic), base}); !errors.Is(err, ErrStateResTooLarge) {
			t.Fatalf("got %v, want ErrStateResTooLarge", err)
		}
	})
}

// TestStateResAuthCycle: auth_events loops (possible with room v1/v2's
// free-form event IDs, or a buggy store) end in an error, not a hang.
func TestStateResAuthCycle(t *testing.T) {
	for _, version := range []string{"2", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			b := newSRBuild(t, version, "!CREATE")
			base := srBaseRoom(b, map[string]string{"2": ":example.com", "12": ""}[version])
			alice := base[StateKeyPair{"m.room.member", "@alice:example.com"}]
			auth := func(ids ...string) []string {
				if version == "12" {
					return ids
				}
				return append([]string{base[createKey]}, ids...)
			}
			p1 := b.ev("$P1", "m.room.power_levels", srSK(""), "@alice:example.com", `{}`, 0, auth(alice, "$P2")...)
			p2 := b.ev("$P2", "m.room.power_levels", srSK(""), "@alice:example.com", `{}`, 0, auth(alice, "$P1")...)
			_, err := ResolveState(version, []StateMap{srWith(base, p1), srWith(base, p2)}, b.pool.fetch, nil)
			if !errors.Is(err, ErrStateResInput) {
				t.Fatalf("got %v, want ErrStateResInput", err)
			}
		})
	}
}

func TestStateResAuthChain(t *testing.T) {
	var f srVectorFile
	loadJSON(t, "stateres/synapse-v2-ban-vs-pl.json", &f)
	p := newSRPool(t, f.RoomVersion, f.Events)
	want := []string{"$CREATE:example.com", "$IJR:example.com", "$IMA:example.com", "$IMB:example.com", "$IPOWER:example.com", "$MA:example.com", "$PA:example.com"}
	lru, err := NewAuthChainLRU(16)
	if err != nil {
		t.Fatal(err)
	}
	for i, fn := range []func([]string) (map[string]struct{}, error){
		func(ids []string) (map[string]struct{}, error) { return AuthChain(ids, p.fetch) },
		(&Resolver{Fetch: p.fetch, Chains: lru}).AuthChain,
		(&Resolver{Fetch: p.fetch, Chains: lru}).AuthChain,
	} {
		got, err := fn([]string{"$MB:example.com"})
		if err != nil {
			t.Fatal(err)
		}
		if g := slices.Sorted(maps.Keys(got)); !slices.Equal(g, want) {
			t.Errorf("run %d: chain %v, want %v", i, g, want)
		}
	}
	if hits, _ := lru.Stats(); hits == 0 {
		t.Error("second cached walk had no cache hit")
	}
	// Two events: one in the other's chain is part of the answer.
	got, err := AuthChain([]string{"$MB:example.com", "$PA:example.com"}, p.fetch)
	if err != nil || len(got) != len(want) {
		t.Fatalf("chain of MB and PA: %v, %v", got, err)
	}
	if _, err := AuthChain([]string{"$NOPE"}, p.fetch); !errors.Is(err, ErrEventNotFound) {
		t.Fatalf("unknown event: %v", err)
	}
}

// TestStateResCachedChains resolves every vector twice through an
// auth-chain cache (one per file: the files reuse symbolic event IDs):
// same answers, and the second pass hits the cache.
func TestStateResCachedChains(t *testing.T) {
	var hits, misses uint64
	for _, path := range srVectorFiles(t) {
		var f srVectorFile
		loadJSON(t, strings.TrimPrefix(path, filepath.Join("testdata", "vectors")+"/"), &f)
		if f.Format == "topological_sort" {
			continue
		}
		lru, err := NewAuthChainLRU(1024)
		if err != nil {
			t.Fatal(err)
		}
		p := newSRPool(t, f.RoomVersion, f.Events)
		r := &Resolver{Fetch: p.fetch, Chains: lru}
		for pass := range 2 {
			got, err := r.Resolve(f.RoomVersion, srMaps(t, f.StateSets))
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if d := srDiff(got, srMap(t, f.Expected)); d != "" {
				t.Errorf("pass %d %s:%s", pass, path, d)
			}
		}
		h, m := lru.Stats()
		hits, misses = hits+h, misses+m
	}
	if hits == 0 || misses == 0 {
		t.Errorf("cache hits %d, misses %d", hits, misses)
	}
}

// TestStateResRejectedAuthEvent: in v2.1 a key missing from the resolved
// state comes from the event's own auth events, but never from a rejected
// one. Charlie's topic cites a rejected power levels event that would let
// him set it.
func TestStateResRejectedAuthEvent(t *testing.T) {
	for _, flagged := range []bool{true, false} {
		b := newSRBuild(t, "12", "!CREATE")
		base := srBaseRoom(b, "")
		charlie := "@charlie:example.com"
		imc := base[StateKeyPair{"m.room.member", charlie}]
		alice := base[StateKeyPair{"m.room.member", "@alice:example.com"}]
		plr := b.ev("$PLR", "m.room.power_levels", srSK(""), charlie, `{"users":{"@charlie:example.com":100}}`, 0, base[plKey], imc)
		if flagged {
			plr.Flags |= store.FlagRejected
		}
		t0 := b.ev("$T0", "m.room.topic", srSK(""), "@alice:example.com", `{"topic":"alice"}`, 0, base[plKey], alice)
		tc := b.ev("$TC", "m.room.topic", srSK(""), charlie, `{"topic":"charlie"}`, 0, plr.ID, imc)
		got, err := ResolveState("12", []StateMap{srWith(base, t0), srWith(base, tc)}, b.pool.fetch, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := t0.ID
		if !flagged {
			want = tc.ID
		}
		if g := got[StateKeyPair{"m.room.topic", ""}]; g != want {
			t.Errorf("auth event rejected=%v: topic %s, want %s", flagged, g, want)
		}
		if got[plKey] != base[plKey] {
			t.Errorf("power levels %s, want %s", got[plKey], base[plKey])
		}
	}
}

// TestStateResV1 checks room version 1's algorithm: power levels, then
// memberships, in ascending depth while the auth rules allow; other keys
// by the highest depth that passes; keys some sets lack are not conflicts.
func TestStateResV1(t *testing.T) {
	const dom = ":example.com"
	alice, bob, charlie := "@alice:example.com", "@bob:example.com", "@charlie:example.com"
	build := func(version string) (*srBuild, []StateMap, map[string]*Event) {
		b := newSRBuild(t, version, "!r:example.com")
		base := srBaseRoom(b, dom)
		cr, pl := base[createKey], base[plKey]
		ima, imb, imc := base[StateKeyPair{"m.room.member", alice}], base[StateKeyPair{"m.room.member", bob}], base[StateKeyPair{"m.room.member", charlie}]
		jr := base[StateKeyPair{"m.room.join_rules", ""}]
		e := map[string]*Event{
			// alice demotes bob; bob (then 50) promotes charlie; alice promotes charlie.
			"PA": b.ev("$PA"+dom, "m.room.power_levels", srSK(""), alice, `{"users":{"@alice:example.com":100,"@bob:example.com":0}}`, 10, cr, pl, ima),
			"PB": b.ev("$PB"+dom, "m.room.power_levels", srSK(""), bob, `{"users":{"@alice:example.com":100,"@bob:example.com":50,"@charlie:example.com":10}}`, 11, cr, pl, imb),
			"PC": b.ev("$PC"+dom, "m.room.power_levels", srSK(""), alice, `{"users":{"@alice:example.com":100,"@charlie:example.com":10}}`, 12, cr, pl, ima),
			// charlie may not set the topic or name; alice may.
			"T1": b.ev("$T1"+dom, "m.room.topic", srSK(""), charlie, `{"topic":"c"}`, 12, cr, pl, imc),
			"T2": b.ev("$T2"+dom, "m.room.topic", srSK(""), alice, `{"topic":"a"}`, 11, cr, pl, ima),
			"N1": b.ev("$N1"+dom, "m.room.name", srSK(""), charlie, `{"name":"1"}`, 12, cr, pl, imc),
			"N2": b.ev("$N2"+dom, "m.room.name", srSK(""), charlie, `{"name":"2"}`, 11, cr, pl, imc),
			// alice bans bob; bob leaves.
			"BAN":   b.ev("$BAN"+dom, "m.room.member", srSK(bob), alice, `{"membership":"ban"}`, 13, cr, pl, ima, imb),
			"LEAVE": b.ev("$LEAVE"+dom, "m.room.member", srSK(bob), bob, `{"membership":"leave"}`, 14, cr, pl, imb, jr),
			// only in one set, and not allowed (charlie has 0).
			"AV": b.ev("$AV"+dom, "m.room.avatar", srSK(""), charlie, `{"url":"mxc://x/y"}`, 12, cr, pl, imc),
		}
		sets := []StateMap{
			srWith(base, e["PA"], e["T1"], e["N1"], e["BAN"], e["AV"]),
			srWith(base, e["PB"], e["T2"], e["N2"], e["LEAVE"]),
			srWith(base, e["PC"]),
		}
		return b, sets, e
	}
	b, sets, e := build("1")
	got, err := ResolveState("1", sets, b.pool.fetch, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := srWith(sets[2], e["PA"], e["T2"], e["N2"], e["BAN"], e["AV"])
	if d := srDiff(got, want); d != "" {
		t.Errorf("v1 resolution differs:%s", d)
	}
	// The same forks in room v2: the avatar only one set holds is
	// conflicted there and fails its auth check.
	b2, sets2, _ := build("2")
	got2, err := ResolveState("2", sets2, b2.pool.fetch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if av, ok := got2[StateKeyPair{"m.room.avatar", ""}]; ok {
		t.Errorf("v2 kept the unauthorised avatar %s", av)
	}
}

// TestStateResMainlineOrder: events based on an older mainline power
// levels event come first, and an event with no power levels ancestor on
// the mainline at all (position ∞) before every other one.
func TestStateResMainlineOrder(t *testing.T) {
	b := newSRBuild(t, "10", "!r:example.com")
	base := srBaseRoom(b, "")
	alice := "@alice:example.com"
	cr, p0, ima := base[createKey], base[plKey], base[StateKeyPair{"m.room.member", alice}]
	p1 := b.ev("$P1", "m.room.power_levels", srSK(""), alice, `{"users":{"@alice:example.com":100}}`, 0, cr, p0, ima)
	e1 := b.ev("$E1", "m.room.topic", srSK(""), alice, `{}`, 0, cr, p1.ID, ima)
	e0 := b.ev("$E0", "m.room.name", srSK(""), alice, `{}`, 0, cr, p0, ima)
	e0b := b.ev("$E0b", "m.room.avatar", srSK(""), alice, `{}`, 0, cr, p0, ima)
	none := b.ev("$EN", "m.room.guest_access", srSK(""), alice, `{}`, 0, cr, ima)
	r := &Resolver{Fetch: b.pool.fetch}
	s := &resolution{g: r.newGraph(), rv: "10", version: "10", authBuf: map[StateKeyPair]*Event{}}
	node := func(ev *Event) int32 {
		n, err := s.g.node(ev.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.g.event(n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	st := &partialState{g: s.g, changes: map[StateKeyPair]int32{plKey: node(p1)}}
	order, err := s.mainlineSort([]int32{node(e1), node(e0b), node(none), node(e0)}, st)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range order {
		got = append(got, s.g.nodes[n].id)
	}
	if want := []string{none.ID, e0.ID, e0b.ID, e1.ID}; !slices.Equal(got, want) {
		t.Errorf("mainline order %v, want %v", got, want)
	}
}

func TestStateResPowerEvents(t *testing.T) {
	b := newSRBuild(t, "10", "!r:example.com")
	cases := []struct {
		ev   *Event
		want bool
	}{
		{b.ev("$a", "m.room.power_levels", srSK(""), "@a:x", `{}`, 0), true},
		{b.ev("$b", "m.room.join_rules", srSK(""), "@a:x", `{}`, 0), true},
		{b.ev("$c", "m.room.create", srSK(""), "@a:x", `{}`, 0), true},
		{b.ev("$d", "m.room.member", srSK("@b:x"), "@a:x", `{"membership":"ban"}`, 0), true},
		{b.ev("$e", "m.room.member", srSK("@b:x"), "@a:x", `{"membership":"leave"}`, 0), true},
		{b.ev("$f", "m.room.member", srSK("@a:x"), "@a:x", `{"membership":"leave"}`, 0), false},
		{b.ev("$g", "m.room.member", srSK("@b:x"), "@a:x", `{"membership":"invite"}`, 0), false},
		{b.ev("$h", "m.room.power_levels", srSK("x"), "@a:x", `{}`, 0), false},
		{b.ev("$i", "m.room.topic", srSK(""), "@a:x", `{}`, 0), false},
		{b.ev("$j", "m.room.power_levels", nil, "@a:x", `{}`, 0), false},
	}
	for _, c := range cases {
		if got := isPowerEvent(c.ev); got != c.want {
			t.Errorf("%s (%s): power event %v, want %v", c.ev.ID, c.ev.Type, got, c.want)
		}
	}
}

// srForkRoom builds a room with n joined members and two forks: on one,
// alice (creator) raises bob and charlie, kicks forks/2 members and sets
// the topic; on the other, bob (moderator) bans forks/2 other members,
// forks/2 members change their display name, and charlie sets the topic.
func srForkRoom(b testing.TB, version string, n, forks int) (*srPool, []StateMap) {
	sb := newSRBuild(b, version, "!CREATE")
	dom := ""
	if version == "1" || version == "2" {
		dom = ":example.com"
		sb.room = "!r:example.com"
	}
	base := srBaseRoom(sb, dom)
	cr, pl, jr := base[createKey], base[plKey], base[StateKeyPair{"m.room.join_rules", ""}]
	c := func(auth ...string) []string {
		if version == "12" {
			return auth
		}
		return append([]string{cr}, auth...)
	}
	member := func(u string) string { return base[StateKeyPair{"m.room.member", u}] }
	users := make([]string, n)
	for i := range users {
		u := fmt.Sprintf("@u%05d:example.com", i)
		users[i] = u
		base[StateKeyPair{"m.room.member", u}] = sb.ev(fmt.Sprintf("$J%05d%s", i, dom), "m.room.member", srSK(u), u, `{"membership":"join"}`, 0, c(pl, jr)...).ID
	}
	alice, bob, charlie := "@alice:example.com", "@bob:example.com", "@charlie:example.com"
	a, bb := maps.Clone(base), maps.Clone(base)
	set := func(m StateMap, ev *Event) { m[StateKeyPair{ev.Type, *ev.StateKey}] = ev.ID }
	plUsers := `{"@alice:example.com":100,"@bob:example.com":75,"@charlie:example.com":25}`
	if version == "12" {
		plUsers = `{"@bob:example.com":75,"@charlie:example.com":25}`
	}
	set(a, sb.ev("$FA-PL"+dom, "m.room.power_levels", srSK(""), alice, `{"users":`+plUsers+`}`, 0, c(pl, member(alice))...))
	for i := range forks / 2 {
		u := users[i]
		set(a, sb.ev(fmt.Sprintf("$FA-K%d%s", i, dom), "m.room.member", srSK(u), alice, `{"membership":"leave"}`, 0, c(pl, member(alice), member(u))...))
	}
	set(a, sb.ev("$FA-T"+dom, "m.room.topic", srSK(""), alice, `{"topic":"a"}`, 0, c(pl, member(alice))...))
	for i := range forks / 2 {
		u := users[forks/2+i]
		set(bb, sb.ev(fmt.Sprintf("$FB-B%d%s", i, dom), "m.room.member", srSK(u), bob, `{"membership":"ban"}`, 0, c(pl, member(bob), member(u))...))
		v := users[forks+i]
		set(bb, sb.ev(fmt.Sprintf("$FB-N%d%s", i, dom), "m.room.member", srSK(v), v, `{"membership":"join","displayname":"v"}`, 0, c(pl, jr, member(v))...))
	}
	set(bb, sb.ev("$FB-T"+dom, "m.room.topic", srSK(""), charlie, `{"topic":"b"}`, 0, c(pl, member(charlie))...))
	return sb.pool, []StateMap{a, bb}
}

// TestStateResForkRoom checks the benchmark's room resolves as the rules
// say: alice's power levels and kicks, bob's bans, the renames, and
// alice's topic (charlie, at 25 under the resolved power levels, may
// not set his).
func TestStateResForkRoom(t *testing.T) {
	for _, version := range []string{"2", "10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			dom := ""
			if version == "2" {
				dom = ":example.com"
			}
			pool, sets := srForkRoom(t, version, 200, 20)
			got, err := ResolveState(version, sets, pool.fetch, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(sets[0]) {
				t.Errorf("%d entries, want %d", len(got), len(sets[0]))
			}
			for k, want := range map[StateKeyPair]string{
				plKey:                                    "$FA-PL" + dom,
				{"m.room.topic", ""}:                     "$FA-T" + dom,
				{"m.room.member", "@u00000:example.com"}: "$FA-K0" + dom,
				{"m.room.member", "@u00010:example.com"}: "$FB-B0" + dom,
				{"m.room.member", "@u00020:example.com"}: "$FB-N0" + dom,
				{"m.room.member", "@u00199:example.com"}: "$J00199" + dom,
			} {
				if got[k] != want {
					t.Errorf("(%s, %q) = %s, want %s", k.Type, k.StateKey, got[k], want)
				}
			}
		})
	}
}

// BenchmarkStateResFork10k resolves two forks of a room with 10k members
// (50 conflicting power/member changes), with and without a warm
// auth-chain cache.
func BenchmarkStateResFork10k(b *testing.B) {
	for _, version := range []string{"10", "12"} {
		pool, sets := srForkRoom(b, version, 10000, 50)
		b.Run("v"+version, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ResolveState(version, sets, pool.fetch, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("v"+version+"/cached-chains", func(b *testing.B) {
			lru, err := NewAuthChainLRU(4096)
			if err != nil {
				b.Fatal(err)
			}
			r := &Resolver{Fetch: pool.fetch, Chains: lru}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Resolve(version, sets); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestStateResDeepChain: a conflict across a power levels history 20k
// events deep (all of it in the full conflicted set) is walked, sorted and
// replayed iteratively, and the newer tip wins.
func TestStateResDeepChain(t *testing.T) {
	for _, version := range []string{"10", "12"} {
		b := newSRBuild(t, version, "!CREATE")
		base := srBaseRoom(b, "")
		alice := base[StateKeyPair{"m.room.member", "@alice:example.com"}]
		prev := base[plKey]
		var pls []*Event
		for i := range 20000 {
			auth := []string{prev, alice}
			if version != "12" {
				auth = append(auth, base[createKey])
			}
			users := `{"@alice:example.com":100,"@bob:example.com":50}`
			if version == "12" {
				users = `{"@bob:example.com":50}` // creators may not be listed
			}
			ev := b.ev(fmt.Sprintf("$P%05d", i), "m.room.power_levels", srSK(""), "@alice:example.com", `{"users":`+users+`}`, 0, auth...)
			pls = append(pls, ev)
			prev = ev.ID
		}
		old, tip := pls[100], pls[len(pls)-1]
		got, err := ResolveState(version, []StateMap{srWith(base, old), srWith(base, tip)}, b.pool.fetch, nil)
		if err != nil {
			t.Fatalf("v%s: %v", version, err)
		}
		if got[plKey] != tip.ID {
			t.Errorf("v%s: power levels %s, want %s", version, got[plKey], tip.ID)
		}
	}
}
