package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
	"edge/federation"
)

// paginateBack follows /messages backwards from the newest event until
// no end token is given, returning every event, newest first.
func paginateBack(t *testing.T, c *mautrix.Client, roomID id.RoomID, limit int) []*event.Event {
	t.Helper()
	evs, _ := paginate(t, c, roomID, "", mautrix.DirectionBackward, limit)
	return evs
}

// paginate follows /messages in dir from the token from until no end token
// is given, returning every event in the order served and the token the
// last page was asked from.
func paginate(t *testing.T, c *mautrix.Client, roomID id.RoomID, from string, dir mautrix.Direction, limit int) ([]*event.Event, string) {
	t.Helper()
	var out []*event.Event
	for range 50 {
		resp, err := c.Messages(ctxT(t), roomID, from, "", dir, nil, limit)
		if err != nil {
			t.Fatalf("messages from %q: %v", from, err)
		}
		out = append(out, resp.Chunk...)
		if resp.End == "" {
			return out, from
		}
		from = resp.End
	}
	t.Fatalf("/messages never ended; %d events so far", len(out))
	return nil, ""
}

func messageBodies(evs []*event.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type.Type == "m.room.message" {
			b, _ := ev.Content.Raw["body"].(string)
			out = append(out, b)
		}
	}
	return out
}

// TestRoomFedBackfill: alice sends 60 messages in a shared-history room
// before bob's server joins; bob's /messages backwards from his join
// reaches all of them, newest first, then the room's creation, through
// /backfill; the gap is then marked done so it is not asked again. The
// served side: backfill's v/limit answer, event_auth's auth chain, and a
// server with no member in the room refused.
func TestRoomFedBackfill(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := b.register(t, "bob")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "history", RoomVersion: "10"})
	var want []string
	var sent []id.EventID
	for i := range 60 {
		body := fmt.Sprintf("m%02d", i)
		resp, err := alice.SendText(ctxT(t), roomID, body)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, body)
		sent = append(sent, resp.EventID)
	}
	if _, err := bob.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}

	evs := paginateBack(t, bob, roomID, 25)
	got := messageBodies(evs)
	slices.Reverse(got)
	if !slices.Equal(got, want) {
		t.Fatalf("bob's history (%d messages) = %v, want m00…m59 in order", len(got), got)
	}
	seen := map[id.EventID]bool{}
	for _, ev := range evs {
		if seen[ev.ID] {
			t.Fatalf("event %s returned twice", ev.ID)
		}
		seen[ev.ID] = true
	}
	if last := evs[len(evs)-1]; last.Type.Type != "m.room.create" {
		t.Fatalf("history ends with %s, want the room's creation", last.Type.Type)
	}
	err := b.Store.View(func(tx *store.Tx) error {
		raw, err := tx.GetKV("backfill_gap", roomID.String())
		if err != nil {
			return err
		}
		var gap struct {
			Done bool `json:"done"`
		}
		if err := json.Unmarshal(raw, &gap); err != nil || !gap.Done {
			return fmt.Errorf("gap %s not done", raw)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after full pagination: %v", err)
	}
	// Paging again is served from what B holds.
	if again := messageBodies(paginateBack(t, bob, roomID, 100)); len(again) != 60 {
		t.Fatalf("second pagination: %d messages, want 60", len(again))
	}

	// Served side, asked by B's own signed requests.
	var bf struct {
		Origin string            `json:"origin"`
		PDUs   []json.RawMessage `json:"pdus"`
	}
	path := "/_matrix/federation/v1/backfill/" + url.PathEscape(roomID.String()) + "?v=" + url.QueryEscape(sent[59].String()) + "&limit=5"
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &bf); err != nil {
		t.Fatalf("backfill: %v", err)
	}
	if bf.Origin != a.Name || len(bf.PDUs) != 5 {
		t.Fatalf("backfill answered origin %q with %d pdus, want %q and 5", bf.Origin, len(bf.PDUs), a.Name)
	}
	var firstID struct {
		Content struct {
			Body string `json:"body"`
		} `json:"content"`
	}
	_ = json.Unmarshal(bf.PDUs[0], &firstID)
	if firstID.Content.Body != "m59" {
		t.Fatalf("backfill starts with %q, want the v event m59", firstID.Content.Body)
	}

	var ea struct {
		AuthChain []struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
		} `json:"auth_chain"`
	}
	path = "/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape(sent[10].String())
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &ea); err != nil {
		t.Fatalf("event_auth: %v", err)
	}
	types := map[string]bool{}
	for _, x := range ea.AuthChain {
		types[x.Type+"|"+x.StateKey] = true
	}
	for _, k := range []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + alice.UserID.String()} {
		if !types[k] {
			t.Fatalf("event_auth chain lacks %s: %v", k, types)
		}
	}
	if types["m.room.message|"] {
		t.Fatalf("event_auth chain holds a message")
	}
	path = "/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape("$nope")
	var re *federation.RemoteError
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &ea); !errors.As(err, &re) || re.Status != http.StatusNotFound {
		t.Fatalf("event_auth of an unknown event: %v, want 404", err)
	}

	// A server with no member in the room gets neither.
	c := startRFNode(t, ca)
	for _, p := range []string{
		"/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID.String()) + "/" + url.PathEscape(sent[10].String()),
		"/_matrix/federation/v1/backfill/" + url.PathEscape(roomID.String()) + "?v=" + url.QueryEscape(sent[59].String()) + "&limit=5",
	} {
		var out map[string]any
		if err := c.Fed.Client.Get(ctxT(t), a.Name, p, &out); !errors.As(err, &re) || re.Status != http.StatusForbidden {
			t.Fatalf("%s from a server not in the room: %v, want 403", p, err)
		}
	}
}
