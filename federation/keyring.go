package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
	"edge/edge/store"
)

// kvKeys is the store namespace of remote servers' keys, keyed by server name.
const kvKeys = "federation.keys"

// maxKeyValidity caps every valid_until_ts we accept: the spec's "the
// lesser of this field and 7 days into the future".
const maxKeyValidity = 7 * 24 * time.Hour

// keyInfo is one verify key of a server, as far as we trust it.
type keyInfo struct {
	Key          string `json:"key"`            // unpadded base64
	ValidUntilTS int64  `json:"valid_until_ts"` // effective: capped, or expired_ts for old keys
	ExpiredTS    int64  `json:"expired_ts,omitempty"`
}

// serverKeys is everything known about one server's keys, merged over
// fetches. A cached value is never modified; merges make a new one.
type serverKeys struct {
	Keys map[string]keyInfo `json:"keys"`
	// Raw is the latest origin-signed key response, which the notary serves.
	Raw json.RawMessage `json:"raw,omitempty"`
	// RawValidUntilTS is Raw's valid_until_ts as published.
	RawValidUntilTS int64 `json:"raw_valid_until_ts,omitempty"`
	// FetchedTS is when we last fetched the server's keys successfully.
	FetchedTS int64 `json:"fetched_ts,omitempty"`
}

// notaryKeys is one trusted key server.
type notaryKeys struct {
	name string
	keys map[string]ed25519.PublicKey
}

// failure is the negative cache of one server whose keys could not be fetched.
type failure struct {
	n    int
	next time.Time
	err  error
}

// Keyring establishes other servers' signing keys: from its memory and
// the store, then from the server itself, then from the trusted notaries.
// It is safe for concurrent use.
type Keyring struct {
	server   string
	own      *ownKeys
	client   *Client
	store    *store.Store
	notaries []notaryKeys
	cache    *lru.Cache[string, *serverKeys]
	fails    *lru.Cache[string, failure]
	flights  group[string, struct{}]
	log      *slog.Logger
	now      func() time.Time
	failMu   sync.Mutex
	base     context.Context // parent of every fetch; cancelled by close
	cancel   context.CancelFunc

	// BackoffMin is the wait after a server's keys could not be fetched;
	// it doubles per failure up to BackoffMax.
	BackoffMin, BackoffMax time.Duration
	// RefetchMin stops a key ID the server does not have from causing a
	// fetch per request: within it after a successful fetch, the stored
	// answer stands.
	RefetchMin time.Duration
	// FetchTimeout bounds one refresh (direct fetch plus notaries).
	FetchTimeout time.Duration
}

func newKeyring(server string, own *ownKeys, client *Client, st *store.Store, trusted []config.TrustedKeyServer, cacheSize int, log *slog.Logger) (*Keyring, error) {
	k := &Keyring{
		server: server, own: own, client: client, store: st, log: log, now: time.Now,
		BackoffMin: 30 * time.Second, BackoffMax: time.Hour, RefetchMin: 30 * time.Second,
		FetchTimeout: 2 * time.Minute,
	}
	k.base, k.cancel = context.WithCancel(context.Background())
	for _, t := range trusted {
		n := notaryKeys{name: t.ServerName, keys: map[string]ed25519.PublicKey{}}
		for id, key := range t.VerifyKeys {
			pub, err := decodeKey(key)
			if err != nil {
				return nil, fmt.Errorf("trusted key server %s, %s: %w", t.ServerName, id, err)
			}
			n.keys[id] = pub
		}
		k.notaries = append(k.notaries, n)
	}
	var err error
	if k.cache, err = lru.New[string, *serverKeys](cacheSize); err != nil {
		return nil, err
	}
	if k.fails, err = lru.New[string, failure](4096); err != nil {
		return nil, err
	}
	return k, nil
}

// VerifyKey returns server's current key keyID if it is valid at least
// until at: what an X-Matrix signature needs (old_verify_keys only verify
// events, never requests).
func (k *Keyring) VerifyKey(ctx context.Context, server, keyID string, at time.Time) (ed25519.PublicKey, error) {
	ki, err := k.lookup(ctx, server, keyID, at, true)
	if err != nil {
		return nil, err
	}
	return decodeKey(ki.Key)
}

// GetKey has the shape of pdu.GetKeyFunc, for verifying event signatures:
// the key valid until minValidUntil if there is one, else the best key
// known with its validity (the caller judges it by room version), else an
// empty key. Fetch failures are errors, so a PDU whose keys cannot be had
// right now is not mistaken for a forged one.
func (k *Keyring) GetKey(serverName string, keyID id.KeyID, minValidUntil time.Time) (id.SigningKey, time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.FetchTimeout)
	defer cancel()
	ki, err := k.lookup(ctx, serverName, string(keyID), minValidUntil, false)
	if ki.Key != "" {
		return id.SigningKey(ki.Key), time.UnixMilli(ki.ValidUntilTS), nil
	}
	if err == nil || errors.Is(err, ErrKeyNotFound) {
		return "", time.Time{}, nil
	}
	return "", time.Time{}, err
}

var _ pdu.GetKeyFunc = (*Keyring)(nil).GetKey

// lookup finds server's keyID valid until minValid, fetching when what is
// known does not do. On failure it still returns the best key known (zero
// when none) with the error.
func (k *Keyring) lookup(ctx context.Context, server, keyID string, minValid time.Time, currentOnly bool) (keyInfo, error) {
	good := func(ki keyInfo, found bool) bool {
		return found && ki.ValidUntilTS >= minValid.UnixMilli() && (!currentOnly || ki.ExpiredTS == 0)
	}
	if server == k.server {
		ki, found := k.own.lookup(keyID)
		if good(ki, found) {
			return ki, nil
		}
		return ki, fmt.Errorf("%w: this server has no key %s valid then", ErrKeyNotFound, keyID)
	}
	sk, err := k.load(server)
	if err != nil {
		return keyInfo{}, err
	}
	if ki, found := sk.Keys[keyID]; good(ki, found) {
		return ki, nil
	}
	want := func(sk *serverKeys) bool {
		ki, found := sk.Keys[keyID]
		return good(ki, found)
	}
	ferr := k.refresh(ctx, server, map[string]time.Time{keyID: minValid}, want, true)
	if sk, err = k.load(server); err != nil {
		return keyInfo{}, err
	}
	ki, found := sk.Keys[keyID]
	if good(ki, found) {
		return ki, nil
	}
	if currentOnly && ki.ExpiredTS != 0 {
		ki = keyInfo{} // an old key is no answer for a request signature
	}
	if ferr != nil {
		return ki, ferr
	}
	if found {
		return ki, fmt.Errorf("%w: %s's key %s is valid only until %s", ErrKeyNotFound, server, keyID, time.UnixMilli(ki.ValidUntilTS).UTC().Format(time.RFC3339))
	}
	return ki, fmt.Errorf("%w: %s has no key %s", ErrKeyNotFound, server, keyID)
}

// load returns what is known of server's keys: memory, else the store.
func (k *Keyring) load(server string) (*serverKeys, error) {
	if sk, ok := k.cache.Get(server); ok {
		return sk, nil
	}
	sk := &serverKeys{Keys: map[string]keyInfo{}}
	err := k.store.View(func(tx *store.Tx) error {
		raw, err := tx.GetKV(kvKeys, server)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		return json.Unmarshal(raw, sk)
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored keys of %s: %w", server, err)
	}
	if sk.Keys == nil {
		sk.Keys = map[string]keyInfo{}
	}
	k.cache.Add(server, sk)
	return sk, nil
}

// refresh fetches server's keys — directly, then (if useNotaries and the
// direct answer does not satisfy want) from each notary — unless a fetch
// just succeeded or the server is in backoff. Concurrent refreshes of one
// server share one fetch. criteria are the key IDs and validity asked of
// notaries.
func (k *Keyring) refresh(ctx context.Context, server string, criteria map[string]time.Time, want func(*serverKeys) bool, useNotaries bool) error {
	flight := server
	if !useNotaries {
		flight = "direct " + server
	}
	_, err := k.flights.do(ctx, flight, func() (struct{}, error) {
		ctx, cancel := context.WithTimeout(k.base, k.FetchTimeout)
		defer cancel()
		now := k.now()
		if sk, err := k.load(server); err == nil && want(sk) {
			return struct{}{}, nil // a refresh that finished while we queued did it
		} else if err == nil && now.Sub(time.UnixMilli(sk.FetchedTS)) < k.RefetchMin {
			return struct{}{}, nil
		}
		k.failMu.Lock()
		f, failing := k.fails.Get(server)
		k.failMu.Unlock()
		if failing && now.Before(f.next) {
			return struct{}{}, fmt.Errorf("%w: %s: not retrying until %s: %w", ErrKeyFetch, server, f.next.UTC().Format(time.RFC3339), f.err)
		}
		var errs []error
		err := k.fetchDirect(ctx, server)
		if err != nil {
			errs = append(errs, fmt.Errorf("direct: %w", err))
		}
		satisfied := false
		if sk, lerr := k.load(server); lerr == nil {
			satisfied = want(sk)
		}
		if !satisfied && useNotaries {
			for _, n := range k.notaries {
				if nerr := k.fetchFromNotary(ctx, n, server, criteria); nerr != nil {
					errs = append(errs, fmt.Errorf("notary %s: %w", n.name, nerr))
					continue
				}
				if sk, lerr := k.load(server); lerr == nil && want(sk) {
					satisfied = true
					break
				}
			}
		}
		k.failMu.Lock()
		defer k.failMu.Unlock()
		if satisfied || err == nil {
			k.fails.Remove(server)
			return struct{}{}, nil
		}
		f.n++
		f.err = errors.Join(errs...)
		f.next = now.Add(min(k.BackoffMax, k.BackoffMin<<min(f.n-1, 20)))
		k.fails.Add(server, f)
		k.log.Info("fetching server keys failed", "server", server, "failures", f.n, "retry_at", f.next, "err", f.err)
		return struct{}{}, fmt.Errorf("%w: %s: %w", ErrKeyFetch, server, f.err)
	})
	return err
}

// fetchDirect asks server for its own keys.
func (k *Keyring) fetchDirect(ctx context.Context, server string) error {
	raw, err := k.client.GetRaw(ctx, server, "/_matrix/key/v2/server")
	if err != nil {
		return err
	}
	p, err := parseKeyResponse(raw, server)
	if err != nil {
		return err
	}
	return k.merge(server, []*parsedKeys{p})
}

// fetchFromNotary asks notary n for server's keys with POST
// /_matrix/key/v2/query, keeping only answers that carry a valid
// signature of n and of server itself.
func (k *Keyring) fetchFromNotary(ctx context.Context, n notaryKeys, server string, criteria map[string]time.Time) error {
	type criterion struct {
		MinimumValidUntilTS int64 `json:"minimum_valid_until_ts"`
	}
	q := map[string]criterion{}
	for keyID, t := range criteria {
		q[keyID] = criterion{MinimumValidUntilTS: t.UnixMilli()}
	}
	body := map[string]any{"server_keys": map[string]any{server: q}}
	var resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := k.client.Post(ctx, n.name, "/_matrix/key/v2/query", body, &resp); err != nil {
		return err
	}
	var accepted []*parsedKeys
	var errs []error
	for _, raw := range resp.ServerKeys {
		p, err := parseKeyResponse(raw, server)
		if err == nil {
			err = p.verifyNotary(n)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		accepted = append(accepted, p)
	}
	if len(accepted) == 0 {
		if len(errs) == 0 {
			return fmt.Errorf("%w: no keys for %s in the answer", ErrKeyNotFound, server)
		}
		return errors.Join(errs...)
	}
	if len(errs) > 0 {
		k.log.Warn("notary answer had invalid key responses", "notary", n.name, "server", server, "err", errors.Join(errs...))
	}
	return k.merge(server, accepted)
}

// merge folds verified responses into what is known of server and persists it.
func (k *Keyring) merge(server string, resps []*parsedKeys) error {
	old, err := k.load(server)
	if err != nil {
		return err
	}
	now := k.now()
	n := &serverKeys{Keys: maps.Clone(old.Keys), Raw: old.Raw, RawValidUntilTS: old.RawValidUntilTS, FetchedTS: now.UnixMilli()}
	capTS := now.Add(maxKeyValidity).UnixMilli()
	for _, p := range resps {
		until := min(p.validUntil, capTS)
		for keyID, pub := range p.verify {
			ki := keyInfo{Key: EncodeKey(pub), ValidUntilTS: until}
			// An earlier signed statement that the key lives longer stays true.
			if prev, ok := n.Keys[keyID]; ok && prev.Key == ki.Key && prev.ExpiredTS == 0 && prev.ValidUntilTS > until {
				ki.ValidUntilTS = prev.ValidUntilTS
			}
			n.Keys[keyID] = ki
		}
		for keyID, o := range p.old {
			if _, current := p.verify[keyID]; current {
				continue
			}
			n.Keys[keyID] = keyInfo{Key: o.Key, ValidUntilTS: o.ExpiredTS, ExpiredTS: o.ExpiredTS}
		}
		if n.Raw == nil || p.validUntil >= n.RawValidUntilTS {
			n.Raw, n.RawValidUntilTS = p.raw, p.validUntil
		}
	}
	data, err := json.Marshal(n)
	if err != nil {
		return err
	}
	if err := k.store.Write(func(tx *store.Tx) error {
		tx.PutKV(kvKeys, server, data)
		return nil
	}); err != nil {
		return err
	}
	k.cache.Add(server, n)
	return nil
}

// parsedKeys is a key response that passed validation against its
// origin's own signature.
type parsedKeys struct {
	raw        []byte
	so         *signedObject
	server     string
	verify     map[string]ed25519.PublicKey
	old        map[string]oldVerifyKey
	validUntil int64
}

// parseKeyResponse validates a key response for server: the name, the key
// encodings, and the self-signature. Every signature the server made with
// a key it lists must verify, and there must be at least one.
func parseKeyResponse(raw []byte, server string) (*parsedKeys, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w from %s: %s", ErrBadKeyResponse, server, fmt.Sprintf(format, a...))
	}
	so, err := parseSigned(raw)
	if err != nil {
		return nil, bad("%v", err)
	}
	var body struct {
		ServerName    string                  `json:"server_name"`
		VerifyKeys    map[string]verifyKey    `json:"verify_keys"`
		OldVerifyKeys map[string]oldVerifyKey `json:"old_verify_keys"`
		ValidUntilTS  int64                   `json:"valid_until_ts"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, bad("%v", err)
	}
	if body.ServerName != server {
		return nil, bad("server_name is %q", body.ServerName)
	}
	if len(body.VerifyKeys) == 0 {
		return nil, bad("no verify_keys")
	}
	p := &parsedKeys{raw: raw, so: so, server: server, verify: map[string]ed25519.PublicKey{}, old: body.OldVerifyKeys, validUntil: body.ValidUntilTS}
	for keyID, vk := range body.VerifyKeys {
		pub, err := decodeKey(vk.Key)
		if err != nil {
			return nil, bad("verify key %s: %v", keyID, err)
		}
		p.verify[keyID] = pub
	}
	for keyID, ok := range body.OldVerifyKeys {
		if _, err := decodeKey(ok.Key); err != nil {
			return nil, bad("old verify key %s: %v", keyID, err)
		}
	}
	signed := 0
	for keyID := range so.signatures[server] {
		pub, listed := p.verify[keyID]
		if !listed {
			continue // e.g. a notary that is the server, signing with another key
		}
		if !so.verify(server, keyID, pub) {
			return nil, bad("self-signature with %s does not verify", keyID)
		}
		signed++
	}
	if signed == 0 {
		return nil, bad("not signed by any of its verify_keys")
	}
	return p, nil
}

// verifyNotary checks notary n's signature on the response: every
// signature by one of n's configured keys must verify, and one must exist.
func (p *parsedKeys) verifyNotary(n notaryKeys) error {
	signed := 0
	for keyID := range p.so.signatures[n.name] {
		pub, trusted := n.keys[keyID]
		if !trusted {
			continue
		}
		if !p.so.verify(n.name, keyID, pub) {
			return fmt.Errorf("%w: notary %s's signature (%s) on %s's keys does not verify", ErrBadKeyResponse, n.name, keyID, p.server)
		}
		signed++
	}
	if signed == 0 {
		return fmt.Errorf("%w: %s's keys carry no signature by notary %s's trusted keys", ErrBadKeyResponse, p.server, n.name)
	}
	return nil
}

// close abandons running fetches and waits for them to end.
func (k *Keyring) close() {
	k.cancel()
	k.flights.shutdown()
}

// notaryAnswer is what this server, as a notary, says about server's
// keys: the origin-signed response, fetched again directly when missing,
// older than half its lifetime, not valid until minValid or lacking a
// requested key. When the server cannot be reached the last answer is
// served anyway, as the spec asks, so old events stay verifiable.
func (k *Keyring) notaryAnswer(ctx context.Context, server string, keyIDs []string, minValid time.Time) (json.RawMessage, error) {
	if server == k.server {
		return k.own.response()
	}
	now := k.now()
	fresh := func(sk *serverKeys) bool {
		if sk.Raw == nil || sk.RawValidUntilTS < minValid.UnixMilli() {
			return false
		}
		if half := sk.FetchedTS + (sk.RawValidUntilTS-sk.FetchedTS)/2; now.UnixMilli() > half {
			return false
		}
		for _, id := range keyIDs {
			if _, ok := sk.Keys[id]; !ok {
				return false
			}
		}
		return true
	}
	sk, err := k.load(server)
	if err != nil {
		return nil, err
	}
	if !fresh(sk) {
		criteria := map[string]time.Time{}
		for _, id := range keyIDs {
			criteria[id] = minValid
		}
		if ferr := k.refresh(ctx, server, criteria, fresh, false); ferr != nil {
			k.log.Debug("notary: refreshing keys failed; serving what is stored", "server", server, "err", ferr)
		}
		if sk, err = k.load(server); err != nil {
			return nil, err
		}
	}
	return sk.Raw, nil
}
