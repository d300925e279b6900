package room

import (
	"encoding/json"
	"errors"
	"fmt"

	jsonv2 "encoding/json/v2"

	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// StateEvent is one initial state event of a new room.
type StateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// CreateOptions is a createRoom request after the client layer parsed it.
type CreateOptions struct {
	Creator             string
	Version             string
	Preset              string // private_chat, trusted_private_chat, public_chat
	CreationContent     json.RawMessage
	PowerLevelsOverride json.RawMessage
	Alias               string // full alias, already reserved by the caller
	Name, Topic         string
	Invite              []string
	// DeferInvite names invitees CreateRoom sends no invite for: remote
	// users, whom the caller invites through their own server afterwards.
	DeferInvite  func(userID string) bool
	IsDirect     bool
	InitialState []StateEvent
}

// SupportedVersions lists the room versions this node creates and joins.
var SupportedVersions = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}

func supported(v string) bool {
	for _, s := range SupportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

// CreateRoom creates a room and its initial state in the order the spec
// gives for POST /createRoom, returning the room ID.
func (s *Service) CreateRoom(tx *store.Tx, o CreateOptions) (string, error) {
	if !supported(o.Version) {
		return "", fmt.Errorf("%w: %q", ErrUnsupported, o.Version)
	}
	rv := id.RoomVersion(o.Version)
	createContent := map[string]any{}
	if len(o.CreationContent) > 0 {
		if err := json.Unmarshal(o.CreationContent, &createContent); err != nil {
			return "", fmt.Errorf("%w: creation_content: %v", ErrBadEvent, err)
		}
	}
	createContent["room_version"] = o.Version
	if !rv.CreatorInContent() {
		delete(createContent, "creator")
	} else {
		createContent["creator"] = o.Creator
	}
	if o.Preset == "trusted_private_chat" && rv.PrivilegedRoomCreators() && len(o.Invite) > 0 {
		createContent["additional_creators"] = o.Invite
	}
	// From v12 the room ID is the create event's hash: two identical create
	// events in the same millisecond (one user creating rooms in parallel)
	// would name the same room, so a collision moves the timestamp on.
	var create *Event
	var r *store.Room
	for bump := int64(0); ; bump++ {
		var err error
		if create, err = s.buildCreate(o.Version, o.Creator, mustJSON(createContent), bump); err != nil {
			return "", err
		}
		r = &store.Room{RoomID: create.RoomID, Version: o.Version}
		err = tx.CreateRoom(r)
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrExists) || bump >= 100 {
			return "", err
		}
	}
	roomID := create.RoomID
	if err := s.authorize(tx, create); err != nil {
		return "", err
	}
	if err := s.persist(tx, r, &State{}, create); err != nil {
		return "", err
	}
	send := func(evType, stateKey string, content any) error {
		sk := stateKey
		_, err := s.Send(tx, roomID, Proto{Type: evType, StateKey: &sk, Sender: o.Creator, Content: mustJSON(content)})
		return err
	}
	if err := send("m.room.member", o.Creator, map[string]any{"membership": "join"}); err != nil {
		return "", err
	}
	if err := send("m.room.power_levels", "", s.powerLevels(rv, o)); err != nil {
		return "", err
	}
	if o.Alias != "" {
		if err := send("m.room.canonical_alias", "", map[string]any{"alias": o.Alias}); err != nil {
			return "", err
		}
	}
	joinRule, history, guest := "invite", "shared", "can_join"
	if o.Preset == "public_chat" {
		joinRule, guest = "public", "forbidden"
	}
	initial := map[[2]string]json.RawMessage{}
	for _, st := range o.InitialState {
		initial[[2]string{st.Type, st.StateKey}] = st.Content
	}
	presetState := []StateEvent{
		{Type: "m.room.join_rules", Content: mustJSON(map[string]any{"join_rule": joinRule})},
		{Type: "m.room.history_visibility", Content: mustJSON(map[string]any{"history_visibility": history})},
	}
	if guest == "can_join" {
		presetState = append(presetState, StateEvent{Type: "m.room.guest_access", Content: mustJSON(map[string]any{"guest_access": guest})})
	}
	for _, st := range presetState {
		if _, overridden := initial[[2]string{st.Type, ""}]; overridden {
			continue
		}
		if err := send(st.Type, "", st.Content); err != nil {
			return "", err
		}
	}
	for _, st := range o.InitialState {
		if err := send(st.Type, st.StateKey, st.Content); err != nil {
			return "", err
		}
	}
	if o.Name != "" {
		if err := send("m.room.name", "", map[string]any{"name": o.Name}); err != nil {
			return "", err
		}
	}
	if o.Topic != "" {
		if err := send("m.room.topic", "", map[string]any{"topic": o.Topic}); err != nil {
			return "", err
		}
	}
	for _, invitee := range o.Invite {
		if o.DeferInvite != nil && o.DeferInvite(invitee) {
			continue
		}
		content := map[string]any{"membership": "invite"}
		if o.IsDirect {
			content["is_direct"] = true
		}
		if err := send("m.room.member", invitee, content); err != nil {
			return "", err
		}
	}
	return roomID, nil
}

func (s *Service) buildCreate(version, creator string, content json.RawMessage, bumpMS int64) (*Event, error) {
	rv := id.RoomVersion(version)
	sk := ""
	ts := s.now().UnixMilli() + bumpMS
	if rv.EventIDFormat() == id.EventIDFormatCustom {
		v1 := &pdu.RoomV1PDU{
			Content: jsonValue(content), Depth: 1, OriginServerTS: ts, Sender: id.UserID(creator),
			StateKey: &sk, Type: "m.room.create", AuthEvents: []pdu.V1EventReference{}, PrevEvents: []pdu.V1EventReference{},
			EventID: id.EventID("$" + randomString(18) + ":" + s.signer.ServerName),
			RoomID:  id.RoomID("!" + randomString(18) + ":" + s.signer.ServerName),
		}
		if err := v1.Sign(rv, s.signer.ServerName, id.KeyID(s.signer.KeyID), s.signer.Key); err != nil {
			return nil, err
		}
		raw, err := jsonv2.Marshal(v1)
		if err != nil {
			return nil, err
		}
		return ParseEvent(version, raw, string(v1.EventID))
	}
	p := &pdu.PDU{
		AuthEvents: []id.EventID{}, PrevEvents: []id.EventID{}, Content: jsonValue(content), Depth: 1,
		OriginServerTS: ts, Sender: id.UserID(creator), StateKey: &sk, Type: "m.room.create",
	}
	if !rv.RoomIDIsCreateEventID() {
		p.RoomID = id.RoomID("!" + randomString(18) + ":" + s.signer.ServerName)
	}
	if err := p.Sign(rv, s.signer.ServerName, id.KeyID(s.signer.KeyID), s.signer.Key); err != nil {
		return nil, err
	}
	raw, err := jsonv2.Marshal(p)
	if err != nil {
		return nil, err
	}
	return ParseEvent(version, raw, "")
}

// powerLevels is the spec's default power-level content for a new room,
// with the client's override merged on top.
func (s *Service) powerLevels(rv id.RoomVersion, o CreateOptions) map[string]any {
	users := map[string]any{}
	if !rv.PrivilegedRoomCreators() {
		users[o.Creator] = 100
	}
	if o.Preset == "trusted_private_chat" && !rv.PrivilegedRoomCreators() {
		for _, u := range o.Invite {
			users[u] = 100
		}
	}
	events := map[string]any{
		"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
		"m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
		"m.room.server_acl": 100, "m.room.encryption": 100,
	}
	if rv.PrivilegedRoomCreators() {
		// v12+: tombstones must need more than state_default (the spec's
		// createRoom); 150, as its example and Synapse have it, keeps
		// upgrades to the creators, who alone are above 100.
		events["m.room.tombstone"] = 150
	}
	pl := map[string]any{
		"users": users, "users_default": 0, "events": events, "events_default": 0,
		"state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
		"notifications": map[string]any{"room": 50},
	}
	if len(o.PowerLevelsOverride) > 0 {
		var over map[string]json.RawMessage
		if json.Unmarshal(o.PowerLevelsOverride, &over) == nil {
			for k, v := range over {
				pl[k] = v
			}
		}
	}
	return pl
}

func mustJSON(v any) json.RawMessage {
	if raw, ok := v.(json.RawMessage); ok {
		return raw
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
