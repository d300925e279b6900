package federation

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"edge/edge/config"
)

// Notary bounds: one query may name at most maxNotaryServers servers,
// fetched at most notaryFanOut at a time, and is answered within
// notaryDeadline (servers not fetched by then get what is stored).
const (
	maxNotaryServers = 100
	notaryFanOut     = 8
	notaryDeadline   = 20 * time.Second
	maxNotaryBody    = 256 << 10
)

// serveNotaryGet answers GET /_matrix/key/v2/query/{serverName}: the
// server's own key response with our signature added, fetched when what
// we hold is not valid until minimum_valid_until_ts (default now).
func (s *Server) serveNotaryGet(w http.ResponseWriter, r *http.Request) {
	minValid := s.now()
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			writeError(w, newErr(http.StatusBadRequest, "M_INVALID_PARAM", "minimum_valid_until_ts must be an integer"))
			return
		}
		minValid = time.UnixMilli(ms)
	}
	ctx, cancel := context.WithTimeout(r.Context(), notaryDeadline)
	defer cancel()
	out := []json.RawMessage{}
	if raw := s.notarise(ctx, r.PathValue("serverName"), nil, minValid); raw != nil {
		out = append(out, raw)
	}
	writeJSON(w, http.StatusOK, map[string]any{"server_keys": out})
}

// serveNotaryPost answers POST /_matrix/key/v2/query, the batch form:
// {"server_keys": {server: {keyID: {"minimum_valid_until_ts": ms}}}}.
func (s *Server) serveNotaryPost(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxNotaryBody))
	if err != nil {
		writeError(w, err)
		return
	}
	if !json.Valid(data) {
		writeError(w, errNotJSON("body is not JSON"))
		return
	}
	var q struct {
		ServerKeys map[string]map[string]struct {
			MinimumValidUntilTS *int64 `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if err := json.Unmarshal(data, &q); err != nil || q.ServerKeys == nil {
		writeError(w, errBadJSON("server_keys must be an object of server names to key criteria"))
		return
	}
	if len(q.ServerKeys) > maxNotaryServers {
		writeError(w, newErr(http.StatusBadRequest, "M_INVALID_PARAM", "at most %d servers per query", maxNotaryServers))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), notaryDeadline)
	defer cancel()
	servers := make([]string, 0, len(q.ServerKeys))
	for name := range q.ServerKeys {
		servers = append(servers, name)
	}
	sort.Strings(servers)
	results := make([]json.RawMessage, len(servers))
	sem := make(chan struct{}, notaryFanOut)
	var wg sync.WaitGroup
	for i, server := range servers {
		minValid := s.now()
		var keyIDs []string
		for keyID, c := range q.ServerKeys[server] {
			keyIDs = append(keyIDs, keyID)
			if c.MinimumValidUntilTS != nil && time.UnixMilli(*c.MinimumValidUntilTS).After(minValid) {
				minValid = time.UnixMilli(*c.MinimumValidUntilTS)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = s.notarise(ctx, server, keyIDs, minValid)
		}()
	}
	wg.Wait()
	out := []json.RawMessage{}
	for _, raw := range results {
		if raw != nil {
			out = append(out, raw)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"server_keys": out})
}

// notarise returns server's key response countersigned by our current
// keys, or nil when we have none and cannot get one.
func (s *Server) notarise(ctx context.Context, server string, keyIDs []string, minValid time.Time) json.RawMessage {
	if config.ValidateServerName(server) != nil || server == "" {
		return nil
	}
	raw, err := s.Keyring.notaryAnswer(ctx, server, keyIDs, minValid)
	if err != nil || raw == nil {
		if err != nil {
			s.log.Debug("notary: no keys to serve", "server", server, "err", err)
		}
		return nil
	}
	signed, err := signJSON(raw, s.name, s.own.current)
	if err != nil {
		s.log.Warn("notary: cannot countersign stored key response", "server", server, "err", err)
		return nil
	}
	return signed
}
