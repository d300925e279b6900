package room

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"testing"

	"edge/edge/store"
)

// TestJoinedServers follows 600 random membership changes of 120 users on
// six servers (with rebases of the layered snapshots and rolled-back
// transactions) and checks the cached, derived counts against a walk of
// the whole state, warm and from a cold cache.
func TestJoinedServers(t *testing.T) {
	st := tempStore(t)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer := Signer{ServerName: "s0", KeyID: "ed25519:a", Key: priv}
	sizes := CacheSizes{StateSnapshots: 64, StateEntries: 1 << 20, Events: 4096, AuthChainIDs: 1 << 16, Resolutions: 64}
	s := New(signer, sizes)
	var roomID string
	if err := st.Write(func(tx *store.Tx) error {
		var err error
		roomID, err = s.CreateRoom(tx, CreateOptions{Creator: "@admin:s0", Version: "10", Preset: "public_chat"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// brute force: walk the state.
	walk := func(tx *store.Tx, snapshot uint64) map[string]int {
		state, err := s.State(tx, snapshot)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		state.Each(func(_, nid uint64) bool {
			ev, err := s.Event(tx, nid)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Type == "m.room.member" && ev.Membership() == "join" {
				out[serverOf(*ev.StateKey)]++
			}
			return true
		})
		return out
	}
	rng := mrand.New(mrand.NewPCG(3, 4))
	errRollBack := errors.New("roll back")
	var snapshots []uint64
	for round := range 60 {
		rollBack := round%7 == 3
		err := st.Write(func(tx *store.Tx) error {
			for range 10 {
				user := fmt.Sprintf("@u%d:s%d", rng.IntN(20), rng.IntN(6))
				membership := "join"
				if rng.IntN(3) == 0 {
					membership = "leave"
				}
				content, _ := json.Marshal(map[string]string{"membership": membership})
				ev, err := s.Send(tx, roomID, Proto{Type: "m.room.member", StateKey: &user, Sender: user, Content: content})
				if errors.Is(err, ErrForbidden) {
					continue // leaving without having joined
				} else if err != nil {
					return err
				}
				r, _ := tx.Room(roomID)
				got, err := s.JoinedServers(tx, r.State)
				if err != nil {
					return err
				}
				if want := walk(tx, r.State); !maps.Equal(got, want) {
					// No t.Fatal inside a write: it would end the goroutine committing.
					return fmt.Errorf("round %d after %s's %s: counts %v, walk %v", round, user, membership, got, want)
				}
				if !rollBack {
					snapshots = append(snapshots, r.State, ev.StateBefore)
				}
			}
			if rollBack {
				return errRollBack
			}
			return nil
		})
		if err != nil && !errors.Is(err, errRollBack) {
			t.Fatal(err)
		}
	}
	if Stats.JoinedCache.Hits.Load() == 0 {
		t.Error("the joined-servers cache never hit")
	}
	// Every snapshot again, warm and through a service with cold caches.
	cold := New(signer, sizes)
	_ = st.View(func(tx *store.Tx) error {
		for _, snap := range snapshots {
			want := walk(tx, snap)
			for name, svc := range map[string]*Service{"warm": s, "cold": cold} {
				got, err := svc.JoinedServers(tx, snap)
				if err != nil {
					t.Fatal(err)
				}
				if !maps.Equal(got, want) {
					t.Fatalf("%s cache, snapshot %d: %v, walk %v", name, snap, got, want)
				}
			}
		}
		return nil
	})
}

// TestJoinedServersRollback: a snapshot id handed out in a rolled-back
// transaction is reused by the next one, for another state; the counts
// cached for the rolled-back snapshot must not answer for it.
func TestJoinedServersRollback(t *testing.T) {
	st := tempStore(t)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s := New(Signer{ServerName: "s0", KeyID: "ed25519:a", Key: priv},
		CacheSizes{StateSnapshots: 64, StateEntries: 1 << 20, Events: 4096, AuthChainIDs: 1 << 16, Resolutions: 64})
	var roomID string
	if err := st.Write(func(tx *store.Tx) error {
		var err error
		roomID, err = s.CreateRoom(tx, CreateOptions{Creator: "@admin:s0", Version: "10", Preset: "public_chat"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	errRollBack := errors.New("roll back")
	var rolledBack uint64
	err := st.Write(func(tx *store.Tx) error {
		user := "@ghost:elsewhere"
		content := json.RawMessage(`{"membership":"join"}`)
		if _, err := s.Send(tx, roomID, Proto{Type: "m.room.member", StateKey: &user, Sender: user, Content: content}); err != nil {
			return err
		}
		r, _ := tx.Room(roomID)
		rolledBack = r.State
		if _, err := s.JoinedServers(tx, r.State); err != nil {
			return err
		}
		return errRollBack
	})
	if !errors.Is(err, errRollBack) {
		t.Fatal(err)
	}
	// The same id, now a snapshot made without deriving its counts: the
	// room's state as a fresh base (what a resolution or a join stores).
	var id uint64
	var got map[string]int
	err = st.Write(func(tx *store.Tx) error {
		r, _ := tx.Room(roomID)
		cur, err := s.State(tx, r.State)
		if err != nil {
			return err
		}
		// The rolled-back send took an event id, a state-key id, then the
		// snapshot id: take two ids so the snapshot gets the same one.
		for _, k := range []string{"a", "b"} {
			if _, err := tx.StateKeyNID("org.example.pad", k, true); err != nil {
				return err
			}
		}
		id = s.states.with(tx, &State{}, stateMap(cur))
		got, err = s.JoinedServers(tx, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if id != rolledBack {
		t.Fatalf("snapshot id %d, the rolled-back one was %d: the test no longer reuses an id", id, rolledBack)
	}
	if got["elsewhere"] != 0 || got["s0"] != 1 {
		t.Errorf("counts %v for the reused snapshot id; the rolled-back ghost leaked in", got)
	}
}
