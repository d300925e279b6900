package federation

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"edge/edge/config"
)

// OldKey is a retired signing key: its public half and when it stopped
// being used. Events it signed before ExpiredTS stay verifiable.
type OldKey struct {
	ID        string // "ed25519:<version>"
	Public    ed25519.PublicKey
	ExpiredTS int64 // milliseconds since the epoch
}

// ReadOldKeys parses a file in Synapse's old_signing_keys line format,
// "ed25519 <version> <unpadded base64 public key> <expired_ts>". A missing
// file is no old keys.
func ReadOldKeys(path string) ([]OldKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var keys []OldKey
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "ed25519" {
			return nil, fmt.Errorf("%s:%d: want \"ed25519 <version> <base64 public key> <expired_ts>\"", path, n+1)
		}
		pub, err := decodeKey(f[2])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, n+1, err)
		}
		ts, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil || ts < 0 {
			return nil, fmt.Errorf("%s:%d: expired_ts %q is not a millisecond timestamp", path, n+1, f[3])
		}
		keys = append(keys, OldKey{ID: "ed25519:" + f[1], Public: pub, ExpiredTS: ts})
	}
	return keys, nil
}

// WriteOldKeys replaces the old-keys file with keys, atomically.
func WriteOldKeys(path string, keys []OldKey) error {
	var b strings.Builder // no comment line: Synapse's reader takes every line as a key
	for _, k := range keys {
		fmt.Fprintf(&b, "ed25519 %s %s %d\n", strings.TrimPrefix(k.ID, "ed25519:"), EncodeKey(k.Public), k.ExpiredTS)
	}
	return writeAtomic(path, []byte(b.String()), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// RotateKeys makes a new signing key the only current one: every key in
// the key file moves to the old-keys file with expired_ts = now. The
// old-keys file is written first, so a crash in between leaves a key
// both current and old, never lost. The running node picks the new key
// up when it restarts.
func RotateKeys(keyPath, oldPath string, now time.Time) (config.SigningKey, []OldKey, error) {
	current, err := config.ReadSigningKeys(keyPath)
	if err != nil {
		return config.SigningKey{}, nil, err
	}
	old, err := ReadOldKeys(oldPath)
	if err != nil {
		return config.SigningKey{}, nil, err
	}
	fresh, err := config.GenerateSigningKey()
	if err != nil {
		return config.SigningKey{}, nil, err
	}
	var retired []OldKey
	for _, k := range current {
		retired = append(retired, OldKey{ID: k.ID, Public: k.Public(), ExpiredTS: now.UnixMilli()})
	}
	if err := WriteOldKeys(oldPath, append(old, retired...)); err != nil {
		return config.SigningKey{}, nil, err
	}
	tmp := keyPath + ".new"
	_ = os.Remove(tmp)
	if err := config.WriteSigningKey(tmp, fresh); err != nil {
		return config.SigningKey{}, nil, err
	}
	if err := os.Rename(tmp, keyPath); err != nil {
		os.Remove(tmp)
		return config.SigningKey{}, nil, err
	}
	return fresh, retired, nil
}

// keyResponse is the body of GET /_matrix/key/v2/server (spec
// definitions/keys.yaml).
type keyResponse struct {
	ServerName string               `json:"server_name"`
	VerifyKeys map[string]verifyKey `json:"verify_keys"`
	// OldVerifyKeys is always present, {} without retired keys: the spec
	// lists it as required (and Complement checks it).
	OldVerifyKeys map[string]oldVerifyKey `json:"old_verify_keys"`
	ValidUntilTS  int64                   `json:"valid_until_ts"`
	Signatures    json.RawMessage         `json:"signatures,omitempty"`
}

type verifyKey struct {
	Key string `json:"key"`
}

type oldVerifyKey struct {
	Key       string `json:"key"`
	ExpiredTS int64  `json:"expired_ts"`
}

// ownKeys publishes this server's keys.
type ownKeys struct {
	server   string
	current  []config.SigningKey
	old      []OldKey
	validity time.Duration
	now      func() time.Time

	mu       sync.Mutex
	cached   []byte
	cachedAt time.Time
}

// response is the signed key response, re-signed when an hour old so
// valid_until_ts keeps its distance from now.
func (o *ownKeys) response() ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	if o.cached != nil && now.Sub(o.cachedAt) < min(time.Hour, o.validity/2) {
		return o.cached, nil
	}
	resp := keyResponse{
		ServerName:    o.server,
		VerifyKeys:    map[string]verifyKey{},
		OldVerifyKeys: map[string]oldVerifyKey{},
		ValidUntilTS:  now.Add(o.validity).UnixMilli(),
	}
	for _, k := range o.current {
		resp.VerifyKeys[k.ID] = verifyKey{Key: EncodeKey(k.Public())}
	}
	for _, k := range o.old {
		if _, cur := resp.VerifyKeys[k.ID]; cur {
			continue // rotation interrupted: the key is still current
		}
		resp.OldVerifyKeys[k.ID] = oldVerifyKey{Key: EncodeKey(k.Public), ExpiredTS: k.ExpiredTS}
	}
	body, err := json.Marshal(resp)
	if err != nil {
		return nil, err
	}
	if body, err = signJSON(body, o.server, o.current); err != nil {
		return nil, err
	}
	o.cached, o.cachedAt = body, now
	return body, nil
}

// lookup answers a key ID of our own: current keys are valid until the
// published valid_until_ts, old keys until they expired.
func (o *ownKeys) lookup(keyID string) (keyInfo, bool) {
	for _, k := range o.current {
		if k.ID == keyID {
			return keyInfo{Key: EncodeKey(k.Public()), ValidUntilTS: o.now().Add(o.validity).UnixMilli()}, true
		}
	}
	for _, k := range o.old {
		if k.ID == keyID {
			return keyInfo{Key: EncodeKey(k.Public), ValidUntilTS: k.ExpiredTS, ExpiredTS: k.ExpiredTS}, true
		}
	}
	return keyInfo{}, false
}

// serveKeys answers GET /_matrix/key/v2/server and the deprecated
// GET /_matrix/key/v2/server/{keyId}, which returns the same document.
func (s *Server) serveKeys(w http.ResponseWriter, r *http.Request) {
	body, err := s.own.response()
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}
