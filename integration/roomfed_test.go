package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
	"edge/edge/room"
	"edge/edge/store"
	"edge/federation"
)

// rfCA issues loopback certificates for federation listeners.
type rfCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	leaf tls.Certificate
}

func newRFCA(t testing.TB) *rfCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &rfCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lt := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	lder, err := x509.CreateCertificate(rand.Reader, lt, cert, &leafKey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca.leaf = tls.Certificate{Certificate: [][]byte{lder}, PrivateKey: leafKey}
	return ca
}

// rfNode is a node whose server name is its TLS listener, "127.0.0.1:PORT",
// serving the whole node there (federation included); clients use the
// plain listener of startNode.
type rfNode struct {
	*testNode
	Name string
}

func startRFNode(t testing.TB, ca *rfCA, opts ...func(*config.Config)) *rfNode {
	t.Helper()
	return startRFNodeWrapped(t, ca, nil, opts...)
}

// startRFNodeWrapped is startRFNode with the TLS listener's handler
// wrapped (to count or alter what the node answers other servers).
func startRFNodeWrapped(t testing.TB, ca *rfCA, wrap func(http.Handler) http.Handler, opts ...func(*config.Config)) *rfNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	name := ln.Addr().String()
	caFile := filepath.Join(t.TempDir(), "federation-ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, func(c *config.Config) {
		c.ServerName = name
		c.Federation.TrustCAFile = caFile
		c.Federation.AllowPrivateAddresses = true
		c.Federation.TrustedKeyServers = nil
		for _, o := range opts {
			o(c)
		}
	})
	h := n.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.leaf}}}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return &rfNode{testNode: n, Name: name}
}

// rfSyncer follows one client's /sync and collects what it sees.
type rfSyncer struct {
	c     *mautrix.Client
	since string
	// filter replaces rfSyncFilter when set (a partial-state room shows
	// only to syncs that lazy-load members).
	filter string
	seen   []*event.Event // timeline events of every room, in order
}

// rfSyncFilter is the inline /sync filter of rfSyncer.
const rfSyncFilter = `{"room":{"timeline":{"limit":1000}}}`

// until syncs until ok holds for the events seen so far.
func (s *rfSyncer) until(t *testing.T, what string, ok func(evs []*event.Event) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok(s.seen) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s; saw %d events", s.c.UserID, what, len(s.seen))
		}
		// An inline filter with a large timeline: the default limit (10)
		// would cut a busy stretch short and lose events silently.
		f := s.filter
		if f == "" {
			f = rfSyncFilter
		}
		resp, err := s.c.SyncRequest(ctxT(t), 2000, s.since, f, false, "")
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		s.since = resp.NextBatch
		for roomID, jr := range resp.Rooms.Join {
			for _, ev := range jr.Timeline.Events {
				ev.RoomID = roomID
				s.seen = append(s.seen, ev)
			}
		}
	}
}

// rfPromote has admin (on its server) give member the power level, and
// waits until member's server shows it.
func rfPromote(t *testing.T, admin, member *rfSyncer, roomID id.RoomID, level int) {
	t.Helper()
	ctx := ctxT(t)
	var pl map[string]any
	if err := admin.c.StateEvent(ctx, roomID, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	users, _ := pl["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	users[member.c.UserID.String()] = level
	pl["users"] = users
	resp, err := admin.c.SendStateEvent(ctx, roomID, event.StatePowerLevels, "", pl)
	if err != nil {
		t.Fatal(err)
	}
	member.until(t, "the promotion", rfHasEvent("m.room.power_levels", func(ev *event.Event) bool { return ev.ID == resp.EventID }))
}

func rfHasEvent(evType string, match func(*event.Event) bool) func([]*event.Event) bool {
	return func(evs []*event.Event) bool {
		for _, ev := range evs {
			if ev.Type.Type == evType && match(ev) {
				return true
			}
		}
		return false
	}
}

func rfBodies(evs []*event.Event, roomID id.RoomID) []string {
	var out []string
	for _, ev := range evs {
		if ev.RoomID == roomID && ev.Type.Type == "m.room.message" {
			var c struct {
				Body string `json:"body"`
			}
			_ = json.Unmarshal(ev.Content.VeryRaw, &c)
			out = append(out, c.Body)
		}
	}
	return out
}

// rfJoinedPair starts nodes A and B, alice@A creates a public room, bob@B
// joins it through A, and alice sees the join.
func rfJoinedPair(t *testing.T, ca *rfCA, version string) (a, b *rfNode, alice, bob *rfSyncer, roomID id.RoomID) {
	t.Helper()
	a, b = startRFNode(t, ca), startRFNode(t, ca)
	alice = &rfSyncer{c: a.register(t, "alice")}
	bob = &rfSyncer{c: b.register(t, "bob")}
	roomID = mustCreateRoom(t, alice.c, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "federated", RoomVersion: id.RoomVersion(version)})
	alice.until(t, "the room's creation", rfHasEvent("m.room.create", func(*event.Event) bool { return true }))
	resp, err := bob.c.JoinRoom(ctxT(t), roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
	if err != nil {
		t.Fatalf("bob joins through A: %v", err)
	}
	if resp.RoomID != roomID {
		t.Fatalf("join answered room %s, want %s", resp.RoomID, roomID)
	}
	isBobJoin := func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == bob.c.UserID.String() && ev.Content.Raw["membership"] == "join"
	}
	alice.until(t, "bob's join", rfHasEvent("m.room.member", isBobJoin))
	bob.until(t, "his own join", rfHasEvent("m.room.member", isBobJoin))
	return a, b, alice, bob, roomID
}

// TestRoomFedJoinAndChat: bob on B joins alice's room on A by room ID with
// A as via, both see each other's messages in order, a third server with
// no member in the room may not read its state, and bob's leave reaches A;
// in room versions 10 (room IDs with a domain) and 12.
func TestRoomFedJoinAndChat(t *testing.T) {
	for _, v := range []string{"10", "12"} {
		t.Run("v"+v, func(t *testing.T) { testJoinAndChat(t, v) })
	}
}

func testJoinAndChat(t *testing.T, version string) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, version)

	// bob's room state came from send_join: he sees the room's name.
	var name struct {
		Name string `json:"name"`
	}
	if err := bob.c.StateEvent(ctxT(t), roomID, event.StateRoomName, "", &name); err != nil || name.Name != "federated" {
		t.Fatalf("bob reads the room name: %q, %v", name.Name, err)
	}

	want := []string{"hello from A", "hello from B", "second from A", "second from B"}
	var lastID id.EventID
	for i, text := range want {
		sender, other := alice, bob
		if i%2 == 1 {
			sender, other = bob, alice
		}
		resp, err := sender.c.SendText(ctxT(t), roomID, text)
		if err != nil {
			t.Fatalf("%s sends: %v", sender.c.UserID, err)
		}
		lastID = resp.EventID
		other.until(t, text, func(evs []*event.Event) bool { return slices.Contains(rfBodies(evs, roomID), text) })
	}
	alice.until(t, "own messages", func(evs []*event.Event) bool { return len(rfBodies(evs, roomID)) == len(want) })
	bob.until(t, "own messages", func(evs []*event.Event) bool { return len(rfBodies(evs, roomID)) == len(want) })
	for _, s := range []*rfSyncer{alice, bob} {
		if got := rfBodies(s.seen, roomID); !slices.Equal(got, want) {
			t.Fatalf("%s saw %q, want %q", s.c.UserID, got, want)
		}
	}

	// History visibility: C has no member in the room; B has.
	c := startRFNode(t, ca)
	path := "/_matrix/federation/v1/state_ids/" + url.PathEscape(roomID.String()) + "?event_id=" + url.QueryEscape(lastID.String())
	err := c.Fed.Client.Get(ctxT(t), a.Name, path, nil)
	var re *federation.RemoteError
	if !errors.As(err, &re) || re.Status != http.StatusForbidden || re.Code != "M_FORBIDDEN" {
		t.Fatalf("state_ids for a server without members: %v, want 403 M_FORBIDDEN", err)
	}
	var ids struct {
		PDUIDs  []string `json:"pdu_ids"`
		AuthIDs []string `json:"auth_chain_ids"`
	}
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, &ids); err != nil {
		t.Fatalf("state_ids for a joined server: %v", err)
	}
	if len(ids.PDUIDs) < 6 || len(ids.AuthIDs) == 0 {
		t.Fatalf("state_ids: %d state, %d auth chain events", len(ids.PDUIDs), len(ids.AuthIDs))
	}
	// The state before the last message holds bob's join.
	var bobJoin string
	_ = a.Store.View(func(tx *store.Tx) error {
		r, _ := tx.Room(roomID.String())
		st, _ := a.Rooms.State(tx, r.State)
		if ev, _ := a.Rooms.StateEvent(tx, st, "m.room.member", bob.c.UserID.String()); ev != nil {
			bobJoin = ev.ID
		}
		return nil
	})
	if bobJoin == "" || !slices.Contains(ids.PDUIDs, bobJoin) {
		t.Fatalf("state_ids %v lack bob's join %q", ids.PDUIDs, bobJoin)
	}

	// bob leaves on B; the leave reaches A, whose server list loses B.
	if _, err := bob.c.LeaveRoom(ctxT(t), roomID); err != nil {
		t.Fatalf("bob leaves: %v", err)
	}
	alice.until(t, "bob's leave", rfHasEvent("m.room.member", func(ev *event.Event) bool {
		return ev.RoomID == roomID && ev.GetStateKey() == bob.c.UserID.String() && ev.Content.Raw["membership"] == "leave"
	}))
	if err := b.Fed.Client.Get(ctxT(t), a.Name, path, nil); !errors.As(err, &re) || re.Status != http.StatusForbidden {
		t.Fatalf("state_ids after B's last member left: %v, want 403", err)
	}
}

// TestRoomFedBadPDU: a PDU whose signature does not verify is refused; one
// whose content does not match its hash is kept redacted.
func TestRoomFedBadPDU(t *testing.T) {
	ca := newRFCA(t)
	a, b, _, bob, roomID := rfJoinedPair(t, ca, "12")

	// A PDU from B that B never stored: built and rolled back.
	errRollback := errors.New("rollback")
	build := func(text string) map[string]any {
		var raw []byte
		err := b.Store.Write(func(tx *store.Tx) error {
			content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": text})
			ev, err := b.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.message", Sender: bob.c.UserID.String(), Content: content})
			if err != nil {
				return err
			}
			raw = ev.Raw
			return errRollback
		})
		if !errors.Is(err, errRollback) {
			t.Fatalf("building a PDU: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	send := func(txn string, pdu map[string]any) (string, string) {
		raw, _ := json.Marshal(pdu)
		ev, err := room.ParseEvent("12", raw, "")
		if err != nil {
			t.Fatal(err)
		}
		var resp struct {
			PDUs map[string]struct {
				Error string `json:"error"`
			} `json:"pdus"`
		}
		body := map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{raw}}
		if err := b.Fed.Client.Put(ctxT(t), a.Name, "/_matrix/federation/v1/send/"+txn, body, &resp); err != nil {
			t.Fatalf("send: %v", err)
		}
		r, ok := resp.PDUs[ev.ID]
		if !ok {
			t.Fatalf("no result for %s in %+v", ev.ID, resp.PDUs)
		}
		return ev.ID, r.Error
	}
	stored := func(eventID string) *room.Event {
		var ev *room.Event
		_ = a.Store.View(func(tx *store.Tx) error {
			ev, _ = a.Rooms.EventByID(tx, eventID)
			return nil
		})
		return ev
	}

	// Bad signature: another signature of the right shape.
	pdu := build("forged")
	sigs := pdu["signatures"].(map[string]any)[b.Name].(map[string]any)
	for k, v := range sigs {
		s := v.(string)
		sigs[k] = strings.Repeat("A", len(s)-1) + s[len(s)-1:]
	}
	evID, errMsg := send("bad-signature", pdu)
	if errMsg == "" || !strings.Contains(errMsg, "signature") {
		t.Fatalf("a PDU with a bad signature was answered %q", errMsg)
	}
	if stored(evID) != nil {
		t.Fatal("a PDU with a bad signature was stored")
	}

	// Bad content hash: the content changed after signing. The signature
	// (over the redacted form) and the event ID still hold.
	pdu = build("original")
	pdu["content"].(map[string]any)["body"] = "tampered"
	evID, errMsg = send("bad-hash", pdu)
	if errMsg != "" {
		t.Fatalf("a PDU with a bad content hash was refused: %q; the spec keeps it redacted", errMsg)
	}
	ev := stored(evID)
	if ev == nil {
		t.Fatal("the PDU with a bad content hash was not stored")
	}
	if string(ev.Content) != "{}" {
		t.Fatalf("stored content %s, want the redacted {}", ev.Content)
	}

	// A good PDU from the same builder passes, as a control.
	evID, errMsg = send("good", build("fine"))
	if ev := stored(evID); errMsg != "" || ev == nil || !strings.Contains(string(ev.Content), "fine") {
		t.Fatalf("a good PDU: error %q, stored %v", errMsg, ev != nil)
	}
}

// TestRoomFedMissingEvents: B sends A only the second of two new events;
// A fetches the first with get_missing_events from B and applies both in
// order, and alice sees them in order.
func TestRoomFedMissingEvents(t *testing.T) {
	ca := newRFCA(t)
	a, b, alice, bob, roomID := rfJoinedPair(t, ca, "12")

	// Store two events on B without queueing them to A: the test turns
	// B's federation hook off while it writes (nothing else writes now).
	hook := b.Rooms.InTx
	b.Rooms.InTx = nil
	var raws []json.RawMessage
	var evIDs []string
	err := b.Store.Write(func(tx *store.Tx) error {
		raws, evIDs = nil, nil
		for _, text := range []string{"first unseen", "second unseen"} {
			content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": text})
			ev, err := b.Rooms.Send(tx, roomID.String(), room.Proto{Type: "m.room.message", Sender: bob.c.UserID.String(), Content: content})
			if err != nil {
				return err
			}
			raws, evIDs = append(raws, ev.Raw), append(evIDs, ev.ID)
		}
		return nil
	})
	b.Rooms.InTx = hook
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		PDUs map[string]struct {
			Error string `json:"error"`
		} `json:"pdus"`
	}
	body := map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{raws[1]}}
	if err := b.Fed.Client.Put(ctxT(t), a.Name, "/_matrix/federation/v1/send/gap", body, &resp); err != nil {
		t.Fatal(err)
	}
	if r, ok := resp.PDUs[evIDs[1]]; !ok || r.Error != "" {
		t.Fatalf("the event after a gap: %+v", resp.PDUs)
	}
	_ = a.Store.View(func(tx *store.Tx) error {
		for _, eid := range evIDs {
			if ev, err := a.Rooms.EventByID(tx, eid); err != nil || ev.Pos == 0 {
				t.Errorf("A lacks %s in its timeline: %v", eid, err)
			}
		}
		return nil
	})
	alice.until(t, "both events", func(evs []*event.Event) bool { return len(rfBodies(evs, roomID)) == 2 })
	if got := rfBodies(alice.seen, roomID); !slices.Equal(got, []string{"first unseen", "second unseen"}) {
		t.Fatalf("alice saw %q", got)
	}
}
