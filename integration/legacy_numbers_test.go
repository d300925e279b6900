package integration

import (
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestSendFloatContent: floats and integers past 2^53 in a client's event
// are 400 M_BAD_JSON, never a 500: v6+ rooms forbid them; v1–v5 rooms
// allowed them, but edge signs only canonical JSON's numbers (received
// v1–v5 events with them are accepted: room.TestCheckPDULegacyNumbers).
func TestSendFloatContent(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	body := json.RawMessage(`{"msgtype":"m.text","body":"pi","pi":3.14,"big":12345678901234567890}`)
	for _, tc := range []struct {
		version string
		status  int
	}{{"10", 400}, {"5", 400}} {
		roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(tc.version)})
		var resp map[string]any
		_, err := alice.MakeRequest(ctx, "PUT", alice.BuildClientURL("v3", "rooms", roomID, "send", "m.room.message", "t"+tc.version), body, &resp)
		st, code := matrixErr(err)
		if st != tc.status || code != "M_BAD_JSON" {
			t.Errorf("v%s: float content answered %d %s (%v), want %d", tc.version, st, code, err, tc.status)
		}
	}
	// The same for state and for a new room's creation content.
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	var resp map[string]any
	_, err := alice.MakeRequest(ctx, "PUT", alice.BuildClientURL("v3", "rooms", roomID, "state", "org.example.x", ""), json.RawMessage(`{"x":0.5}`), &resp)
	if st, code := matrixErr(err); st != 400 || code != "M_BAD_JSON" {
		t.Errorf("float state answered %d %s (%v)", st, code, err)
	}
	_, err = alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "createRoom"), json.RawMessage(`{"creation_content":{"x":1e400}}`), &resp)
	if st, code := matrixErr(err); st != 400 || code != "M_BAD_JSON" {
		t.Errorf("float creation_content answered %d %s (%v)", st, code, err)
	}
}
