package federation

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

// kvTxns records answered inbound transactions, keyed "origin txnId", so
// a retried transaction gets the same answer without being processed again.
const kvTxns = "federation.txns"

// Transaction limits of the spec's "Transactions" section.
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
)

// txnKeep is how long an inbound transaction's answer is kept for
// deduplication; senders retry within minutes, not days.
const txnKeep = 24 * time.Hour

type txnRecord struct {
	TS       int64           `json:"ts"`
	Response json.RawMessage `json:"response"`
}

type pduResult struct {
	Error string `json:"error,omitempty"`
}

// serveSend answers PUT /_matrix/federation/v1/send/{txnId}: validates the
// transaction's shape and limits, answers a repeated (origin, txnId) from
// the record of the first, applies server ACLs per PDU and to room EDUs,
// hands PDUs to OnPDUs and EDUs to OnEDU, and answers {"pdus": {id: {error?}}}.
func (s *Server) serveSend(r *Request) (any, error) {
	if len(r.Body) == 0 {
		return nil, errNotJSON("a transaction body is required")
	}
	var t struct {
		PDUs []json.RawMessage `json:"pdus"`
		EDUs []json.RawMessage `json:"edus"`
	}
	if err := json.Unmarshal(r.Body, &t); err != nil {
		return nil, errBadJSON("transaction: %v", err)
	}
	if len(t.PDUs) > maxTxnPDUs || len(t.EDUs) > maxTxnEDUs {
		return nil, errBadJSON("a transaction carries at most %d PDUs and %d EDUs", maxTxnPDUs, maxTxnEDUs)
	}
	for _, p := range t.PDUs {
		var obj map[string]json.RawMessage
		if json.Unmarshal(p, &obj) != nil || obj == nil {
			return nil, errBadJSON("every PDU must be a JSON object")
		}
	}
	edus := make([]EDU, 0, len(t.EDUs))
	for _, raw := range t.EDUs {
		var e EDU
		if json.Unmarshal(raw, &e) != nil || e.Type == "" {
			return nil, errBadJSON("every EDU must be an object with an edu_type")
		}
		edus = append(edus, e)
	}
	origin, txnID := r.Origin, r.PathValue("txnId")
	key := origin + " " + txnID
	// The work outlives a sender that gives up waiting, so its retry finds
	// the answer recorded.
	work := context.WithoutCancel(r.Context())
	resp, err := s.txns.do(r.Context(), key, func() ([]byte, error) {
		var rec txnRecord
		err := s.store.View(func(tx *store.Tx) error {
			raw, err := tx.GetKV(kvTxns, key)
			if err != nil {
				return err
			}
			return json.Unmarshal(raw, &rec)
		})
		if err == nil {
			s.log.Debug("repeated transaction answered from its record", "origin", origin, "txn_id", txnID)
			return rec.Response, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		out, err := json.Marshal(map[string]any{"pdus": s.processTxn(work, origin, t.PDUs, edus)})
		if err != nil {
			return nil, err
		}
		data, _ := json.Marshal(txnRecord{TS: s.now().UnixMilli(), Response: out})
		if err := s.store.Write(func(tx *store.Tx) error {
			tx.PutKV(kvTxns, key, data)
			return nil
		}); err != nil {
			return nil, err
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	return json.RawMessage(resp), nil
}

// processTxn applies the ACLs and hands the transaction to the hooks.
func (s *Server) processTxn(ctx context.Context, origin string, pdus []json.RawMessage, edus []EDU) map[string]pduResult {
	results := map[string]pduResult{}
	var allowed []json.RawMessage
	for _, raw := range pdus {
		if id, denied := s.pduDenied(origin, raw); denied {
			if id != "" {
				results[id] = pduResult{Error: "the sending server is denied by the room's server ACL"}
			}
			continue
		}
		allowed = append(allowed, raw)
	}
	if len(allowed) > 0 && s.OnPDUs != nil {
		for id, err := range s.OnPDUs(ctx, origin, allowed) {
			var res pduResult
			if err != nil {
				res.Error = err.Error()
			}
			results[id] = res
		}
	}
	for _, e := range edus {
		e, ok := s.filterEDU(origin, e)
		switch fn := s.edus[e.Type]; {
		case !ok:
		case fn != nil:
			if err := fn(ctx, origin, e.Content); err != nil {
				// Debug, not Warn: a peer can send any number of bad EDUs.
				s.log.Debug("dropping EDU", "type", e.Type, "origin", origin, "err", err)
			}
		case s.OnEDU != nil:
			s.OnEDU(ctx, origin, e)
		}
	}
	return results
}

// pduDenied reports whether the ACL of the PDU's room denies origin and,
// if so, the PDU's event ID (computed for its room version) for the answer.
func (s *Server) pduDenied(origin string, raw json.RawMessage) (string, bool) {
	if s.ACLSource == nil {
		return "", false
	}
	var head struct {
		RoomID string `json:"room_id"`
	}
	if json.Unmarshal(raw, &head) != nil || head.RoomID == "" {
		return "", false
	}
	acl, version, err := s.ACLSource(head.RoomID)
	if err != nil {
		s.log.Warn("server ACL lookup failed", "room_id", head.RoomID, "err", err)
		return "", false // the room engine, reading the same state, will fail it
	}
	if acl == nil || ParseServerACL(acl).Allows(origin) {
		return "", false
	}
	ev, err := room.ParseEvent(version, raw, "")
	if err != nil {
		return "", true
	}
	return ev.ID, true
}

// filterEDU applies server ACLs to the EDUs that belong to a room: a
// typing notification for a denied room is dropped, and a receipt EDU
// loses the rooms the origin is denied in.
func (s *Server) filterEDU(origin string, e EDU) (EDU, bool) {
	switch e.Type {
	case "m.typing":
		var c struct {
			RoomID string `json:"room_id"`
		}
		if json.Unmarshal(e.Content, &c) == nil && c.RoomID != "" && s.ACLCheck(origin, c.RoomID) != nil {
			return e, false
		}
	case "m.receipt":
		var rooms map[string]json.RawMessage
		if json.Unmarshal(e.Content, &rooms) != nil {
			return e, true
		}
		kept := make(map[string]json.RawMessage, len(rooms))
		for roomID, v := range rooms {
			if s.ACLCheck(origin, roomID) == nil {
				kept[roomID] = v
			}
		}
		if len(kept) == 0 {
			return e, false
		}
		if len(kept) < len(rooms) {
			e.Content, _ = json.Marshal(kept)
		}
	}
	return e, true
}

// pruneTxns forgets inbound transaction answers older than txnKeep.
func (s *Server) pruneTxns() {
	cutoff := s.now().Add(-txnKeep).UnixMilli()
	var old []string
	_ = s.store.View(func(tx *store.Tx) error {
		tx.ScanKV(kvTxns, "", func(key string, v []byte) bool {
			var rec txnRecord
			if json.Unmarshal(v, &rec) != nil || rec.TS < cutoff {
				old = append(old, key)
			}
			return true
		})
		return nil
	})
	if len(old) == 0 {
		return
	}
	if err := s.store.Write(func(tx *store.Tx) error {
		for _, k := range old {
			tx.DeleteKV(kvTxns, k)
		}
		return nil
	}); err != nil {
		s.log.Warn("pruning inbound transaction records failed", "err", err)
	}
}
