package federation

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"edge/edge/config"
)

const keyPath = "/_matrix/key/v2/server"

func TestFederationKeyringDirect(t *testing.T) {
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{})
	ctx := ctxT(t)
	bKey := b.keys[0]

	pub, err := a.srv.Keyring.VerifyKey(ctx, b.name, bKey.ID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(bKey.Public()) {
		t.Fatal("fetched key differs from b's key")
	}
	key, until, err := a.srv.Keyring.GetKey(b.name, id.KeyID(bKey.ID), time.Now())
	if err != nil || string(key) != EncodeKey(bKey.Public()) {
		t.Fatalf("GetKey: %q %v", key, err)
	}
	if d := time.Until(until); d < 6*24*time.Hour || d > 7*24*time.Hour+time.Minute {
		t.Fatalf("valid until %s from now, want about 7 days", d)
	}
	if got := b.hits.get(keyPath); got != 1 {
		t.Fatalf("b served its keys %d times, want 1 (the second lookup is cached)", got)
	}

	// A key ID the server does not have.
	a.srv.Keyring.RefetchMin = 0
	if _, err := a.srv.Keyring.VerifyKey(ctx, b.name, "ed25519:nope", time.Now()); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("unknown key: %v, want ErrKeyNotFound", err)
	}
	if key, _, err := a.srv.Keyring.GetKey(b.name, "ed25519:nope", time.Now()); key != "" || err != nil {
		t.Fatalf("GetKey of unknown key: %q %v, want empty and no error", key, err)
	}

	// Our own keys need no network.
	if pub, err := a.srv.Keyring.VerifyKey(ctx, a.name, a.keys[0].ID, time.Now()); err != nil || !pub.Equal(a.keys[0].Public()) {
		t.Fatalf("own key: %v", err)
	}
}

func TestFederationKeyringBatchesConcurrentLookups(t *testing.T) {
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{})
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := a.srv.Keyring.VerifyKey(ctx, b.name, b.keys[0].ID, time.Now())
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := b.hits.get(keyPath); got != 1 {
		t.Fatalf("20 concurrent lookups made %d fetches, want 1", got)
	}
}

func TestFederationKeyringPersistence(t *testing.T) {
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{})
	ctx := ctxT(t)
	if _, err := a.srv.Keyring.VerifyKey(ctx, b.name, b.keys[0].ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	a.stop()
	b.stop() // from now on b's keys can only come from a's store

	a2 := startNode(t, nodeOpts{dir: a.dir, name: a.name})
	pub, err := a2.srv.Keyring.VerifyKey(ctx, b.name, b.keys[0].ID, time.Now())
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if !pub.Equal(b.keys[0].Public()) {
		t.Fatal("persisted key differs")
	}
}

func TestFederationKeyringNegativeCache(t *testing.T) {
	a := startNode(t, nodeOpts{})
	ctx := ctxT(t)
	dead := reservePort(t)
	_, err := a.srv.Keyring.VerifyKey(ctx, dead, "ed25519:x", time.Now())
	if !errors.Is(err, ErrKeyFetch) {
		t.Fatalf("unreachable server: %v, want ErrKeyFetch", err)
	}
	a.srv.Keyring.BackoffMin, a.srv.Keyring.BackoffMax = 400*time.Millisecond, time.Second
	_, err = a.srv.Keyring.VerifyKey(ctx, dead, "ed25519:x", time.Now()) // still the first, 100ms backoff
	time.Sleep(150 * time.Millisecond)
	_, err = a.srv.Keyring.VerifyKey(ctx, dead, "ed25519:x", time.Now()) // second failure: 400ms
	if !errors.Is(err, ErrKeyFetch) {
		t.Fatalf("second attempt: %v", err)
	}
	d := startNode(t, nodeOpts{name: dead})
	_, err = a.srv.Keyring.VerifyKey(ctx, dead, d.keys[0].ID, time.Now())
	if !errors.Is(err, ErrKeyFetch) || !strings.Contains(err.Error(), "not retrying until") {
		t.Fatalf("within the backoff: %v, want the cached failure", err)
	}
	if got := d.hits.get(keyPath); got != 0 {
		t.Fatalf("the server was asked %d times during the backoff", got)
	}
	eventually(t, "the backoff to end and the keys to be fetched", func() bool {
		_, err := a.srv.Keyring.VerifyKey(ctx, dead, d.keys[0].ID, time.Now())
		return err == nil
	})
	if got := d.hits.get(keyPath); got != 1 {
		t.Fatalf("keys fetched %d times, want 1", got)
	}
}

func TestFederationKeyringValidity(t *testing.T) {
	a := startNode(t, nodeOpts{})
	b := startNode(t, nodeOpts{keyValidity: 30 * 24 * time.Hour})
	ctx := ctxT(t)
	a.srv.Keyring.RefetchMin = 0
	bKey := b.keys[0]

	key, until, err := a.srv.Keyring.GetKey(b.name, id.KeyID(bKey.ID), time.Now())
	if err != nil || key == "" {
		t.Fatalf("GetKey: %q %v", key, err)
	}
	if time.Until(until) > 7*24*time.Hour+time.Minute {
		t.Fatalf("valid_until_ts of 30 days accepted as %s: the spec caps it at 7 days", time.Until(until))
	}
	// Asked for validity beyond what the server grants: a fetch is tried,
	// then the request check fails and GetKey hands back the best key known.
	later := time.Now().Add(8 * 24 * time.Hour)
	before := b.hits.get(keyPath)
	if _, err := a.srv.Keyring.VerifyKey(ctx, b.name, bKey.ID, later); !errors.Is(err, ErrKeyNotFound) || !strings.Contains(err.Error(), "valid only until") {
		t.Fatalf("key needed until %s: %v", later, err)
	}
	if b.hits.get(keyPath) != before+1 {
		t.Fatal("a minimum validity beyond the cached one did not cause a refetch")
	}
	key2, until2, err := a.srv.Keyring.GetKey(b.name, id.KeyID(bKey.ID), later)
	if err != nil || key2 != key || !until2.Before(later) {
		t.Fatalf("GetKey beyond validity: %q until %s, %v; want the key with its shorter validity", key2, until2, err)
	}

	// After a rotation the old key verifies events from before its expiry
	// but no longer authenticates requests.
	b.stop()
	expired := time.Now()
	if _, _, err := RotateKeys(b.dir+"/signing.key", b.cfg.OldKeysPath(), expired); err != nil {
		t.Fatal(err)
	}
	b2 := startNode(t, nodeOpts{dir: b.dir, name: b.name})
	if _, err := a.srv.Keyring.VerifyKey(ctx, b.name, b2.keys[0].ID, time.Now()); err != nil {
		t.Fatalf("new key: %v", err)
	}
	key3, until3, err := a.srv.Keyring.GetKey(b.name, id.KeyID(bKey.ID), expired.Add(-time.Minute))
	if err != nil || key3 != key || until3.UnixMilli() != expired.UnixMilli() {
		t.Fatalf("old key for an earlier event: %q until %s, %v; want it valid until %s", key3, until3, err, expired)
	}
	if _, err := a.srv.Keyring.VerifyKey(ctx, b.name, bKey.ID, time.Now()); err == nil {
		t.Fatal("a retired key still authenticates requests")
	}
}

func TestFederationKeyringViaNotary(t *testing.T) {
	b := startNode(t, nodeOpts{})
	n := startNode(t, nodeOpts{})
	a := startNode(t, nodeOpts{
		trusted:  []config.TrustedKeyServer{{ServerName: n.name, VerifyKeys: map[string]string{n.keys[0].ID: EncodeKey(n.keys[0].Public())}}},
		resolver: refusingResolver{refuse: map[string]bool{b.name: true}},
	})
	ctx := ctxT(t)
	pub, err := a.srv.Keyring.VerifyKey(ctx, b.name, b.keys[0].ID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(b.keys[0].Public()) {
		t.Fatal("key via notary differs")
	}
	if n.hits.get("/_matrix/key/v2/query") != 1 || b.hits.get(keyPath) != 1 {
		t.Fatalf("notary queried %d times, b asked %d times; want 1 and 1",
			n.hits.get("/_matrix/key/v2/query"), b.hits.get(keyPath))
	}
}

// fakeNotary is a notary whose answers the test writes.
type fakeNotary struct {
	name   string
	key    config.SigningKey
	answer func() []json.RawMessage
}

func startFakeNotary(t *testing.T) *fakeNotary {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := config.GenerateSigningKey()
	f := &fakeNotary{name: ln.Addr().String(), key: key}
	stop := serveTLS(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/_matrix/key/v2/query" {
			http.NotFound(w, r)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"server_keys": f.answer()})
	}))
	t.Cleanup(stop)
	return f
}

func TestFederationKeyringRejectsLyingNotary(t *testing.T) {
	b := startNode(t, nodeOpts{})
	ctx := ctxT(t)
	genuine, err := b.srv.own.response()
	if err != nil {
		t.Fatal(err)
	}
	f := startFakeNotary(t)
	attacker, _ := config.GenerateSigningKey()
	notarySign := func(raw []byte, key config.SigningKey) json.RawMessage {
		out, err := signJSON(raw, f.name, []config.SigningKey{key})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// The genuine document with b's key swapped for the attacker's, b's
	// signature left as it was.
	var doc map[string]any
	_ = json.Unmarshal(genuine, &doc)
	doc["verify_keys"] = map[string]any{b.keys[0].ID: map[string]string{"key": EncodeKey(attacker.Public())}}
	swapped, _ := json.Marshal(doc)
	// A document for b signed only with a key it does not list.
	forged, _ := json.Marshal(map[string]any{
		"server_name": b.name, "valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
		"verify_keys": map[string]any{b.keys[0].ID: map[string]string{"key": EncodeKey(attacker.Public())}},
	})
	forgedSigned, _ := signJSON(forged, b.name, []config.SigningKey{{ID: "ed25519:other", Priv: attacker.Priv}})
	impostor := config.SigningKey{ID: f.key.ID, Priv: attacker.Priv} // claims the notary's key ID

	for _, tc := range []struct {
		name   string
		answer json.RawMessage
		ok     bool
	}{
		{"genuine, notarised", notarySign(genuine, f.key), true},
		{"bad notary signature", notarySign(genuine, impostor), false},
		{"no notary signature", genuine, false},
		{"bad origin self-signature", notarySign(swapped, f.key), false},
		{"origin signature by an unlisted key", notarySign(forgedSigned, f.key), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.answer = func() []json.RawMessage { return []json.RawMessage{tc.answer} }
			a := startNode(t, nodeOpts{
				trusted:  []config.TrustedKeyServer{{ServerName: f.name, VerifyKeys: map[string]string{f.key.ID: EncodeKey(f.key.Public())}}},
				resolver: refusingResolver{refuse: map[string]bool{b.name: true}},
			})
			pub, err := a.srv.Keyring.VerifyKey(ctx, b.name, b.keys[0].ID, time.Now())
			if tc.ok {
				if err != nil || !pub.Equal(b.keys[0].Public()) {
					t.Fatalf("genuine answer refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted key %s from a lying notary", EncodeKey(pub))
			}
			if !errors.Is(err, ErrBadKeyResponse) {
				t.Fatalf("err %v, want ErrBadKeyResponse inside", err)
			}
			sk, _ := a.srv.Keyring.load(b.name)
			if len(sk.Keys) != 0 {
				t.Fatalf("a rejected answer was stored: %v", sk.Keys)
			}
		})
	}
}
