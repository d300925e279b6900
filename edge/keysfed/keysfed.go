// Package keysfed is the federation side of end-to-end encryption: it
// serves our users' keys and device lists to other servers
// (/_matrix/federation/v1/user/keys/query, /user/keys/claim,
// /user/devices/{userId}), receives the E2EE EDUs (m.direct_to_device,
// m.device_list_update, m.signing_key_update) into a cache of remote
// users' device lists (devicelist.go), and gives the client API's E2EE
// handlers the federation client, the queue and that cache.
package keysfed

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"

	"edge/edge/client"
	"edge/edge/store"
	"edge/federation"
)

// Deps is what keysfed needs from the node.
type Deps struct {
	Fed    *federation.Server
	Client *client.Server
	Log    *slog.Logger
}

// Install connects the client API's E2EE handlers to federation and
// registers the routes and EDU handlers.
func Install(d Deps) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	log := d.Log.With("component", "keysfed")
	devlists := newCache(d, log)
	go devlists.run()
	d.Client.SetE2EEFederation(&client.E2EEFederation{
		Post:             d.Fed.Client.Post,
		QueryKeys:        devlists.queryKeys,
		SweepDeviceLists: devlists.sweep,
		SendEDUTx: func(tx *store.Tx, server, eduType string, content any) {
			raw, err := json.Marshal(content)
			if err != nil {
				log.Error("encoding EDU", "type", eduType, "err", err)
				return
			}
			d.Fed.Queue.SendEDUTx(tx, server, federation.EDU{Type: eduType, Content: raw})
		},
	})
	d.Fed.Handle("POST /_matrix/federation/v1/user/keys/query", func(r *federation.Request) (any, error) {
		var req struct {
			DeviceKeys map[string][]string `json:"device_keys"`
		}
		if err := json.Unmarshal(r.Body, &req); err != nil || req.DeviceKeys == nil {
			return nil, badJSON("device_keys must be an object of user ID → device IDs")
		}
		return d.Client.FederationKeysQuery(req.DeviceKeys)
	})
	d.Fed.Handle("POST /_matrix/federation/v1/user/keys/claim", func(r *federation.Request) (any, error) {
		var req struct {
			OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		}
		if err := json.Unmarshal(r.Body, &req); err != nil || req.OneTimeKeys == nil {
			return nil, badJSON("one_time_keys must be an object of user ID → device ID → algorithm")
		}
		return d.Client.FederationKeysClaim(req.OneTimeKeys)
	})
	d.Fed.Handle("GET /_matrix/federation/v1/user/devices/{userId}", func(r *federation.Request) (any, error) {
		resp, ok, err := d.Client.FederationUserDevices(r.PathValue("userId"))
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, &federation.Error{Status: http.StatusNotFound, Code: "M_NOT_FOUND", Message: "No such user on this server"}
		}
		return resp, nil
	})
	d.Fed.HandleEDU("m.direct_to_device", func(_ context.Context, origin string, content json.RawMessage) error {
		return d.Client.FederationToDevice(origin, content)
	})
	d.Fed.HandleEDU("m.device_list_update", devlists.onDeviceListUpdate)
	d.Fed.HandleEDU("m.signing_key_update", devlists.onSigningKeyUpdate)
}

func badJSON(msg string) error {
	return &federation.Error{Status: http.StatusBadRequest, Code: "M_BAD_JSON", Message: msg}
}
