package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/federation"
)

// fedPDUBody is the content.body of a PDU ("" when redacted away).
func fedPDUBody(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var p struct {
		Type    string         `json:"type"`
		Content map[string]any `json:"content"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	b, _ := p.Content["body"].(string)
	return b
}

// TestRoomFedHistoryVisibility: what A serves B of a room's history from
// before B's server joined depends on the history visibility at each
// event: a "joined" room's early messages come redacted through /event
// and /backfill (and bob does not see them), a "shared" room's whole; a
// message sent after B joined is whole in both; a server with no member
// gets 403.
func TestRoomFedHistoryVisibility(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	alice := a.register(t, "alice")
	bob := &rfSyncer{c: b.register(t, "bob")}
	c := startRFNode(t, ca)

	for _, hv := range []string{"joined", "shared"} {
		t.Run(hv, func(t *testing.T) {
			roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{
				Preset: "public_chat", RoomVersion: "10",
				InitialState: []*event.Event{{Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": hv}}}},
			})
			before, err := alice.SendText(ctxT(t), roomID, "before "+hv)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
				t.Fatalf("bob joins: %v", err)
			}
			after, err := alice.SendText(ctxT(t), roomID, "after "+hv)
			if err != nil {
				t.Fatal(err)
			}
			bob.until(t, "the message after his join", func(evs []*event.Event) bool {
				for _, ev := range evs {
					if ev.ID == after.EventID {
						return true
					}
				}
				return false
			})

			getEvent := func(eid id.EventID) string {
				var resp struct {
					PDUs []json.RawMessage `json:"pdus"`
				}
				if err := b.Fed.Client.Get(ctxT(t), a.Name, "/_matrix/federation/v1/event/"+url.PathEscape(eid.String()), &resp); err != nil {
					t.Fatalf("event %s: %v", eid, err)
				}
				if len(resp.PDUs) != 1 {
					t.Fatalf("event %s: %d pdus", eid, len(resp.PDUs))
				}
				return fedPDUBody(t, resp.PDUs[0])
			}
			wantBefore := "before " + hv
			if hv == "joined" {
				wantBefore = "" // redacted: B's server had no member then
			}
			if got := getEvent(before.EventID); got != wantBefore {
				t.Fatalf("/event of the message before the join: body %q, want %q", got, wantBefore)
			}
			if got := getEvent(after.EventID); got != "after "+hv {
				t.Fatalf("/event of the message after the join: body %q", got)
			}

			var bf struct {
				PDUs []json.RawMessage `json:"pdus"`
			}
			path := "/_matrix/federation/v1/backfill/" + url.PathEscape(roomID.String()) + "?v=" + url.QueryEscape(after.EventID.String()) + "&limit=20"
			if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &bf); err != nil {
				t.Fatalf("backfill: %v", err)
			}
			bodies := map[string]bool{}
			for _, raw := range bf.PDUs {
				bodies[fedPDUBody(t, raw)] = true
			}
			if !bodies["after "+hv] || bodies["before "+hv] != (hv == "shared") {
				t.Fatalf("backfill bodies %v: want %q, and %q only when shared", bodies, "after "+hv, "before "+hv)
			}

			// Bob's own history (through B's backfill) follows suit.
			got := messageBodies(paginateBack(t, bob.c, roomID, 50))
			sawBefore := false
			for _, body := range got {
				sawBefore = sawBefore || body == "before "+hv
			}
			if sawBefore != (hv == "shared") {
				t.Fatalf("bob's /messages %v: the early message visible = %v, want %v", got, sawBefore, hv == "shared")
			}

			var out map[string]any
			var re *federation.RemoteError
			if err := c.Fed.Client.Get(ctxT(t), a.Name, "/_matrix/federation/v1/event/"+url.PathEscape(after.EventID.String()), &out); !errors.As(err, &re) || re.Status != http.StatusForbidden {
				t.Fatalf("/event from a server not in the room: %v, want 403", err)
			}
		})
	}
}
