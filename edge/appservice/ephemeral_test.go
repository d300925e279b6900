package appservice

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"edge/edge/store"
)

// lockedBuffer is a log sink safe for the pusher's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestEphemeralCap: a service that is down keeps at most MaxEphemeral
// ephemeral entries queued; the oldest go, with a log line, and the rest
// arrive once it is back.
func TestEphemeralCap(t *testing.T) {
	var up atomic.Bool
	var mu sync.Mutex
	var bodies []map[string]json.RawMessage
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var body map[string]json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		bodies = append(bodies, body)
		mu.Unlock()
		_, _ = w.Write([]byte("{}"))
	}))
	defer srv.Close()

	r, err := Parse(fmt.Appendf(nil, `id: br
url: %s
as_token: AS
hs_token: HS
sender_localpart: brbot
receive_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@br_.*:test"
`, srv.URL), "test")
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "edge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	logs := &lockedBuffer{}
	p := NewPusher(Options{Store: st, Regs: []*Registration{r}, Log: slog.New(slog.NewTextHandler(logs, nil)),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxEphemeral: 3})
	defer p.Close()

	// Five messages in one write: two over the cap.
	took := 0
	err = st.Write(func(tx *store.Tx) error {
		took = 0
		for i := range 5 {
			if p.ToDevice(tx, "@alice:test", "m.test", "@br_a:test", "DEV", json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))) {
				took++
			}
		}
		// Not the service's user: left to the inbox.
		if p.ToDevice(tx, "@alice:test", "m.test", "@bob:test", "DEV", json.RawMessage(`{}`)) {
			took = -1
		}
		return nil
	})
	if err != nil || took != 5 {
		t.Fatalf("ToDevice took %d of 5 (%v)", took, err)
	}
	if !strings.Contains(logs.String(), "dropped the oldest entries\" as=br") {
		t.Errorf("no log line for the dropped entries: %s", logs.String())
	}
	up.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	var got []int
	for time.Now().Before(deadline) && len(got) < 3 {
		got = got[:0]
		mu.Lock()
		for _, b := range bodies {
			var msgs []struct {
				Content    struct{ N int } `json:"content"`
				ToUserID   string          `json:"to_user_id"`
				ToDeviceID string          `json:"to_device_id"`
			}
			_ = json.Unmarshal(b["to_device"], &msgs)
			for _, m := range msgs {
				if m.ToUserID == "@br_a:test" && m.ToDeviceID == "DEV" {
					got = append(got, m.Content.N)
				}
			}
		}
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	if fmt.Sprint(got) != "[2 3 4]" {
		t.Fatalf("delivered %v, want the newest three [2 3 4]", got)
	}
}
