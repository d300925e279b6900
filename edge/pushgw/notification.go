package pushgw

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
)

// Event is what a notification tells about the event being pushed.
type Event struct {
	ID                string
	RoomID            string
	Type              string
	Sender            string
	SenderDisplayName string
	RoomName          string
	RoomAlias         string
	Content           json.RawMessage
}

// Target is one recipient the push rules say to notify about an event.
type Target struct {
	UserID string
	// UserIsTarget: the event is a member event about this user.
	UserIsTarget bool
	// Tweaks are the set_tweak actions of the matching rule.
	Tweaks map[string]json.RawMessage
	// Unread and MissedCalls are the user's counts across all rooms.
	Unread, MissedCalls int
	// Pushers are the user's pushers, as stored (the /pushers/set body).
	Pushers []json.RawMessage
}

// Notification is the body's "notification" object (spec: POST /notify).
type Notification struct {
	EventID           string          `json:"event_id,omitempty"`
	RoomID            string          `json:"room_id,omitempty"`
	Type              string          `json:"type,omitempty"`
	Sender            string          `json:"sender,omitempty"`
	SenderDisplayName string          `json:"sender_display_name,omitempty"`
	RoomName          string          `json:"room_name,omitempty"`
	RoomAlias         string          `json:"room_alias,omitempty"`
	UserIsTarget      bool            `json:"user_is_target,omitempty"`
	Prio              string          `json:"prio"`
	Content           json.RawMessage `json:"content,omitempty"`
	Counts            Counts          `json:"counts"`
	Devices           []Device        `json:"devices"`
}

// Counts are the recipient's unacknowledged communications; the spec
// asks for zero counts to be left out.
type Counts struct {
	Unread      int `json:"unread,omitempty"`
	MissedCalls int `json:"missed_calls,omitempty"`
}

// Device is one pusher the notification goes to.
type Device struct {
	AppID     string                     `json:"app_id"`
	PushKey   string                     `json:"pushkey"`
	PushKeyTS int64                      `json:"pushkey_ts,omitempty"`
	Data      map[string]json.RawMessage `json:"data"`
	Tweaks    map[string]json.RawMessage `json:"tweaks"`
}

// FormatEventIDOnly is data.format asking for only the event's IDs and
// the counts: the gateway fetches the rest itself, so no content leaves
// the server through the push provider.
const FormatEventIDOnly = "event_id_only"

// ErrBadPusher marks a stored pusher this package cannot push to.
var ErrBadPusher = errors.New("pushgw: unusable pusher")

// storedPusher is the part of a stored pusher delivery reads.
type storedPusher struct {
	Kind      *string                    `json:"kind"`
	AppID     string                     `json:"app_id"`
	PushKey   string                     `json:"pushkey"`
	PushKeyTS int64                      `json:"pushkey_ts"`
	Data      map[string]json.RawMessage `json:"data"`
}

// Request is one POST to a gateway: the notification for one device.
type Request struct {
	UserID, AppID, PushKey string
	URL                    string
	Body                   []byte
}

// Build makes the request that tells pusher (stored JSON) of t's user
// about ev.
func Build(ev Event, t Target, pusher json.RawMessage) (*Request, error) {
	var p storedPusher
	if err := json.Unmarshal(pusher, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPusher, err)
	}
	if p.Kind == nil || *p.Kind != "http" {
		return nil, fmt.Errorf("%w: kind is not \"http\"", ErrBadPusher)
	}
	var rawURL, format string
	if err := json.Unmarshal(p.Data["url"], &rawURL); err != nil || rawURL == "" {
		return nil, fmt.Errorf("%w: no data.url", ErrBadPusher)
	}
	if u, err := url.Parse(rawURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: data.url %q is not an http(s) URL", ErrBadPusher, rawURL)
	}
	if f, ok := p.Data["format"]; ok {
		_ = json.Unmarshal(f, &format)
	}
	// The gateway gets the pusher's data minus the url (spec).
	data := make(map[string]json.RawMessage, len(p.Data))
	for k, v := range p.Data {
		if k != "url" {
			data[k] = v
		}
	}
	tweaks := make(map[string]json.RawMessage, len(t.Tweaks))
	for k, v := range t.Tweaks {
		if v != nil {
			tweaks[k] = v
		}
	}
	n := Notification{
		EventID: ev.ID,
		RoomID:  ev.RoomID,
		Prio:    priority(ev, t),
		Counts:  Counts{Unread: t.Unread, MissedCalls: t.MissedCalls},
		Devices: []Device{{AppID: p.AppID, PushKey: p.PushKey, PushKeyTS: p.PushKeyTS, Data: data, Tweaks: tweaks}},
	}
	if format != FormatEventIDOnly {
		n.Type, n.Sender, n.SenderDisplayName = ev.Type, ev.Sender, ev.SenderDisplayName
		n.RoomName, n.RoomAlias, n.UserIsTarget = ev.RoomName, ev.RoomAlias, t.UserIsTarget
		if len(ev.Content) > 0 && string(ev.Content) != "{}" {
			n.Content = ev.Content
		}
	}
	body, err := json.Marshal(map[string]Notification{"notification": n})
	if err != nil {
		return nil, err
	}
	return &Request{UserID: t.UserID, AppID: p.AppID, PushKey: p.PushKey, URL: rawURL, Body: body}, nil
}

// priority is "high" for what should wake the device at once — a sound or
// highlight, or an encrypted event whose real importance the server cannot
// judge — and "low" otherwise (as Synapse does).
func priority(ev Event, t Target) string {
	if ev.Type == "m.room.encrypted" {
		return "high"
	}
	if v, ok := t.Tweaks["sound"]; ok && v != nil {
		return "high"
	}
	if v, ok := t.Tweaks["highlight"]; ok && string(v) == "true" {
		return "high"
	}
	return "low"
}
