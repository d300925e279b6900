package edge

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go/http3"

	"edge/edge/appservice"
	"edge/edge/client"
	"edge/edge/config"
	"edge/edge/notify"
	"edge/edge/pushgw"
	"edge/edge/room"
	"edge/edge/roomfed"
	"edge/edge/store"
	"edge/edge/tlsfiles"
	"edge/edge/tlsmode"
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
	// TLS is the certificate of the TLS listeners (client API and
	// federation), as tls.mode says; nil for mode off.
	TLS *tlsmode.Source

	wellKnown http.Handler
	push      *pushgw.Pusher
	// appServices pushes events to application services (nil: none).
	appServices *appservice.Pusher
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
	if st.Swept > 0 {
		log.Info("deleted the stored events of joins left unfinished by a killed process", "records", st.Swept)
	}
	certs, err := tlsmode.New(cfg, st, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	n := &Node{Config: cfg, Store: st, Log: log, Keys: keys, Notifier: notify.New(), TLS: certs}
	n.Typing = notify.NewTyping(n.Notifier)
	n.Rooms = room.New(room.Signer{ServerName: cfg.ServerName, KeyID: keys[0].ID, Key: keys[0].Priv},
		room.CacheSizes{
			StateSnapshots: cfg.Limits.StateCacheSize, StateEntries: cfg.Limits.StateCacheEntries,
			Events:       cfg.Limits.EventCacheSize,
			AuthChainIDs: cfg.Limits.AuthChainCacheEntries, Resolutions: cfg.Limits.ResolutionCacheSize,
		})
	n.Rooms.OnEvent = n.withPushGateway(n.onEvent)
	n.Client = client.New(client.Deps{Config: cfg, Store: st, Rooms: n.Rooms, Notifier: n.Notifier, Typing: n.Typing, Log: log})
	if err := n.attachAppServices(); err != nil {
		st.Close()
		return nil, err
	}
	if err := n.openFederation(); err != nil {
		if n.appServices != nil {
			n.appServices.Close()
		}
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
	n.Resolver, err = wellknown.New(wellknown.Options{Nameservers: cfg.Federation.Nameservers, RootCAs: roots,
		AllowPrivate: cfg.Federation.AllowPrivateAddresses, Logger: n.Log})
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
	if err := n.attachRoomFederation(); err != nil {
		return err
	}
	n.attachKeysFederation()
	n.attachEDUFederation()
	n.attachMediaFederation()
	return nil
}

// onEvent wakes the syncs an event concerns: the room's members, and for a
// membership change the target user, whose room list changed.
func (n *Node) onEvent(ev *room.Event) {
	keys := []string{notify.RoomKey(ev.RoomID)}
	if ev.Type == "m.room.member" && ev.StateKey != nil {
		keys = append(keys, notify.UserKey(*ev.StateKey))
		local := strings.HasSuffix(*ev.StateKey, ":"+n.Config.ServerName)
		if local && n.newJoin(ev) {
			// A write of its own: this runs inside the store's commit.
			go n.Client.AnnounceDevicesOnJoin(ev.RoomID, *ev.StateKey)
			go n.Client.CopyPushRulesOnJoin(ev.RoomID, *ev.StateKey)
		}
		if m := ev.Membership(); !local && (m == "leave" || m == "ban") {
			go n.Client.SweepRemoteDeviceLists()
		}
	}
	n.Notifier.Notify(keys...)
}

// newJoin tells whether a member event joins its user to the room (rather
// than keeping a join, as a display-name change does).
func (n *Node) newJoin(ev *room.Event) bool {
	if ev.Membership() != "join" || ev.StateBefore == 0 {
		return ev.Membership() == "join"
	}
	was := ""
	_ = n.Store.View(func(tx *store.Tx) error {
		st, err := n.Rooms.State(tx, ev.StateBefore)
		if err != nil {
			return err
		}
		if prev, _ := n.Rooms.StateEvent(tx, st, "m.room.member", *ev.StateKey); prev != nil {
			was = prev.Membership()
		}
		return nil
	})
	return was != "join"
}

// Handler serves every API of the node: discovery, the server-server API
// (with its own body limits and X-Matrix auth) and the client API.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/.well-known/matrix/", n.wellKnown)
	fed := n.Fed.Handler()
	mux.Handle("/_matrix/federation/", fed)
	mux.Handle("/_matrix/key/", fed)
	media := n.mediaHandler()
	mux.Handle("/_matrix/media/", media)
	mux.Handle("/_matrix/client/v1/media/", media)
	mux.Handle("/", n.Client.Handler())
	return n.instrument(mux)
}

// LoadCertificateFiles loads cfg's tls_cert_file and tls_key_file (for
// the federation listener), naming the setting at fault on error.
func LoadCertificateFiles(cfg *config.Config, log *slog.Logger) (*tlsfiles.Files, error) {
	return tlsmode.LoadFiles(cfg, log)
}

// Listeners are the sockets a node serves; nil ones are not served.
type Listeners struct {
	// Client gets plain HTTP: the client API, and federation too.
	Client net.Listener
	// Federation gets TLS with the node's certificate (tls.mode), and the
	// same APIs as Client.
	Federation net.Listener
	// TLS is the client API's TLS listener (tls.listen): the same as
	// Federation, on the port clients use (443).
	TLS net.Listener
	// ACMEHTTP is acme mode's plain port-80 listener: HTTP-01 challenges
	// and redirects to https.
	ACMEHTTP net.Listener
	// Metrics gets the admin endpoints of MetricsHandler.
	Metrics net.Listener
}

// Serve serves on ln (plain HTTP) until ctx is done, then shuts down
// gracefully.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	return n.ServeListeners(ctx, Listeners{Client: ln})
}

// ServeListeners starts federation's background work and serves on every
// listener in ls until ctx is done or one of them fails, then shuts all
// of them down gracefully. With tls.http3 on, each TLS listener gets an
// HTTP/3 server on the same UDP port, advertised with Alt-Svc.
func (n *Node) ServeListeners(ctx context.Context, ls Listeners) error {
	if (ls.Federation != nil || ls.TLS != nil || ls.ACMEHTTP != nil) && n.TLS == nil {
		return errors.New("federation_listen, tls.listen: need a certificate (tls.mode, or tls_cert_file and tls_key_file)")
	}
	if err := n.Fed.Start(); err != nil {
		return err
	}
	errLog := slog.NewLogLogger(n.Log.Handler(), slog.LevelDebug)
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: errLog}
	}
	type served struct {
		run  func() error
		stop func(context.Context) error // graceful; err DeadlineExceeded: then close
		kill func() error
	}
	var all []served
	serveHTTP := func(srv *http.Server, run func() error) {
		all = append(all, served{run, srv.Shutdown, srv.Close})
	}
	if ls.Client != nil {
		srv := newServer(n.Handler())
		serveHTTP(srv, func() error { return srv.Serve(ls.Client) })
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	n.TLS.Start(runCtx)
	// Delayed events (MSC4140) fire from here; wait for the loop before
	// the caller closes the store.
	delayedDone := make(chan struct{})
	go func() { defer close(delayedDone); n.Client.RunDelayedEvents(runCtx) }()
	defer func() { stopRun(); <-delayedDone }()
	for _, ln := range []net.Listener{ls.TLS, ls.Federation} {
		if ln == nil {
			continue
		}
		h := n.Handler()
		if n.Config.TLS.HTTP3 {
			if h3, alt, err := n.http3Server(ln.Addr().String()); err != nil {
				n.Log.Warn("HTTP/3 not served; TCP only", "addr", ln.Addr().String(), "err", err)
			} else {
				h = withAltSvc(h, alt)
				all = append(all, served{h3.run, h3.srv.Shutdown, func() error { return h3.srv.Close() }})
				defer h3.pc.Close()
			}
		}
		srv := newServer(h)
		srv.TLSConfig = n.TLS.TLSConfig()
		serveHTTP(srv, func() error { return srv.ServeTLS(ln, "", "") })
	}
	if ls.ACMEHTTP != nil {
		port := ""
		if ls.TLS != nil {
			_, port, _ = net.SplitHostPort(ls.TLS.Addr().String())
		}
		srv := newServer(n.TLS.HTTPHandler(port))
		serveHTTP(srv, func() error { return srv.Serve(ls.ACMEHTTP) })
	}
	if ls.Metrics != nil {
		srv := newServer(n.MetricsHandler())
		serveHTTP(srv, func() error { return srv.Serve(ls.Metrics) })
	}
	errc := make(chan error, len(all))
	for _, s := range all {
		go func() { errc <- s.run() }()
	}
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if serr := s.stop(shutdown); errors.Is(serr, context.DeadlineExceeded) {
				_ = s.kill() // long-polls outlived the grace period
			}
		}()
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// h3Server is an HTTP/3 server on its UDP socket.
type h3Server struct {
	srv *http3.Server
	pc  net.PacketConn
	run func() error
}

// http3Server opens UDP on addr (a TLS listener's address) and returns
// the HTTP/3 server for it and the Alt-Svc value advertising it.
func (n *Node) http3Server(addr string) (*h3Server, string, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, "", err
	}
	_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	srv := &http3.Server{Handler: n.Handler(), TLSConfig: http3.ConfigureTLSConfig(n.TLS.TLSConfig()),
		IdleTimeout: 2 * time.Minute, Logger: n.Log}
	return &h3Server{srv: srv, pc: pc, run: func() error { return srv.Serve(pc) }},
		fmt.Sprintf(`h3=":%s"; ma=86400`, port), nil
}

// withAltSvc advertises HTTP/3 on TCP answers (RFC 7838).
func withAltSvc(h http.Handler, value string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor < 3 {
			w.Header().Set("Alt-Svc", value)
		}
		h.ServeHTTP(w, r)
	})
}

// Run listens on the configured addresses and serves until ctx is done.
func (n *Node) Run(ctx context.Context) error {
	cfg := n.Config
	var ls Listeners
	var opened []net.Listener
	listen := func(field, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		opened = append(opened, ln)
		return ln, nil
	}
	var err error
	if ls.Client, err = listen("listen", cfg.Listen); err != nil {
		return err
	}
	attrs := []any{"server_name", cfg.ServerName, "listen", ls.Client.Addr().String(), "version", Version}
	if addr := cfg.FederationAddr(); addr != "" {
		if ls.Federation, err = listen("federation_listen", addr); err != nil {
			return err
		}
		attrs = append(attrs, "federation_listen", ls.Federation.Addr().String())
	}
	if addr := cfg.TLSListenAddr(); addr != "" {
		if ls.TLS, err = listen("tls.listen", addr); err != nil {
			return err
		}
		attrs = append(attrs, "tls.listen", ls.TLS.Addr().String())
	}
	if addr := cfg.TLS.ACME.HTTPListen; addr != "" && cfg.TLSMode() == config.TLSACME {
		if ls.ACMEHTTP, err = listen("tls.acme.http_listen", addr); err != nil {
			return err
		}
		attrs = append(attrs, "tls.acme.http_listen", ls.ACMEHTTP.Addr().String())
	}
	if n.TLS != nil {
		attrs = append(attrs, "tls.mode", n.TLS.Mode, "http3", cfg.TLS.HTTP3)
	}
	if cfg.MetricsListen != "" {
		if ls.Metrics, err = listen("metrics_listen", cfg.MetricsListen); err != nil {
			return err
		}
		attrs = append(attrs, "metrics_listen", ls.Metrics.Addr().String())
	}
	n.startAdmin(ctx)
	n.Log.Info("edge is serving", attrs...)
	return n.ServeListeners(ctx, ls)
}

// MetricsHandler serves the admin endpoints of metrics_listen:
// GET /metrics, the federation queues per destination in the Prometheus
// text exposition format, and GET /federation/queues, the same as JSON.
func (n *Node) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write([]byte(queueMetrics(n.Fed.Queue.Status()) + n.extraMetrics() + roomfed.PartialMetrics()))
	})
	mux.HandleFunc("GET /federation/queues", func(w http.ResponseWriter, r *http.Request) {
		body, err := json.Marshal(map[string]any{"destinations": n.Fed.Queue.Status()})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	return mux
}

// queueMetrics renders queue status in the Prometheus text format, one
// series per destination and metric.
func queueMetrics(dests []federation.DestinationStatus) string {
	var b strings.Builder
	family := func(name, typ, help string, value func(d federation.DestinationStatus) (float64, bool)) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, d := range dests {
			if v, ok := value(d); ok {
				fmt.Fprintf(&b, "%s{destination=\"%s\"} %s\n", name, labelEscaper.Replace(d.Destination), strconv.FormatFloat(v, 'f', -1, 64))
			}
		}
	}
	num := func(f func(d federation.DestinationStatus) float64) func(federation.DestinationStatus) (float64, bool) {
		return func(d federation.DestinationStatus) (float64, bool) { return f(d), true }
	}
	stamp := func(f func(d federation.DestinationStatus) time.Time) func(federation.DestinationStatus) (float64, bool) {
		return func(d federation.DestinationStatus) (float64, bool) {
			t := f(d)
			return float64(t.UnixMilli()) / 1000, !t.IsZero()
		}
	}
	fmt.Fprintf(&b, "# HELP edge_federation_destinations Destinations with queued items or activity since start.\n"+
		"# TYPE edge_federation_destinations gauge\nedge_federation_destinations %d\n", len(dests))
	family("edge_federation_queue_pending", "gauge", "PDUs and EDUs queued for the destination.",
		num(func(d federation.DestinationStatus) float64 { return float64(d.Pending) }))
	family("edge_federation_queue_in_flight", "gauge", "1 while a transaction to the destination is being sent.",
		num(func(d federation.DestinationStatus) float64 {
			if d.InFlight {
				return 1
			}
			return 0
		}))
	family("edge_federation_queue_failures", "gauge", "Consecutive failed transactions (0 once the destination answers).",
		num(func(d federation.DestinationStatus) float64 { return float64(d.Failures) }))
	family("edge_federation_queue_retry_timestamp_seconds", "gauge", "When the next attempt is due, for a destination backing off.",
		stamp(func(d federation.DestinationStatus) time.Time { return d.RetryAt }))
	family("edge_federation_queue_last_success_timestamp_seconds", "gauge", "When the destination last accepted a transaction.",
		stamp(func(d federation.DestinationStatus) time.Time { return d.LastSuccess }))
	family("edge_federation_sent_transactions_total", "counter", "Transactions the destination accepted since start.",
		num(func(d federation.DestinationStatus) float64 { return float64(d.SentTransactions) }))
	family("edge_federation_sent_pdus_total", "counter", "PDUs the destination accepted since start.",
		num(func(d federation.DestinationStatus) float64 { return float64(d.SentPDUs) }))
	family("edge_federation_sent_edus_total", "counter", "EDUs the destination accepted since start.",
		num(func(d federation.DestinationStatus) float64 { return float64(d.SentEDUs) }))
	family("edge_federation_queue_dropped_total", "counter", "Items dropped since start because the queue was full.",
		num(func(d federation.DestinationStatus) float64 { return float64(d.Dropped) }))
	return b.String()
}

// labelEscaper escapes a Prometheus label value.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// Close stops federation's background work, then releases the store.
func (n *Node) Close() error {
	if n.push != nil {
		n.push.Close() // stop deliveries before the store they read goes away
	}
	if n.appServices != nil {
		n.appServices.Close()
	}
	n.Fed.Close()
	return n.Store.Close()
}
