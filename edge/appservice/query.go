package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// queryClient asks application services about users and aliases; a short
// timeout, since a client request waits on the answer.
var queryClient = &http.Client{Timeout: 10 * time.Second}

// QueryAlias asks the services whose aliases namespaces hold alias
// whether it exists (GET /_matrix/app/v1/rooms/{alias}); an AS answering
// 200 has just created it, so the caller looks it up again.
func (s *Set) QueryAlias(ctx context.Context, alias string) bool {
	return s.query(ctx, "rooms", alias, (*Registration).InterestedInAlias)
}

// maxPingBody bounds the AS answer a failed ping reports back.
const maxPingBody = 4096

// Ping calls the AS's POST /_matrix/app/v1/ping with txnID (if any) and
// returns its status and (the start of) its body.
func (s *Set) Ping(ctx context.Context, r *Registration, txnID string) (int, []byte, error) {
	payload := map[string]any{}
	if txnID != "" {
		payload["transaction_id"] = txnID
	}
	data, _ := json.Marshal(payload)
	u := strings.TrimSuffix(r.URL, "/") + "/_matrix/app/v1/ping"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.HSToken)
	resp, err := queryClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxPingBody))
	return resp.StatusCode, body, nil
}

func (s *Set) query(ctx context.Context, kind, id string, in func(*Registration, string) bool) bool {
	if s == nil {
		return false
	}
	for _, r := range s.Regs {
		if r.URL == "" || !in(r, id) {
			continue
		}
		u := strings.TrimSuffix(r.URL, "/") + "/_matrix/app/v1/" + kind + "/" + url.PathEscape(id)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			continue
		}
		req.Header.Set("Authorization", "Bearer "+r.HSToken)
		resp, err := queryClient.Do(req)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return true
		}
	}
	return false
}
