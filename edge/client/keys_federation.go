package client

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"edge/edge/notify"
	"edge/edge/store"
)

// E2EE across servers (https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption):
// this file holds the client API's half — fanning /keys/query and
// /keys/claim out to remote servers, queueing device-list updates and
// to-device EDUs, and the local answers the federation routes of
// edge/keysfed serve. Remote device lists are cached by edge/keysfed, which
// answers /keys/query through E2EEFederation.QueryKeys when it is set.

// E2EEFederation is what the E2EE handlers need of the federation
// transport; edge/keysfed provides it. Without one, remote users get a
// `failures` entry and to-device messages to them are dropped.
type E2EEFederation struct {
	// Post sends a signed POST to server and decodes its answer into out.
	Post func(ctx context.Context, server, path string, body, out any) error
	// SendEDUTx queues an EDU for server inside tx.
	SendEDUTx func(tx *store.Tx, server, eduType string, content any)
	// QueryKeys, when set, answers a server's share of a /keys/query
	// (users → device IDs, empty for all) instead of a live POST. An
	// error, reported in failures, may come with a partial answer.
	QueryKeys func(ctx context.Context, server string, users map[string][]string) (*RemoteKeys, error)
	// SweepDeviceLists, when set, stops tracking (drops the cached device
	// lists of) remote users who share no room with ours any more: for
	// memberships that change without a membership event, as when a
	// faster join's resync rejects a join.
	SweepDeviceLists func() error
}

// SetE2EEFederation connects the E2EE handlers to other servers. Call it
// before the node serves.
func (s *Server) SetE2EEFederation(f *E2EEFederation) { s.e2eeFederation = f }

func (s *Server) e2eeFed() *E2EEFederation { return s.e2eeFederation }

// SweepRemoteDeviceLists stops tracking the device lists of remote users
// who share no room with ours any more (one left, or a resync showed they
// were never in): a later rejoin fetches their devices afresh instead of
// answering from a list that missed updates meanwhile.
func (s *Server) SweepRemoteDeviceLists() {
	if f := s.e2eeFed(); f != nil && f.SweepDeviceLists != nil {
		if err := f.SweepDeviceLists(); err != nil {
			s.Log.Info("sweeping remote device lists", "err", err)
		}
	}
}

// nsDevListStream: user → the stream_id of the user's latest device-list
// update (decimal), for m.device_list_update and GET /user/devices.
const nsDevListStream = "e2ee_devlist_stream"

// nsToDeviceSeen: sender, message_id → "" for inbound m.direct_to_device
// EDUs already delivered (a retried transaction must not deliver twice).
const nsToDeviceSeen = "e2ee_todevice_seen"

// defaultRemoteTimeout is how long /keys/query and /keys/claim wait for
// remote servers when the client names no timeout.
const defaultRemoteTimeout = 10 * time.Second

// remoteTimeout reads a request's `timeout` (milliseconds).
func remoteTimeout(raw json.RawMessage) time.Duration {
	var ms float64
	if len(raw) == 0 || json.Unmarshal(raw, &ms) != nil || ms <= 0 {
		return defaultRemoteTimeout
	}
	return min(time.Duration(ms)*time.Millisecond, time.Minute)
}

// unreachable is a `failures` entry for a server that did not answer.
func unreachable(err error) map[string]any {
	return map[string]any{"status": 503, "message": fmt.Sprintf("Not reachable: %v", err)}
}

// fanOut runs ask once per server in parallel and waits for all of them.
func fanOut[T any](servers map[string]T, ask func(server string, req T)) {
	var wg sync.WaitGroup
	for server, req := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ask(server, req)
		}()
	}
	wg.Wait()
}

// RemoteKeys is a /user/keys/query answer.
type RemoteKeys struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
}

// queryRemoteKeys asks each server in byServer for its users' device and
// cross-signing keys and merges the answers into the /keys/query response
// maps. Only users of the answering server are taken from its answer.
func (s *Server) queryRemoteKeys(ctx context.Context, byServer map[string]map[string][]string,
	deviceKeys map[string]map[string]json.RawMessage, master, selfSigning map[string]json.RawMessage, failures map[string]any) {
	f := s.e2eeFed()
	var mu sync.Mutex
	fanOut(byServer, func(server string, users map[string][]string) {
		if f == nil {
			mu.Lock()
			failures[server] = remoteFailure
			mu.Unlock()
			return
		}
		ans := &RemoteKeys{}
		var err error
		if f.QueryKeys != nil {
			ans, err = f.QueryKeys(ctx, server, users)
		} else {
			err = f.Post(ctx, server, "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": users}, ans)
			if err != nil {
				ans = nil
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures[server] = unreachable(err)
		}
		if ans == nil {
			return
		}
		for u, devs := range ans.DeviceKeys {
			if _, asked := users[u]; asked && devs != nil {
				deviceKeys[u] = devs
			}
		}
		for u, k := range ans.MasterKeys {
			if _, asked := users[u]; asked {
				master[u] = k
			}
		}
		for u, k := range ans.SelfSigningKeys {
			if _, asked := users[u]; asked {
				selfSigning[u] = k
			}
		}
	})
}

// claimRemoteKeys claims one-time keys of remote users, server by server
// in parallel, into claimed.
func (s *Server) claimRemoteKeys(ctx context.Context, byServer map[string]map[string]map[string]string,
	claimed map[string]map[string]map[string]json.RawMessage, failures map[string]any) {
	f := s.e2eeFed()
	var mu sync.Mutex
	fanOut(byServer, func(server string, users map[string]map[string]string) {
		if f == nil {
			mu.Lock()
			failures[server] = remoteFailure
			mu.Unlock()
			return
		}
		var ans struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		err := f.Post(ctx, server, "/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": users}, &ans)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures[server] = unreachable(err)
			return
		}
		for u, devs := range ans.OneTimeKeys {
			if _, asked := users[u]; asked && len(devs) > 0 {
				claimed[u] = devs
			}
		}
	})
}

// FederationKeysQuery answers POST /_matrix/federation/v1/user/keys/query
// for our users (others are left out): device keys with the owners' own
// signatures, master and self-signing keys.
func (s *Server) FederationKeysQuery(req map[string][]string) (map[string]any, error) {
	deviceKeys := map[string]map[string]json.RawMessage{}
	master, selfSigning := map[string]json.RawMessage{}, map[string]json.RawMessage{}
	err := s.Store.View(func(tx *store.Tx) error {
		for userID, devices := range req {
			if !s.isLocalUser(userID) {
				continue
			}
			if _, err := tx.User(localpart(userID)); err != nil {
				continue
			}
			deviceKeys[userID] = s.queryDeviceKeys(tx, "", userID, devices)
			if mk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "master")); err == nil {
				master[userID] = withSignatures(tx, mk, "", userID, crossSigningPub(mk))
			}
			if sk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "self_signing")); err == nil {
				selfSigning[userID] = sk
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"device_keys": deviceKeys, "master_keys": master, "self_signing_keys": selfSigning}, nil
}

// FederationKeysClaim answers POST /_matrix/federation/v1/user/keys/claim
// for our users.
func (s *Server) FederationKeysClaim(req map[string]map[string]string) (map[string]any, error) {
	var claimed map[string]map[string]map[string]json.RawMessage
	err := s.Store.Write(func(tx *store.Tx) error {
		claimed = s.claimLocalKeys(tx, req)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_keys": claimed}, nil
}

// FederationUserDevices answers GET /_matrix/federation/v1/user/devices/{userId}
// for one of our users; ok is false for anyone else.
func (s *Server) FederationUserDevices(userID string) (resp map[string]any, ok bool, err error) {
	if !s.isLocalUser(userID) {
		return nil, false, nil
	}
	err = s.Store.View(func(tx *store.Tx) error {
		if _, err := tx.User(localpart(userID)); err != nil {
			return nil
		}
		ok = true
		devs, err := tx.Devices(userID)
		if err != nil {
			return err
		}
		keys := s.queryDeviceKeys(tx, "", userID, nil)
		list := []map[string]any{}
		for _, d := range devs {
			entry := map[string]any{"device_id": d.DeviceID}
			if k, has := keys[d.DeviceID]; has {
				entry["keys"] = k
			}
			if d.DisplayName != "" {
				entry["device_display_name"] = d.DisplayName
			}
			list = append(list, entry)
		}
		resp = map[string]any{"user_id": userID, "stream_id": devListStreamID(tx, userID), "devices": list}
		if mk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "master")); err == nil {
			resp["master_key"] = withSignatures(tx, mk, "", userID, crossSigningPub(mk))
		}
		if sk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "self_signing")); err == nil {
			resp["self_signing_key"] = json.RawMessage(sk)
		}
		return nil
	})
	return resp, ok, err
}

func devListStreamID(tx *store.Tx, userID string) uint64 {
	v, err := tx.GetKV(nsDevListStream, userID)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(v), 10, 64)
	return n
}

// remoteServersOf lists the other servers with a member joined to a room
// userID (a local user) is joined to.
func (s *Server) remoteServersOf(tx *store.Tx, userID string) []string {
	ms, err := tx.Memberships(userID)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, m := range ms {
		if m.Membership != "join" {
			continue
		}
		for _, server := range s.otherServersIn(tx, m.RoomID) {
			if !seen[server] {
				seen[server] = true
				out = append(out, server)
			}
		}
	}
	return out
}

// sendDeviceListUpdate tells every server sharing a room with userID that
// one of its devices changed (m.device_list_update), inside tx.
func (s *Server) sendDeviceListUpdate(tx *store.Tx, userID, deviceID string, deleted bool) {
	s.sendDeviceListUpdateTo(tx, s.remoteServersOf(tx, userID), userID, deviceID, deleted)
}

// sendDeviceListUpdateTo sends one device's m.device_list_update to dests
// with the user's next stream id, inside tx.
func (s *Server) sendDeviceListUpdateTo(tx *store.Tx, dests []string, userID, deviceID string, deleted bool) {
	f := s.e2eeFed()
	if f == nil {
		return
	}
	prev := devListStreamID(tx, userID)
	streamID := tx.NextPos()
	tx.PutKV(nsDevListStream, userID, []byte(strconv.FormatUint(streamID, 10)))
	if len(dests) == 0 {
		return
	}
	content := map[string]any{"user_id": userID, "device_id": deviceID, "stream_id": streamID, "deleted": deleted}
	if prev != 0 {
		content["prev_id"] = []uint64{prev}
	} else {
		content["prev_id"] = []uint64{}
	}
	if !deleted {
		if k, ok := s.queryDeviceKeys(tx, "", userID, []string{deviceID})[deviceID]; ok {
			content["keys"] = k
		}
		if d, err := tx.Device(userID, deviceID); err == nil && d.DisplayName != "" {
			content["device_display_name"] = d.DisplayName
		}
	}
	for _, d := range dests {
		f.SendEDUTx(tx, d, "m.device_list_update", content)
	}
}

// AnnounceDevicesOnJoin sends a local user's devices (m.device_list_update)
// to the servers of a room the user has just joined that share no other
// room with them — the spec's "when that user joins a room which contains
// servers which are not already receiving updates for that user's device
// list". The node calls it for every new join (not for a join after a
// join, e.g. a display name change), outside any transaction.
func (s *Server) AnnounceDevicesOnJoin(roomID, userID string) {
	if s.e2eeFed() == nil || !s.isLocalUser(userID) {
		return
	}
	err := s.Store.Write(func(tx *store.Tx) error {
		if _, err := tx.PartialState(roomID); err == nil {
			// A faster join: the room's servers are not known yet, and
			// the resident server does not expect device lists from a
			// joiner (Synapse sends none; Complement's MSC3902 tests
			// count any as an error). Keys are fetched on demand.
			return nil
		}
		already := map[string]bool{}
		ms, _ := tx.Memberships(userID)
		for _, m := range ms {
			if m.Membership == "join" && m.RoomID != roomID {
				for _, srv := range s.otherServersIn(tx, m.RoomID) {
					already[srv] = true
				}
			}
		}
		var dests []string
		for _, srv := range s.otherServersIn(tx, roomID) {
			if !already[srv] {
				dests = append(dests, srv)
			}
		}
		if len(dests) == 0 {
			return nil
		}
		devices, err := tx.Devices(userID)
		if err != nil {
			return err
		}
		for _, d := range devices {
			s.sendDeviceListUpdateTo(tx, dests, userID, d.DeviceID, false)
		}
		return nil
	})
	if err != nil {
		s.Log.Warn("announcing devices to a joined room's servers", "room_id", roomID, "user_id", userID, "err", err)
	}
}

// sendSigningKeyUpdate tells every server sharing a room with userID of
// its new cross-signing keys (m.signing_key_update), inside tx.
func (s *Server) sendSigningKeyUpdate(tx *store.Tx, userID string) {
	f := s.e2eeFed()
	if f == nil {
		return
	}
	dests := s.remoteServersOf(tx, userID)
	if len(dests) == 0 {
		return
	}
	content := map[string]any{"user_id": userID}
	if mk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "master")); err == nil {
		content["master_key"] = withSignatures(tx, mk, "", userID, crossSigningPub(mk))
	}
	if sk, err := tx.GetKV(nsCrossSigning, e2eeKey(userID, "self_signing")); err == nil {
		content["self_signing_key"] = json.RawMessage(sk)
	}
	for _, d := range dests {
		f.SendEDUTx(tx, d, "m.signing_key_update", content)
	}
}

// FederationDeviceListUpdate handles an inbound m.device_list_update or
// m.signing_key_update: the remote user's keys changed, so local users
// sharing a room with them see them in device_lists.changed.
func (s *Server) FederationDeviceListUpdate(origin string, content json.RawMessage) error {
	var u struct {
		UserID string `json:"user_id"`
	}
	if err := json.Unmarshal(content, &u); err != nil {
		return err
	}
	if server, ok := userServer(u.UserID); !ok || server != origin {
		return fmt.Errorf("device list update for %q from %s", u.UserID, origin)
	}
	return s.Store.Write(func(tx *store.Tx) error {
		s.markDeviceListChange(tx, u.UserID, "")
		// markDeviceListChange wakes the rooms of local users only.
		keys := s.roomsOfRemoteUser(tx, u.UserID)
		tx.OnCommit(func() { s.Notifier.Notify(keys...) })
		return nil
	})
}

// roomsOfRemoteUser returns the notify keys of the rooms a remote user is
// joined to. The store indexes memberships of local users only, so this
// walks every room: fine for the small servers edge is for.
func (s *Server) roomsOfRemoteUser(tx *store.Tx, userID string) []string {
	var keys []string
	_ = tx.Rooms(func(r *store.Room) bool {
		if _, st, err := s.roomState(tx, r.RoomID); err == nil && s.membershipIn(tx, st, userID) == "join" {
			keys = append(keys, notify.RoomKey(r.RoomID))
		}
		return true
	})
	return keys
}

// directToDevice is the content of an m.direct_to_device EDU.
type directToDevice struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}

// queueRemoteToDevice queues the remote part of a /sendToDevice as one
// m.direct_to_device EDU per server, inside tx.
func (s *Server) queueRemoteToDevice(tx *store.Tx, sender, evType, messageID string, remote map[string]map[string]map[string]json.RawMessage) {
	f := s.e2eeFed()
	if f == nil {
		return
	}
	for server, msgs := range remote {
		f.SendEDUTx(tx, server, "m.direct_to_device", directToDevice{Sender: sender, Type: evType, MessageID: messageID, Messages: msgs})
	}
}

// FederationToDevice delivers an inbound m.direct_to_device EDU to our
// users' devices, once per (sender, message_id).
func (s *Server) FederationToDevice(origin string, content json.RawMessage) error {
	var m directToDevice
	if err := json.Unmarshal(content, &m); err != nil {
		return err
	}
	if server, ok := userServer(m.Sender); !ok || server != origin {
		return fmt.Errorf("to-device message from %q sent by %s", m.Sender, origin)
	}
	if m.Type == "" || m.MessageID == "" || !validPathValue(m.Type) {
		return fmt.Errorf("to-device message without type or message_id")
	}
	return s.Store.Write(func(tx *store.Tx) error {
		seen := e2eeKey(m.Sender, m.MessageID)
		if _, err := tx.GetKV(nsToDeviceSeen, seen); err == nil {
			return nil
		}
		tx.PutKV(nsToDeviceSeen, seen, nil)
		var pos uint64
		index := 0
		var woken []string
		for userID, devices := range m.Messages {
			if !s.isLocalUser(userID) {
				continue
			}
			ok, err := s.storeToDevice(tx, m.Sender, m.Type, userID, devices, &pos, &index)
			if err != nil {
				return err
			}
			if ok {
				woken = append(woken, notify.UserKey(userID))
			}
		}
		tx.OnCommit(func() { s.Notifier.Notify(woken...) })
		return nil
	})
}
