package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
	"edge/edge/roomfed"
	"edge/edge/store"
)

// inflater makes a resident server hostile: its send_join, /state_ids and
// /state answers carry extra events in their auth chains (tiny messages,
// validly signed by the resident, so each passes the joiner's checks and
// is held until the join's end).
type inflater struct {
	on    atomic.Bool
	extra []json.RawMessage
	ids   []string
}

func (f *inflater) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		kind := ""
		switch {
		case strings.HasPrefix(p, "/_matrix/federation/v2/send_join/"), strings.HasPrefix(p, "/_matrix/federation/v1/state/"):
			kind = "auth_chain"
		case strings.HasPrefix(p, "/_matrix/federation/v1/state_ids/"):
			kind = "auth_chain_ids"
		}
		if kind == "" || !f.on.Load() {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		var body map[string]json.RawMessage
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &body) != nil {
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			return
		}
		var list []any
		_ = json.Unmarshal(body[kind], &list)
		if kind == "auth_chain" {
			for _, raw := range f.extra {
				list = append(list, raw)
			}
		} else {
			for _, id := range f.ids {
				list = append(list, id)
			}
		}
		body[kind], _ = json.Marshal(list)
		out, _ := json.Marshal(body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})
}

// forgeExtra has the resident sign n messages of alice's, none stored.
func (f *inflater) forgeExtra(t *testing.T, resident *rfNode, roomID string, sender string, n int) {
	h := &hostile{t: t, b: resident, roomID: id.RoomID(roomID)}
	for i := range n {
		raw, evID := h.forge(hostileMessage(sender, fmt.Sprintf("filler %d", i)), nil)
		f.extra = append(f.extra, raw)
		f.ids = append(f.ids, evID)
	}
}

// TestRoomFedJoinEventCap: a hostile resident pads its /state answer (a
// faster join's resync) and its send_join answer (a full join) with 100
// validly signed tiny events, over joiners configured to take 40. The
// resync fails and is retried, storing none of the answer, the partial
// state it had kept as it was, and completes once the padding stops; the
// full join is refused with M_RESOURCE_LIMIT_EXCEEDED and leaves nothing
// of the answer stored (the same join succeeds without the padding).
func TestRoomFedJoinEventCap(t *testing.T) {
	ca := newRFCA(t)
	inf := &inflater{}
	a := startRFNodeWrapped(t, ca, inf.wrap)
	capped := func(faster bool) func(*config.Config) {
		return func(c *config.Config) {
			c.Federation.MaxJoinEvents = 40
			c.Federation.FasterJoins = faster
		}
	}
	b := startRFNode(t, ca, capped(false))
	c := startRFNode(t, ca, capped(true))
	alice := a.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	inf.forgeExtra(t, a, roomID.String(), alice.UserID.String(), 100)
	create, _ := rfStateEvent(t, a, roomID, "m.room.create", "")
	createID := create.ID
	// storedNone: no ID indexed, and no record (indexed or not: a join's
	// answer is stored before it is indexed) of a padding event.
	storedNone := func(n *rfNode, ids []string) error {
		for _, id := range ids {
			if _, ok := rfStoredFlags(n, id); ok {
				return fmt.Errorf("%s indexed %s", n.Name, id)
			}
		}
		records := 0
		_ = n.Store.View(func(tx *store.Tx) error {
			for nid := uint64(1); nid < 20_000; nid++ {
				if se, err := tx.Event(nid); err == nil && strings.Contains(string(se.JSON), `"filler `) {
					records++
				}
			}
			return nil
		})
		if records > 0 {
			return fmt.Errorf("%s kept %d records of padding events", n.Name, records)
		}
		return nil
	}

	// The faster join: its send_join answer is small and taken; the
	// resync's /state answer is padded past the cap.
	failures := roomfed.PartialStats.Failures.Load()
	carol := c.register(t, "carol")
	// The resync waits a little, so that the padding starts after the
	// join (its send_join answer would carry it too).
	roomfed.PartialResyncDelay = 1500 * time.Millisecond
	t.Cleanup(func() { roomfed.PartialResyncDelay = 0 })
	if _, err := carol.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("carol's faster join: %v", err)
	}
	// The padded IDs in /state_ids make the resync fetch /state (not one
	// /event each), whose padded answer is over the cap.
	inf.on.Store(true)
	waitFor(t, 30*time.Second, "the padded resync to fail", func() bool {
		return roomfed.PartialStats.Failures.Load() > failures
	})
	partial := false
	_ = c.Store.View(func(tx *store.Tx) error {
		_, err := tx.PartialState(roomID.String())
		partial = err == nil
		return nil
	})
	if !partial {
		t.Fatal("the room's state is complete after a resync over the cap")
	}
	if err := storedNone(c, inf.ids); err != nil {
		t.Fatalf("after the refused resync: %v", err)
	}
	if _, ok := rfStoredFlags(c, createID); !ok {
		t.Fatal("the refused resync dropped the partial state's create event")
	}
	// Unpadded, the resync completes.
	inf.on.Store(false)
	waitFor(t, 30*time.Second, "the resync without the padding", func() bool {
		done := false
		_ = c.Store.View(func(tx *store.Tx) error {
			_, err := tx.PartialState(roomID.String())
			done = errors.Is(err, store.ErrNotFound)
			return nil
		})
		return done
	})

	// Within the cap, the same padded /state is read as a stream and
	// taken: the resync completes, the padding stored, and a padding
	// event from a user not in the room stored rejected.
	mallory, malloryID := (&hostile{t: t, b: a, roomID: roomID}).forge(hostileMessage(alice.UserID.String(), "filler from mallory"),
		func(m map[string]any) { m["sender"] = "@mallory:" + a.Name })
	inf.extra = append(inf.extra, mallory)
	inf.ids = append(inf.ids, malloryID)
	d := startRFNode(t, ca)
	dave := d.register(t, "dave")
	inf.on.Store(false)
	if _, err := dave.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("dave's faster join: %v", err)
	}
	inf.on.Store(true)
	waitFor(t, 30*time.Second, "the padded resync within the cap", func() bool {
		done := false
		_ = d.Store.View(func(tx *store.Tx) error {
			_, err := tx.PartialState(roomID.String())
			done = errors.Is(err, store.ErrNotFound)
			return nil
		})
		return done
	})
	for i, id := range inf.ids {
		flags, ok := rfStoredFlags(d, id)
		switch {
		case !ok:
			t.Fatalf("the resync did not store padding event %d", i)
		case id == malloryID && flags&store.FlagRejected == 0:
			t.Fatal("mallory's event was stored as accepted")
		case id != malloryID && flags&store.FlagRejected != 0:
			t.Fatalf("padding event %d was stored rejected", i)
		}
	}
	inf.on.Store(false)

	// The full join: refused, nothing kept.
	inf.on.Store(true)
	bob := b.register(t, "bob")
	_, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.RespError == nil || he.RespError.ErrCode != "M_RESOURCE_LIMIT_EXCEEDED" || he.Response.StatusCode != http.StatusBadRequest {
		t.Fatalf("a join over the cap: got %v, want 400 M_RESOURCE_LIMIT_EXCEEDED", err)
	}
	if err := storedNone(b, append([]string{createID}, inf.ids...)); err != nil {
		t.Fatalf("after the refused join: %v", err)
	}
	inf.on.Store(false)
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("the same join without the padding: %v", err)
	}
	if _, ok := rfStoredFlags(b, createID); !ok {
		t.Fatal("B joined without storing the create event")
	}
	// Refused or completed, no join or state fetch left its records
	// noted for the sweep on the next start.
	rfNoPendingRecords(t, b, c, d)
}
