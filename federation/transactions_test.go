package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// recorder collects what the transaction hooks receive.
type recorder struct {
	mu       sync.Mutex
	calls    int
	pdus     []string // event_id fields, in arrival order
	edus     []EDU
	txnSizes []int
}

func (rec *recorder) hook(s *Server) {
	s.OnPDUs = func(_ context.Context, origin string, pdus []json.RawMessage) map[string]error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.calls++
		rec.txnSizes = append(rec.txnSizes, len(pdus))
		out := map[string]error{}
		for _, p := range pdus {
			var e struct {
				ID string `json:"event_id"`
			}
			_ = json.Unmarshal(p, &e)
			rec.pdus = append(rec.pdus, e.ID)
			out[e.ID] = nil
			if strings.HasPrefix(e.ID, "$bad") {
				out[e.ID] = errors.New("rejected by test")
			}
		}
		return out
	}
	s.OnEDU = func(_ context.Context, origin string, edu EDU) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.edus = append(rec.edus, edu)
	}
}

func (rec *recorder) snapshot() ([]string, []EDU, int) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.pdus...), append([]EDU(nil), rec.edus...), rec.calls
}

func fakePDU(id string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"event_id":%q,"type":"m.room.message","content":{}}`, id))
}

type sendResp struct {
	PDUs map[string]struct {
		Error string `json:"error"`
	} `json:"pdus"`
}

func TestFederationSendInbound(t *testing.T) {
	rec := &recorder{}
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{setup: rec.hook})
	ctx := ctxT(t)
	txn := map[string]any{
		"origin": a.name, "origin_server_ts": 1,
		"pdus": []json.RawMessage{fakePDU("$good"), fakePDU("$bad")},
		"edus": []EDU{{Type: "m.typing", Content: json.RawMessage(`{"room_id":"!r:x","user_id":"@u:x","typing":true}`)}},
	}
	var r1 sendResp
	if err := a.srv.Client.Put(ctx, b.name, "/_matrix/federation/v1/send/t1", txn, &r1); err != nil {
		t.Fatal(err)
	}
	if _, ok := r1.PDUs["$good"]; !ok || r1.PDUs["$good"].Error != "" || r1.PDUs["$bad"].Error != "rejected by test" {
		t.Fatalf("results %+v", r1.PDUs)
	}
	_, edus, _ := rec.snapshot()
	if len(edus) != 1 || edus[0].Type != "m.typing" {
		t.Fatalf("EDUs %+v", edus)
	}
	// The same txnId again: the same answer, nothing processed twice.
	var r2 sendResp
	if err := a.srv.Client.Put(ctx, b.name, "/_matrix/federation/v1/send/t1", txn, &r2); err != nil {
		t.Fatal(err)
	}
	if pdus, edus, calls := rec.snapshot(); calls != 1 || len(pdus) != 2 || len(edus) != 1 {
		t.Fatalf("a repeated transaction was processed again: %d calls, %v, %d EDUs", calls, pdus, len(edus))
	}
	if r2.PDUs["$bad"].Error != "rejected by test" || len(r2.PDUs) != 2 {
		t.Fatalf("repeat answered %+v, want the first answer", r2.PDUs)
	}
	// The record survives a restart of the receiver.
	b.stop()
	rec2 := &recorder{}
	b2 := startNode(t, nodeOpts{dir: b.dir, name: b.name, setup: rec2.hook})
	var r3 sendResp
	if err := a.srv.Client.Put(ctx, b2.name, "/_matrix/federation/v1/send/t1", txn, &r3); err != nil {
		t.Fatal(err)
	}
	if _, _, calls := rec2.snapshot(); calls != 0 || len(r3.PDUs) != 2 {
		t.Fatalf("after restart: %d calls, answer %+v", calls, r3.PDUs)
	}
	// Another txnId is another transaction; and txnIds are per origin.
	if err := a.srv.Client.Put(ctx, b2.name, "/_matrix/federation/v1/send/t2", txn, nil); err != nil {
		t.Fatal(err)
	}
	c := startNode(t, nodeOpts{})
	if err := c.srv.Client.Put(ctx, b2.name, "/_matrix/federation/v1/send/t1", txn, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, calls := rec2.snapshot(); calls != 2 {
		t.Fatalf("%d transactions processed, want 2 (t2 from a, t1 from c)", calls)
	}
}

func TestFederationSendInboundLimits(t *testing.T) {
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{setup: (&recorder{}).hook})
	many := func(n int, item string) string {
		return "[" + strings.TrimSuffix(strings.Repeat(item+",", n), ",") + "]"
	}
	edu := `{"edu_type":"m.typing","content":{}}`
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"51 PDUs", `{"origin":"x","origin_server_ts":1,"pdus":` + many(51, `{}`) + `}`, 400, "M_BAD_JSON"},
		{"101 EDUs", `{"origin":"x","origin_server_ts":1,"pdus":[],"edus":` + many(101, edu) + `}`, 400, "M_BAD_JSON"},
		{"PDU not an object", `{"pdus":[1]}`, 400, "M_BAD_JSON"},
		{"EDU without type", `{"pdus":[],"edus":[{"content":{}}]}`, 400, "M_BAD_JSON"},
		{"pdus not a list", `{"pdus":{}}`, 400, "M_BAD_JSON"},
		{"not JSON", `{"pdus":`, 400, "M_NOT_JSON"},
		{"50 PDUs and 100 EDUs", `{"origin":"x","origin_server_ts":1,"pdus":` + many(50, `{}`) + `,"edus":` + many(100, edu) + `}`, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := "/_matrix/federation/v1/send/" + strings.ReplaceAll(tc.name, " ", "")
			auth, err := signRequest(a.name, b.name, a.keys[0], "PUT", path, []byte(tc.body))
			if err != nil {
				auth, _ = signRequest(a.name, b.name, a.keys[0], "PUT", path, nil)
			}
			status, body := call(t, b, "PUT", path, []byte(tc.body), auth)
			if status != tc.status || (tc.code != "" && errcode(t, body) != tc.code) {
				t.Fatalf("%d %s, want %d %s", status, body, tc.status, tc.code)
			}
		})
	}
}

func TestFederationSendInboundACL(t *testing.T) {
	rec := &recorder{}
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{setup: func(s *Server) {
		rec.hook(s)
		s.ACLSource = func(roomID string) (json.RawMessage, string, error) {
			if roomID == "!denied:x" {
				return json.RawMessage(`{"allow":["*"],"deny":["127.0.0.1"]}`), "10", nil
			}
			return nil, "10", nil
		}
		s.HandleRoom("GET /_matrix/federation/v1/test/room/{roomId}", func(r *Request) (any, error) {
			return map[string]string{"room": r.PathValue("roomId")}, nil
		})
	}})
	ctx := ctxT(t)
	denied := json.RawMessage(`{"type":"m.room.message","room_id":"!denied:x","sender":"@u:127.0.0.1","content":{"body":"hi"},` +
		`"origin_server_ts":1,"depth":3,"prev_events":["$p"],"auth_events":["$a"],"hashes":{"sha256":"aGk"},"signatures":{}}`)
	allowed := json.RawMessage(`{"event_id":"$fine","room_id":"!open:x","type":"m.room.message","content":{}}`)
	txn := map[string]any{
		"origin": a.name, "origin_server_ts": 1, "pdus": []json.RawMessage{denied, allowed},
		"edus": []EDU{
			{Type: "m.typing", Content: json.RawMessage(`{"room_id":"!denied:x","user_id":"@u:x","typing":true}`)},
			{Type: "m.receipt", Content: json.RawMessage(`{"!denied:x":{"m.read":{}},"!open:x":{"m.read":{}}}`)},
			{Type: "m.presence", Content: json.RawMessage(`{"push":[]}`)},
		},
	}
	var resp sendResp
	if err := a.srv.Client.Put(ctx, b.name, "/_matrix/federation/v1/send/acl1", txn, &resp); err != nil {
		t.Fatal(err)
	}
	pdus, edus, _ := rec.snapshot()
	if len(pdus) != 1 || pdus[0] != "$fine" {
		t.Fatalf("OnPDUs got %v, want only the PDU of the open room", pdus)
	}
	var deniedID string
	for id, r := range resp.PDUs {
		if id != "$fine" {
			deniedID = id
			if !strings.Contains(r.Error, "ACL") {
				t.Fatalf("denied PDU %s answered %q", id, r.Error)
			}
		}
	}
	if !strings.HasPrefix(deniedID, "$") || len(resp.PDUs) != 2 {
		t.Fatalf("answer %+v: want the denied PDU's event ID with an error", resp.PDUs)
	}
	if len(edus) != 2 || edus[0].Type != "m.receipt" || edus[1].Type != "m.presence" {
		t.Fatalf("EDUs %+v: want the typing EDU dropped", edus)
	}
	var receipt map[string]json.RawMessage
	_ = json.Unmarshal(edus[0].Content, &receipt)
	if _, ok := receipt["!denied:x"]; ok || receipt["!open:x"] == nil {
		t.Fatalf("receipt EDU %s: want only the open room", edus[0].Content)
	}
	// Endpoints that name a room answer 403 M_FORBIDDEN.
	var re *RemoteError
	err := a.srv.Client.Get(ctx, b.name, "/_matrix/federation/v1/test/room/%21denied%3Ax", nil)
	if !errors.As(err, &re) || re.Status != 403 || re.Code != "M_FORBIDDEN" {
		t.Fatalf("denied room endpoint: %v", err)
	}
	if err := a.srv.Client.Get(ctx, b.name, "/_matrix/federation/v1/test/room/%21open%3Ax", nil); err != nil {
		t.Fatalf("open room endpoint: %v", err)
	}
}

// TestFederationHandleEDU: a handler registered for a type gets that
// type's EDUs (an error drops only that EDU); OnEDU gets the others.
func TestFederationHandleEDU(t *testing.T) {
	rec := &recorder{}
	var mu sync.Mutex
	var typing []string
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{setup: func(s *Server) {
		rec.hook(s)
		s.HandleEDU("m.typing", func(_ context.Context, origin string, content json.RawMessage) error {
			mu.Lock()
			defer mu.Unlock()
			typing = append(typing, origin+" "+string(content))
			if strings.Contains(string(content), "bad") {
				return errors.New("bad typing EDU")
			}
			return nil
		})
	}})
	txn := map[string]any{
		"origin": a.name, "origin_server_ts": 1,
		"edus": []EDU{
			{Type: "m.typing", Content: json.RawMessage(`{"n":"bad"}`)},
			{Type: "org.example.other", Content: json.RawMessage(`{}`)},
			{Type: "m.typing", Content: json.RawMessage(`{"n":2}`)},
		},
	}
	if err := a.srv.Client.Put(ctxT(t), b.name, "/_matrix/federation/v1/send/e1", txn, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := fmt.Sprint(typing)
	mu.Unlock()
	if want := fmt.Sprint([]string{a.name + ` {"n":"bad"}`, a.name + ` {"n":2}`}); got != want {
		t.Fatalf("typing handler got %s, want %s", got, want)
	}
	if _, edus, _ := rec.snapshot(); len(edus) != 1 || edus[0].Type != "org.example.other" {
		t.Fatalf("OnEDU got %+v, want only the other type", edus)
	}
}
