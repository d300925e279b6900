// Package edufed is the federation side of typing notifications, read
// receipts, presence, profile and directory queries: it serves
// GET /_matrix/federation/v1/query/profile, /query/directory and
// GET/POST /publicRooms for our users, aliases and published rooms,
// receives m.typing, m.receipt and m.presence EDUs, and gives the client
// API the queue and federation client to reach other servers.
package edufed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"edge/edge/client"
	"edge/edge/store"
	"edge/federation"
)

// Deps is what edufed needs from the node.
type Deps struct {
	Fed    *federation.Server
	Client *client.Server
	Log    *slog.Logger
	// NoPresence keeps presence local (no m.presence EDUs either way).
	NoPresence bool
}

// Install connects the client API's typing, receipt, profile and alias
// handlers to federation and registers the routes and EDU handlers.
func Install(d Deps) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	log := d.Log.With("component", "edufed")
	d.Client.Remote = &client.RemoteQueries{
		SendEDUTx: func(tx *store.Tx, server, eduType string, content any) {
			raw, err := json.Marshal(content)
			if err != nil {
				log.Error("encoding EDU", "type", eduType, "err", err)
				return
			}
			d.Fed.Queue.SendEDUTx(tx, server, federation.EDU{Type: eduType, Content: raw})
		},
		Get: func(ctx context.Context, server, path string, out any) error {
			return notFound(d.Fed.Client.Get(ctx, server, path, out))
		},
		Post: func(ctx context.Context, server, path string, body, out any) error {
			return notFound(d.Fed.Client.Post(ctx, server, path, body, out))
		},
		NoPresence: d.NoPresence,
	}
	d.Fed.Handle("GET /_matrix/federation/v1/query/profile", func(r *federation.Request) (any, error) {
		q := r.URL.Query()
		userID := q.Get("user_id")
		if userID == "" {
			return nil, &federation.Error{Status: http.StatusBadRequest, Code: "M_MISSING_PARAM", Message: "user_id is required"}
		}
		p, err := d.Client.FederationProfile(userID, q.Get("field"))
		return p, fedError(err)
	})
	d.Fed.Handle("GET /_matrix/federation/v1/query/directory", func(r *federation.Request) (any, error) {
		alias := r.URL.Query().Get("room_alias")
		if alias == "" {
			return nil, &federation.Error{Status: http.StatusBadRequest, Code: "M_MISSING_PARAM", Message: "room_alias is required"}
		}
		ans, err := d.Client.FederationDirectory(alias)
		if err != nil {
			return nil, fedError(err)
		}
		return ans, nil
	})
	d.Fed.Handle("GET /_matrix/federation/v1/publicRooms", func(r *federation.Request) (any, error) {
		resp, err := d.Client.FederationPublicRooms(r.URL.Query(), nil)
		return resp, fedError(err)
	})
	d.Fed.Handle("POST /_matrix/federation/v1/publicRooms", func(r *federation.Request) (any, error) {
		body := r.Body
		if len(body) == 0 {
			body = json.RawMessage("{}")
		}
		resp, err := d.Client.FederationPublicRooms(nil, body)
		return resp, fedError(err)
	})
	installOpenID(d)
	for eduType, fn := range map[string]func(origin string, content json.RawMessage) error{
		"m.typing":   d.Client.FederationTyping,
		"m.receipt":  d.Client.FederationReceipt,
		"m.presence": d.Client.FederationPresence,
	} {
		d.Fed.HandleEDU(eduType, func(_ context.Context, origin string, content json.RawMessage) error {
			return fn(origin, content)
		})
	}
}

// notFound marks a remote 404 as client.ErrRemoteNotFound.
func notFound(err error) error {
	var re *federation.RemoteError
	if errors.As(err, &re) && re.Status == http.StatusNotFound {
		return fmt.Errorf("%w: %v", client.ErrRemoteNotFound, err)
	}
	return err
}

// fedError gives a client API error the federation API's shape; other
// errors stay as they are (500 M_UNKNOWN).
func fedError(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) {
		return &federation.Error{Status: ce.Status, Code: ce.Code, Message: ce.Message}
	}
	return err
}
