package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

// KV namespaces of the durable queue: events waiting per AS (key
// "<as id>/<event NID>") and the one transaction in flight per AS, kept
// until the AS accepts it so a restart resends it with the same ID.
const (
	nsQueue    = "appservice.queue"
	nsInflight = "appservice.inflight"
	nsTxnSeq   = "appservice.txnseq"
	maxBatch   = 100
)

// Options configure a Pusher.
type Options struct {
	Store *store.Store
	Rooms *room.Service
	Regs  []*Registration
	Log   *slog.Logger
	// Client sends the transactions (nil: one with a 30s timeout). AS URLs
	// come from the operator's registration files, so private addresses
	// (a bridge on loopback) are allowed.
	Client *http.Client
	// Backoff bounds between failed attempts (defaults 1s and 5m).
	MinBackoff, MaxBackoff time.Duration
	// MaxEphemeral caps each AS's queue of ephemeral events and to-device
	// messages (default DefaultMaxEphemeral).
	MaxEphemeral int
}

// Pusher delivers events to application services in transactions, in
// order, retrying with backoff; undelivered events survive restarts in
// the store.
type Pusher struct {
	o      Options
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   map[string]chan struct{}

	mu      sync.Mutex
	pending []*room.Event
	edus    []edu
	more    chan struct{}

	anyEphemeral bool // some AS asked for ephemeral data
	roomsMu      sync.Mutex
	rooms        map[string]map[string]bool // AS ID → rooms its users are joined to

	dropMu     sync.Mutex
	dropped    map[string]int       // AS ID → entries dropped since the last log line
	dropLogged map[string]time.Time // AS ID → when that line was written
}

// inflight is the transaction being sent; Extra holds its ephemeral and
// E2EE fields, frozen so that a resend is the same transaction.
type inflight struct {
	TxnID string                     `json:"txn_id"`
	NIDs  []uint64                   `json:"nids"`
	Extra map[string]json.RawMessage `json:"extra,omitempty"`
}

// NewPusher starts delivery to every registration with a URL; Close stops it.
func NewPusher(o Options) *Pusher {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Minute
	}
	if o.MaxEphemeral <= 0 {
		o.MaxEphemeral = DefaultMaxEphemeral
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pusher{o: o, cancel: cancel, wake: map[string]chan struct{}{}, more: make(chan struct{}, 1),
		rooms: map[string]map[string]bool{}, dropped: map[string]int{}, dropLogged: map[string]time.Time{}}
	needRooms := false
	for _, r := range o.Regs {
		if r.URL == "" {
			continue
		}
		p.anyEphemeral = p.anyEphemeral || r.Ephemeral()
		needRooms = needRooms || r.Ephemeral() || r.MSC3202
		ch := make(chan struct{}, 1)
		ch <- struct{}{} // deliver what a previous run left queued
		p.wake[r.ID] = ch
		p.wg.Add(1)
		go p.deliver(ctx, r, ch)
	}
	if needRooms {
		p.loadRooms()
	}
	p.wg.Add(1)
	go p.enqueueLoop(ctx)
	return p
}

// Close stops delivery; queued events stay in the store for the next start.
func (p *Pusher) Close() {
	p.cancel()
	p.wg.Wait()
}

// Submit hands a durable event over. It runs in the store's commit hook,
// so it only records the event; a goroutine queues it durably.
func (p *Pusher) Submit(ev *room.Event) {
	if len(p.wake) == 0 {
		return
	}
	p.mu.Lock()
	p.pending = append(p.pending, ev)
	p.mu.Unlock()
	select {
	case p.more <- struct{}{}:
	default:
	}
}

func (p *Pusher) enqueueLoop(ctx context.Context) {
	defer p.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.more:
		}
		p.mu.Lock()
		evs, edus := p.pending, p.edus
		p.pending, p.edus = nil, nil
		p.mu.Unlock()
		woken := map[string]bool{}
		err := p.o.Store.Write(func(tx *store.Tx) error {
			clear(woken)
			for _, ev := range evs {
				for _, r := range p.o.Regs {
					if p.wake[r.ID] == nil {
						continue
					}
					if ev.Type == "m.room.member" && ev.StateKey != nil {
						p.memberChange(tx, r, ev.RoomID, *ev.StateKey, ev.Membership())
					}
					if p.interested(tx, r, ev) {
						tx.PutKV(nsQueue, queueKey(r.ID, ev.NID), nil)
						woken[r.ID] = true
					}
				}
			}
			for _, e := range edus {
				for _, r := range p.o.Regs {
					if p.wake[r.ID] != nil && r.Ephemeral() && p.eduInterested(tx, r, e) {
						p.putEph(tx, r, false, e.raw)
					}
				}
			}
			return nil
		})
		if err != nil {
			p.o.Log.Error("appservice: queueing events", "err", err)
			continue
		}
		for id := range woken {
			select {
			case p.wake[id] <- struct{}{}:
			default:
			}
		}
	}
}

func queueKey(asID string, nid uint64) string { return fmt.Sprintf("%s/%020d", asID, nid) }

// interested: the spec's rule — the sender or state key is in the AS's
// users, the room in its rooms, or one of its users is in the room.
func (p *Pusher) interested(tx *store.Tx, r *Registration, ev *room.Event) bool {
	if r.InterestedInUser(ev.Sender) || (ev.StateKey != nil && r.InterestedInUser(*ev.StateKey)) || r.InterestedInRoom(ev.RoomID) {
		return true
	}
	return p.roomHasUser(tx, r, ev.RoomID)
}

// roomHasUser tells whether one of r's users is joined to roomID.
func (p *Pusher) roomHasUser(tx *store.Tx, r *Registration, roomID string) bool {
	rm, err := tx.Room(roomID)
	if err != nil {
		return false
	}
	st, err := p.o.Rooms.State(tx, rm.State)
	if err != nil {
		return false
	}
	found := false
	st.Each(func(key, nid uint64) bool {
		typ, sk, err := tx.StateKey(key)
		if err == nil && typ == "m.room.member" && r.InterestedInUser(sk) {
			if mev, err := p.o.Rooms.Event(tx, nid); err == nil && mev.Membership() == "join" {
				found = true
				return false
			}
		}
		return true
	})
	return found
}

// deliver sends r's queue, one transaction at a time, until ctx ends.
func (p *Pusher) deliver(ctx context.Context, r *Registration, wake chan struct{}) {
	defer p.wg.Done()
	backoff := time.Duration(0)
	for {
		if backoff == 0 {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
		} else {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		for {
			sent, err := p.sendOne(ctx, r)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				backoff = min(max(backoff*2, p.o.MinBackoff), p.o.MaxBackoff)
				p.o.Log.Warn("appservice: transaction failed", "as", r.ID, "err", err, "retry_in", backoff)
				break
			}
			backoff = 0
			if !sent {
				break
			}
		}
	}
}

// sendOne sends the transaction in flight, or makes one from the queue;
// false when there was nothing to send.
func (p *Pusher) sendOne(ctx context.Context, r *Registration) (bool, error) {
	var cur inflight
	var events []json.RawMessage
	err := p.o.Store.Write(func(tx *store.Tx) error {
		cur, events = inflight{}, nil
		if raw, err := tx.GetKV(nsInflight, r.ID); err == nil && json.Unmarshal(raw, &cur) == nil && cur.TxnID != "" {
			// resend as it was
		} else {
			cur.Extra = p.takeEphemeral(tx, r)
			var keys []string
			tx.ScanKV(nsQueue, r.ID+"/", func(k string, _ []byte) bool {
				nid, err := strconv.ParseUint(strings.TrimPrefix(k, r.ID+"/"), 10, 64)
				if err == nil {
					cur.NIDs = append(cur.NIDs, nid)
				}
				keys = append(keys, k)
				return len(keys) < maxBatch
			})
			if len(keys) == 0 && cur.Extra == nil {
				return nil
			}
			for _, k := range keys {
				tx.DeleteKV(nsQueue, k)
			}
			seq := uint64(0)
			if raw, err := tx.GetKV(nsTxnSeq, r.ID); err == nil {
				seq, _ = strconv.ParseUint(string(raw), 10, 64)
			}
			seq++
			tx.PutKV(nsTxnSeq, r.ID, []byte(strconv.FormatUint(seq, 10)))
			cur.TxnID = strconv.FormatInt(time.Now().UnixMilli(), 10) + "." + strconv.FormatUint(seq, 10)
			raw, _ := json.Marshal(cur)
			tx.PutKV(nsInflight, r.ID, raw)
		}
		for _, nid := range cur.NIDs {
			ev, err := p.o.Rooms.Event(tx, nid)
			if err != nil {
				continue // gone (purged): nothing to send for it
			}
			raw, err := json.Marshal(ev.Client())
			if err != nil {
				return err
			}
			events = append(events, raw)
		}
		return nil
	})
	if err != nil || cur.TxnID == "" {
		return false, err
	}
	if err := p.put(ctx, r, cur.TxnID, events, cur.Extra); err != nil {
		return false, err
	}
	return true, p.o.Store.Write(func(tx *store.Tx) error {
		tx.DeleteKV(nsInflight, r.ID)
		return nil
	})
}

// put: PUT {url}/_matrix/app/v1/transactions/{txnId} with the hs_token.
func (p *Pusher) put(ctx context.Context, r *Registration, txnID string, events []json.RawMessage, extra map[string]json.RawMessage) error {
	if events == nil {
		events = []json.RawMessage{}
	}
	fields := map[string]any{"events": events}
	for k, v := range extra {
		fields[k] = v
	}
	body, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	u := strings.TrimSuffix(r.URL, "/") + "/_matrix/app/v1/transactions/" + url.PathEscape(txnID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.HSToken)
	resp, err := p.o.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}
