package room

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"
)

// agree asserts that CheckPDU sees raw as ParseEvent and mautrix's PDU
// type do: the same event ID, content-hash verdict and signature verdicts.
func agree(t *testing.T, version string, raw []byte, getKey pdu.GetKeyFunc, servers ...string) *Checked {
	t.Helper()
	want, err := ParseEvent(version, stripUnsignedForTest(t, raw), "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := CheckPDU(version, raw)
	if err != nil {
		t.Fatalf("CheckPDU: %v", err)
	}
	if got.ID != want.ID {
		t.Errorf("event ID = %s, mautrix says %s", got.ID, want.ID)
	}
	if w := want.VerifyContentHash(); got.ContentHashOK != w {
		t.Errorf("content hash ok = %v, mautrix says %v", got.ContentHashOK, w)
	}
	for _, srv := range servers {
		g, w := got.VerifySignature(srv, getKey), want.VerifySignature(srv, getKey)
		if (g == nil) != (w == nil) {
			t.Errorf("signature of %s: CheckPDU %v, mautrix %v", srv, g, w)
		}
	}
	var gc, wc any
	_ = json.Unmarshal(got.Content, &gc)
	_ = json.Unmarshal(want.Content, &wc)
	if got.Type != want.Type || got.Sender != want.Sender || got.Depth != want.Depth || !reflect.DeepEqual(gc, wc) {
		t.Errorf("parsed fields differ: %s %s %d %s vs %s %s %d %s", got.Type, got.Sender, got.Depth, got.Content, want.Type, want.Sender, want.Depth, want.Content)
	}
	return got
}

func stripUnsignedForTest(t *testing.T, raw []byte) []byte {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "unsigned")
	out, _ := json.Marshal(m)
	return out
}

// TestCheckPDUVectors: on every PDU vector (real events from Synapse
// rooms, v12, gomatrixserverlib's v9 room) CheckPDU gives the expected
// event ID, content hash and signature verdicts.
func TestCheckPDUVectors(t *testing.T) {
	ran := 0
	for _, file := range []string{"pdu/mautrix-real-pdus.json", "pdu/mautrix-testroom-v12.json", "pdu/gmsl-v9-room-events.json"} {
		var f pduVectorFile
		loadJSON(t, file, &f)
		getKey := func(server string, keyID id.KeyID, _ time.Time) (id.SigningKey, time.Time, error) {
			k, ok := f.ServerKeys[server][string(keyID)]
			if !ok {
				return "", time.Time{}, nil
			}
			until := time.Now().Add(time.Hour)
			if k.ValidUntilTS != nil {
				until = time.UnixMilli(*k.ValidUntilTS)
			}
			return id.SigningKey(k.PublicKey), until, nil
		}
		for _, v := range f.Vectors {
			t.Run(file+"/"+v.Name, func(t *testing.T) {
				c, err := CheckPDU(v.RoomVersion, v.PDU)
				if err != nil {
					t.Fatal(err)
				}
				if v.ExpectedEventID != "" && c.ID != v.ExpectedEventID {
					t.Errorf("event ID = %s, want %s", c.ID, v.ExpectedEventID)
				}
				if c.ContentHashOK != v.ContentHash.Valid {
					t.Errorf("content hash ok = %v, want %v", c.ContentHashOK, v.ContentHash.Valid)
				}
				var servers []string
				for _, sig := range v.Signatures {
					err := c.VerifySignature(sig.Server, getKey)
					if (err == nil) != sig.SignatureValid {
						t.Errorf("signature of %s valid = %v (%v), want %v", sig.Server, err == nil, err, sig.SignatureValid)
					}
					servers = append(servers, sig.Server)
				}
				agree(t, v.RoomVersion, v.PDU, getKey, servers...)
				ran++
			})
		}
	}
	// The auth-rule vectors' event pools: every room version's shapes.
	files, _ := filepath.Glob(filepath.Join("testdata", "vectors", "auth", "*.json"))
	for _, path := range files {
		var f struct {
			RoomVersion string            `json:"room_version"`
			Events      []json.RawMessage `json:"events"`
		}
		loadJSON(t, strings.TrimPrefix(path, filepath.Join("testdata", "vectors")+"/"), &f)
		for _, raw := range f.Events {
			ev := vectorEvent(t, f.RoomVersion, raw)
			c, err := CheckPDU(f.RoomVersion, ev.Raw)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if c.ID != ev.ID || c.ContentHashOK != ev.VerifyContentHash() {
				t.Errorf("%s: %s: CheckPDU says %s, hash ok %v", path, ev.ID, c.ID, c.ContentHashOK)
			}
			if ids, err := AuthEventIDs(f.RoomVersion, ev.Raw); err != nil || !slices.Equal(ids, ev.AuthEvents) {
				t.Errorf("%s: %s: AuthEventIDs = %v, %v; want %v", path, ev.ID, ids, err, ev.AuthEvents)
			}
			ran++
		}
	}
	if ran < 50 {
		t.Fatalf("only %d events checked", ran)
	}
}

// TestCheckPDUForms: what a sending server may vary without changing the
// event (member order, whitespace, escapes, unsigned) leaves its ID and
// verdicts unchanged; tampering with what the hashes and signatures cover
// is caught; malformed input is refused, never a panic.
func TestCheckPDUForms(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	getKey := func(server string, keyID id.KeyID, _ time.Time) (id.SigningKey, time.Time, error) {
		if server == "origin.test" && keyID == "ed25519:k" {
			return id.SigningKey(encodeKey(pub)), time.Now().Add(time.Hour), nil
		}
		return "", time.Time{}, nil
	}
	for _, version := range []string{"1", "3", "4", "10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			raw := signedTestPDU(t, version, priv)
			base := agree(t, version, raw, getKey, "origin.test")
			if !base.ContentHashOK || base.VerifySignature("origin.test", getKey) != nil {
				t.Fatalf("a freshly signed event fails its checks")
			}
			// Reordered, spaced and escaped: same event.
			var m map[string]json.RawMessage
			_ = json.Unmarshal(raw, &m)
			var b strings.Builder
			b.WriteString("{ \"unsigned\" : {\"age\": 5} ")
			for _, k := range []string{"type", "sender", "content", "signatures", "hashes", "room_id", "depth", "origin_server_ts", "prev_events", "auth_events", "state_key", "event_id", "origin"} {
				if v, ok := m[k]; ok {
					fmt.Fprintf(&b, ",\n  %q : %s", k, v)
				}
			}
			b.WriteString("}")
			variant := []byte(strings.Replace(b.String(), `"m.room.member"`, `"m.room.memb\u0065r"`, 1))
			c := agree(t, version, variant, getKey, "origin.test")
			if c.ID != base.ID || !c.ContentHashOK || c.VerifySignature("origin.test", getKey) != nil {
				t.Errorf("an equivalent form is a different event: %s vs %s", c.ID, base.ID)
			}
			if bytes.Contains(c.Raw, []byte("unsigned")) {
				t.Errorf("unsigned kept in the stored form: %s", c.Raw)
			}
			// Content changed: the hash fails, signatures and ID stand
			// (they cover the redacted form).
			tampered := bytes.Replace(raw, []byte(`"displayname":"Bob"`), []byte(`"displayname":"Eve"`), 1)
			c = agree(t, version, tampered, getKey, "origin.test")
			if c.ContentHashOK {
				t.Error("changed content passes the content hash")
			}
			// A covered field changed: the signature fails.
			tampered = bytes.Replace(raw, []byte(`"depth":7`), []byte(`"depth":8`), 1)
			c = agree(t, version, tampered, getKey, "origin.test")
			if c.VerifySignature("origin.test", getKey) == nil {
				t.Error("changed depth passes the signature check")
			}
		})
	}
	for _, bad := range []string{``, `[]`, `{`, `{"type":"a","type":"b"}`, `{"a":1} {}`, "{\"type\":\"\xff\"}", `{"depth":1.5}`, `{"depth":9007199254740993}`} {
		if _, err := CheckPDU("10", []byte(bad)); err == nil {
			t.Errorf("CheckPDU(%q) accepted", bad)
		}
	}
}

func encodeKey(pub ed25519.PublicKey) string {
	return base64.RawStdEncoding.EncodeToString(pub)
}

// signedTestPDU builds and signs a member event of the given version the
// way mautrix does (the reference implementation CheckPDU is held to).
func signedTestPDU(t *testing.T, version string, priv ed25519.PrivateKey) []byte {
	t.Helper()
	rv := id.RoomVersion(version)
	sk := "@bob:origin.test"
	p := &pdu.PDU{
		RoomID: "!room:origin.test", Sender: "@bob:origin.test", Type: "m.room.member", StateKey: &sk,
		Content:        json.RawMessage(`{"membership":"join","displayname":"Bob"}`),
		OriginServerTS: 1700000000000, Depth: 7,
		PrevEvents: []id.EventID{"$prev"}, AuthEvents: []id.EventID{"$create", "$pl"},
	}
	if rv.EventIDFormat() == id.EventIDFormatCustom {
		v1 := &pdu.RoomV1PDU{
			EventID: "$abc:origin.test", RoomID: p.RoomID, Sender: p.Sender, Type: p.Type, StateKey: p.StateKey,
			Content: p.Content, OriginServerTS: p.OriginServerTS, Depth: p.Depth,
			PrevEvents: []pdu.V1EventReference{{ID: "$prev:origin.test"}},
			AuthEvents: []pdu.V1EventReference{{ID: "$create:origin.test"}},
		}
		if err := v1.Sign(rv, "origin.test", "ed25519:k", priv); err != nil {
			t.Fatal(err)
		}
		raw, err := json.Marshal(v1)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	if err := p.Sign(rv, "origin.test", "ed25519:k", priv); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// BenchmarkCheckPDU: one member event's ID, content hash and signature,
// through CheckPDU and through mautrix's PDU type (the path it replaced).
func BenchmarkCheckPDU(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	getKey := func(string, id.KeyID, time.Time) (id.SigningKey, time.Time, error) {
		return id.SigningKey(encodeKey(pub)), time.Now().Add(time.Hour), nil
	}
	raw := signedTestPDU(&testing.T{}, "10", priv)
	b.Run("CheckPDU", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := CheckPDU("10", raw)
			if err != nil || !c.ContentHashOK || c.VerifySignature("origin.test", getKey) != nil {
				b.Fatal("check failed", err)
			}
		}
	})
	b.Run("mautrix", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ev, err := ParseEvent("10", raw, "")
			if err != nil || !ev.VerifyContentHash() || ev.VerifySignature("origin.test", getKey) != nil {
				b.Fatal("check failed", err)
			}
		}
	})
	b.Run("ed25519-only", func(b *testing.B) {
		sig := ed25519.Sign(priv, raw)
		for b.Loop() {
			if !ed25519.Verify(pub, raw, sig) {
				b.Fatal("bad")
			}
		}
	})
}
