package edge

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"edge/edge/room"
	"edge/edge/status"
	"edge/edge/store"
)

// The admin listener (admin_listen) serves GET /_edge/admin/status for
// `edge status` without a SERVER. Unlike metrics_listen it is on by default,
// so it is authenticated: at start the node writes a fresh random token to
// admin.token beside its config file (mode 0600, readable by whoever may
// administer the node) and accepts only "Authorization: Bearer <token>".

// processStart is when this process started: uptime counts from here.
var processStart = time.Now()

// AdminTokenPath is where the node writes the admin listener's token.
func AdminTokenPath(dir string) string { return filepath.Join(dir, status.AdminTokenFile) }

// startAdmin opens admin_listen and serves it until ctx is done. A failure
// to listen is logged, not fatal: the admin listener is a convenience, and
// a second node on one machine must still start.
func (n *Node) startAdmin(ctx context.Context) {
	addr := n.Config.AdminListen
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		n.Log.Error("admin listener not started; `edge status` without a server will not reach this node", "admin_listen", addr, "err", err)
		return
	}
	go func() {
		if err := n.ServeAdmin(ctx, ln); err != nil {
			n.Log.Error("admin listener stopped", "err", err)
		}
	}()
}

// ServeAdmin writes a new admin token and serves the admin endpoints on
// ln until ctx is done.
func (n *Node) ServeAdmin(ctx context.Context, ln net.Listener) error {
	token, err := writeAdminToken(AdminTokenPath(n.Config.Dir))
	if err != nil {
		ln.Close()
		return fmt.Errorf("admin_listen: %w", err)
	}
	n.Log.Info("admin listener", "admin_listen", ln.Addr().String(), "token_file", AdminTokenPath(n.Config.Dir))
	srv := &http.Server{Handler: n.AdminHandler(token), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// writeAdminToken replaces the token file atomically with a fresh token,
// so a reader never sees half a token and a stale one stops working.
func writeAdminToken(path string) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	token := hex.EncodeToString(b[:])
	tmp, err := os.CreateTemp(filepath.Dir(path), ".admin.token-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", err
	}
	if _, err := tmp.WriteString(token + "\n"); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return token, os.Rename(tmp.Name(), path)
}

// AdminHandler serves GET /_edge/admin/status to requests bearing token.
func (n *Node) AdminHandler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+status.AdminStatusPath, func(w http.ResponseWriter, r *http.Request) {
		st, err := n.AdminStatus()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		body, err := json.Marshal(st)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="edge admin"`)
			http.Error(w, "admin token required (see admin.token beside edge.yaml)", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// AdminStatus collects the node's health.
func (n *Node) AdminStatus() (*status.NodeStatus, error) {
	now := time.Now()
	st := &status.NodeStatus{
		ServerName: n.Config.ServerName, Version: Version, GoVersion: runtime.Version(),
		StartedAt: processStart.UTC(), UptimeSeconds: int64(now.Sub(processStart).Seconds()),
		StoreSizeBytes: n.Store.Size(), StreamPosition: n.Store.Pos(),
		LocalEvents: room.Stats.LocalEvents.Load(), RemoteEvents: room.Stats.RemoteEvents.Load(),
		Goroutines: runtime.NumGoroutine(), Caches: []status.Cache{}, Peers: []status.Peer{},
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st.HeapBytes = ms.HeapAlloc
	err := n.Store.View(func(tx *store.Tx) error {
		if err := tx.Users(func(*store.User) bool { st.Users++; return true }); err != nil {
			return err
		}
		return tx.Rooms(func(*store.Room) bool { st.Rooms++; return true })
	})
	if err != nil {
		return nil, err
	}
	sizes := map[string]int{}
	for _, u := range n.Rooms.CacheUsage() {
		sizes[u.Name] = u.Size
	}
	rs := &room.Stats
	for _, c := range []struct {
		name string
		c    *room.CacheCounts
	}{{"event", &rs.EventCache}, {"state", &rs.StateCache}, {"auth_chain", &rs.AuthChainCache}, {"resolution", &rs.ResolutionCache}, {"power_levels", &rs.PowerLevelsCache}} {
		cs := status.Cache{Name: c.name, Hits: c.c.Hits.Load(), Misses: c.c.Misses.Load(), Size: -1}
		if total := cs.Hits + cs.Misses; total > 0 {
			cs.HitRate = float64(cs.Hits) / float64(total)
		}
		if s, ok := sizes[c.name]; ok {
			cs.Size = s
		}
		st.Caches = append(st.Caches, cs)
	}
	for _, d := range n.Fed.Queue.Status() {
		st.Peers = append(st.Peers, status.Peer{DestinationStatus: d})
	}
	status.SortPeers(st.Peers, now)
	return st, nil
}
