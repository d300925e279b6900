package room

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"

	jsonv2 "encoding/json/v2"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// MaxEventBytes is the spec's limit on a PDU's canonical size.
const MaxEventBytes = 65536

// Event is a parsed PDU together with what the store knows of it.
type Event struct {
	ID             string
	RoomID         string
	Type           string
	StateKey       *string
	Sender         string
	Content        json.RawMessage
	OriginServerTS int64
	Depth          int64
	PrevEvents     []string
	AuthEvents     []string
	Redacts        string
	Version        string
	// Raw is the PDU as stored.
	Raw []byte

	NID         uint64
	Pos         uint64
	StateBefore uint64
	Flags       store.EventFlags

	// pl memoises an m.room.power_levels content as the auth rules parse
	// it: iterative auth checks read the same few power-levels events for
	// thousands of events, and the scan costs ~15× a lookup
	// (BenchmarkPowerLevelsParse). It lives as long as the event does in
	// the service's event cache.
	pl atomic.Pointer[powerLevels]
}

// powerLevels is the event's content parsed as power levels.
func (e *Event) powerLevels(rv id.RoomVersion) powerLevels {
	if p := e.pl.Load(); p != nil {
		Stats.PowerLevelsCache.Hits.Add(1)
		return *p
	}
	Stats.PowerLevelsCache.Misses.Add(1)
	pl := newPowerLevels(e.Content, rv)
	e.pl.Store(&pl)
	return pl
}

// IsState tells whether the event has a state key.
func (e *Event) IsState() bool { return e.StateKey != nil }

// Membership returns content.membership of a member event.
func (e *Event) Membership() string {
	var c struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(e.Content, &c)
	return c.Membership
}

// wireEvent is the shape shared by every room version, with the event
// references left raw because v1/v2 encode them as [id, hashes] pairs.
type wireEvent struct {
	EventID        string          `json:"event_id"`
	RoomID         string          `json:"room_id"`
	Type           string          `json:"type"`
	StateKey       *string         `json:"state_key"`
	Sender         string          `json:"sender"`
	Content        json.RawMessage `json:"content"`
	OriginServerTS int64           `json:"origin_server_ts"`
	Depth          int64           `json:"depth"`
	PrevEvents     json.RawMessage `json:"prev_events"`
	AuthEvents     json.RawMessage `json:"auth_events"`
	Redacts        string          `json:"redacts"`
}

// ErrBadEvent wraps every reason an event's JSON is unusable.
var ErrBadEvent = errors.New("malformed event")

// ParseEvent parses a PDU of the given room version. For v3+ the event ID
// is computed from the reference hash unless eventID is given (stored
// events, whose ID is already known).
func ParseEvent(version string, raw []byte, eventID string) (*Event, error) {
	var w wireEvent
	if err := json.Unmarshal(raw, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	e := &Event{
		ID: eventID, RoomID: w.RoomID, Type: w.Type, StateKey: w.StateKey, Sender: w.Sender,
		Content: w.Content, OriginServerTS: w.OriginServerTS, Depth: w.Depth,
		Redacts: w.Redacts, Version: version, Raw: raw,
	}
	rv := id.RoomVersion(version)
	if rv.EventIDFormat() == id.EventIDFormatCustom {
		var err error
		if e.PrevEvents, err = parseV1Refs(w.PrevEvents); err != nil {
			return nil, err
		}
		if e.AuthEvents, err = parseV1Refs(w.AuthEvents); err != nil {
			return nil, err
		}
		if e.ID == "" {
			e.ID = w.EventID
		}
	} else {
		if err := json.Unmarshal(orEmpty(w.PrevEvents), &e.PrevEvents); err != nil {
			return nil, fmt.Errorf("%w: prev_events: %v", ErrBadEvent, err)
		}
		if err := json.Unmarshal(orEmpty(w.AuthEvents), &e.AuthEvents); err != nil {
			return nil, fmt.Errorf("%w: auth_events: %v", ErrBadEvent, err)
		}
		if e.ID == "" {
			p, err := e.PDU()
			if err != nil {
				return nil, err
			}
			evID, err := p.GetEventID(rv)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
			}
			e.ID = string(evID)
		}
	}
	if rv.RedactsInContent() && e.Type == "m.room.redaction" {
		var c struct {
			Redacts string `json:"redacts"`
		}
		_ = json.Unmarshal(e.Content, &c)
		e.Redacts = c.Redacts
	}
	if e.Type == "m.room.create" && e.RoomID == "" && rv.RoomIDIsCreateEventID() {
		e.RoomID = "!" + strings.TrimPrefix(e.ID, "$")
	}
	return e, nil
}

func orEmpty(b json.RawMessage) json.RawMessage {
	if len(b) == 0 || string(b) == "null" {
		return json.RawMessage("[]")
	}
	return b
}

// parseV1Refs reads v1/v2 event references: [id, hashes] pairs on the
// wire; bare IDs are accepted too, as some test suites write them.
func parseV1Refs(raw json.RawMessage) ([]string, error) {
	var refs []json.RawMessage
	if err := json.Unmarshal(orEmpty(raw), &refs); err != nil {
		return nil, fmt.Errorf("%w: event references: %v", ErrBadEvent, err)
	}
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		var s string
		if json.Unmarshal(r, &s) == nil {
			out = append(out, s)
			continue
		}
		var pair []json.RawMessage
		if json.Unmarshal(r, &pair) != nil || len(pair) == 0 || json.Unmarshal(pair[0], &s) != nil {
			return nil, fmt.Errorf("%w: event reference is not [id, hashes]", ErrBadEvent)
		}
		out = append(out, s)
	}
	return out, nil
}

// PDU converts the event to mautrix's PDU type, which eventauth works on.
// v1/v2 events get their references flattened to IDs; use VerifyContentHash
// and VerifySignature, not the returned PDU, to check their hashes.
func (e *Event) PDU() (*pdu.PDU, error) {
	raw := e.Raw
	if e.isV1() {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(e.Raw, &m); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
		}
		delete(m, "event_id")
		m["prev_events"], _ = json.Marshal(e.PrevEvents)
		m["auth_events"], _ = json.Marshal(e.AuthEvents)
		raw, _ = json.Marshal(m)
	}
	var p pdu.PDU
	if err := jsonv2.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	p.InternalMeta.EventID = id.EventID(e.ID)
	p.InternalMeta.Rejected = e.Flags&store.FlagRejected != 0
	return &p, nil
}

func (e *Event) isV1() bool {
	return id.RoomVersion(e.Version).EventIDFormat() == id.EventIDFormatCustom
}

// wirePDU is the event in its room version's own wire type, for hashing
// and signatures.
func (e *Event) wirePDU() (pdu.AnyPDU, error) {
	if e.isV1() {
		var v1 pdu.RoomV1PDU
		if err := jsonv2.Unmarshal(e.Raw, &v1); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
		}
		return &v1, nil
	}
	var p pdu.PDU
	if err := jsonv2.Unmarshal(e.Raw, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	return &p, nil
}

// VerifyContentHash checks hashes.sha256 against the event's content.
func (e *Event) VerifyContentHash() bool {
	p, err := e.wirePDU()
	return err == nil && p.VerifyContentHash()
}

// VerifySignature checks serverName's signature on the event.
func (e *Event) VerifySignature(serverName string, getKey pdu.GetKeyFunc) error {
	p, err := e.wirePDU()
	if err != nil {
		return err
	}
	return p.VerifySignature(id.RoomVersion(e.Version), serverName, getKey)
}

// ClientEvent is the client-server API's event format.
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        string          `json:"redacts,omitempty"`
	Unsigned       map[string]any  `json:"unsigned,omitempty"`
}

// Client renders the event for clients. Unsigned data (prev_content,
// redacted_because, transaction_id, relations) is the caller's to add.
func (e *Event) Client() *ClientEvent {
	return &ClientEvent{
		Content: e.Content, EventID: e.ID, OriginServerTS: e.OriginServerTS, RoomID: e.RoomID,
		Sender: e.Sender, StateKey: e.StateKey, Type: e.Type, Redacts: e.Redacts,
	}
}

// unsignedField extracts a field of the stored PDU's unsigned object.
func (e *Event) unsignedField(name string) json.RawMessage {
	var w struct {
		Unsigned map[string]json.RawMessage `json:"unsigned"`
	}
	if !bytes.Contains(e.Raw, []byte(`"unsigned"`)) || json.Unmarshal(e.Raw, &w) != nil {
		return nil
	}
	return w.Unsigned[name]
}

// CheckNumbers refuses, for room versions whose canonical JSON forbids
// them (v6+), an event holding a float or an integer outside
// [-(2^53)+1, 2^53-1] anywhere in its JSON: such an event has no canonical
// form, so it is refused outright rather than redacted.
func CheckNumbers(version string, raw []byte) error {
	if !id.RoomVersion(version).ForbidFloatsAndBigInts() {
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("%w: %v", ErrBadEvent, err)
		}
		n, ok := tok.(json.Number)
		if !ok {
			continue
		}
		v, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil || v > 1<<53-1 || v < -(1<<53-1) {
			return fmt.Errorf("%w: number %s is not a safe integer", ErrBadEvent, n)
		}
	}
}
