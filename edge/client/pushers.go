package client

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"

	"edge/edge/store"
)

// pusherNamespace holds pushers keyed "<user>\x1f<app_id>\x1f<pushkey>".
const pusherNamespace = "pushers"

// pusher is one registered pusher, in the API's shape.
type pusher struct {
	PushKey           string          `json:"pushkey"`
	Kind              *string         `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
	Append            bool            `json:"append,omitempty"`
	// PushKeyTS is when this pushkey was registered (seconds), sent to the
	// gateway as devices[].pushkey_ts.
	PushKeyTS int64 `json:"pushkey_ts,omitempty"`
}

func (s *Server) routesPushers() {
	s.authed("GET /pushers", s.getPushers)
	s.authed("POST /pushers/set", s.setPusher)
}

func pusherKey(userID, appID, pushKey string) string {
	return userID + "\x1f" + appID + "\x1f" + pushKey
}

// pusherDeviceNamespace maps a pusher's key to the device that set it, so
// a password change can keep the changing device's pushers only.
const pusherDeviceNamespace = "pusher_devices"

func deletePusher(tx *store.Tx, key string) {
	tx.DeleteKV(pusherNamespace, key)
	tx.DeleteKV(pusherDeviceNamespace, key)
}

// deletePushersExcept removes userID's pushers set by any device but
// keepDevice, as Synapse does when a password change logs the others out.
func deletePushersExcept(tx *store.Tx, userID, keepDevice string) {
	var drop []string
	tx.ScanKV(pusherNamespace, userID+"\x1f", func(k string, _ []byte) bool {
		if dev, err := tx.GetKV(pusherDeviceNamespace, k); err != nil || string(dev) != keepDevice {
			drop = append(drop, k)
		}
		return true
	})
	for _, k := range drop {
		deletePusher(tx, k)
	}
}

// getPushers: GET /pushers
func (s *Server) getPushers(r *http.Request, sess *Session) (any, error) {
	out := []json.RawMessage{}
	err := s.Store.View(func(tx *store.Tx) error {
		tx.ScanKV(pusherNamespace, sess.UserID+"\x1f", func(_ string, v []byte) bool {
			out = append(out, json.RawMessage(append([]byte(nil), v...)))
			return true
		})
		return nil
	})
	return map[string]any{"pushers": out}, err
}

// setPusher: POST /pushers/set. kind null deletes the pusher; "http"
// needs data.url, the push gateway's /_matrix/push/v1/notify URL.
func (s *Server) setPusher(r *http.Request, sess *Session) (any, error) {
	var p pusher
	if err := decode(r, &p); err != nil {
		return nil, err
	}
	if p.AppID == "" || p.PushKey == "" {
		return nil, errMissingParam("app_id and pushkey are required")
	}
	if len(p.AppID) > 64 || len(p.PushKey) > 512 {
		return nil, errInvalidParam("app_id (max 64) or pushkey (max 512) too long")
	}
	key := pusherKey(sess.UserID, p.AppID, p.PushKey)
	if p.Kind == nil {
		return empty{}, s.Store.Write(func(tx *store.Tx) error {
			deletePusher(tx, key)
			return nil
		})
	}
	switch *p.Kind {
	case "http":
		var d struct {
			URL string `json:"url"`
		}
		if len(p.Data) == 0 || json.Unmarshal(p.Data, &d) != nil || d.URL == "" {
			return nil, errMissingParam("data.url is required for http pushers")
		}
		u, err := url.Parse(d.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || !strings.HasSuffix(u.Path, "/_matrix/push/v1/notify") {
			return nil, errInvalidParam("data.url must be an http(s) URL ending in /_matrix/push/v1/notify")
		}
	case "email":
		return nil, errInvalidParam("email pushers are not supported: this server sends no e-mail")
	default:
		return nil, errInvalidParam("unknown pusher kind %q", *p.Kind)
	}
	if p.AppDisplayName == "" || p.DeviceDisplayName == "" || p.Lang == "" {
		return nil, errMissingParam("app_display_name, device_display_name and lang are required")
	}
	appendOnly := p.Append
	p.Append = false
	p.PushKeyTS = time.Now().Unix()
	raw, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		if !appendOnly {
			// Without append, this pusher replaces the same app_id and
			// pushkey registered by any other user (the spec's rule).
			var stale []string
			suffix := "\x1f" + p.AppID + "\x1f" + p.PushKey
			tx.ScanKV(pusherNamespace, "", func(k string, _ []byte) bool {
				if strings.HasSuffix(k, suffix) && k != key {
					stale = append(stale, k)
				}
				return true
			})
			for _, k := range stale {
				deletePusher(tx, k)
			}
		}
		tx.PutKV(pusherNamespace, key, raw)
		tx.PutKV(pusherDeviceNamespace, key, []byte(sess.DeviceID))
		return nil
	})
}
