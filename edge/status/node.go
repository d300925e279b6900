package status

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"edge/federation"
)

// AdminStatusPath is the admin listener's endpoint for NodeStatus.
const AdminStatusPath = "/_edge/admin/status"

// AdminTokenFile is the file, beside the config file, holding the admin
// listener's bearer token (written by the node at start, mode 0600).
const AdminTokenFile = "admin.token"

// NodeStatus is the running node's health, as `edge status` without a
// SERVER shows it: GET /_edge/admin/status on the admin listener.
type NodeStatus struct {
	ServerName    string    `json:"server_name"`
	Version       string    `json:"version"`
	GoVersion     string    `json:"go_version"`
	StartedAt     time.Time `json:"started_at"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	// Users and Rooms are what the store holds: local accounts, and every
	// room the server knows (joined, left or invited).
	Users          int     `json:"users"`
	Rooms          int     `json:"rooms"`
	StoreSizeBytes int64   `json:"store_size_bytes"`
	StreamPosition uint64  `json:"stream_position"`
	LocalEvents    uint64  `json:"local_events"`
	RemoteEvents   uint64  `json:"remote_events"`
	Goroutines     int     `json:"goroutines"`
	HeapBytes      uint64  `json:"heap_bytes"`
	Caches         []Cache `json:"caches"`
	// Peers are the federation destinations, most troubled first.
	Peers []Peer `json:"peers"`
}

// Cache is one cache's counters since start.
type Cache struct {
	Name   string `json:"name"`
	Hits   uint64 `json:"hits"`
	Misses uint64 `json:"misses"`
	// HitRate is hits/(hits+misses), 0 before the first lookup.
	HitRate float64 `json:"hit_rate"`
	// Size is what it holds now, in the unit its budget counts (-1: not reported).
	Size int `json:"size"`
}

// Peer is this node's outbound queue to one destination, as the
// federation queue reports it, and how troubled it is.
type Peer struct {
	federation.DestinationStatus
	// Trouble is "ok", "backing off" (failing, retry scheduled), "failing",
	// "dropping" (queue overflowed) or "never reached" (sending, no success yet).
	Trouble string `json:"trouble"`
}

// troubleRank orders Trouble values, worst first.
var troubleRank = map[string]int{"dropping": 0, "backing off": 1, "failing": 2, "never reached": 3, "ok": 4}

// Classify sets p.Trouble from its counters.
func (p *Peer) Classify(now time.Time) {
	switch {
	case p.Dropped > 0:
		p.Trouble = "dropping"
	case p.Failures > 0 && p.RetryAt.After(now):
		p.Trouble = "backing off"
	case p.Failures > 0:
		p.Trouble = "failing"
	case p.LastSuccess.IsZero() && p.Pending > 0:
		p.Trouble = "never reached"
	default:
		p.Trouble = "ok"
	}
}

// SortPeers classifies peers and sorts them most troubled first: by
// Trouble, then more failures, more pending, then name.
func SortPeers(peers []Peer, now time.Time) {
	for i := range peers {
		peers[i].Classify(now)
	}
	slices.SortStableFunc(peers, func(a, b Peer) int {
		return cmp.Or(
			cmp.Compare(troubleRank[a.Trouble], troubleRank[b.Trouble]),
			cmp.Compare(b.Failures, a.Failures),
			cmp.Compare(b.Pending, a.Pending),
			strings.Compare(a.Destination, b.Destination))
	})
}

// ErrAdminUnauthorized is returned by FetchNodeStatus on HTTP 401: the
// token does not match the running node's (another node on that port, or
// a stale admin.token).
var ErrAdminUnauthorized = errors.New("the admin listener refused the token")

// FetchNodeStatus asks the admin listener at baseURL for the node's status.
func FetchNodeStatus(ctx context.Context, baseURL, token string) (*NodeStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(baseURL, "/")+AdminStatusPath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, ErrAdminUnauthorized
	case resp.StatusCode != http.StatusOK:
		return nil, &statusError{resp.StatusCode}
	}
	var ns NodeStatus
	if err := json.Unmarshal(body, &ns); err != nil {
		return nil, fmt.Errorf("admin status is not JSON: %w", err)
	}
	return &ns, nil
}

// WriteNodeText prints a node's status for people.
func WriteNodeText(w io.Writer, s *NodeStatus) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	p("edge %s (%s), server %s", s.Version, s.GoVersion, s.ServerName)
	p("  up %s (since %s)", (time.Duration(s.UptimeSeconds) * time.Second).String(), s.StartedAt.UTC().Format(time.RFC3339))
	p("  users %d, rooms %d, events %d local / %d remote since start", s.Users, s.Rooms, s.LocalEvents, s.RemoteEvents)
	p("  store %s, stream position %d; heap %s, %d goroutines", bytesText(s.StoreSizeBytes), s.StreamPosition, bytesText(int64(s.HeapBytes)), s.Goroutines)
	if len(s.Caches) > 0 {
		p("  caches:")
		for _, c := range s.Caches {
			rate := "-"
			if c.Hits+c.Misses > 0 {
				rate = fmt.Sprintf("%.1f%%", 100*c.HitRate)
			}
			p("    %-13s hit rate %6s (%d hits, %d misses), size %d", c.Name, rate, c.Hits, c.Misses, c.Size)
		}
	}
	if len(s.Peers) == 0 {
		p("  peers: none yet")
		return
	}
	p("  peers (most troubled first):")
	p("    %-32s %-13s %7s %8s %6s  %-20s  %s", "DESTINATION", "STATE", "PENDING", "FAILURES", "SENT", "LAST SUCCESS", "LAST ERROR / NEXT TRY")
	for _, pr := range s.Peers {
		last := "never"
		if !pr.LastSuccess.IsZero() {
			last = pr.LastSuccess.UTC().Format(time.RFC3339)
		}
		tail := pr.LastError
		if !pr.RetryAt.IsZero() {
			tail += " (next try " + pr.RetryAt.UTC().Format(time.RFC3339) + ")"
		}
		p("    %-32s %-13s %7d %8d %6d  %-20s  %s", pr.Destination, pr.Trouble, pr.Pending, pr.Failures, pr.SentTransactions, last,
			strings.ReplaceAll(strings.TrimSpace(tail), "\n", "; "))
	}
}

// bytesText is n in the largest binary unit under 1024.
func bytesText(n int64) string {
	f, units := float64(n), []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
