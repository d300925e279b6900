package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"

	"edge/edge/store"
)

// End-to-end encryption, as Element needs it
// (https://spec.matrix.org/latest/client-server-api/#end-to-end-encryption):
// device, one-time and fallback keys (this file), device lists
// (keys_devicelists.go), cross-signing (keys_crosssign.go), send-to-device
// (todevice.go), server-side key backup (backup_keys.go) and dehydrated
// devices (keys_dehydrated.go); their federation side is in
// keys_federation.go.

func (s *Server) routesKeys() {
	s.authed("POST /keys/upload", s.keysUpload)
	s.authed("POST /keys/query", s.keysQuery)
	s.authed("POST /keys/claim", s.keysClaim)
	s.authed("GET /keys/changes", s.keysChanges)
	s.authed("POST /keys/device_signing/upload", s.crossSigningUpload)
	s.authed("POST /keys/signatures/upload", s.signaturesUpload)
	s.authed("PUT /sendToDevice/{eventType}/{txnId}", s.sendToDevice)
	s.routesKeyBackup()
	s.routesDehydrated()
	acks := newToDeviceAcks()
	s.toDeviceAcks = acks
	s.SyncExtensions = append(s.SyncExtensions, func(tx *store.Tx, sess *Session, since, next uint64, initial bool, resp map[string]any) bool {
		return s.e2eeSync(tx, acks, sess, since, next, initial, resp)
	})
	s.DeviceRemovalHooks = append(s.DeviceRemovalHooks, s.e2eeRemoveDevice)
}

// KV namespaces of the E2EE module. Every key inside them is built by
// e2eeKey; positions inside keys are fixed-width hex (posKey) so that key
// order is stream order.
const (
	nsDeviceKeys    = "e2ee_devicekeys"      // user, device → device_keys as uploaded (canonical JSON)
	nsOTK           = "e2ee_otk"             // user, device, algorithm, upload pos, key id → key JSON
	nsOTKID         = "e2ee_otkid"           // user, device, algorithm:key id → the nsOTK key
	nsFallback      = "e2ee_fallback"        // user, device, algorithm → fallbackKey
	nsCrossSigning  = "e2ee_xsign"           // user, usage → cross-signing key as uploaded
	nsSignatures    = "e2ee_sig"             // target user, target key, signer user, signer key id → signature
	nsDevListUser   = "e2ee_devlist_user"    // user, viewer → the nsDevListPos key of its latest change
	nsDevListPos    = "e2ee_devlist_pos"     // pos → user, viewer ("" viewer: everyone sharing a room)
	nsToDevice      = "e2ee_todevice"        // user, device, pos, index → toDeviceMessage
	nsBackupVersion = "e2ee_backup_version"  // user, version → backupVersion
	nsBackupLast    = "e2ee_backup_last"     // user → the last version number handed out
	nsBackupKeys    = "e2ee_backup_sessions" // user, version, room, session → backupKeyData
	nsDehydrated    = "e2ee_dehydrated"      // user → dehydratedDevice
)

// e2eeSep separates key parts. 0xff never occurs in valid UTF-8, and every
// part is either from a decoded JSON body (always UTF-8) or a path value
// checked with validPathValue.
const e2eeSep = "\xff"

// e2eeKey builds a KV key from its parts.
func e2eeKey(parts ...string) string { return strings.Join(parts, e2eeSep) }

// e2eePrefix is e2eeKey(parts...) plus a separator: every key below them.
func e2eePrefix(parts ...string) string { return e2eeKey(parts...) + e2eeSep }

// splitKey is e2eeKey's inverse.
func splitKey(key string) []string { return strings.Split(key, e2eeSep) }

// posKey renders a stream position so that string order is numeric order.
func posKey(p uint64) string { return fmt.Sprintf("%016x", p) }

func parsePosKey(s string) uint64 {
	v, _ := strconv.ParseUint(s, 16, 64)
	return v
}

// deleteKVPrefix removes every key of namespace starting with keyPrefix.
func deleteKVPrefix(tx *store.Tx, namespace, keyPrefix string) int {
	var keys []string
	tx.ScanKV(namespace, keyPrefix, func(k string, _ []byte) bool {
		keys = append(keys, k)
		return true
	})
	for _, k := range keys {
		tx.DeleteKV(namespace, k)
	}
	return len(keys)
}

// userServer returns the server name of a user ID, or false if it is not one.
func userServer(userID string) (string, bool) {
	if !strings.HasPrefix(userID, "@") || len(userID) > 255 {
		return "", false
	}
	_, server, ok := strings.Cut(userID, ":")
	if !ok || server == "" || strings.HasPrefix(userID, "@:") {
		return "", false
	}
	return server, true
}

// remoteFailure is the `failures` entry for a remote server when the node
// runs without federation.
var remoteFailure = map[string]any{"status": 503, "message": "Federation is not available on this server"}

// sameJSON compares two JSON values canonically.
func sameJSON(a, b []byte) bool {
	ca, err1 := canonical(a)
	cb, err2 := canonical(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}

// isJSONObject tells whether raw is a JSON object.
func isJSONObject(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && t[0] == '{'
}

// keysUploadRequest is POST /keys/upload's body.
type keysUploadRequest struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
}

// deviceKeysJSON is the part of a device_keys object the server checks.
type deviceKeysJSON struct {
	UserID     string                       `json:"user_id"`
	DeviceID   string                       `json:"device_id"`
	Algorithms []string                     `json:"algorithms"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// fallbackKey is a device's fallback key for one algorithm.
type fallbackKey struct {
	KeyID string          `json:"key_id"` // algorithm:key id
	Key   json.RawMessage `json:"key"`
	Used  bool            `json:"used,omitempty"`
}

// keysUpload: POST /keys/upload
func (s *Server) keysUpload(r *http.Request, sess *Session) (any, error) {
	var req keysUploadRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	up, err := s.prepareUpload(&req, sess)
	if err != nil {
		return nil, err
	}
	var counts map[string]int
	err = s.Store.Write(func(tx *store.Tx) error {
		if _, err := tx.Device(sess.UserID, sess.DeviceID); err != nil {
			return errNotFound("Unknown device")
		}
		if err := s.applyUpload(tx, sess, up); err != nil {
			return err
		}
		counts = otkCounts(tx, sess.UserID, sess.DeviceID)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_key_counts": counts}, nil
}

// preparedUpload is a /keys/upload body checked for everything that does
// not need the store.
type preparedUpload struct {
	deviceKeys json.RawMessage // canonical; nil when none was uploaded
	signingKey string          // deviceKeys' ed25519 key
	otks       []uploadedKey
	fallbacks  []uploadedKey
}

// prepareUpload checks an upload's device, one-time and fallback keys for
// sess's device.
func (s *Server) prepareUpload(req *keysUploadRequest, sess *Session) (*preparedUpload, error) {
	up := &preparedUpload{}
	if len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null" {
		dk, signingKey, err := s.checkDeviceKeys(req.DeviceKeys, sess)
		if err != nil {
			return nil, err
		}
		up.deviceKeys, up.signingKey = dk, signingKey
	}
	var err error
	if up.otks, err = checkKeyMap(req.OneTimeKeys, "one_time_keys", sess); err != nil {
		return nil, err
	}
	if up.fallbacks, err = checkKeyMap(req.FallbackKeys, "fallback_keys", sess); err != nil {
		return nil, err
	}
	seenAlg := map[string]bool{}
	for _, k := range up.fallbacks {
		if seenAlg[k.alg] {
			return nil, errInvalidParam("fallback_keys: at most one key per algorithm (%s)", k.alg)
		}
		seenAlg[k.alg] = true
	}
	return up, nil
}

// applyUpload stores a prepared upload inside tx. Signed one-time and
// fallback keys are verified against the device's ed25519 key, from this
// upload or stored; any failure aborts the whole upload.
func (s *Server) applyUpload(tx *store.Tx, sess *Session, up *preparedUpload) error {
	signingKey := up.signingKey
	if signingKey == "" {
		if raw, err := tx.GetKV(nsDeviceKeys, e2eeKey(sess.UserID, sess.DeviceID)); err == nil {
			var dk deviceKeysJSON
			_ = json.Unmarshal(raw, &dk)
			signingKey = dk.Keys["ed25519:"+sess.DeviceID]
		}
	}
	for _, k := range slices.Concat(up.otks, up.fallbacks) {
		if !k.signed {
			continue
		}
		if signingKey == "" {
			return errInvalidParam("%s.%s:%s is signed, but the device has no device_keys to check it with: upload device_keys first", k.field, k.alg, k.id)
		}
		if err := verifySignedJSON(k.raw, sess.UserID, "ed25519:"+sess.DeviceID, signingKey); err != nil {
			return errInvalidSignature("%s.%s:%s: %s", k.field, k.alg, k.id, toError(err).Message)
		}
	}
	if up.deviceKeys != nil {
		if err := s.putDeviceKeys(tx, sess, up.deviceKeys); err != nil {
			return err
		}
	}
	if err := putOneTimeKeys(tx, sess, up.otks); err != nil {
		return err
	}
	for _, k := range up.fallbacks {
		key := e2eeKey(sess.UserID, sess.DeviceID, k.alg)
		if old, err := tx.GetKV(nsFallback, key); err == nil {
			var fk fallbackKey
			if json.Unmarshal(old, &fk) == nil && fk.KeyID == k.alg+":"+k.id && sameJSON(fk.Key, k.raw) {
				continue // the same key again: keep whether it was used
			}
		}
		v, _ := json.Marshal(fallbackKey{KeyID: k.alg + ":" + k.id, Key: k.raw})
		tx.PutKV(nsFallback, key, v)
	}
	if len(up.otks)+len(up.fallbacks) > 0 {
		s.feedDeviceKeys(tx, sess.UserID, sess.DeviceID)
	}
	return nil
}

// checkDeviceKeys validates an uploaded device_keys object: it must name
// the session's user and device and be signed by the device's own
// ed25519 key. It returns the object in canonical form and that key.
func (s *Server) checkDeviceKeys(raw json.RawMessage, sess *Session) (json.RawMessage, string, error) {
	if !isJSONObject(raw) {
		return nil, "", errBadJSON("device_keys must be an object")
	}
	var dk deviceKeysJSON
	if err := json.Unmarshal(raw, &dk); err != nil {
		return nil, "", errBadJSON("Invalid device_keys: %s", jsonMessage(err))
	}
	for _, f := range []struct {
		name    string
		missing bool
	}{
		{"user_id", dk.UserID == ""}, {"device_id", dk.DeviceID == ""}, {"algorithms", dk.Algorithms == nil},
		{"keys", dk.Keys == nil}, {"signatures", dk.Signatures == nil},
	} {
		if f.missing {
			return nil, "", errBadJSON("device_keys.%s is missing", f.name)
		}
	}
	if dk.UserID != sess.UserID {
		return nil, "", errInvalidParam("device_keys.user_id must be %s", sess.UserID)
	}
	if dk.DeviceID != sess.DeviceID {
		return nil, "", errInvalidParam("device_keys.device_id must be %s", sess.DeviceID)
	}
	keyID := "ed25519:" + dk.DeviceID
	signingKey := dk.Keys[keyID]
	if signingKey == "" {
		return nil, "", errInvalidParam("device_keys.keys lacks the device's %s key", keyID)
	}
	// The device's own signature, when given, must verify. Without one
	// the keys are stored as they are, as Synapse does: the spec leaves
	// the check to the clients, which ignore a device whose keys are not
	// self-signed (Complement's TestDeviceListUpdates uploads them so).
	if dk.Signatures[dk.UserID][keyID] != "" {
		if err := verifySignedJSON(raw, dk.UserID, keyID, signingKey); err != nil {
			return nil, "", errInvalidSignature("device_keys: %s", toError(err).Message)
		}
	}
	c, err := canonical(raw)
	if err != nil {
		return nil, "", errBadJSON("Invalid device_keys")
	}
	return c, signingKey, nil
}

// putDeviceKeys stores a checked device_keys object. New identity keys
// for a device replace the old, as in Synapse (the spec does not forbid
// it); the change goes out as a device-list update, so every peer
// queries the keys again and its client sees them change.
func (s *Server) putDeviceKeys(tx *store.Tx, sess *Session, dk json.RawMessage) error {
	key := e2eeKey(sess.UserID, sess.DeviceID)
	if old, err := tx.GetKV(nsDeviceKeys, key); err == nil && bytes.Equal(old, dk) {
		return nil
	}
	tx.PutKV(nsDeviceKeys, key, dk)
	s.markDeviceListChange(tx, sess.UserID, "")
	s.sendDeviceListUpdate(tx, sess.UserID, sess.DeviceID, false)
	return nil
}

// uploadedKey is one entry of one_time_keys or fallback_keys.
type uploadedKey struct {
	field   string // one_time_keys or fallback_keys, for error messages
	alg, id string
	raw     json.RawMessage // canonical
	signed  bool            // a signed_* algorithm: verify before storing
}

// checkKeyMap validates `<algorithm>:<key id>` → key maps for sess's
// device. Keys of signed_* algorithms are objects with a key and the
// device's signature; other algorithms may also be plain strings.
func checkKeyMap(m map[string]json.RawMessage, field string, sess *Session) ([]uploadedKey, error) {
	out := make([]uploadedKey, 0, len(m))
	for keyID, raw := range m {
		alg, id, ok := strings.Cut(keyID, ":")
		if !ok || alg == "" || id == "" {
			return nil, errInvalidParam("%s: invalid key ID %q: want <algorithm>:<key id>", field, keyID)
		}
		t := bytes.TrimSpace(raw)
		if len(t) == 0 || (t[0] != '{' && t[0] != '"') {
			return nil, errBadJSON("%s.%s must be an object or a string", field, keyID)
		}
		signed := strings.HasPrefix(alg, "signed_")
		if signed {
			var k struct {
				Key        any                          `json:"key"`
				Signatures map[string]map[string]string `json:"signatures"`
			}
			if t[0] != '{' || json.Unmarshal(raw, &k) != nil {
				return nil, errBadJSON("%s.%s must be an object with key and signatures", field, keyID)
			}
			if s, ok := k.Key.(string); !ok || s == "" {
				return nil, errBadJSON("%s.%s.key must be a non-empty string", field, keyID)
			}
			if k.Signatures[sess.UserID]["ed25519:"+sess.DeviceID] == "" {
				return nil, errBadJSON("%s.%s is not signed: signatures lacks %s ed25519:%s", field, keyID, sess.UserID, sess.DeviceID)
			}
		}
		c, err := canonical(raw)
		if err != nil {
			return nil, errBadJSON("%s.%s is not valid JSON", field, keyID)
		}
		out = append(out, uploadedKey{field: field, alg: alg, id: id, raw: c, signed: signed})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].alg+":"+out[i].id < out[j].alg+":"+out[j].id })
	return out, nil
}

// putOneTimeKeys stores new one-time keys. A key ID already held must come
// with the same key; one upload shares one position, so keys are claimed
// in upload order.
func putOneTimeKeys(tx *store.Tx, sess *Session, keys []uploadedKey) error {
	if len(keys) == 0 {
		return nil
	}
	var pos uint64
	for _, k := range keys {
		idKey := e2eeKey(sess.UserID, sess.DeviceID, k.alg+":"+k.id)
		if at, err := tx.GetKV(nsOTKID, idKey); err == nil {
			old, _ := tx.GetKV(nsOTK, string(at))
			if !sameJSON(old, k.raw) {
				return errInvalidParam("one_time_keys.%s:%s: a different key already has this ID", k.alg, k.id)
			}
			continue
		}
		if pos == 0 {
			pos = tx.NextPos()
		}
		at := e2eeKey(sess.UserID, sess.DeviceID, k.alg, posKey(pos), k.id)
		tx.PutKV(nsOTK, at, k.raw)
		tx.PutKV(nsOTKID, idKey, []byte(at))
	}
	return nil
}

// otkCounts counts a device's unclaimed one-time keys per algorithm.
// signed_curve25519 is always present: clients read a missing count as
// "unknown" rather than zero.
func otkCounts(tx *store.Tx, userID, deviceID string) map[string]int {
	counts := map[string]int{"signed_curve25519": 0}
	tx.ScanKV(nsOTK, e2eePrefix(userID, deviceID), func(k string, _ []byte) bool {
		if parts := splitKey(k); len(parts) == 5 {
			counts[parts[2]]++
		}
		return true
	})
	return counts
}

// unusedFallbackTypes lists the algorithms of a device's unused fallback keys.
func unusedFallbackTypes(tx *store.Tx, userID, deviceID string) []string {
	out := []string{}
	tx.ScanKV(nsFallback, e2eePrefix(userID, deviceID), func(k string, v []byte) bool {
		var fk fallbackKey
		if json.Unmarshal(v, &fk) == nil && !fk.Used {
			parts := splitKey(k)
			out = append(out, parts[len(parts)-1])
		}
		return true
	})
	return out
}

// keysQuery: POST /keys/query
func (s *Server) keysQuery(r *http.Request, sess *Session) (any, error) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		Timeout    json.RawMessage     `json:"timeout"` // how long to wait for remote servers (ms)
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.DeviceKeys == nil {
		return nil, errMissingParam("Missing device_keys")
	}
	for u := range req.DeviceKeys {
		if _, ok := userServer(u); !ok {
			return nil, errInvalidParam("Invalid user ID %q", u)
		}
	}
	deviceKeys := map[string]map[string]json.RawMessage{}
	master, selfSigning, userSigning := map[string]json.RawMessage{}, map[string]json.RawMessage{}, map[string]json.RawMessage{}
	failures := map[string]any{}
	remote := map[string]map[string][]string{} // server → user → devices
	for userID, devices := range req.DeviceKeys {
		if !s.isLocalUser(userID) {
			server, _ := userServer(userID)
			if remote[server] == nil {
				remote[server] = map[string][]string{}
			}
			if devices == nil {
				devices = []string{}
			}
			remote[server][userID] = devices
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(r.Context(), remoteTimeout(req.Timeout))
		defer cancel()
		s.queryRemoteKeys(ctx, remote, deviceKeys, master, selfSigning, failures)
	}()
	local := map[string]map[string]json.RawMessage{}
	lmaster, lself := map[string]json.RawMessage{}, map[string]json.RawMessage{}
	err := s.Store.View(func(tx *store.Tx) error {
		deviceKeys, master, selfSigning := local, lmaster, lself // the remote answers fill the outer maps meanwhile
		for userID, devices := range req.DeviceKeys {
			if !s.isLocalUser(userID) {
				continue
			}
			if _, err := tx.User(localpart(userID)); err != nil {
				continue // unknown users are left out, not failures
			}
			deviceKeys[userID] = s.queryDeviceKeys(tx, sess.UserID, userID, devices)
			if mk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "master")); err == nil {
				master[userID] = withSignatures(tx, mk, sess.UserID, userID, crossSigningPub(mk))
			}
			if sk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "self_signing")); err == nil {
				selfSigning[userID] = sk
			}
			if userID == sess.UserID {
				if uk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "user_signing")); err == nil {
					userSigning[userID] = uk
				}
			}
		}
		return nil
	})
	<-done
	if err != nil {
		return nil, err
	}
	maps.Copy(deviceKeys, local)
	maps.Copy(master, lmaster)
	maps.Copy(selfSigning, lself)
	return map[string]any{
		"device_keys":       deviceKeys,
		"master_keys":       master,
		"self_signing_keys": selfSigning,
		"user_signing_keys": userSigning,
		"failures":          failures,
	}, nil
}

// queryDeviceKeys returns a user's device keys (all devices, or those
// listed) with the signatures the viewer may see and the display name.
func (s *Server) queryDeviceKeys(tx *store.Tx, viewer, userID string, only []string) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	tx.ScanKV(nsDeviceKeys, e2eePrefix(userID), func(k string, v []byte) bool {
		deviceID := strings.TrimPrefix(k, e2eePrefix(userID))
		if len(only) > 0 && !slices.Contains(only, deviceID) {
			return true
		}
		dk := withSignatures(tx, bytes.Clone(v), viewer, userID, deviceID) // v lives only as long as tx
		name := ""
		if d, err := tx.Device(userID, deviceID); err == nil {
			name = d.DisplayName
		}
		out[deviceID] = withField(dk, "unsigned", map[string]any{"device_display_name": name})
		return true
	})
	return out
}

// withSignatures adds the stored extra signatures of a key (made through
// /keys/signatures/upload) that viewer may see: the owner's own and the
// viewer's. Others' user-signing signatures stay private to them.
func withSignatures(tx *store.Tx, obj json.RawMessage, viewer, owner, target string) json.RawMessage {
	if target == "" {
		return obj
	}
	extra := map[string]map[string]string{}
	p := e2eePrefix(owner, target)
	tx.ScanKV(nsSignatures, p, func(k string, v []byte) bool {
		parts := splitKey(strings.TrimPrefix(k, p))
		if len(parts) == 2 && (parts[0] == owner || parts[0] == viewer) {
			if extra[parts[0]] == nil {
				extra[parts[0]] = map[string]string{}
			}
			extra[parts[0]][parts[1]] = string(v)
		}
		return true
	})
	if len(extra) == 0 {
		return obj
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return obj
	}
	sigs := map[string]map[string]string{}
	_ = json.Unmarshal(m["signatures"], &sigs)
	for u, byKey := range extra {
		if sigs[u] == nil {
			sigs[u] = map[string]string{}
		}
		for k, sig := range byKey {
			sigs[u][k] = sig
		}
	}
	m["signatures"], _ = json.Marshal(sigs)
	out, err := json.Marshal(m)
	if err != nil {
		return obj
	}
	return out
}

// withField sets one top-level field of a JSON object.
func withField(obj json.RawMessage, field string, value any) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return obj
	}
	m[field], _ = json.Marshal(value)
	out, err := json.Marshal(m)
	if err != nil {
		return obj
	}
	return out
}

// keysClaim: POST /keys/claim
func (s *Server) keysClaim(r *http.Request, sess *Session) (any, error) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     json.RawMessage              `json:"timeout"` // how long to wait for remote servers (ms)
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.OneTimeKeys == nil {
		return nil, errMissingParam("Missing one_time_keys")
	}
	for u, devices := range req.OneTimeKeys {
		if _, ok := userServer(u); !ok {
			return nil, errInvalidParam("Invalid user ID %q", u)
		}
		for d, alg := range devices {
			if d == "" || alg == "" {
				return nil, errInvalidParam("Empty device ID or algorithm for %s", u)
			}
		}
	}
	var claimed map[string]map[string]map[string]json.RawMessage
	failures := map[string]any{}
	remote := map[string]map[string]map[string]string{} // server → user → device → algorithm
	for userID, devices := range req.OneTimeKeys {
		if !s.isLocalUser(userID) {
			server, _ := userServer(userID)
			if remote[server] == nil {
				remote[server] = map[string]map[string]string{}
			}
			remote[server][userID] = devices
		}
	}
	remoteClaimed := map[string]map[string]map[string]json.RawMessage{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(r.Context(), remoteTimeout(req.Timeout))
		defer cancel()
		s.claimRemoteKeys(ctx, remote, remoteClaimed, failures)
	}()
	// One write transaction: concurrent claimers are serialised, so each
	// one-time key goes to exactly one of them.
	err := s.Store.Write(func(tx *store.Tx) error {
		claimed = s.claimLocalKeys(tx, req.OneTimeKeys)
		return nil
	})
	<-done
	if err != nil {
		return nil, err
	}
	maps.Copy(claimed, remoteClaimed)
	return map[string]any{"one_time_keys": claimed, "failures": failures}, nil
}

// claimOneTimeKey hands out and deletes a device's oldest one-time key of
// alg, or else its fallback key, which is marked used but kept.
func claimOneTimeKey(tx *store.Tx, userID, deviceID, alg string) (string, json.RawMessage, bool) {
	var at string
	var key json.RawMessage
	tx.ScanKV(nsOTK, e2eePrefix(userID, deviceID, alg), func(k string, v []byte) bool {
		at, key = k, bytes.Clone(v)
		return false
	})
	if at != "" {
		parts := splitKey(at)
		keyID := alg + ":" + parts[len(parts)-1]
		tx.DeleteKV(nsOTK, at)
		tx.DeleteKV(nsOTKID, e2eeKey(userID, deviceID, keyID))
		return keyID, key, true
	}
	fkKey := e2eeKey(userID, deviceID, alg)
	v, err := tx.GetKV(nsFallback, fkKey)
	if err != nil {
		return "", nil, false
	}
	var fk fallbackKey
	if json.Unmarshal(v, &fk) != nil {
		return "", nil, false
	}
	if !fk.Used {
		fk.Used = true
		nv, _ := json.Marshal(fk)
		tx.PutKV(nsFallback, fkKey, nv)
	}
	return fk.KeyID, fk.Key, true
}

// keysChanges: GET /keys/changes
func (s *Server) keysChanges(r *http.Request, sess *Session) (any, error) {
	q := r.URL.Query()
	if q.Get("from") == "" {
		return nil, errMissingParam("Missing from")
	}
	from, ok := parsePos(q.Get("from"))
	if !ok {
		return nil, errInvalidParam("Invalid from token")
	}
	var changed, left []string
	err := s.Store.View(func(tx *store.Tx) error {
		to := tx.Pos()
		if t := q.Get("to"); t != "" {
			v, ok := parsePos(t)
			if !ok {
				return errInvalidParam("Invalid to token")
			}
			to = min(v, to)
		}
		var err error
		changed, left, err = s.deviceListChanges(tx, sess.UserID, from, to)
		return err
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"changed": changed, "left": left}, nil
}

// e2eeSync is the /sync extension: one-time key counts and unused fallback
// key types for the syncing device, its to-device messages, and (on
// incremental syncs) device-list changes. It reports news when there are
// messages or changes, so a long-poll returns.
func (s *Server) e2eeSync(tx *store.Tx, acks *toDeviceAcks, sess *Session, since, next uint64, initial bool, resp map[string]any) bool {
	resp["device_one_time_keys_count"] = otkCounts(tx, sess.UserID, sess.DeviceID)
	resp["device_unused_fallback_key_types"] = unusedFallbackTypes(tx, sess.UserID, sess.DeviceID)
	msgs := s.toDeviceSince(tx, acks, sess, since, next)
	resp["to_device"] = map[string]any{"events": msgs}
	news := len(msgs) > 0
	if !initial {
		changed, left, err := s.deviceListChanges(tx, sess.UserID, since, next)
		if err != nil {
			s.Log.Error("device list changes", "user", sess.UserID, "err", err)
		}
		resp["device_lists"] = map[string]any{"changed": changed, "left": left}
		news = news || len(changed) > 0 || len(left) > 0
	}
	return news
}

// e2eeRemoveDevice deletes a removed device's keys and inbox, inside the
// deleting transaction, and tells everyone sharing a room its list changed.
func (s *Server) e2eeRemoveDevice(tx *store.Tx, userID, deviceID string) {
	tx.DeleteKV(nsDeviceKeys, e2eeKey(userID, deviceID))
	for _, ns := range []string{nsOTK, nsOTKID, nsFallback, nsToDevice} {
		deleteKVPrefix(tx, ns, e2eePrefix(userID, deviceID))
	}
	deleteKVPrefix(tx, nsSignatures, e2eePrefix(userID, deviceID))
	if raw, err := tx.GetKV(nsDehydrated, userID); err == nil {
		var d dehydratedDevice
		if json.Unmarshal(raw, &d) == nil && d.DeviceID == deviceID {
			tx.DeleteKV(nsDehydrated, userID)
		}
	}
	s.markDeviceListChange(tx, userID, "")
	s.sendDeviceListUpdate(tx, userID, deviceID, true)
}

// claimLocalKeys hands out one one-time key (or the fallback key) per
// requested device of our users, inside the caller's write transaction.
func (s *Server) claimLocalKeys(tx *store.Tx, req map[string]map[string]string) map[string]map[string]map[string]json.RawMessage {
	claimed := map[string]map[string]map[string]json.RawMessage{}
	for userID, devices := range req {
		if !s.isLocalUser(userID) {
			continue
		}
		for deviceID, alg := range devices {
			keyID, key, ok := claimOneTimeKey(tx, userID, deviceID, alg)
			if !ok {
				continue
			}
			if claimed[userID] == nil {
				claimed[userID] = map[string]map[string]json.RawMessage{}
			}
			claimed[userID][deviceID] = map[string]json.RawMessage{keyID: key}
			s.feedDeviceKeys(tx, userID, deviceID)
		}
	}
	return claimed
}
