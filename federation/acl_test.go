package federation

import (
	"encoding/json"
	"testing"

	"edge/edge/room"
	"edge/edge/store"
)

func TestFederationACLEvaluation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		server  string
		allowed bool
	}{
		{"allow all", `{"allow":["*"]}`, "example.org", true},
		{"no allow list allows nobody", `{"deny":["evil.com"]}`, "example.org", false},
		{"empty content allows nobody", `{}`, "example.org", false},
		{"deny wins over allow", `{"allow":["*"],"deny":["evil.com"]}`, "evil.com", false},
		{"port is ignored", `{"allow":["*"],"deny":["evil.com"]}`, "evil.com:8448", false},
		{"port ignored on allow", `{"allow":["good.org"]}`, "good.org:1234", true},
		{"glob star", `{"allow":["*"],"deny":["*.evil.com"]}`, "a.b.evil.com", false},
		{"glob star needs the dot", `{"allow":["*"],"deny":["*.evil.com"]}`, "evil.com", true},
		{"question mark is exactly one char", `{"allow":["ma?ix.org"]}`, "matrix.org", false},
		{"glob question mark one char", `{"allow":["matri?.org"]}`, "matrix.org", true},
		{"question mark needs a char", `{"allow":["matrix.org?"]}`, "matrix.org", false},
		{"case-insensitive", `{"allow":["*.EXAMPLE.org"]}`, "Chat.Example.ORG", true},
		{"star matches empty", `{"allow":["matrix*.org"]}`, "matrix.org", true},
		{"backtracking", `{"allow":["*a*b*c"]}`, "xxaxxbxxbxxc", true},
		{"backtracking fails", `{"allow":["*a*b*c"]}`, "xxaxxcxxb", false},
		{"ipv4 literal allowed by default", `{"allow":["*"]}`, "1.2.3.4:8448", true},
		{"ipv4 literal denied", `{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.4:8448", false},
		{"ipv6 literal denied", `{"allow":["*"],"allow_ip_literals":false}`, "[::1]:8448", false},
		{"non-bool allow_ip_literals means true", `{"allow":["*"],"allow_ip_literals":"no"}`, "1.2.3.4", true},
		{"dotted name is not an ip", `{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.example", true},
		{"ipv6 glob with brackets", `{"allow":["[::1]"]}`, "[::1]:8448", true},
		{"non-string entries skipped", `{"allow":[1,null,"ok.org"]}`, "ok.org", true},
		{"allow not a list", `{"allow":"*"}`, "ok.org", false},
		{"deny not a list", `{"allow":["*"],"deny":"ok.org"}`, "ok.org", true},
		{"not JSON", `nope`, "ok.org", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseServerACL(json.RawMessage(tc.content)).Allows(tc.server); got != tc.allowed {
				t.Fatalf("%s under %s: allowed=%v, want %v", tc.server, tc.content, got, tc.allowed)
			}
		})
	}
}

func TestFederationACLCheck(t *testing.T) {
	s := &Server{}
	if err := s.ACLCheck("evil.com", "!r:x"); err != nil {
		t.Fatalf("no ACL source: %v", err)
	}
	s.ACLSource = func(roomID string) (json.RawMessage, string, error) {
		if roomID == "!acl:x" {
			return json.RawMessage(`{"allow":["*"],"deny":["evil.com"]}`), "10", nil
		}
		return nil, "10", nil
	}
	if err := s.ACLCheck("evil.com", "!acl:x"); err == nil {
		t.Fatal("denied server passed")
	}
	if err := s.ACLCheck("good.org", "!acl:x"); err != nil {
		t.Fatalf("allowed server: %v", err)
	}
	if err := s.ACLCheck("evil.com", "!other:x"); err != nil {
		t.Fatalf("room without ACL: %v", err)
	}
	if e := toError(s.ACLCheck("evil.com", "!acl:x")); e.Status != 403 || e.Code != "M_FORBIDDEN" {
		t.Fatalf("ACL denial maps to %d %s, want 403 M_FORBIDDEN", e.Status, e.Code)
	}
}

func TestFederationRoomACLSource(t *testing.T) {
	n := startNode(t, nodeOpts{})
	rooms := room.New(room.Signer{ServerName: n.name, KeyID: n.keys[0].ID, Key: n.keys[0].Priv}, room.CacheSizes{StateSnapshots: 16, StateEntries: 1 << 16, Events: 64, AuthChainIDs: 1 << 16, Resolutions: 64})
	src := RoomACLSource(n.store, rooms)
	alice := "@alice:" + n.name
	var roomID string
	if err := n.store.Write(func(tx *store.Tx) error {
		var err error
		roomID, err = rooms.CreateRoom(tx, room.CreateOptions{Creator: alice, Version: "10", Preset: "public_chat"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if acl, version, err := src(roomID); err != nil || acl != nil || version != "10" {
		t.Fatalf("room without ACL: %s %q %v", acl, version, err)
	}
	if acl, version, err := src("!unknown:x"); err != nil || acl != nil || version != "" {
		t.Fatalf("unknown room: %s %q %v", acl, version, err)
	}
	empty := ""
	if err := n.store.Write(func(tx *store.Tx) error {
		_, err := rooms.Send(tx, roomID, room.Proto{Type: "m.room.server_acl", StateKey: &empty, Sender: alice,
			Content: json.RawMessage(`{"allow":["*"],"deny":["evil.example"]}`)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	n.srv.ACLSource = src
	if err := n.srv.ACLCheck("evil.example:8448", roomID); err == nil {
		t.Fatal("the room's ACL did not deny evil.example")
	}
	if err := n.srv.ACLCheck("good.example", roomID); err != nil {
		t.Fatalf("good.example: %v", err)
	}
}
