package room

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/id"
)

// TestLegacyCanonicalAgrees: where canonical JSON can express every number,
// the legacy encoder writes exactly what mautrix's does (every PDU vector,
// and strings that need escaping).
func TestLegacyCanonicalAgrees(t *testing.T) {
	inputs := []string{
		`{"b":[1,-2,0,{"z":null,"a":true}],"a":"é\u0001\n\t\"\\/\u2028","":false}`,
		`{ "x" : { "y" : [ ] , "w" : { } } }`,
	}
	for _, file := range []string{"pdu/mautrix-real-pdus.json", "pdu/mautrix-testroom-v12.json", "pdu/gmsl-v9-room-events.json"} {
		var f pduVectorFile
		loadJSON(t, file, &f)
		for _, v := range f.Vectors {
			inputs = append(inputs, string(v.PDU))
		}
	}
	for _, in := range inputs {
		want, err := canonicaljson.CanonicalJSON([]byte(in))
		if err != nil {
			t.Fatalf("mautrix: %v", err)
		}
		got, err := legacyCanonicalJSON([]byte(in))
		if err != nil || string(got) != string(want) {
			t.Errorf("legacy canonical JSON of %.80s…:\n got %s, %v\nwant %s", in, got, err, want)
		}
	}
	for _, bad := range []string{``, `{`, `{"a":1} {}`, `{"a":1,"a":2}`, "\"\xff\"", strings.Repeat("[", 200) + strings.Repeat("]", 200)} {
		if out, err := legacyCanonicalJSON([]byte(bad)); err == nil {
			t.Errorf("legacyCanonicalJSON(%.40q) = %s, want an error", bad, out)
		}
	}
}

// TestCheckPDULegacyNumbers: rooms v1–v5 allowed floats and big integers,
// and their senders signed the numbers as written; such an event checks
// out there (hash, signature, ID) and is refused from v6 on.
func TestCheckPDULegacyNumbers(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	getKey := func(server string, keyID id.KeyID, _ time.Time) (id.SigningKey, time.Time, error) {
		if server == "origin.test" && keyID == "ed25519:k" {
			return id.SigningKey(encodeKey(pub)), time.Now().Add(time.Hour), nil
		}
		return "", time.Time{}, nil
	}
	// Power levels: redaction keeps this content, so the signature covers
	// the float and the big integer too. Written canonically by hand.
	const body = `{"auth_events":[],"content":{"ban":50.0,"users":{"@a:origin.test":100},"users_default":12345678901234567890},` +
		`"depth":3,%s"origin":"origin.test","origin_server_ts":1,"prev_events":[],"room_id":"!r:origin.test","sender":"@a:origin.test",` +
		`%s"state_key":"","type":"m.room.power_levels"}`
	sum := sha256.Sum256([]byte(strings.Replace(strings.Replace(body, "%s", "", 1), "%s", "", 1)))
	hashes := `"hashes":{"sha256":"` + base64.RawStdEncoding.EncodeToString(sum[:]) + `"},`
	signed := strings.Replace(strings.Replace(body, "%s", hashes, 1), "%s", "", 1)
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(priv, []byte(signed)))
	raw := strings.Replace(strings.Replace(body, "%s", hashes, 1), "%s", `"signatures":{"origin.test":{"ed25519:k":"`+sig+`"}},`, 1)
	raw = strings.Replace(raw, `"content":`, "\n  \"unsigned\": {\"age\": 1.5},\n  \"content\" : ", 1) // not what was signed, as on the wire

	ref := sha256.Sum256([]byte(signed))
	c, err := CheckPDU("5", []byte(raw))
	if err != nil {
		t.Fatalf("v5: %v", err)
	}
	if want := "$" + base64.RawURLEncoding.EncodeToString(ref[:]); c.ID != want {
		t.Errorf("v5 event ID %s, want %s", c.ID, want)
	}
	if !c.ContentHashOK || c.VerifySignature("origin.test", getKey) != nil {
		t.Errorf("v5: hash ok %v, signature %v", c.ContentHashOK, c.VerifySignature("origin.test", getKey))
	}
	var content map[string]json.RawMessage
	if err := json.Unmarshal(c.Event.Content, &content); err != nil || string(content["ban"]) != "50.0" {
		t.Errorf("v5 content kept as %s (%v)", c.Event.Content, err)
	}
	for _, v := range []string{"6", "10", "12"} {
		if _, err := CheckPDU(v, []byte(raw)); err == nil {
			t.Errorf("v%s accepted a float and a big integer", v)
		}
	}
}
