package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"edge/edge/client"
	"edge/edge/config"
	"edge/edge/notify"
	"edge/edge/room"
	"edge/edge/store"
)

// Version is set at build time with -ldflags "-X edge/edge.Version=…".
var Version = "dev"

// Node is one running homeserver.
type Node struct {
	Config   *config.Config
	Store    *store.Store
	Rooms    *room.Service
	Notifier *notify.Notifier
	Typing   *notify.Typing
	Client   *client.Server
	Log      *slog.Logger
	Keys     []config.SigningKey
}

// Open builds a node from its configuration.
func Open(cfg *config.Config, log *slog.Logger) (*Node, error) {
	keys, err := config.ReadSigningKeys(cfg.Path(cfg.SigningKeyPath))
	if err != nil {
		return nil, fmt.Errorf("signing_key_path: %w", err)
	}
	st, err := store.Open(cfg.Path(cfg.DatabasePath))
	if err != nil {
		return nil, err
	}
	n := &Node{Config: cfg, Store: st, Log: log, Keys: keys, Notifier: notify.New()}
	n.Typing = notify.NewTyping(n.Notifier)
	n.Rooms = room.New(room.Signer{ServerName: cfg.ServerName, KeyID: keys[0].ID, Key: keys[0].Priv},
		cfg.Limits.StateCacheSize, cfg.Limits.EventCacheSize)
	n.Rooms.OnEvent = n.onEvent
	n.Client = client.New(client.Deps{Config: cfg, Store: st, Rooms: n.Rooms, Notifier: n.Notifier, Typing: n.Typing, Log: log})
	return n, nil
}

// onEvent wakes the syncs an event concerns: the room's members, and for a
// membership change the target user, whose room list changed.
func (n *Node) onEvent(ev *room.Event) {
	keys := []string{notify.RoomKey(ev.RoomID)}
	if ev.Type == "m.room.member" && ev.StateKey != nil {
		keys = append(keys, notify.UserKey(*ev.StateKey))
	}
	n.Notifier.Notify(keys...)
}

// Handler serves every API of the node.
func (n *Node) Handler() http.Handler { return n.Client.Handler() }

// Serve serves on ln until ctx is done, then shuts down gracefully.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           n.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(n.Log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shutdown)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close() // long-polls outlived the grace period
	}
	return err
}

// Run listens on the configured address and serves until ctx is done.
func (n *Node) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", n.Config.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	n.Log.Info("edge is serving", "server_name", n.Config.ServerName, "listen", ln.Addr().String(), "version", Version)
	return n.Serve(ctx, ln)
}

// Close releases the store.
func (n *Node) Close() error { return n.Store.Close() }
