package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func statusOf(q *Queue, dest string) DestinationStatus {
	for _, s := range q.Status() {
		if s.Destination == dest {
			return s
		}
	}
	return DestinationStatus{}
}

func TestFederationQueueDeliversAfterOutage(t *testing.T) {
	a := startNode(t, nodeOpts{})
	bName := reservePort(t)
	const nPDU, nEDU = 120, 5
	for i := range nPDU {
		if err := a.srv.Queue.SendPDU([]string{bName, a.name}, fakePDU(fmt.Sprintf("$e%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range nEDU {
		if err := a.srv.Queue.SendEDU(bName, EDU{Type: "m.test", Content: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a first failed attempt", func() bool { return statusOf(a.srv.Queue, bName).Failures >= 1 })
	if st := statusOf(a.srv.Queue, bName); st.Pending != nPDU+nEDU {
		t.Fatalf("pending %d, want %d", st.Pending, nPDU+nEDU)
	}
	if st := statusOf(a.srv.Queue, a.name); st.Pending != 0 {
		t.Fatal("items were queued for ourselves")
	}

	rec := &recorder{}
	var inFlight, maxInFlight atomic.Int32
	startNode(t, nodeOpts{name: bName, setup: func(s *Server) {
		rec.hook(s)
		inner := s.OnPDUs
		s.OnPDUs = func(ctx context.Context, origin string, pdus []json.RawMessage) map[string]error {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for {
				m := maxInFlight.Load()
				if n <= m || maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(20 * time.Millisecond) // give a second transaction the chance to overlap
			return inner(ctx, origin, pdus)
		}
	}})
	eventually(t, "every PDU delivered", func() bool {
		pdus, edus, _ := rec.snapshot()
		return len(pdus) >= nPDU && len(edus) >= nEDU
	})
	time.Sleep(100 * time.Millisecond) // would anything arrive twice?
	pdus, edus, _ := rec.snapshot()
	if len(pdus) != nPDU || len(edus) != nEDU {
		t.Fatalf("delivered %d PDUs and %d EDUs, want %d and %d exactly once", len(pdus), len(edus), nPDU, nEDU)
	}
	for i, id := range pdus {
		if id != fmt.Sprintf("$e%03d", i) {
			t.Fatalf("PDU %d is %s: order not preserved", i, id)
		}
	}
	for i, e := range edus {
		if string(e.Content) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("EDU %d is %s: order not preserved", i, e.Content)
		}
	}
	rec.mu.Lock()
	sizes := rec.txnSizes
	rec.mu.Unlock()
	for _, n := range sizes {
		if n > maxTxnPDUs {
			t.Fatalf("a transaction carried %d PDUs", n)
		}
	}
	if maxInFlight.Load() != 1 {
		t.Fatalf("%d transactions were in flight at once, want 1", maxInFlight.Load())
	}
	eventually(t, "the queue to drain", func() bool {
		st := statusOf(a.srv.Queue, bName)
		return st.Pending == 0 && st.Failures == 0 && st.SentPDUs == nPDU && st.SentEDUs == nEDU
	})
}

func TestFederationQueueWake(t *testing.T) {
	// Backoff long enough that only Wake can explain a quick delivery.
	a := startNode(t, nodeOpts{retryMin: time.Minute, retryMax: time.Hour})
	bName := reservePort(t)
	if err := a.srv.Queue.SendPDU([]string{bName}, fakePDU("$wake")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a failed attempt", func() bool { return statusOf(a.srv.Queue, bName).Failures >= 1 })
	if st := statusOf(a.srv.Queue, bName); time.Until(st.RetryAt) < 20*time.Second {
		t.Fatalf("next retry in %s, want at least half the minimum interval", time.Until(st.RetryAt))
	}
	rec := &recorder{}
	b := startNode(t, nodeOpts{name: bName, setup: rec.hook})
	// b talks to a: a now knows b is up.
	if err := b.srv.Client.Put(ctxT(t), a.name, "/_matrix/federation/v1/send/hello", map[string]any{"pdus": []any{}}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the woken queue to deliver", func() bool {
		pdus, _, _ := rec.snapshot()
		return len(pdus) == 1 && pdus[0] == "$wake"
	})
}

func TestFederationQueueSurvivesRestart(t *testing.T) {
	var accept atomic.Bool
	var mu sync.Mutex
	var refused, accepted []string // txnIds
	rec := &recorder{}
	b := startNode(t, nodeOpts{setup: rec.hook, intercept: func(w http.ResponseWriter, r *http.Request) bool {
		id, ok := strings.CutPrefix(r.URL.Path, "/_matrix/federation/v1/send/")
		if !ok {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if accept.Load() {
			accepted = append(accepted, id)
			return false
		}
		refused = append(refused, id)
		writeError(w, newErr(http.StatusServiceUnavailable, "M_UNKNOWN", "down for the test"))
		return true
	}})
	a := startNode(t, nodeOpts{})
	for i := range 10 {
		if err := a.srv.Queue.SendPDU([]string{b.name}, fakePDU(fmt.Sprintf("$r%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a refused attempt", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(refused) > 0
	})
	a.stop() // a transaction is in flight, refused

	accept.Store(true)
	a2 := startNode(t, nodeOpts{dir: a.dir, name: a.name})
	eventually(t, "delivery after the sender's restart", func() bool {
		pdus, _, _ := rec.snapshot()
		return len(pdus) >= 10
	})
	time.Sleep(100 * time.Millisecond)
	pdus, _, _ := rec.snapshot()
	if len(pdus) != 10 {
		t.Fatalf("delivered %v, want each of 10 once", pdus)
	}
	mu.Lock()
	inFlight, resent := refused[len(refused)-1], accepted[0]
	mu.Unlock()
	if inFlight != resent {
		t.Fatalf("the transaction in flight (%s) was resent as %s after the restart: want the same txnId", inFlight, resent)
	}
	eventually(t, "the queue to drain", func() bool { return statusOf(a2.srv.Queue, b.name).Pending == 0 })
}

func TestFederationQueueBounded(t *testing.T) {
	a := startNode(t, nodeOpts{queueLimit: 10})
	bName := reservePort(t)
	for i := range 25 {
		if err := a.srv.Queue.SendPDU([]string{bName}, fakePDU(fmt.Sprintf("$q%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the queue to hold the newest 10", func() bool {
		st := statusOf(a.srv.Queue, bName)
		return st.Dropped >= 14 && st.Failures >= 1
	})
	rec := &recorder{}
	startNode(t, nodeOpts{name: bName, setup: rec.hook})
	eventually(t, "delivery", func() bool {
		return statusOf(a.srv.Queue, bName).Pending == 0 && statusOf(a.srv.Queue, bName).InFlight == false
	})
	time.Sleep(50 * time.Millisecond)
	pdus, _, _ := rec.snapshot()
	// One transaction may have been formed before the queue overflowed;
	// everything else is the newest items, in order, and nothing older.
	// The transaction in flight when the queue overflowed is resent as it
	// was; after it come only the newest 10, in order.
	if len(pdus) < 10 || len(pdus) > 25 {
		t.Fatalf("delivered %v, want the newest 10 after what was in flight", pdus)
	}
	head, tail := pdus[:len(pdus)-10], pdus[len(pdus)-10:]
	// The first transaction holds at most the queue's 10 items, in order;
	// which ones depends on how many had arrived (and been dropped) when
	// it was formed.
	if len(head) > 10 {
		t.Fatalf("delivered %v: the transaction in flight had more than the queue's 10 items", pdus)
	}
	var first int
	for i, id := range head {
		var n int
		if _, err := fmt.Sscanf(id, "$q%02d", &n); err != nil || (i > 0 && n != first+i) || n >= 15 {
			t.Fatalf("delivered %v: %s is neither in the first transaction nor among the newest 10", pdus, id)
		}
		if i == 0 {
			first = n
		}
	}
	for i, id := range tail {
		if id != fmt.Sprintf("$q%02d", 15+i) {
			t.Fatalf("delivered %v, want $q15..$q24 last", pdus)
		}
	}
}

func TestFederationQueueDropsRefusedTransactions(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	rec := &recorder{}
	b := startNode(t, nodeOpts{setup: rec.hook, intercept: func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") && refuse.Load() {
			refuse.Store(false)
			writeError(w, newErr(http.StatusBadRequest, "M_BAD_JSON", "refused by the test"))
			return true
		}
		return false
	}})
	a := startNode(t, nodeOpts{})
	if err := a.srv.Queue.SendPDU([]string{b.name}, fakePDU("$dropped")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the refused transaction to be dropped", func() bool {
		st := statusOf(a.srv.Queue, b.name)
		return st.Pending == 0 && st.SentTransactions == 1
	})
	if err := a.srv.Queue.SendPDU([]string{b.name}, fakePDU("$next")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the next transaction", func() bool {
		pdus, _, _ := rec.snapshot()
		return len(pdus) == 1 && pdus[0] == "$next"
	})
}
