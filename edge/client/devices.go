package client

import (
	"errors"
	"net/http"
	"time"
	"unicode/utf8"

	"edge/edge/store"
)

// routesDevices registers device management
// (https://spec.matrix.org/v1.12/client-server-api/#device-management).
func (s *Server) routesDevices() {
	s.authed("GET /devices", s.listDevices)
	s.authed("GET /devices/{deviceId}", s.getDevice)
	s.authed("PUT /devices/{deviceId}", s.updateDevice)
	s.authed("DELETE /devices/{deviceId}", s.deleteDevice)
	s.authed("POST /delete_devices", s.deleteDevices)
}

// maxDeviceNameChars is Synapse's MAX_DEVICE_DISPLAY_NAME_LEN.
const maxDeviceNameChars = 100

// deviceJSON is the spec's Device object.
type deviceJSON struct {
	DeviceID    string `json:"device_id"`
	DisplayName string `json:"display_name,omitempty"`
	LastSeenIP  string `json:"last_seen_ip,omitempty"`
	LastSeenTS  int64  `json:"last_seen_ts,omitempty"`
}

func toDeviceJSON(d *store.Device) deviceJSON {
	return deviceJSON{DeviceID: d.DeviceID, DisplayName: d.DisplayName, LastSeenIP: d.LastSeenIP, LastSeenTS: d.LastSeenTS}
}

// listDevices: GET /devices
func (s *Server) listDevices(r *http.Request, sess *Session) (any, error) {
	out := []deviceJSON{}
	err := s.Store.View(func(tx *store.Tx) error {
		ds, err := tx.Devices(sess.UserID)
		for _, d := range ds {
			out = append(out, toDeviceJSON(d))
		}
		return err
	})
	return map[string]any{"devices": out}, err
}

// ownDevice loads one of the caller's devices; 404 M_NOT_FOUND if absent.
func ownDevice(tx *store.Tx, userID, deviceID string) (*store.Device, error) {
	d, err := tx.Device(userID, deviceID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNotFound("Unknown device %s", deviceID)
	}
	return d, err
}

// getDevice: GET /devices/{deviceId}
func (s *Server) getDevice(r *http.Request, sess *Session) (any, error) {
	var out deviceJSON
	err := s.Store.View(func(tx *store.Tx) error {
		d, err := ownDevice(tx, sess.UserID, r.PathValue("deviceId"))
		if err != nil {
			return err
		}
		out = toDeviceJSON(d)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// updateDevice: PUT /devices/{deviceId}
// An application service creates its users' devices this way (201; spec
// v1.17, MSC4190); for anyone else an unknown device is a 404.
func (s *Server) updateDevice(r *http.Request, sess *Session) (any, error) {
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.DisplayName != nil && utf8.RuneCountInString(*req.DisplayName) > maxDeviceNameChars {
		return nil, newErr(http.StatusBadRequest, "M_TOO_LARGE", "Device display name is too long (max %d)", maxDeviceNameChars)
	}
	deviceID := r.PathValue("deviceId")
	if !validPathValue(deviceID) || len(deviceID) > 255 {
		return nil, errInvalidParam("Invalid device ID")
	}
	isNew := false
	err := s.Store.Write(func(tx *store.Tx) error {
		isNew = false
		d, err := ownDevice(tx, sess.UserID, deviceID)
		if err != nil && sess.AppService != nil && toError(err).Status == http.StatusNotFound {
			if as := sess.AppService; as.RateLimited == nil || *as.RateLimited {
				if err := check(s.limits.login, sess.UserID); err != nil {
					return err
				}
			}
			isNew = true
			d = &store.Device{UserID: sess.UserID, DeviceID: deviceID, CreatedTS: time.Now().UnixMilli()}
			if req.DisplayName != nil {
				d.DisplayName = *req.DisplayName
			}
			tx.PutDevice(d)
			s.markDeviceListChange(tx, sess.UserID, "")
			s.sendDeviceListUpdate(tx, sess.UserID, d.DeviceID, false)
			return nil
		}
		if err != nil {
			return err
		}
		if req.DisplayName == nil || *req.DisplayName == d.DisplayName {
			return nil // "If not given, the display name is unchanged."
		}
		d.DisplayName = *req.DisplayName
		tx.PutDevice(d)
		// Peers show unsigned.device_display_name from /keys/query.
		s.markDeviceListChange(tx, sess.UserID, "")
		s.sendDeviceListUpdate(tx, sess.UserID, d.DeviceID, false)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if isNew {
		return created{empty{}}, nil
	}
	return empty{}, nil
}

// deleteDevice: DELETE /devices/{deviceId}
// A device that is already gone is a success, as the spec says.
func (s *Server) deleteDevice(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Auth *uiaAuth `json:"auth"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	// Application services skip UIA (spec v1.17, MSC4190).
	if sess.AppService == nil {
		if err := s.uiaCheck(req.Auth, sess.UserID, passwordFlows, nil, s.passwordStage(sess.UserID)); err != nil {
			return nil, err
		}
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		return s.removeDevice(tx, sess.UserID, r.PathValue("deviceId"))
	})
}

// deleteDevices: POST /delete_devices
func (s *Server) deleteDevices(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Devices *[]string `json:"devices"`
		Auth    *uiaAuth  `json:"auth"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Devices == nil {
		return nil, errMissingParam("Missing devices")
	}
	// Application services skip UIA (spec v1.17, MSC4190).
	if sess.AppService == nil {
		if err := s.uiaCheck(req.Auth, sess.UserID, passwordFlows, nil, s.passwordStage(sess.UserID)); err != nil {
			return nil, err
		}
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		for _, id := range *req.Devices {
			if err := s.removeDevice(tx, sess.UserID, id); err != nil {
				return err
			}
		}
		return nil
	})
}
