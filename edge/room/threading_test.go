package room

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

// threadGraph builds events whose m.relationship names the given parent
// (event IDs need not be hashes for the walk), timestamps in order given.
func threadGraph(edges [][2]string) (map[string]*Event, map[string][]*Event) {
	evs := map[string]*Event{}
	kids := map[string][]*Event{}
	for i, e := range edges {
		content := map[string]any{"body": e[0]}
		if e[1] != "" {
			content["m.relationship"] = map[string]any{"rel_type": "m.reference", "event_id": e[1]}
		}
		raw, _ := json.Marshal(content)
		ev := &Event{ID: e[0], Content: raw, OriginServerTS: int64(1000 + i)}
		evs[ev.ID] = ev
		if e[1] != "" {
			kids[e[1]] = append(kids[e[1]], ev)
		}
	}
	return evs, kids
}

func walkIDs(t *testing.T, q *ThreadQuery, evs map[string]*Event, kids map[string][]*Event, hidden ...string) ([]string, ThreadResult) {
	t.Helper()
	if err := q.Normalize(); err != nil {
		t.Fatal(err)
	}
	src := ThreadSource{
		Load: func(id string) *Event {
			if slices.Contains(hidden, id) {
				return nil
			}
			return evs[id]
		},
		Children: func(p *Event) []*Event { return slices.Clone(kids[p.ID]) },
	}
	res := WalkThread(q, evs[q.EventID], src)
	var ids []string
	for _, ev := range res.Events {
		ids = append(ids, ev.ID)
	}
	return ids, res
}

// A cycle (possible across several events) is walked once, and an event
// the asker may not see is neither returned nor followed.
func TestWalkThreadCycleAndHidden(t *testing.T) {
	evs, kids := threadGraph([][2]string{{"$x", "$z"}, {"$y", "$x"}, {"$z", "$y"}, {"$w", "$y"}, {"$v", "$w"}})
	q := NewThreadQuery()
	q.EventID, q.MaxDepth, q.RecentFirst = "$x", -1, false
	got, res := walkIDs(t, q, evs, kids)
	if want := []string{"$x", "$y", "$z", "$w", "$v"}; !slices.Equal(got, want) || res.Limited {
		t.Fatalf("down the cycle: %v (limited %v), want %v", got, res.Limited, want)
	}
	q = NewThreadQuery()
	q.EventID, q.Direction = "$x", "up"
	if got, _ = walkIDs(t, q, evs, kids); !slices.Equal(got, []string{"$x", "$z", "$y"}) {
		t.Fatalf("up the cycle: %v", got)
	}
	q = NewThreadQuery()
	q.EventID, q.RecentFirst = "$y", false
	if got, _ = walkIDs(t, q, evs, kids, "$w"); !slices.Equal(got, []string{"$y", "$z", "$x"}) {
		t.Fatalf("with $w hidden: %v (its child $v must not be reached through it)", got)
	}
}

func TestThreadQueryNormalize(t *testing.T) {
	q := NewThreadQuery()
	q.EventID, q.Limit, q.MaxDepth, q.MaxBreadth = "$a", 1<<20, -1, 1<<20
	if err := q.Normalize(); err != nil {
		t.Fatal(err)
	}
	if q.Limit != ThreadMaxLimit || q.MaxDepth != ThreadMaxDepth || q.MaxBreadth != ThreadMaxBreadth {
		t.Fatalf("not capped: limit %d depth %d breadth %d", q.Limit, q.MaxDepth, q.MaxBreadth)
	}
	q.Limit = 0
	if err := q.Normalize(); err != nil || q.Limit != ThreadDefaultLimit {
		t.Fatalf("limit 0: %d, %v", q.Limit, err)
	}
	for _, bad := range []ThreadQuery{
		{Direction: "down"},
		{EventID: "a", Direction: "down"},
		{EventID: "$a", Direction: "left"},
		{EventID: "$a", Direction: "down", RoomID: "room"},
		{EventID: "$a", Direction: "down", Batch: "o0"},
		{EventID: "$a", Direction: "down", Batch: "o999999"},
		{EventID: "$a", Direction: "down", Batch: "x"},
	} {
		if err := bad.Normalize(); !errors.Is(err, ErrThreadQuery) {
			t.Errorf("%+v: %v, want ErrThreadQuery", bad, err)
		}
	}
}

func TestThreadChildMeta(t *testing.T) {
	_, kids := threadGraph([][2]string{{"$p", ""}, {"$c", "$p"}, {"$b", "$p"}})
	counts, hash := ThreadChildMeta(kids["$p"])
	// SHA-256("$b$c"), unpadded base64 (openssl dgst -sha256 -binary | base64)
	if counts["m.reference"] != 2 || hash != "2YYTwJDIW0e0ggpcoSbAyTHWaYx21M1jjZWmHnzQhJ0" {
		t.Fatalf("counts %v hash %s", counts, hash)
	}
	if c, h := ThreadChildMeta(nil); c != nil || h != "" {
		t.Fatal("an event without children has metadata")
	}
}
