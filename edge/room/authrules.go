package room

// The Matrix authorisation rules for room versions 1 to 12, written from the
// spec's room version pages (rooms/v1.md … v12.md and their fragments).
// Rule numbers in errors follow the numbering of the event's room version.
// Version differences go through feature predicates, never version numbers.

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json/jsontext"
	jsonv2 "encoding/json/v2"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	"edge/edge/store"
)

// StateKeyPair names a slot of room state.
type StateKeyPair struct {
	Type     string
	StateKey string
}

// AuthError is a rejection by the auth rules. Rule is the rule's index as
// numbered in the event's room version ("5.3.7"); errors.Is(err,
// ErrForbidden) holds for every AuthError.
type AuthError struct {
	Rule string
	Msg  string
}

func (e *AuthError) Error() string { return "auth rule " + e.Rule + ": " + e.Msg }

// Unwrap makes every rejection an ErrForbidden.
func (e *AuthError) Unwrap() error { return ErrForbidden }

// maxAuthEvents is the most auth_events the selection algorithm can yield
// (create, power levels, sender, target, join rules, third-party invite,
// authorising user); more must hold a duplicate or an unexpected entry.
const maxAuthEvents = 7

// Predicates for rule changes mautrix's id.RoomVersion has none for.

// redactLevelInAuthRules: rooms v1/v2 have rule 11 (redact level or same
// event ID domain); room v3 dropped it ("m.room.redaction events are
// subject to auth rules in the same way as any other event", rooms/v3).
func redactLevelInAuthRules(rv id.RoomVersion) bool {
	return rv.EventIDFormat() == id.EventIDFormatCustom
}

// floatPowerLevels: rooms v1-v5 accept float power levels, truncated
// ("m.room.power_levels events accept values as floats", v1-floaty-power-levels
// fragment); v6's canonical JSON forbids floats.
func floatPowerLevels(rv id.RoomVersion) bool { return !rv.ForbidFloatsAndBigInts() }

// stringPowerLevels: rooms v1-v9 accept integer strings ("m.room.power_levels
// events accept values as strings"); v10 requires integers.
func stringPowerLevels(rv id.RoomVersion) bool { return !rv.ValidatePowerLevelInts() }

// joinAuthorisedSignature: v8 added rule 4.2, a signature from the server of
// content.join_authorised_via_users_server (rooms/v8 "Authorisation rules").
func joinAuthorisedSignature(rv id.RoomVersion) bool { return rv.RestrictedJoins() }

// knownRoomVersion: a create event's content.room_version is one we
// recognise (rule 1.3).
func knownRoomVersion(v string) bool { return v != "" && Features(v).IsKnown() }

// nums are the top-level rule indices of one room version: v1-v5 carry the
// aliases rule 4, v12 inserts the room ID rule 2, v1/v2 have redaction rule 11.
type nums struct {
	roomID, authEvents, federate, aliases, member           int // 0: no such rule
	joined, tpi, required, stateKey, powerLevels, redaction int
	memberSig, join                                         int // within the member rule
}

func numbering(rv id.RoomVersion) nums {
	var n nums
	next := 2
	if rv.RoomIDIsCreateEventID() {
		n.roomID, next = next, next+1
	}
	n.authEvents, next = next, next+1
	n.federate, next = next, next+1
	if rv.SpecialCasedAliasesAuth() {
		n.aliases, next = next, next+1
	}
	n.member, next = next, next+1
	n.joined, n.tpi, n.required, n.stateKey, n.powerLevels = next, next+1, next+2, next+3, next+4
	next += 5
	if redactLevelInAuthRules(rv) {
		n.redaction = next
	}
	n.join = 2
	if joinAuthorisedSignature(rv) {
		n.memberSig, n.join = 2, 3
	}
	return n
}

// rule formats a rule index such as 5, 3, 7 as "5.3.7".
func rule(parts ...int) string {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strconv.Itoa(p))
	}
	return b.String()
}

func reject(r string, format string, args ...any) error {
	return &AuthError{Rule: r, Msg: fmt.Sprintf(format, args...)}
}

// authorizeEvent checks ev against its room version's auth rules, with the
// room state being exactly its auth_events (and, from v12, the create event
// its room ID names). lookup returns ErrEventNotFound for unknown events; an
// unknown auth event is returned as that error, not as a rejection, so the
// caller can fetch it and retry.
func authorizeEvent(ev *Event, lookup func(eventID string) (*Event, error), getKey pdu.GetKeyFunc) error {
	a, err := newAuth(ev, getKey)
	if a == nil || err != nil {
		return err
	}
	if ev.Type == "m.room.create" {
		return a.checkCreate()
	}
	if a.rv.RoomIDIsCreateEventID() {
		create, err := lookupCreate(ev.RoomID, lookup)
		if err != nil {
			return err
		}
		if err := a.checkRoomIDCreate(create, true); err != nil {
			return err
		}
	}
	if len(ev.AuthEvents) > maxAuthEvents {
		return reject(rule(a.n.authEvents, 2), "%d auth events, more than the selection algorithm allows", len(ev.AuthEvents))
	}
	var buf [maxAuthEvents]*Event
	list := buf[:0]
	for _, aid := range ev.AuthEvents {
		ae, err := lookup(aid)
		if err != nil {
			return fmt.Errorf("auth event %s: %w", aid, err)
		}
		if ae == nil {
			return fmt.Errorf("auth event %s: %w", aid, ErrEventNotFound)
		}
		list = append(list, ae)
	}
	if err := a.checkAuthEvents(list); err != nil {
		return err
	}
	a.list = list
	if !a.rv.RoomIDIsCreateEventID() {
		a.setCreate(a.state("m.room.create", ""))
	}
	return a.checkState()
}

// AuthorizeAgainst checks ev against the auth rules using authState as the
// room state, as state resolution does. The structural checks on the
// event's own auth_events (rule 2, rule 3 in v12) are skipped: they belong
// to the checks performed on receipt, which authorise against auth_events.
func AuthorizeAgainst(ev *Event, authState map[StateKeyPair]*Event, getKey pdu.GetKeyFunc) error {
	a, err := newAuth(ev, getKey)
	if a == nil || err != nil {
		return err
	}
	if ev.Type == "m.room.create" {
		return a.checkCreate()
	}
	if authState == nil {
		authState = map[StateKeyPair]*Event{}
	}
	a.m = authState
	create := authState[StateKeyPair{"m.room.create", ""}]
	if a.rv.RoomIDIsCreateEventID() {
		if err := a.checkRoomIDCreate(create, false); err != nil {
			return err
		}
	} else {
		if create == nil {
			return reject(rule(a.n.authEvents, 4), "no m.room.create event in the state")
		}
		a.setCreate(create)
	}
	return a.checkState()
}

// auth is one authorisation in progress.
type auth struct {
	ev     *Event
	rv     id.RoomVersion
	n      nums
	getKey pdu.GetKeyFunc
	mc     memberContent // the event's own content, for m.room.member

	list []*Event                // room state as auth_events
	m    map[StateKeyPair]*Event // or as a state map

	create   *Event
	creator  string   // whose first join rule 5.2.1 allows
	creators []string // room v12: infinite power level
	noFed    bool     // m.federate is false

	pl       powerLevels
	plLoaded bool
}

func newAuth(ev *Event, getKey pdu.GetKeyFunc) (*auth, error) {
	if ev == nil {
		return nil, reject("event format", "no event")
	}
	rv := Features(ev.Version)
	if !rv.IsKnown() {
		return nil, fmt.Errorf("%w: %q", ErrUnsupported, ev.Version)
	}
	a := &auth{ev: ev, rv: rv, n: numbering(rv), getKey: getKey}
	if !isObject(ev.Content) {
		return nil, reject("event format", "content is not a JSON object")
	}
	if ev.Type == "m.room.member" {
		var f [3][]byte
		scanFields(ev.Content, memberKeys, f[:])
		a.mc = memberContent{f[0], f[1], f[2]}
	}
	return a, nil
}

func lookupCreate(roomID string, lookup func(string) (*Event, error)) (*Event, error) {
	if !strings.HasPrefix(roomID, "!") {
		return nil, nil
	}
	create, err := lookup("$" + roomID[1:])
	if errors.Is(err, ErrEventNotFound) {
		return nil, nil
	}
	return create, err
}

// checkRoomIDCreate is room v12's rule 2: the room ID names an accepted
// create event.
func (a *auth) checkRoomIDCreate(create *Event, mustBeAccepted bool) error {
	r := rule(a.n.roomID)
	switch {
	case create == nil || create.Type != "m.room.create" || create.StateKey == nil || *create.StateKey != "":
		return reject(r, "room ID %q does not name an m.room.create event", a.ev.RoomID)
	case "!"+strings.TrimPrefix(create.ID, "$") != a.ev.RoomID:
		return reject(r, "room ID %q is not the create event's ID %q", a.ev.RoomID, create.ID)
	case mustBeAccepted && create.Flags&store.FlagRejected != 0:
		return reject(r, "the create event %s was rejected", create.ID)
	}
	a.setCreate(create)
	return nil
}

// checkCreate is rule 1.
func (a *auth) checkCreate() error {
	ev := a.ev
	if len(ev.PrevEvents) > 0 {
		return reject(rule(1, 1), "create event has prev_events")
	}
	if a.rv.RoomIDIsCreateEventID() {
		if createHasRoomID(ev) {
			return reject(rule(1, 2), "create event has a room_id")
		}
	} else if d := domainOf(ev.RoomID); d == "" || d != domainOf(ev.Sender) {
		return reject(rule(1, 2), "room ID domain %q does not match the sender's", d)
	}
	c := parseCreateContent(ev.Content)
	if len(c.RoomVersion) > 0 {
		if v, ok := jsonString(c.RoomVersion); !ok || !knownRoomVersion(v) {
			return reject(rule(1, 3), "unknown room version %s", c.RoomVersion)
		}
	}
	switch {
	case a.rv.CreatorInContent():
		if len(c.Creator) == 0 {
			return reject(rule(1, 4), "create event has no creator")
		}
		return nil
	case a.rv.PrivilegedRoomCreators():
		if len(c.AdditionalCreators) > 0 && !validCreatorList(c.AdditionalCreators) {
			return reject(rule(1, 4), "additional_creators is not an array of user IDs")
		}
	}
	return nil
}

// createHasRoomID tells whether a v12 create event carried a room_id, which
// ParseEvent fills in from the event ID when it is absent.
func createHasRoomID(ev *Event) bool {
	if len(ev.Raw) == 0 {
		return ev.RoomID != "" && ev.RoomID != "!"+strings.TrimPrefix(ev.ID, "$")
	}
	return field(ev.Raw, "room_id") != nil
}

func validCreatorList(v []byte) bool {
	valid := true
	isArray := scanArray(v, func(item []byte) {
		s, ok := jsonString(item)
		valid = valid && ok && validUserID(s)
	})
	return isArray && valid
}

// checkAuthEvents is rule 2 (rule 3 in v12): the auth_events must be exactly
// a selection of the state the event needs, accepted and of this room.
func (a *auth) checkAuthEvents(list []*Event) error {
	r := a.n.authEvents
	for i, e := range list {
		for _, f := range list[:i] {
			if e.StateKey != nil && f.StateKey != nil && e.Type == f.Type && *e.StateKey == *f.StateKey {
				return reject(rule(r, 1), "duplicate auth events for (%s, %q)", e.Type, *e.StateKey)
			}
		}
	}
	want := a.selection()
	for _, e := range list {
		if e.StateKey == nil || !want.has(e.Type, *e.StateKey) {
			return reject(rule(r, 2), "auth event %s (%s) is not one the selection algorithm picks", e.ID, e.Type)
		}
	}
	for _, e := range list {
		if e.Flags&store.FlagRejected != 0 {
			return reject(rule(r, 3), "auth event %s was rejected", e.ID)
		}
	}
	if !a.rv.RoomIDIsCreateEventID() {
		found := false
		for _, e := range list {
			found = found || e.Type == "m.room.create"
		}
		if !found {
			return reject(rule(r, 4), "no m.room.create event among the auth events")
		}
	}
	for _, e := range list {
		if e.RoomID != a.ev.RoomID {
			return reject(rule(r, 5), "auth event %s is of room %s", e.ID, e.RoomID)
		}
	}
	return nil
}

// selection is the auth events selection algorithm of the server-server
// spec: the (type, state_key) pairs an event may cite.
type selection struct {
	keys [maxAuthEvents]StateKeyPair
	n    int
}

func (s *selection) add(t, k string) { s.keys[s.n] = StateKeyPair{t, k}; s.n++ }

func (s *selection) has(t, k string) bool {
	for _, p := range s.keys[:s.n] {
		if p.Type == t && p.StateKey == k {
			return true
		}
	}
	return false
}

func (a *auth) selection() selection {
	var s selection
	ev := a.ev
	if !a.rv.RoomIDIsCreateEventID() {
		s.add("m.room.create", "")
	}
	s.add("m.room.power_levels", "")
	s.add("m.room.member", ev.Sender)
	if ev.Type != "m.room.member" || ev.StateKey == nil {
		return s
	}
	s.add("m.room.member", *ev.StateKey)
	membership, _ := jsonString(a.mc.Membership)
	if membership == "join" || membership == "invite" || membership == "knock" {
		s.add("m.room.join_rules", "")
	}
	if membership == "invite" && present(a.mc.ThirdPartyInvite) {
		var tpi struct {
			Signed struct {
				Token jsontext.Value `json:"token"`
			} `json:"signed"`
		}
		_ = unmarshal(a.mc.ThirdPartyInvite, &tpi)
		if token, ok := jsonString(tpi.Signed.Token); ok {
			s.add("m.room.third_party_invite", token)
		}
	}
	if membership == "join" && a.rv.RestrictedJoins() {
		if via, ok := jsonString(a.mc.JoinAuthorisedVia); ok {
			s.add("m.room.member", via)
		}
	}
	return s
}

func (a *auth) state(t, k string) *Event {
	if a.m != nil {
		return a.m[StateKeyPair{t, k}]
	}
	for _, e := range a.list {
		if e.Type == t && e.StateKey != nil && *e.StateKey == k {
			return e
		}
	}
	return nil
}

func (a *auth) setCreate(create *Event) {
	a.create = create
	if create == nil {
		return
	}
	c := parseCreateContent(create.Content)
	a.noFed = string(c.Federate) == "false"
	if a.rv.CreatorInContent() {
		a.creator, _ = jsonString(c.Creator)
	} else {
		a.creator = create.Sender
	}
	if a.rv.PrivilegedRoomCreators() {
		a.creators = append(a.creators, create.Sender)
		scanArray(c.AdditionalCreators, func(v []byte) {
			if s, ok := jsonString(v); ok {
				a.creators = append(a.creators, s)
			}
		})
	}
}

// checkState runs the rules that follow the auth_events checks.
func (a *auth) checkState() error {
	ev, n := a.ev, a.n
	if a.create == nil {
		return reject(rule(n.authEvents, 4), "no m.room.create event")
	}
	if a.noFed && domainOf(ev.Sender) != domainOf(a.create.Sender) {
		return reject(rule(n.federate), "the room does not federate and %s is remote", ev.Sender)
	}
	if n.aliases != 0 && ev.Type == "m.room.aliases" {
		if ev.StateKey == nil {
			return reject(rule(n.aliases, 1), "m.room.aliases without a state_key")
		}
		if *ev.StateKey != domainOf(ev.Sender) {
			return reject(rule(n.aliases, 2), "m.room.aliases state_key %q is not the sender's domain", *ev.StateKey)
		}
		return nil
	}
	if ev.Type == "m.room.member" {
		return a.checkMember()
	}
	if m := a.membership(ev.Sender); m != "join" {
		return reject(rule(n.joined), "%s is not joined (%q)", ev.Sender, m)
	}
	sender := a.power(ev.Sender)
	if ev.Type == "m.room.third_party_invite" {
		if sender.less(a.named(plInvite)) {
			return reject(rule(n.tpi, 1), "%s may not invite", ev.Sender)
		}
		return nil
	}
	if req := a.eventLevel(ev.Type, ev.IsState()); sender.less(req) {
		return reject(rule(n.required), "%s needs power level %v to send %s", ev.Sender, req, ev.Type)
	}
	if ev.StateKey != nil && strings.HasPrefix(*ev.StateKey, "@") && *ev.StateKey != ev.Sender {
		if !OwnedState(ev.Version) {
			return reject(rule(n.stateKey), "state_key %q belongs to another user", *ev.StateKey)
		}
		// MSC3757: the key's owner, or a user above the owner's level.
		owner, ok := StateKeyOwner(*ev.StateKey)
		if !ok {
			return reject(rule(n.stateKey), "state_key %q names no user", *ev.StateKey)
		}
		if owner != ev.Sender && !a.power(owner).less(sender) {
			return reject(rule(n.stateKey), "state_key %q belongs to %s, whose power level is not below %s's", *ev.StateKey, owner, ev.Sender)
		}
	}
	if ev.Type == "m.room.power_levels" {
		return a.checkPowerLevels(sender)
	}
	if n.redaction != 0 && ev.Type == "m.room.redaction" {
		if !sender.less(a.named(plRedact)) {
			return nil
		}
		if d := domainOf(ev.ID); d != "" && d == domainOf(ev.Redacts) {
			return nil
		}
		return reject(rule(n.redaction, 3), "%s may not redact %s", ev.Sender, ev.Redacts)
	}
	return nil
}

// checkMember is the m.room.member rule (5 in v1-v5 and v12, 4 otherwise).
func (a *auth) checkMember() error {
	ev, n, r := a.ev, a.n, a.n.member
	membership, isString := jsonString(a.mc.Membership)
	if ev.StateKey == nil || len(a.mc.Membership) == 0 {
		return reject(rule(r, 1), "member event without state_key or membership")
	}
	target := *ev.StateKey
	if n.memberSig != 0 && present(a.mc.JoinAuthorisedVia) {
		via, ok := jsonString(a.mc.JoinAuthorisedVia)
		if !ok || !validUserID(via) {
			return reject(rule(r, n.memberSig, 1), "join_authorised_via_users_server is not a user ID")
		}
		if !a.signedBy(domainOf(via)) {
			return reject(rule(r, n.memberSig, 1), "not signed by %s, the server of the authorising user", domainOf(via))
		}
	}
	if !isString {
		membership = ""
	}
	senderM, targetM := a.membership(ev.Sender), a.membership(target)
	j := n.join
	switch {
	case membership == "join":
		if len(ev.PrevEvents) == 1 && ev.PrevEvents[0] == a.create.ID && a.creator != "" && target == a.creator {
			return nil
		}
		if ev.Sender != target {
			return reject(rule(r, j, 2), "%s may not join for %s", ev.Sender, target)
		}
		if senderM == "ban" {
			return reject(rule(r, j, 3), "%s is banned", ev.Sender)
		}
		jr := a.joinRule()
		if jr == "invite" || (a.rv.Knocks() && jr == "knock") {
			if senderM == "invite" || senderM == "join" {
				return nil
			}
		}
		sub := 5
		if a.rv.RestrictedJoins() {
			if jr == "restricted" || (a.rv.KnockRestricted() && jr == "knock_restricted") {
				if senderM == "join" || senderM == "invite" {
					return nil
				}
				via, _ := jsonString(a.mc.JoinAuthorisedVia)
				if via == "" || a.membership(via) != "join" || a.power(via).less(a.named(plInvite)) {
					return reject(rule(r, j, 5, 2), "join not authorised by a joined user able to invite")
				}
				return nil
			}
			sub = 6
		}
		if jr == "public" {
			return nil
		}
		return reject(rule(r, j, sub+1), "%s may not join a room whose join rule is %q", ev.Sender, jr)

	case membership == "invite":
		i := j + 1
		if present(a.mc.ThirdPartyInvite) {
			return a.checkThirdPartyInvite(i, targetM)
		}
		if senderM != "join" {
			return reject(rule(r, i, 2), "%s is not joined", ev.Sender)
		}
		if targetM == "join" || targetM == "ban" {
			return reject(rule(r, i, 3), "%s is %s", target, targetM)
		}
		if !a.power(ev.Sender).less(a.named(plInvite)) {
			return nil
		}
		return reject(rule(r, i, 5), "%s may not invite", ev.Sender)

	case membership == "leave":
		l := j + 2
		if ev.Sender == target {
			if senderM == "invite" || senderM == "join" || (a.rv.Knocks() && senderM == "knock") {
				return nil
			}
			return reject(rule(r, l, 1), "%s cannot leave from membership %q", target, senderM)
		}
		if senderM != "join" {
			return reject(rule(r, l, 2), "%s is not joined", ev.Sender)
		}
		sp := a.power(ev.Sender)
		if targetM == "ban" && sp.less(a.named(plBan)) {
			return reject(rule(r, l, 3), "%s may not unban", ev.Sender)
		}
		if !sp.less(a.named(plKick)) && a.power(target).less(sp) {
			return nil
		}
		return reject(rule(r, l, 5), "%s may not kick %s", ev.Sender, target)

	case membership == "ban":
		b := j + 3
		if senderM != "join" {
			return reject(rule(r, b, 1), "%s is not joined", ev.Sender)
		}
		sp := a.power(ev.Sender)
		if !sp.less(a.named(plBan)) && a.power(target).less(sp) {
			return nil
		}
		return reject(rule(r, b, 3), "%s may not ban %s", ev.Sender, target)

	case membership == "knock" && a.rv.Knocks():
		k := j + 4
		jr := a.joinRule()
		if jr != "knock" && !(a.rv.KnockRestricted() && jr == "knock_restricted") {
			return reject(rule(r, k, 1), "join rule %q does not allow knocking", jr)
		}
		if ev.Sender != target {
			return reject(rule(r, k, 2), "%s may not knock for %s", ev.Sender, target)
		}
		if senderM != "ban" && senderM != "invite" && senderM != "join" {
			return nil
		}
		return reject(rule(r, k, 4), "%s cannot knock from membership %q", ev.Sender, senderM)
	}
	unknown := j + 4
	if a.rv.Knocks() {
		unknown++
	}
	return reject(rule(r, unknown), "unknown membership %s", a.mc.Membership)
}

// checkThirdPartyInvite is rule 5.3.1 (as numbered in v1): an invite
// redeeming an m.room.third_party_invite.
func (a *auth) checkThirdPartyInvite(i int, targetM string) error {
	ev, r := a.ev, a.n.member
	if targetM == "ban" {
		return reject(rule(r, i, 1, 1), "%s is banned", *ev.StateKey)
	}
	var tpi struct {
		Signed jsontext.Value `json:"signed"`
	}
	if unmarshal(a.mc.ThirdPartyInvite, &tpi) != nil || !isObject(tpi.Signed) {
		return reject(rule(r, i, 1, 2), "third_party_invite has no signed object")
	}
	var signed struct {
		MXID  jsontext.Value `json:"mxid"`
		Token jsontext.Value `json:"token"`
	}
	_ = unmarshal(tpi.Signed, &signed)
	if len(signed.MXID) == 0 || len(signed.Token) == 0 {
		return reject(rule(r, i, 1, 3), "signed lacks mxid or token")
	}
	if mxid, ok := jsonString(signed.MXID); !ok || mxid != *ev.StateKey {
		return reject(rule(r, i, 1, 4), "signed mxid does not match the state_key")
	}
	var invite *Event
	if token, ok := jsonString(signed.Token); ok {
		invite = a.state("m.room.third_party_invite", token)
	}
	if invite == nil {
		return reject(rule(r, i, 1, 5), "no m.room.third_party_invite for the token")
	}
	if invite.Sender != ev.Sender {
		return reject(rule(r, i, 1, 6), "%s did not send the third-party invite", ev.Sender)
	}
	if verifyThirdPartySigned(tpi.Signed, thirdPartyKeys(invite.Content)) {
		return nil
	}
	return reject(rule(r, i, 1, 8), "no signature in signed matches the invite's public keys")
}

// thirdPartyKeys lists public_key and every public_keys[].public_key.
func thirdPartyKeys(content jsontext.Value) []string {
	var c struct {
		PublicKey  jsontext.Value   `json:"public_key"`
		PublicKeys []jsontext.Value `json:"public_keys"`
	}
	if unmarshal(content, &c) != nil {
		// public_keys of the wrong type must not hide public_key.
		c.PublicKeys = nil
		var only struct {
			PublicKey jsontext.Value `json:"public_key"`
		}
		_ = unmarshal(content, &only)
		c.PublicKey = only.PublicKey
	}
	var keys []string
	if k, ok := jsonString(c.PublicKey); ok {
		keys = append(keys, k)
	}
	for _, item := range c.PublicKeys {
		var o struct {
			PublicKey jsontext.Value `json:"public_key"`
		}
		if unmarshal(item, &o) == nil {
			if k, ok := jsonString(o.PublicKey); ok {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// verifyThirdPartySigned tells whether any ed25519 signature in signed
// verifies, over signed's canonical JSON without signatures and unsigned,
// with any of keys.
func verifyThirdPartySigned(signed jsontext.Value, keys []string) bool {
	var m map[string]jsontext.Value
	if unmarshal(signed, &m) != nil {
		return false
	}
	var sigs map[string]map[string]jsontext.Value
	if unmarshal(m["signatures"], &sigs) != nil {
		// Servers with malformed blocks must not hide well-formed ones.
		var loose map[string]jsontext.Value
		if unmarshal(m["signatures"], &loose) != nil {
			return false
		}
		sigs = map[string]map[string]jsontext.Value{}
		for server, block := range loose {
			var b map[string]jsontext.Value
			if unmarshal(block, &b) == nil {
				sigs[server] = b
			}
		}
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	msg, err := jsonv2.Marshal(m)
	if err != nil {
		return false
	}
	v := jsontext.Value(msg)
	if canonicaljson.Canonicalize(&v) != nil {
		return false
	}
	for _, k := range keys {
		pub := decodeBase64(k)
		if len(pub) != ed25519.PublicKeySize {
			continue
		}
		for _, block := range sigs {
			for keyID, raw := range block {
				if !strings.HasPrefix(keyID, "ed25519:") {
					continue
				}
				s, ok := jsonString(raw)
				if !ok {
					continue
				}
				if sig := decodeBase64(s); len(sig) == ed25519.SignatureSize && ed25519.Verify(pub, v, sig) {
					return true
				}
			}
		}
	}
	return false
}

// decodeBase64 accepts unpadded or padded, standard or URL-safe base64:
// the spec writes keys unpadded but identity servers have used each form.
func decodeBase64(s string) []byte {
	s = strings.TrimRight(s, "=")
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b
	}
	if b, err := base64.RawURLEncoding.DecodeString(s); err == nil {
		return b
	}
	return nil
}

// signedBy tells whether the event carries a valid signature of server.
func (a *auth) signedBy(server string) (ok bool) {
	if a.getKey == nil || len(a.ev.Raw) == 0 || server == "" {
		return false
	}
	// The signature check is mautrix's; a malformed PDU or key must end as
	// a rejection, never as a panic in the auth rules.
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	getKey := a.getKey
	checked := func(s string, keyID id.KeyID, minValid time.Time) (id.SigningKey, time.Time, error) {
		key, until, err := getKey(s, keyID, minValid)
		if err == nil && key != "" && len(decodeBase64(string(key))) != ed25519.PublicKeySize {
			return "", time.Time{}, nil
		}
		return key, until, err
	}
	return a.ev.VerifySignature(server, checked) == nil
}

// checkPowerLevels is the m.room.power_levels rule (10 in v1-v5 and v12, 9
// otherwise). sender is the sender's current power level.
func (a *auth) checkPowerLevels(sender power) error {
	ev, rv, r := a.ev, a.rv, a.n.powerLevels
	next := newPowerLevels(ev.Content, rv)
	nextUsers := parseLevelMap(next.users, rv)
	nextEvents := parseLevelMap(next.events, rv)
	nextNotifications := parseLevelMap(next.notifications, rv)
	sub := 1
	if rv.ValidatePowerLevelInts() {
		for i, f := range next.named {
			if f.set && !f.ok {
				return reject(rule(r, 1), "%s is not an integer", plNames[i])
			}
		}
		if !nextEvents.wellFormed() || !nextNotifications.wellFormed() {
			return reject(rule(r, 2), "events or notifications is not an object of integers")
		}
		sub = 3
	}
	if !nextUsers.wellFormed() {
		return reject(rule(r, sub), "users is not an object of user IDs to integers")
	}
	for u := range nextUsers.m {
		if !validUserID(u) {
			return reject(rule(r, sub), "users key %q is not a user ID", u)
		}
	}
	sub++
	if rv.PrivilegedRoomCreators() {
		for _, c := range a.creators {
			if _, listed := nextUsers.m[c]; listed {
				return reject(rule(r, sub), "users lists the room creator %s", c)
			}
		}
		sub++
	}
	if a.state("m.room.power_levels", "") == nil {
		return nil
	}
	sub++
	cur := a.powerLevels()
	curUsers := parseLevelMap(cur.users, rv)
	curEvents := parseLevelMap(cur.events, rv)
	curNotifications := parseLevelMap(cur.notifications, rv)
	for i := range next.named {
		oldV, oldOK := cur.named[i].value()
		if next.named[i].set && !next.named[i].ok {
			// Only rooms v1-v9 get here (v10 rejected it above); the spec
			// has no rule for it, and Synapse fails such an event.
			return reject(rule(r, sub, 2), "%s is not an integer", plNames[i])
		}
		newV, newOK := next.named[i].value()
		if oldOK == newOK && oldV == newV {
			continue
		}
		if oldOK && sender.less(power{v: oldV}) {
			return reject(rule(r, sub, 1), "current %s %d is above the sender's level", plNames[i], oldV)
		}
		if newOK && sender.less(power{v: newV}) {
			return reject(rule(r, sub, 2), "new %s %d is above the sender's level", plNames[i], newV)
		}
	}
	sub++
	maps := []levelMapPair{{"events", &curEvents, &nextEvents}}
	if rv.NotificationsPowerLevels() {
		maps = append(maps, levelMapPair{"notifications", &curNotifications, &nextNotifications})
	}
	for _, mp := range maps {
		if !mp.next.wellFormed() {
			return reject(rule(r, sub+1, 1), "%s is not an object of integers", mp.name)
		}
		for k, o := range mp.cur.m {
			if !o.ok {
				continue
			}
			if nv, ok := mp.next.m[k]; ok && nv.ok && nv.v == o.v {
				continue
			}
			if sender.less(power{v: o.v}) {
				return reject(rule(r, sub, 1), "%s[%s] is %d, above the sender's level", mp.name, k, o.v)
			}
		}
	}
	sub++
	for _, mp := range maps {
		for k, nv := range mp.next.m {
			if o, ok := mp.cur.m[k]; ok && o.ok && o.v == nv.v {
				continue
			}
			if sender.less(power{v: nv.v}) {
				return reject(rule(r, sub, 1), "new %s[%s] %d is above the sender's level", mp.name, k, nv.v)
			}
		}
	}
	sub++
	for u, o := range curUsers.m {
		if !o.ok || u == ev.Sender {
			continue
		}
		if nv, ok := nextUsers.m[u]; ok && nv.v == o.v {
			continue
		}
		if !(power{v: o.v}).less(sender) {
			return reject(rule(r, sub, 1), "%s has %d, not below the sender's level", u, o.v)
		}
	}
	sub++
	for u, nv := range nextUsers.m {
		if o, ok := curUsers.m[u]; ok && o.ok && o.v == nv.v {
			continue
		}
		if sender.less(power{v: nv.v}) {
			return reject(rule(r, sub, 1), "new level %d of %s is above the sender's level", nv.v, u)
		}
	}
	return nil
}

// power is a user's power level; room v12 creators are infinitely high.
type power struct {
	v   int64
	inf bool
}

func (p power) less(q power) bool {
	switch {
	case p.inf:
		return false
	case q.inf:
		return true
	}
	return p.v < q.v
}

func (p power) String() string {
	if p.inf {
		return "∞"
	}
	return strconv.FormatInt(p.v, 10)
}

func (a *auth) isCreator(user string) bool {
	for _, c := range a.creators {
		if c == user {
			return true
		}
	}
	return false
}

// power is a user's current power level. Without a power levels event the
// creator has 100 and everyone else 0.
func (a *auth) power(user string) power {
	if a.rv.PrivilegedRoomCreators() && a.isCreator(user) {
		return power{inf: true}
	}
	pl := a.powerLevels()
	if !pl.exists {
		if a.creator != "" && user == a.creator {
			return power{v: 100}
		}
		return power{}
	}
	if v, ok := lookupLevel(pl.users, user, a.rv); ok {
		return power{v: v}
	}
	return a.named(plUsersDefault)
}

// named is a named level of the current power levels, or its default.
func (a *auth) named(i int) power {
	if v, ok := a.powerLevels().named[i].value(); ok {
		return power{v: v}
	}
	return power{v: plDefaults[i]}
}

// eventLevel is the required power level to send an event of type t.
func (a *auth) eventLevel(t string, state bool) power {
	if v, ok := lookupLevel(a.powerLevels().events, t, a.rv); ok {
		return power{v: v}
	}
	if state {
		return a.named(plStateDefault)
	}
	return a.named(plEventsDefault)
}

func (a *auth) powerLevels() *powerLevels {
	if !a.plLoaded {
		if e := a.state("m.room.power_levels", ""); e != nil {
			a.pl = e.powerLevels(a.rv)
			a.pl.exists = true
		}
		a.plLoaded = true
	}
	return &a.pl
}

func (a *auth) membership(user string) string {
	e := a.state("m.room.member", user)
	if e == nil {
		return ""
	}
	m, _ := jsonString(field(e.Content, "membership"))
	return m
}

// joinRule is the room's join rule; like Synapse, a room without one is
// invite-only.
func (a *auth) joinRule() string {
	e := a.state("m.room.join_rules", "")
	if e == nil {
		return "invite"
	}
	raw := field(e.Content, "join_rule")
	if raw == nil {
		return "invite"
	}
	jr, _ := jsonString(raw)
	return jr
}

// memberContent holds raw values of an m.room.member content; nil if absent.
type memberContent struct {
	Membership, ThirdPartyInvite, JoinAuthorisedVia []byte
}

var memberKeys = []string{"membership", "third_party_invite", "join_authorised_via_users_server"}

type createContent struct {
	Creator, RoomVersion, Federate, AdditionalCreators []byte
}

var createKeys = []string{"creator", "room_version", "m.federate", "additional_creators"}

func parseCreateContent(content []byte) createContent {
	var f [4][]byte
	scanFields(content, createKeys, f[:])
	return createContent{f[0], f[1], f[2], f[3]}
}

// The named levels of m.room.power_levels, in the order rule 10.3 lists them.
const (
	plUsersDefault = iota
	plEventsDefault
	plStateDefault
	plBan
	plRedact
	plKick
	plInvite
	plNamedCount
)

var (
	plNames    = [plNamedCount]string{"users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"}
	plDefaults = [plNamedCount]int64{0, 0, 50, 50, 50, 50, 0}
)

// level is one power level value: set if the key is present, ok if its
// value is an integer under the room version's rules.
type level struct {
	set, ok bool
	v       int64
}

func (l level) value() (int64, bool) { return l.v, l.set && l.ok }

// levelMapPair is a current and a proposed events or notifications object.
type levelMapPair struct {
	name      string
	cur, next *levelMap
}

// levelMap is the users, events or notifications object.
type levelMap struct {
	set, object, allOK bool
	m                  map[string]level
}

// wellFormed: absent, or an object whose values are all integers.
func (l *levelMap) wellFormed() bool { return !l.set || (l.object && l.allOK) }

// powerLevels is an m.room.power_levels content: the named levels parsed,
// the users, events and notifications objects kept raw until needed.
type powerLevels struct {
	exists                       bool
	named                        [plNamedCount]level
	users, events, notifications []byte
}

var plKeys = []string{"users_default", "events_default", "state_default", "ban", "redact", "kick", "invite", "users", "events", "notifications"}

func newPowerLevels(content []byte, rv id.RoomVersion) powerLevels {
	var f [plNamedCount + 3][]byte
	scanFields(content, plKeys, f[:])
	var pl powerLevels
	for i := range plNamedCount {
		if f[i] != nil {
			v, ok := parseLevel(f[i], rv)
			pl.named[i] = level{set: true, ok: ok, v: v}
		}
	}
	pl.users, pl.events, pl.notifications = f[plNamedCount], f[plNamedCount+1], f[plNamedCount+2]
	return pl
}

// lookupLevel finds key in a raw users or events object (the last
// occurrence, as with duplicate keys elsewhere).
func lookupLevel(obj []byte, key string, rv id.RoomVersion) (int64, bool) {
	var found []byte
	scanObject(obj, func(name, val []byte) {
		if nameIs(name, key) {
			found = val
		}
	})
	if found == nil {
		return 0, false
	}
	return parseLevel(found, rv)
}

func parseLevelMap(raw []byte, rv id.RoomVersion) levelMap {
	lm := levelMap{set: raw != nil, allOK: true}
	m := map[string]level{}
	if !scanObject(raw, func(name, val []byte) {
		v, ok := parseLevel(val, rv)
		lm.allOK = lm.allOK && ok
		m[unquoteName(name)] = level{set: true, ok: ok, v: v}
	}) {
		return lm
	}
	lm.object, lm.m = true, m
	return lm
}

// maxSafeInt bounds integers in canonical JSON (rooms v6+).
const maxSafeInt = 1<<53 - 1

// parseLevel reads a power level: an integer; in rooms v1-v9 also a string
// holding one (spaces, one sign, leading zeros allowed); in rooms v1-v5 also
// a float, truncated.
func parseLevel(raw []byte, rv id.RoomVersion) (int64, bool) {
	raw = bytes.TrimSpace(raw)
	switch {
	case isJSONNumber(raw):
		s := string(raw)
		if strings.ContainsAny(s, ".eE") {
			if !floatPowerLevels(rv) {
				return 0, false
			}
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				return 0, false
			}
			f = math.Trunc(f)
			if f < math.MinInt64 || f >= math.MaxInt64 {
				return 0, false
			}
			return int64(f), true
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || (rv.ForbidFloatsAndBigInts() && (n > maxSafeInt || n < -maxSafeInt)) {
			return 0, false
		}
		return n, true
	case len(raw) > 0 && raw[0] == '"':
		if !stringPowerLevels(rv) {
			return 0, false
		}
		s, ok := jsonString(raw)
		if !ok {
			return 0, false
		}
		return parseIntString(s)
	}
	return 0, false
}

func parseIntString(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	digits := s
	if len(digits) > 0 && (digits[0] == '+' || digits[0] == '-') {
		digits = digits[1:]
	}
	if digits == "" {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// validUserID checks the user ID grammar, accepting historical localparts
// (any code point but ':' and NUL, even empty) as servers must.
func validUserID(s string) bool {
	if len(s) > 255 || !strings.HasPrefix(s, "@") || !utf8.ValidString(s) {
		return false
	}
	local, server, ok := strings.Cut(s[1:], ":")
	return ok && !strings.ContainsRune(local, 0) && validServerName(server)
}

// validServerName checks hostname [":" port], hostname being a DNS name,
// an IPv4 address or a bracketed IPv6 address.
func validServerName(s string) bool {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return false
		}
		host, port = s[:end+1], s[end+1:]
		for _, c := range host[1 : len(host)-1] {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return false
			}
		}
		if len(host) == 2 {
			return false
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i:]
	}
	if port != "" {
		p := port[1:]
		if port[0] != ':' || len(p) == 0 || len(p) > 5 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	if strings.HasPrefix(host, "[") {
		return true
	}
	if host == "" || len(host) > 255 {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// domainOf is the server part of a user, room (v1-v11) or event (v1/v2) ID.
func domainOf(s string) string {
	_, d, _ := strings.Cut(s, ":")
	return d
}

var lenient = jsontext.AllowDuplicateNames(true)

// unmarshal decodes case-sensitively, as JSON keys are, keeping the last of
// duplicate keys.
func unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return errors.New("no value")
	}
	return jsonv2.Unmarshal(data, v, lenient)
}

// present: the key exists, even with a null value, as the spec's "has a
// property" reads and as Synapse checks ("key in content").
func present(v []byte) bool { return v != nil }

func isObject(v []byte) bool {
	v = bytes.TrimSpace(v)
	return len(v) > 0 && v[0] == '{'
}

func jsonString(v []byte) (string, bool) {
	v = bytes.TrimSpace(v)
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	if inner := v[1 : len(v)-1]; plainString(inner) {
		return string(inner), true
	}
	var s string
	if jsonv2.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

// plainString: the bytes between quotes need no unescaping and are what the
// JSON decoder would accept as they are.
func plainString(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return utf8.Valid(b)
}

// The rules read a few keys of event contents, which ParseEvent has already
// validated as JSON. This scanner finds them without decoding or copying;
// on malformed input it stops and reports it, never reading out of bounds.

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string opening at b[i], or -1.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index after the value starting at b[i], or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				if i = skipString(b, i); i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	start := i
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ':', ' ', '\t', '\n', '\r', '"', '{', '[':
			if i == start {
				return -1
			}
			return i
		}
		i++
	}
	if i == start {
		return -1
	}
	return i
}

// scanObject calls fn with the raw (quoted) name and raw value of each
// member of the object obj, and tells whether obj is a well-formed object.
func scanObject(obj []byte, fn func(name, val []byte)) bool {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return false
	}
	if i = skipSpace(obj, i+1); i < len(obj) && obj[i] == '}' {
		return true
	}
	for {
		if i >= len(obj) || obj[i] != '"' {
			return false
		}
		end := skipString(obj, i)
		if end < 0 {
			return false
		}
		name := obj[i:end]
		if i = skipSpace(obj, end); i >= len(obj) || obj[i] != ':' {
			return false
		}
		i = skipSpace(obj, i+1)
		vend := skipValue(obj, i)
		if vend < 0 {
			return false
		}
		fn(name, obj[i:vend])
		if i = skipSpace(obj, vend); i >= len(obj) {
			return false
		}
		switch obj[i] {
		case ',':
			i = skipSpace(obj, i+1)
		case '}':
			return true
		default:
			return false
		}
	}
}

// scanArray calls fn with each raw element of the array arr, and tells
// whether arr is a well-formed array.
func scanArray(arr []byte, fn func(val []byte)) bool {
	i := skipSpace(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return false
	}
	if i = skipSpace(arr, i+1); i < len(arr) && arr[i] == ']' {
		return true
	}
	for {
		end := skipValue(arr, i)
		if end < 0 {
			return false
		}
		fn(arr[i:end])
		if i = skipSpace(arr, end); i >= len(arr) {
			return false
		}
		switch arr[i] {
		case ',':
			i = skipSpace(arr, i+1)
		case ']':
			return true
		default:
			return false
		}
	}
}

// scanFields sets out[i] to the raw value of keys[i] in obj (the last one
// if a key repeats), leaving absent keys nil.
func scanFields(obj []byte, keys []string, out [][]byte) {
	scanObject(obj, func(name, val []byte) {
		for i, k := range keys {
			if nameIs(name, k) {
				out[i] = val
				return
			}
		}
	})
}

// field is the raw value of key in obj, or nil.
func field(obj []byte, key string) []byte {
	var found []byte
	scanObject(obj, func(name, val []byte) {
		if nameIs(name, key) {
			found = val
		}
	})
	return found
}

// nameIs compares a raw member name with key, unescaping only if needed.
func nameIs(name []byte, key string) bool {
	if len(name) < 2 {
		return false
	}
	if bytes.IndexByte(name, '\\') < 0 {
		return string(name[1:len(name)-1]) == key
	}
	return unquoteName(name) == key
}

func unquoteName(name []byte) string {
	if len(name) >= 2 && bytes.IndexByte(name, '\\') < 0 {
		return string(name[1 : len(name)-1])
	}
	s, _ := jsonString(name)
	return s
}

// isJSONNumber checks the JSON number grammar, which strconv is laxer than.
func isJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(b)
}
