package client

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"maunium.net/go/mautrix/crypto/canonicaljson"

	"edge/edge/store"
)

// Cross-signing (https://spec.matrix.org/latest/client-server-api/#cross-signing):
// a user's master, self-signing and user-signing keys, and signatures
// made with them or with device keys.

// canonical returns raw as canonical JSON.
func canonical(raw []byte) ([]byte, error) {
	var m json.RawMessage = raw
	c, err := canonicaljson.Marshal(m)
	return []byte(c), err
}

// signedPart is a signed object without signatures and unsigned, in
// canonical JSON: what a signature covers
// (https://spec.matrix.org/latest/appendices/#signing-json).
func signedPart(obj json.RawMessage) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	c, err := canonicaljson.Marshal(m)
	return []byte(c), err
}

// decodeB64 reads unpadded base64, tolerating padding.
func decodeB64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// verifySignedJSON checks obj's signature by signer's key keyID
// ("ed25519:…") whose public key is pub: M_INVALID_SIGNATURE otherwise.
func verifySignedJSON(obj json.RawMessage, signer, keyID, pub string) error {
	var sigs struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(obj, &sigs); err != nil {
		return errBadJSON("Invalid signed object: %s", jsonMessage(err))
	}
	sig := sigs.Signatures[signer][keyID]
	if sig == "" {
		return errInvalidSignature("Missing signature by %s %s", signer, keyID)
	}
	return verifySignature(obj, sig, pub)
}

// verifySignature checks one ed25519 signature over obj's signed part.
func verifySignature(obj json.RawMessage, sig, pub string) error {
	key, err := decodeB64(pub)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return errInvalidSignature("Invalid ed25519 public key")
	}
	sigBytes, err := decodeB64(sig)
	if err != nil || len(sigBytes) != ed25519.SignatureSize {
		return errInvalidSignature("Invalid signature encoding")
	}
	msg, err := signedPart(obj)
	if err != nil {
		return errBadJSON("Invalid signed object")
	}
	if !ed25519.Verify(ed25519.PublicKey(key), msg, sigBytes) {
		return errInvalidSignature("Invalid signature")
	}
	return nil
}

func errInvalidSignature(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "M_INVALID_SIGNATURE", format, a...)
}

// crossSigningKeyJSON is a cross-signing key object.
type crossSigningKeyJSON struct {
	UserID string            `json:"user_id"`
	Usage  []string          `json:"usage"`
	Keys   map[string]string `json:"keys"`
}

// crossSigningPub returns the public key of a stored cross-signing key.
func crossSigningPub(raw json.RawMessage) string {
	var k crossSigningKeyJSON
	if json.Unmarshal(raw, &k) != nil {
		return ""
	}
	for _, v := range k.Keys {
		return v
	}
	return ""
}

// checkCrossSigningKey validates a key of the given usage for userID and
// returns its public key: one ed25519 key whose ID names it.
func checkCrossSigningKey(raw json.RawMessage, userID, usage string) (string, error) {
	if !isJSONObject(raw) {
		return "", errBadJSON("The %s key must be an object", usage)
	}
	var k crossSigningKeyJSON
	if err := json.Unmarshal(raw, &k); err != nil {
		return "", errBadJSON("Invalid %s key: %s", usage, jsonMessage(err))
	}
	if k.UserID != userID || !slices.Contains(k.Usage, usage) || len(k.Keys) != 1 {
		return "", errInvalidParam("Invalid %s key: it needs user_id %s, usage %s and exactly one key", usage, userID, usage)
	}
	for id, pub := range k.Keys {
		b, err := decodeB64(pub)
		if id != "ed25519:"+pub || err != nil || len(b) != ed25519.PublicKeySize {
			return "", errInvalidParam("Invalid %s key: want \"ed25519:<public key>\": \"<public key>\"", usage)
		}
		return pub, nil
	}
	return "", errInvalidParam("Invalid %s key", usage)
}

// isCrossSigningKey tells whether deviceID is one of userID's cross-signing
// public keys. Login must not hand out such a device ID: clients verify a
// master key by treating it as a device ID.
func isCrossSigningKey(tx *store.Tx, userID, deviceID string) bool {
	for _, usage := range crossSigningUsages {
		if k, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, usage)); err == nil && crossSigningPub(k) == deviceID {
			return true
		}
	}
	return false
}

// crossSigningUsages are the three keys, in upload order.
var crossSigningUsages = []string{"master", "self_signing", "user_signing"}

// crossSigningUpload: POST /keys/device_signing/upload
func (s *Server) crossSigningUpload(r *http.Request, sess *Session) (any, error) {
	var req struct {
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
		UserSigningKey json.RawMessage `json:"user_signing_key"`
		Auth           *uiaAuth        `json:"auth"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	uploaded := map[string]json.RawMessage{}
	for usage, raw := range map[string]json.RawMessage{"master": req.MasterKey, "self_signing": req.SelfSigningKey, "user_signing": req.UserSigningKey} {
		if len(raw) > 0 && string(raw) != "null" {
			uploaded[usage] = raw
		}
	}
	// UIA is required unless the user has no master key yet, or the request
	// repeats the stored keys exactly (a retry), as the spec allows.
	var exempt bool
	_ = s.Store.View(func(tx *store.Tx) error {
		exempt = s.crossSigningUploadExempt(tx, sess.UserID, uploaded)
		return nil
	})
	if !exempt {
		if err := s.uiaCheck(req.Auth, sess.UserID, passwordFlows, nil, s.passwordStage(sess.UserID)); err != nil {
			return nil, err
		}
	}
	pubs := map[string]string{}
	var err error
	if raw, ok := uploaded["master"]; ok {
		if pubs["master"], err = checkCrossSigningKey(raw, sess.UserID, "master"); err != nil {
			return nil, err
		}
	}
	for _, usage := range []string{"self_signing", "user_signing"} {
		if raw, ok := uploaded[usage]; ok {
			if pubs[usage], err = checkCrossSigningKey(raw, sess.UserID, usage); err != nil {
				return nil, err
			}
		}
	}
	err = s.Store.Write(func(tx *store.Tx) error {
		if exempt && !s.crossSigningUploadExempt(tx, sess.UserID, uploaded) {
			return errForbidden("Cross-signing keys changed meanwhile; authenticate and retry")
		}
		master, masterPub := uploaded["master"], pubs["master"]
		if master == nil {
			stored, err := tx.GetKV(nsCrossSigning, e2eeKey(sess.UserID, "master"))
			if err != nil {
				return errMissingParam("No master key available")
			}
			master, masterPub = stored, crossSigningPub(stored)
		}
		for _, usage := range []string{"self_signing", "user_signing"} {
			if raw, ok := uploaded[usage]; ok {
				if err := verifySignedJSON(raw, sess.UserID, "ed25519:"+masterPub, masterPub); err != nil {
					e := toError(err)
					return errInvalidSignature("The %s key is not signed by the master key: %s", usage, e.Message)
				}
			}
		}
		// Cross-signing public keys double as device IDs in verification.
		for _, pub := range pubs {
			if _, err := tx.Device(sess.UserID, pub); err == nil {
				return errForbidden("Key ID in use by a device")
			}
		}
		for _, usage := range crossSigningUsages {
			raw, ok := uploaded[usage]
			if !ok {
				continue
			}
			c, err := canonical(raw)
			if err != nil {
				return errBadJSON("Invalid %s key", usage)
			}
			key := e2eeKey(sess.UserID, usage)
			old, _ := tx.GetKV(nsCrossSigning, key)
			if sameJSON(old, c) {
				continue
			}
			if usage == "master" && old != nil {
				// Signatures of the old master key verify nothing any more.
				deleteKVPrefix(tx, nsSignatures, e2eePrefix(sess.UserID, crossSigningPub(old)))
			}
			tx.PutKV(nsCrossSigning, key, c)
			if usage == "user_signing" {
				s.markDeviceListChange(tx, sess.UserID, sess.UserID) // only its owner sees it
			} else {
				s.markDeviceListChange(tx, sess.UserID, "")
				s.sendSigningKeyUpdate(tx, sess.UserID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

// crossSigningUploadExempt tells whether an upload needs no UIA: there is
// no master key yet (MSC3967), or every key of the request equals the
// stored one (a retry, which may repeat an already used auth dict).
func (s *Server) crossSigningUploadExempt(tx *store.Tx, userID string, uploaded map[string]json.RawMessage) bool {
	if _, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "master")); err != nil {
		return true
	}
	if len(uploaded) == 0 {
		return false
	}
	for usage, raw := range uploaded {
		old, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, usage))
		if err != nil || !sameJSON(old, raw) {
			return false
		}
	}
	return true
}

// signatureFailure is one entry of /keys/signatures/upload's failures.
func signatureFailure(e *Error) map[string]string {
	return map[string]string{"errcode": e.Code, "error": e.Message}
}

// signaturesUpload: POST /keys/signatures/upload
func (s *Server) signaturesUpload(r *http.Request, sess *Session) (any, error) {
	var req map[string]map[string]json.RawMessage
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	for userID, keys := range req {
		if _, ok := userServer(userID); !ok {
			return nil, errInvalidParam("Invalid user ID %q", userID)
		}
		for keyID, obj := range keys {
			if !isJSONObject(obj) {
				return nil, errBadJSON("The signed object for %s %s must be an object", userID, keyID)
			}
		}
	}
	var failures map[string]map[string]map[string]string
	err := s.Store.Write(func(tx *store.Tx) error {
		failures = map[string]map[string]map[string]string{}
		fail := func(userID, keyID string, err error) {
			if failures[userID] == nil {
				failures[userID] = map[string]map[string]string{}
			}
			failures[userID][keyID] = signatureFailure(toError(err))
		}
		ownChanged := false
		for target, keys := range req {
			for keyID, obj := range keys {
				var err error
				if target == sess.UserID {
					var stored bool
					stored, err = s.signOwnKey(tx, sess.UserID, keyID, obj)
					ownChanged = ownChanged || stored
					if stored {
						// Remote servers cache our keys: send them the new signature.
						if _, derr := tx.GetKV(nsDeviceKeys, e2eeKey(sess.UserID, keyID)); derr == nil {
							s.sendDeviceListUpdate(tx, sess.UserID, keyID, false)
						} else {
							s.sendSigningKeyUpdate(tx, sess.UserID)
						}
					}
				} else {
					err = s.signOthersMasterKey(tx, sess.UserID, target, keyID, obj)
				}
				if err != nil {
					fail(target, keyID, err)
				}
			}
		}
		if ownChanged {
			s.markDeviceListChange(tx, sess.UserID, "")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"failures": failures}, nil
}

// signOwnKey stores signatures of the user's own keys: of a device by the
// self-signing key, or of the master key by the user's devices. It
// reports whether anything new was stored.
func (s *Server) signOwnKey(tx *store.Tx, userID, keyID string, obj json.RawMessage) (bool, error) {
	var signed struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(obj, &signed); err != nil {
		return false, errBadJSON("Invalid signed object")
	}
	sigs := signed.Signatures[userID]
	if len(sigs) == 0 {
		return false, errInvalidSignature("No signature by %s", userID)
	}
	if master, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "master")); err == nil && keyID == crossSigningPub(master) {
		if err := sameSignedPart(obj, master); err != nil {
			return false, err
		}
		stored := false
		for signerKey, sig := range sigs {
			if signerKey == "ed25519:"+keyID {
				continue // the master key's own signature, if any, is not news
			}
			deviceID, ok := strings.CutPrefix(signerKey, "ed25519:")
			dk, err := tx.GetKV(nsDeviceKeys, e2eeKey(userID, deviceID))
			if !ok || err != nil {
				return stored, errInvalidSignature("Signed by unknown device key %s", signerKey)
			}
			var d deviceKeysJSON
			_ = json.Unmarshal(dk, &d)
			if err := verifySignature(obj, sig, d.Keys[signerKey]); err != nil {
				return stored, err
			}
			tx.PutKV(nsSignatures, e2eeKey(userID, keyID, userID, signerKey), []byte(sig))
			stored = true
		}
		return stored, nil
	}
	dk, err := tx.GetKV(nsDeviceKeys, e2eeKey(userID, keyID))
	if err != nil {
		return false, errNotFound("Unknown device %s", keyID)
	}
	ssk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "self_signing"))
	if err != nil {
		return false, errNotFound("No self-signing key")
	}
	sskPub := crossSigningPub(ssk)
	sig := sigs["ed25519:"+sskPub]
	if sig == "" {
		return false, errInvalidSignature("Not signed by the self-signing key")
	}
	if err := sameSignedPart(obj, dk); err != nil {
		return false, err
	}
	if err := verifySignature(obj, sig, sskPub); err != nil {
		return false, err
	}
	tx.PutKV(nsSignatures, e2eeKey(userID, keyID, userID, "ed25519:"+sskPub), []byte(sig))
	return true, nil
}

// signOthersMasterKey stores a signature of another user's master key by
// the signer's user-signing key; only the signer will see it.
func (s *Server) signOthersMasterKey(tx *store.Tx, signer, target, keyID string, obj json.RawMessage) error {
	usk, err := tx.GetKV(nsCrossSigning, e2eeKey(signer, "user_signing"))
	if err != nil {
		return errNotFound("No user-signing key")
	}
	if !s.isLocalUser(target) {
		return errNotFound("Keys of remote users are not available yet") // federation later
	}
	master, err := tx.GetKV(nsCrossSigning, e2eeKey(target, "master"))
	if err != nil || crossSigningPub(master) != keyID {
		return errNotFound("Unknown master key %s of %s", keyID, target)
	}
	if err := sameSignedPart(obj, master); err != nil {
		return err
	}
	uskPub := crossSigningPub(usk)
	if err := verifySignedJSON(obj, signer, "ed25519:"+uskPub, uskPub); err != nil {
		return err
	}
	var signed struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	_ = json.Unmarshal(obj, &signed)
	tx.PutKV(nsSignatures, e2eeKey(target, keyID, signer, "ed25519:"+uskPub), []byte(signed.Signatures[signer]["ed25519:"+uskPub]))
	s.markDeviceListChange(tx, target, signer)
	return nil
}

// sameSignedPart requires a signed object to be the stored key it claims to be.
func sameSignedPart(obj, stored json.RawMessage) error {
	a, err1 := signedPart(obj)
	b, err2 := signedPart(stored)
	if err1 != nil || err2 != nil || string(a) != string(b) {
		return errInvalidSignature("The signed object does not match the stored key")
	}
	return nil
}
