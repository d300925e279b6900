package federation

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"edge/edge/store"
)

// Store namespaces of the outbound queues.
const (
	// kvQueue holds queued items, keyed "<destination> <seq as 16 hex digits>",
	// so a prefix scan yields one destination's items in order.
	kvQueue = "federation.queue"
	// kvQueueMeta holds each destination's next sequence number.
	kvQueueMeta = "federation.queue.meta"
	// kvQueueTxn holds each destination's transaction in flight: resent
	// as it was (same txnId, same body) after a failure or a restart, so
	// the receiver's deduplication sees a retry, never a new transaction.
	kvQueueTxn = "federation.queue.txn"
)

// scanCap bounds the items looked at to fill one transaction.
const scanCap = 4096

type queueItem struct {
	Kind string          `json:"k"` // "p" PDU, "e" EDU
	Data json.RawMessage `json:"d"`
}

type queueMeta struct {
	Next uint64 `json:"next"`
}

type inflight struct {
	TxnID string          `json:"txn_id"`
	Keys  []string        `json:"keys"`
	Body  json.RawMessage `json:"body"`
	PDUs  int             `json:"pdus"`
	EDUs  int             `json:"edus"`
}

// Queue sends PDUs and EDUs to other servers in transactions: per
// destination, in order, one transaction in flight, retried with
// exponential backoff and jitter. Items are in the store from the moment
// they are queued until the destination has accepted them, so they survive
// a restart.
type Queue struct {
	origin   string
	client   *Client
	store    *store.Store
	limit    int
	minRetry time.Duration
	maxRetry time.Duration
	log      *slog.Logger
	now      func() time.Time

	mu    sync.Mutex
	ctx   context.Context // nil until start: items queue up, nothing is sent
	dests map[string]*destQueue
	wg    sync.WaitGroup
}

// destQueue is the in-memory state of one destination.
type destQueue struct {
	running bool
	kick    chan struct{} // new items
	wake    chan struct{} // the destination is up: stop backing off

	inFlight         bool
	failures         int
	retryAt          time.Time
	lastErr          string
	lastSuccess      time.Time
	lastLatency      time.Duration // of the last accepted transaction
	txns, pdus, edus uint64
	dropped          uint64
}

func newQueue(origin string, client *Client, st *store.Store, limit int, minRetry, maxRetry time.Duration, log *slog.Logger) *Queue {
	return &Queue{
		origin: origin, client: client, store: st, limit: limit, minRetry: minRetry, maxRetry: maxRetry,
		log: log, now: time.Now, dests: map[string]*destQueue{},
	}
}

func itemKey(dest string, seq uint64) string { return fmt.Sprintf("%s %016x", dest, seq) }

func itemSeq(key string) uint64 {
	_, hex, _ := strings.Cut(key, " ")
	n, _ := strconv.ParseUint(hex, 16, 64)
	return n
}

// SendPDU queues pdu for each destination (this server excepted) in one
// durable write.
func (q *Queue) SendPDU(destinations []string, pdu json.RawMessage) error {
	return q.store.Write(func(tx *store.Tx) error {
		q.SendPDUTx(tx, destinations, pdu)
		return nil
	})
}

// SendEDU queues an EDU for destination in one durable write.
func (q *Queue) SendEDU(destination string, edu EDU) error {
	return q.store.Write(func(tx *store.Tx) error {
		q.SendEDUTx(tx, destination, edu)
		return nil
	})
}

// SendPDUTx queues pdu inside the caller's transaction (the one that
// stores the event, so an event is never stored but not queued); sending
// starts when it commits.
func (q *Queue) SendPDUTx(tx *store.Tx, destinations []string, pdu json.RawMessage) {
	for _, d := range destinations {
		if d != q.origin {
			q.enqueue(tx, d, queueItem{Kind: "p", Data: pdu})
		}
	}
}

// SendEDUTx queues an EDU inside the caller's transaction.
func (q *Queue) SendEDUTx(tx *store.Tx, destination string, edu EDU) {
	if destination == q.origin {
		return
	}
	data, _ := json.Marshal(edu)
	q.enqueue(tx, destination, queueItem{Kind: "e", Data: data})
}

func (q *Queue) enqueue(tx *store.Tx, dest string, it queueItem) {
	var meta queueMeta
	if raw, err := tx.GetKV(kvQueueMeta, dest); err == nil {
		_ = json.Unmarshal(raw, &meta)
	}
	seq := meta.Next
	meta.Next++
	data, _ := json.Marshal(it)
	tx.PutKV(kvQueue, itemKey(dest, seq), data)
	m, _ := json.Marshal(meta)
	tx.PutKV(kvQueueMeta, dest, m)
	// Bounded queue: drop what is older than the newest limit items.
	var drop []string
	if seq >= uint64(q.limit) {
		threshold := seq - uint64(q.limit)
		tx.ScanKV(kvQueue, dest+" ", func(key string, _ []byte) bool {
			if itemSeq(key) > threshold {
				return false
			}
			drop = append(drop, key)
			return true
		})
		for _, k := range drop {
			tx.DeleteKV(kvQueue, k)
		}
	}
	dropped := len(drop)
	tx.OnCommit(func() {
		if dropped > 0 {
			q.mu.Lock()
			q.dest(dest).dropped += uint64(dropped)
			q.mu.Unlock()
			q.log.Info("federation queue full: dropped the oldest items", "destination", dest, "dropped", dropped)
		}
		q.kick(dest)
	})
}

// dest returns destination state; q.mu must be held.
func (q *Queue) dest(name string) *destQueue {
	dq := q.dests[name]
	if dq == nil {
		dq = &destQueue{kick: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
		q.dests[name] = dq
	}
	return dq
}

// kick makes sure a worker is sending to dest.
func (q *Queue) kick(dest string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ctx == nil || q.ctx.Err() != nil {
		return
	}
	dq := q.dest(dest)
	if !dq.running {
		dq.running = true
		q.wg.Add(1)
		go q.run(q.ctx, dest, dq)
		return
	}
	select {
	case dq.kick <- struct{}{}:
	default:
	}
}

// Wake tells the queue that destination is up (it sent us a request or
// answered one): a worker waiting out a backoff retries at once.
func (q *Queue) Wake(destination string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	dq := q.dests[destination]
	if dq == nil || dq.failures == 0 {
		return
	}
	dq.failures, dq.retryAt = 0, time.Time{}
	select {
	case dq.wake <- struct{}{}:
	default:
	}
}

// start begins sending, first to every destination with items left from
// before.
func (q *Queue) start(ctx context.Context) error {
	q.mu.Lock()
	q.ctx = ctx
	q.mu.Unlock()
	pending := map[string]bool{}
	err := q.store.View(func(tx *store.Tx) error {
		tx.ScanKV(kvQueueMeta, "", func(dest string, _ []byte) bool {
			tx.ScanKV(kvQueue, dest+" ", func(string, []byte) bool {
				pending[dest] = true
				return false
			})
			if _, err := tx.GetKV(kvQueueTxn, dest); err == nil {
				pending[dest] = true
			}
			return true
		})
		return nil
	})
	if err != nil {
		return err
	}
	for dest := range pending {
		q.kick(dest)
	}
	return nil
}

func (q *Queue) wait() { q.wg.Wait() }

// run is the worker of one destination: it sends transactions until the
// queue is empty, then exits.
func (q *Queue) run(ctx context.Context, dest string, dq *destQueue) {
	defer q.wg.Done()
	stopped := func() {
		q.mu.Lock()
		dq.running, dq.inFlight = false, false
		q.mu.Unlock()
	}
	for {
		if ctx.Err() != nil {
			stopped()
			return
		}
		fl, err := q.nextTxn(dest)
		if err == nil && fl == nil {
			q.mu.Lock()
			select {
			case <-dq.kick: // items arrived while we looked
				q.mu.Unlock()
				continue
			default:
			}
			dq.running, dq.inFlight = false, false
			q.mu.Unlock()
			return
		}
		if err == nil {
			q.mu.Lock()
			dq.inFlight = true
			q.mu.Unlock()
			var resp struct {
				PDUs map[string]pduResult `json:"pdus"`
			}
			sent := q.now()
			err = q.client.Put(ctx, dest, "/_matrix/federation/v1/send/"+url.PathEscape(fl.TxnID), fl.Body, &resp)
			latency := q.now().Sub(sent)
			if err == nil || permanent(err) {
				if err != nil {
					q.log.Warn("transaction refused; dropping it", "destination", dest, "txn_id", fl.TxnID, "pdus", fl.PDUs, "edus", fl.EDUs, "err", err)
				}
				for id, r := range resp.PDUs {
					if r.Error != "" {
						q.log.Debug("destination rejected a PDU", "destination", dest, "event_id", id, "error", r.Error)
					}
				}
				if cerr := q.complete(dest, fl); cerr != nil {
					err = cerr
				} else {
					q.mu.Lock()
					dq.inFlight, dq.failures, dq.retryAt, dq.lastErr = false, 0, time.Time{}, ""
					dq.lastSuccess, dq.lastLatency = q.now(), latency
					dq.txns++
					dq.pdus += uint64(fl.PDUs)
					dq.edus += uint64(fl.EDUs)
					q.mu.Unlock()
					continue
				}
			}
		}
		if ctx.Err() != nil {
			stopped()
			return
		}
		q.mu.Lock()
		dq.inFlight = false
		dq.failures++
		wait := q.backoff(dq.failures)
		dq.retryAt, dq.lastErr = q.now().Add(wait), err.Error()
		failures := dq.failures
		q.mu.Unlock()
		q.log.Info("transaction failed; backing off", "destination", dest, "failures", failures, "retry_in", wait.Round(time.Second), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			stopped()
			return
		case <-t.C:
		case <-dq.wake:
			t.Stop()
		}
	}
}

// backoff is minRetry doubled per failure, capped at maxRetry, with jitter
// (a random half of it) so that many queues do not retry in step.
func (q *Queue) backoff(failures int) time.Duration {
	d := q.minRetry << min(failures-1, 30)
	if d <= 0 || d > q.maxRetry {
		d = q.maxRetry
	}
	return d/2 + rand.N(d/2+1)
}

// permanent reports whether a failed transaction would fail again as it
// is: a 4xx other than timeout and rate limiting.
func permanent(err error) bool {
	var re *RemoteError
	if errors.As(err, &re) {
		return re.Status >= 400 && re.Status < 500 && re.Status != http.StatusRequestTimeout && re.Status != http.StatusTooManyRequests
	}
	return errors.Is(err, ErrSelf)
}

// nextTxn returns the transaction to send to dest: the one in flight, or
// a new one of the oldest items (≤50 PDUs, ≤100 EDUs, each kind in order),
// recorded before it is sent. nil when nothing is queued.
func (q *Queue) nextTxn(dest string) (*inflight, error) {
	var fl *inflight
	var queued bool
	err := q.store.View(func(tx *store.Tx) error {
		if raw, err := tx.GetKV(kvQueueTxn, dest); err == nil {
			fl = new(inflight)
			return json.Unmarshal(raw, fl)
		}
		tx.ScanKV(kvQueue, dest+" ", func(string, []byte) bool {
			queued = true
			return false
		})
		return nil
	})
	if err != nil || fl != nil || !queued {
		return fl, err
	}
	err = q.store.Write(func(tx *store.Tx) error {
		fl = nil
		pdus, edus := []json.RawMessage{}, []json.RawMessage{}
		var keys, bad []string
		scanned := 0
		tx.ScanKV(kvQueue, dest+" ", func(key string, v []byte) bool {
			scanned++
			var it queueItem
			if json.Unmarshal(v, &it) != nil {
				bad = append(bad, key)
				return true
			}
			switch {
			case it.Kind == "p" && len(pdus) < maxTxnPDUs:
				pdus = append(pdus, it.Data)
				keys = append(keys, key)
			case it.Kind == "e" && len(edus) < maxTxnEDUs:
				edus = append(edus, it.Data)
				keys = append(keys, key)
			}
			return scanned < scanCap && (len(pdus) < maxTxnPDUs || len(edus) < maxTxnEDUs)
		})
		for _, k := range bad {
			tx.DeleteKV(kvQueue, k)
		}
		if len(keys) == 0 {
			return nil
		}
		body := map[string]any{"origin": q.origin, "origin_server_ts": q.now().UnixMilli(), "pdus": pdus}
		if len(edus) > 0 {
			body["edus"] = edus
		}
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		fl = &inflight{TxnID: newTxnID(q.now()), Keys: keys, Body: raw, PDUs: len(pdus), EDUs: len(edus)}
		rec, _ := json.Marshal(fl)
		tx.PutKV(kvQueueTxn, dest, rec)
		return nil
	})
	return fl, err
}

// complete forgets a transaction the destination has answered.
func (q *Queue) complete(dest string, fl *inflight) error {
	return q.store.Write(func(tx *store.Tx) error {
		for _, k := range fl.Keys {
			tx.DeleteKV(kvQueue, k)
		}
		tx.DeleteKV(kvQueueTxn, dest)
		return nil
	})
}

// newTxnID is unique per sender: time plus randomness.
func newTxnID(now time.Time) string {
	var b [6]byte
	_, _ = crand.Read(b[:])
	return strconv.FormatInt(now.UnixMilli(), 36) + "-" + base64.RawURLEncoding.EncodeToString(b[:])
}

// DestinationStatus is the state of one destination's queue, for `edge
// status` and metrics.
type DestinationStatus struct {
	Destination string    `json:"destination"`
	Pending     int       `json:"pending"`
	InFlight    bool      `json:"in_flight"`
	Failures    int       `json:"failures"`
	RetryAt     time.Time `json:"retry_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	// LastLatencyMS is how long the last accepted transaction took, in
	// milliseconds (0 before one).
	LastLatencyMS    float64 `json:"last_latency_ms,omitempty"`
	SentTransactions uint64  `json:"sent_transactions"`
	SentPDUs         uint64  `json:"sent_pdus"`
	SentEDUs         uint64  `json:"sent_edus"`
	Dropped          uint64  `json:"dropped"`
}

// Status reports every destination with queued items or activity since start.
func (q *Queue) Status() []DestinationStatus {
	pending := map[string]int{}
	_ = q.store.View(func(tx *store.Tx) error {
		tx.ScanKV(kvQueue, "", func(key string, _ []byte) bool {
			dest, _, _ := strings.Cut(key, " ")
			pending[dest]++
			return true
		})
		return nil
	})
	q.mu.Lock()
	defer q.mu.Unlock()
	for name := range q.dests {
		if _, ok := pending[name]; !ok {
			pending[name] = 0
		}
	}
	out := make([]DestinationStatus, 0, len(pending))
	for name, n := range pending {
		st := DestinationStatus{Destination: name, Pending: n}
		if dq := q.dests[name]; dq != nil {
			st.InFlight, st.Failures, st.RetryAt, st.LastError, st.LastSuccess = dq.inFlight, dq.failures, dq.retryAt, dq.lastErr, dq.lastSuccess
			st.SentTransactions, st.SentPDUs, st.SentEDUs, st.Dropped = dq.txns, dq.pdus, dq.edus, dq.dropped
			st.LastLatencyMS = float64(dq.lastLatency.Microseconds()) / 1000
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	return out
}
