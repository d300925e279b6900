package client

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"edge/edge/room"
	"edge/edge/store"
)

// maxCanonicalInt is the largest integer canonical JSON can carry (2^53-1).
const maxCanonicalInt = 1<<53 - 1

// checkStatePut refuses, as 400 M_BAD_JSON, state a client may not send
// whatever its power, before the auth rules would answer 403 (Synapse
// answers 400 too): m.room.create, which only createRoom makes (MSC4291
// tests it), integers outside canonical JSON's range, state keys that
// start with @ but name no user in versions with owned state (MSC3757),
// and, in versions
// with privileged creators (MSC4289, v12), power levels that name a
// creator in users.
func (s *Server) checkStatePut(tx *store.Tx, r *store.Room, st *room.State, evType, stateKey string, content json.RawMessage) error {
	if evType == "m.room.create" {
		return errBadJSON("m.room.create cannot be sent to an existing room")
	}
	if !canonicalInts(content) {
		return errBadJSON("Integers must be between -(2^53-1) and 2^53-1")
	}
	if r != nil && room.OwnedState(r.Version) && strings.HasPrefix(stateKey, "@") {
		// MSC3757: a key that names no user can never be owned.
		if _, ok := room.StateKeyOwner(stateKey); !ok {
			return errBadJSON("state_key %q starts with @ but is not a user ID, or a user ID and _", stateKey)
		}
	}
	if evType != "m.room.power_levels" || stateKey != "" || r == nil || st == nil || !room.Features(r.Version).PrivilegedRoomCreators() {
		return nil
	}
	var pl struct {
		Users map[string]json.RawMessage `json:"users"`
	}
	if json.Unmarshal(content, &pl) != nil || len(pl.Users) == 0 {
		return nil // the auth rules judge malformed content
	}
	create, err := s.Rooms.StateEvent(tx, st, "m.room.create", "")
	if err != nil || create == nil {
		return err
	}
	creators := []string{create.Sender}
	var cc struct {
		AdditionalCreators []string `json:"additional_creators"`
	}
	if json.Unmarshal(create.Content, &cc) == nil {
		creators = append(creators, cc.AdditionalCreators...)
	}
	for _, c := range creators {
		if _, ok := pl.Users[c]; ok {
			return errBadJSON("Room creators (%s) cannot be given a power level in room version %s", c, r.Version)
		}
	}
	return nil
}

// canonicalInts tells whether every number in raw is an integer canonical
// JSON can carry, or not an integer at all (the auth rules judge floats).
func canonicalInts(raw json.RawMessage) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return true // end of input; malformed JSON was refused earlier
		}
		n, ok := tok.(json.Number)
		if !ok {
			continue
		}
		if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
			if i > maxCanonicalInt || i < -maxCanonicalInt {
				return false
			}
		} else if f, err := n.Float64(); err == nil && f == math.Trunc(f) && math.Abs(f) > maxCanonicalInt && !bytes.ContainsAny([]byte(n), ".eE") {
			return false // an integer too large even for int64
		}
	}
}
