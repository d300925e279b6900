package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"edge/edge/store"
)

// Dehydrated devices (MSC3814, https://github.com/matrix-org/matrix-spec-proposals/pull/3814,
// as Synapse and Element implement it): a user parks one device whose
// private keys are encrypted in device_data, so that room keys sent while
// all their real devices are offline wait for the next device to log in.
// The dehydrated device is an ordinary device without an access token: it
// has device and one-time keys and a to-device inbox, which the next
// device reads through …/dehydrated_device/{deviceId}/events.

// dehydratedPrefix is the MSC's unstable API prefix.
const dehydratedPrefix = "/_matrix/client/unstable/org.matrix.msc3814.v1"

// maxDehydratedEvents bounds one page of a dehydrated device's inbox, as
// in Synapse.
const maxDehydratedEvents = 100

func (s *Server) routesDehydrated() {
	s.authed("PUT "+dehydratedPrefix+"/dehydrated_device", s.dehydratedPut)
	s.authed("GET "+dehydratedPrefix+"/dehydrated_device", s.dehydratedGet)
	s.authed("DELETE "+dehydratedPrefix+"/dehydrated_device", s.dehydratedDelete)
	s.authed("POST "+dehydratedPrefix+"/dehydrated_device/{deviceId}/events", s.dehydratedEvents)
}

// dehydratedDevice is the stored record of a user's dehydrated device.
type dehydratedDevice struct {
	DeviceID   string          `json:"device_id"`
	DeviceData json.RawMessage `json:"device_data"`
}

// loadDehydrated returns the user's dehydrated device, or nil. A record
// whose device has gone or was taken over by a login (it has a token
// now) no longer counts.
func loadDehydrated(tx *store.Tx, userID string) *dehydratedDevice {
	raw, err := tx.GetKV(nsDehydrated, userID)
	if err != nil {
		return nil
	}
	var d dehydratedDevice
	if json.Unmarshal(raw, &d) != nil {
		return nil
	}
	if dev, err := tx.Device(userID, d.DeviceID); err != nil || dev.TokenHash != "" {
		return nil
	}
	return &d
}

func errNoDehydrated() *Error { return errNotFound("No dehydrated device available") }

// dehydratedPut: PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
// It replaces the user's dehydrated device, if any, with a new one and
// uploads its keys, in one transaction.
func (s *Server) dehydratedPut(r *http.Request, sess *Session) (any, error) {
	var req struct {
		DeviceID    *string         `json:"device_id"`
		DeviceData  json.RawMessage `json:"device_data"`
		DisplayName *string         `json:"initial_device_display_name"`
		keysUploadRequest
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.DeviceID == nil || *req.DeviceID == "" {
		return nil, errMissingParam("Missing device_id")
	}
	deviceID := *req.DeviceID
	if !validPathValue(deviceID) || len(deviceID) > 255 {
		return nil, errInvalidParam("Invalid device_id")
	}
	if len(req.DeviceData) == 0 || string(req.DeviceData) == "null" {
		return nil, errMissingParam("Missing device_data")
	}
	var data struct {
		Algorithm any `json:"algorithm"`
	}
	if !isJSONObject(req.DeviceData) || json.Unmarshal(req.DeviceData, &data) != nil {
		return nil, errBadJSON("device_data must be an object")
	}
	if alg, ok := data.Algorithm.(string); !ok || alg == "" {
		return nil, errBadJSON("device_data.algorithm must be a non-empty string")
	}
	if len(req.DeviceKeys) == 0 || string(req.DeviceKeys) == "null" {
		return nil, errMissingParam("Missing device_keys")
	}
	name := ""
	if req.DisplayName != nil {
		name = *req.DisplayName
	}
	dsess := &Session{UserID: sess.UserID, DeviceID: deviceID}
	up, err := s.prepareUpload(&req.keysUploadRequest, dsess)
	if err != nil {
		return nil, err
	}
	data2, err := canonical(req.DeviceData)
	if err != nil {
		return nil, errBadJSON("Invalid device_data")
	}
	record, _ := json.Marshal(dehydratedDevice{DeviceID: deviceID, DeviceData: data2})
	err = s.Store.Write(func(tx *store.Tx) error {
		old := loadDehydrated(tx, sess.UserID)
		if old == nil || old.DeviceID != deviceID {
			if _, err := tx.Device(sess.UserID, deviceID); err == nil {
				return errInvalidParam("device_id %s is in use by another device", deviceID)
			}
		}
		if isCrossSigningKey(tx, sess.UserID, deviceID) {
			return errInvalidParam("device_id %s is one of the user's cross-signing keys", deviceID)
		}
		if old != nil {
			// Its keys and inbox go with it, and peers hear of the change.
			if err := s.removeDevice(tx, sess.UserID, old.DeviceID); err != nil {
				return err
			}
		}
		tx.PutDevice(&store.Device{UserID: sess.UserID, DeviceID: deviceID, DisplayName: name, CreatedTS: time.Now().UnixMilli()})
		if err := s.applyUpload(tx, dsess, up); err != nil {
			return err
		}
		tx.PutKV(nsDehydrated, sess.UserID, record)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"device_id": deviceID}, nil
}

// dehydratedGet: GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
func (s *Server) dehydratedGet(r *http.Request, sess *Session) (any, error) {
	var d *dehydratedDevice
	_ = s.Store.View(func(tx *store.Tx) error {
		d = loadDehydrated(tx, sess.UserID)
		return nil
	})
	if d == nil {
		return nil, errNoDehydrated()
	}
	return d, nil
}

// dehydratedDelete: DELETE /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
func (s *Server) dehydratedDelete(r *http.Request, sess *Session) (any, error) {
	var deviceID string
	err := s.Store.Write(func(tx *store.Tx) error {
		d := loadDehydrated(tx, sess.UserID)
		if d == nil {
			return errNoDehydrated()
		}
		deviceID = d.DeviceID
		return s.removeDevice(tx, sess.UserID, d.DeviceID)
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"device_id": deviceID}, nil
}

// dehydratedToken renders an inbox position: the stream position and
// index of the last message handed out.
func dehydratedToken(pos uint64, index uint64) string {
	return fmt.Sprintf("%s_%08x", posKey(pos), index)
}

// parseDehydratedToken reads a dehydratedToken back into the inbox key
// suffix it names.
func parseDehydratedToken(tok string) (string, bool) {
	pos, index, ok := strings.Cut(tok, "_")
	if !ok || len(pos) != 16 || len(index) != 8 {
		return "", false
	}
	if _, err := strconv.ParseUint(pos, 16, 64); err != nil {
		return "", false
	}
	if _, err := strconv.ParseUint(index, 16, 32); err != nil {
		return "", false
	}
	return pos + e2eeSep + index, true
}

// dehydratedEvents: POST /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events
// It returns the dehydrated device's to-device messages after next_batch,
// at most maxDehydratedEvents at a time. Passing a next_batch acknowledges
// (deletes) everything up to it, as a /sync since token does.
func (s *Server) dehydratedEvents(r *http.Request, sess *Session) (any, error) {
	deviceID := r.PathValue("deviceId")
	var req struct {
		NextBatch *string `json:"next_batch"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	after := "" // inbox key suffix of the last acknowledged message
	if req.NextBatch != nil && *req.NextBatch != "" {
		k, ok := parseDehydratedToken(*req.NextBatch)
		if !ok {
			return nil, errInvalidParam("Invalid next_batch")
		}
		after = k
	}
	start := dehydratedToken(0, 0)
	if after != "" {
		start = *req.NextBatch
	}
	var events []json.RawMessage
	var next string
	err := s.Store.Write(func(tx *store.Tx) error {
		events, next = []json.RawMessage{}, start
		d := loadDehydrated(tx, sess.UserID)
		if d == nil {
			return errNoDehydrated()
		}
		if d.DeviceID != deviceID {
			return errForbidden("You may only fetch messages for your dehydrated device")
		}
		p := e2eePrefix(sess.UserID, deviceID)
		if after != "" {
			var acked []string
			tx.ScanKV(nsToDevice, p, func(k string, _ []byte) bool {
				if strings.TrimPrefix(k, p) > after {
					return false
				}
				acked = append(acked, k)
				return true
			})
			for _, k := range acked {
				tx.DeleteKV(nsToDevice, k)
			}
		}
		tx.ScanKV(nsToDevice, p, func(k string, v []byte) bool {
			if len(events) == maxDehydratedEvents {
				return false
			}
			parts := splitKey(strings.TrimPrefix(k, p))
			if len(parts) != 2 {
				return true
			}
			index, _ := strconv.ParseUint(parts[1], 16, 32)
			events = append(events, bytes.Clone(v)) // v lives only as long as tx
			next = dehydratedToken(parsePosKey(parts[0]), index)
			return true
		})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"events": events, "next_batch": next}, nil
}
