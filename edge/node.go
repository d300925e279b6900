package edge

import (
	"context"
	"crypto/x509"
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
	"edge/federation"
	"edge/wellknown"
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
	Fed      *federation.Server
	Resolver *wellknown.Resolver
	Log      *slog.Logger
	Keys     []config.SigningKey

	wellKnown http.Handler
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
	if err := n.openFederation(); err != nil {
		st.Close()
		return nil, err
	}
	return n, nil
}

// openFederation builds discovery (both ways) and the federation transport.
func (n *Node) openFederation() error {
	cfg := n.Config
	var roots *x509.CertPool
	if f := cfg.Federation.TrustCAFile; f != "" {
		var err error
		if roots, err = federation.LoadRootCAs(cfg.Path(f)); err != nil {
			return fmt.Errorf("federation.trust_ca_file: %w", err)
		}
	}
	var err error
	n.Resolver, err = wellknown.New(wellknown.Options{RootCAs: roots, AllowPrivate: cfg.Federation.AllowPrivateAddresses, Logger: n.Log})
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	if n.wellKnown, err = wellknown.NewHandler(wellknown.Discovery{Server: cfg.WellKnownServer, HomeserverBaseURL: cfg.PublicBaseURL}); err != nil {
		return fmt.Errorf("well_known_server: %w", err)
	}
	n.Fed, err = federation.New(federation.Deps{Config: cfg, Store: n.Store, Keys: n.Keys, Resolver: n.Resolver,
		RootCAs: roots, Log: n.Log, Version: Version})
	if err != nil {
		return err
	}
	n.Rooms.GetKey = n.Fed.Keyring.GetKey
	n.Fed.ACLSource = federation.RoomACLSource(n.Store, n.Rooms)
	return nil
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

// Handler serves every API of the node: discovery, the server-server API
// (with its own body limits and X-Matrix auth) and the client API.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/.well-known/matrix/", n.wellKnown)
	fed := n.Fed.Handler()
	mux.Handle("/_matrix/federation/", fed)
	mux.Handle("/_matrix/key/", fed)
	mux.Handle("/", n.Client.Handler())
	return mux
}

// Serve serves on ln until ctx is done, then shuts down gracefully.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	if err := n.Fed.Start(); err != nil {
		return err
	}
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

// Close stops federation's background work, then releases the store.
func (n *Node) Close() error {
	n.Fed.Close()
	return n.Store.Close()
}
