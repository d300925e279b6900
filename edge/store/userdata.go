package store

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// AccountData is one account-data entry (global when RoomID is empty).
type AccountData struct {
	RoomID  string          `json:"room_id,omitempty"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
	Pos     uint64          `json:"pos"`
	// Deleted marks an entry removed by DeleteAccountData: lookups report
	// ErrNotFound; streams carry it with empty content, which is how
	// MSC3391 says a deletion reaches clients.
	Deleted bool `json:"deleted,omitempty"`
}

// PutAccountData stores an entry at a new stream position and returns it.
func (t *Tx) PutAccountData(userID, roomID, evType string, content json.RawMessage) uint64 {
	pos := t.NextPos()
	putJSON(t.tx.Bucket(bAccountData), join(userID, roomID, evType),
		&AccountData{RoomID: roomID, Type: evType, Content: content, Pos: pos})
	must(t.tx.Bucket(bAccountStream).Put(append(prefix(userID), u64(pos)...), join(roomID, evType)))
	return pos
}

// DeleteAccountData removes an entry, leaving a tombstone at a new stream
// position; deleting a missing entry does nothing.
func (t *Tx) DeleteAccountData(userID, roomID, evType string) {
	if _, err := t.AccountData(userID, roomID, evType); err != nil {
		return
	}
	pos := t.NextPos()
	putJSON(t.tx.Bucket(bAccountData), join(userID, roomID, evType),
		&AccountData{RoomID: roomID, Type: evType, Content: json.RawMessage("{}"), Pos: pos, Deleted: true})
	must(t.tx.Bucket(bAccountStream).Put(append(prefix(userID), u64(pos)...), join(roomID, evType)))
}

// AccountData loads one entry.
func (t *Tx) AccountData(userID, roomID, evType string) (*AccountData, error) {
	var a AccountData
	if err := getJSON(t.tx.Bucket(bAccountData).Get(join(userID, roomID, evType)), &a); err != nil {
		return nil, err
	}
	if a.Deleted {
		return nil, ErrNotFound
	}
	return &a, nil
}

// AccountDataSince lists entries changed after since (all when since is 0),
// each once, at its newest value. An entry whose content is {} was deleted
// (MSC3391): the full list (since 0) leaves it out; a list of changes
// keeps it, so a client that had it learns it is gone.
func (t *Tx) AccountDataSince(userID string, since uint64) ([]*AccountData, error) {
	var out []*AccountData
	if since == 0 {
		p := prefix(userID)
		c := t.tx.Bucket(bAccountData).Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			var a AccountData
			if err := json.Unmarshal(v, &a); err != nil {
				return nil, err
			}
			if isEmptyObject(a.Content) {
				continue
			}
			out = append(out, &a)
		}
		return out, nil
	}
	seen := map[string]bool{}
	p := prefix(userID)
	c := t.tx.Bucket(bAccountStream).Cursor()
	for k, v := c.Seek(append(bytes.Clone(p), u64(since+1)...)); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if seen[string(v)] {
			continue
		}
		seen[string(v)] = true
		var a AccountData
		if err := getJSON(t.tx.Bucket(bAccountData).Get(append(prefix(userID), v...)), &a); err != nil {
			return nil, err
		}
		out = append(out, &a)
	}
	return out, nil
}

// Receipt is one user's receipt in a room.
type Receipt struct {
	RoomID   string `json:"room_id"`
	Type     string `json:"type"`
	UserID   string `json:"user_id"`
	ThreadID string `json:"thread_id,omitempty"`
	EventID  string `json:"event_id"`
	TS       int64  `json:"ts"`
	Pos      uint64 `json:"pos"`
}

// PutReceipt stores a receipt, replacing the user's previous one of that type and thread.
func (t *Tx) PutReceipt(r *Receipt) uint64 {
	r.Pos = t.NextPos()
	key := join(r.RoomID, r.Type, r.UserID, r.ThreadID)
	putJSON(t.tx.Bucket(bReceipts), key, r)
	must(t.tx.Bucket(bReceiptStream).Put(append(prefix(r.RoomID), u64(r.Pos)...), key))
	return r.Pos
}

// ReceiptsSince lists a room's receipts changed after since (all when 0).
func (t *Tx) ReceiptsSince(roomID string, since uint64) ([]*Receipt, error) {
	var out []*Receipt
	seen := map[string]bool{}
	p := prefix(roomID)
	c := t.tx.Bucket(bReceiptStream).Cursor()
	for k, v := c.Seek(append(bytes.Clone(p), u64(since+1)...)); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if seen[string(v)] {
			continue
		}
		seen[string(v)] = true
		var r Receipt
		if err := getJSON(t.tx.Bucket(bReceipts).Get(v), &r); err != nil {
			return nil, err
		}
		if r.Pos > since {
			out = append(out, &r)
		}
	}
	return out, nil
}

// Receipt loads one receipt.
func (t *Tx) Receipt(roomID, rType, userID, threadID string) (*Receipt, error) {
	var r Receipt
	if err := getJSON(t.tx.Bucket(bReceipts).Get(join(roomID, rType, userID, threadID)), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Txn returns the result stored for a client transaction ID.
func (t *Tx) Txn(userID, deviceID, scope, txnID string) (string, bool) {
	v := t.tx.Bucket(bTxns).Get(join(userID, deviceID, scope, txnID))
	return string(v), v != nil
}

// PutTxn records the result of a client transaction ID.
func (t *Tx) PutTxn(userID, deviceID, scope, txnID, result string) {
	must(t.tx.Bucket(bTxns).Put(join(userID, deviceID, scope, txnID), []byte(result)))
}

// PutFilter stores a filter and returns its ID.
func (t *Tx) PutFilter(userID string, filter json.RawMessage) string {
	id := strconv.FormatUint(t.nextNID(), 10)
	must(t.tx.Bucket(bFilters).Put(join(userID, id), filter))
	return id
}

// Filter loads a filter.
func (t *Tx) Filter(userID, filterID string) (json.RawMessage, error) {
	v := t.tx.Bucket(bFilters).Get(join(userID, filterID))
	if v == nil {
		return nil, ErrNotFound
	}
	return bytes.Clone(v), nil
}

// PutAlias maps an alias to a room; ErrExists if taken.
func (t *Tx) PutAlias(alias, roomID string) error {
	b := t.tx.Bucket(bAliases)
	if b.Get([]byte(alias)) != nil {
		return ErrExists
	}
	must(b.Put([]byte(alias), []byte(roomID)))
	must(t.tx.Bucket(bRoomAliases).Put(join(roomID, alias), nil))
	return nil
}

// Alias resolves an alias.
func (t *Tx) Alias(alias string) (string, error) {
	v := t.tx.Bucket(bAliases).Get([]byte(alias))
	if v == nil {
		return "", ErrNotFound
	}
	return string(v), nil
}

// DeleteAlias removes an alias.
func (t *Tx) DeleteAlias(alias string) error {
	roomID, err := t.Alias(alias)
	if err != nil {
		return err
	}
	must(t.tx.Bucket(bAliases).Delete([]byte(alias)))
	must(t.tx.Bucket(bRoomAliases).Delete(join(roomID, alias)))
	return nil
}

// RoomAliases lists a room's local aliases.
func (t *Tx) RoomAliases(roomID string) []string {
	var out []string
	p := prefix(roomID)
	c := t.tx.Bucket(bRoomAliases).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		out = append(out, string(k[len(p):]))
	}
	return out
}

// SetPublished adds or removes a room from the public room directory.
func (t *Tx) SetPublished(roomID string, public bool) {
	b := t.tx.Bucket(bPublicRooms)
	if public {
		must(b.Put([]byte(roomID), []byte{1}))
	} else {
		must(b.Delete([]byte(roomID)))
	}
}

// Published tells whether a room is in the public directory.
func (t *Tx) Published(roomID string) bool {
	return t.tx.Bucket(bPublicRooms).Get([]byte(roomID)) != nil
}

// PublishedRooms lists the public directory's room IDs in order.
func (t *Tx) PublishedRooms() []string {
	var out []string
	_ = t.tx.Bucket(bPublicRooms).ForEach(func(k, _ []byte) error {
		out = append(out, string(k))
		return nil
	})
	return out
}

// KV is a small namespaced key-value space for features whose data is an
// opaque blob per key (push-rule state, presence, device keys). Namespaces
// are constants of the calling package.
func (t *Tx) PutKV(namespace, key string, value []byte) {
	must(t.tx.Bucket(bKV).Put(join(namespace, key), value))
}

// GetKV reads a KV value; ErrNotFound when absent.
func (t *Tx) GetKV(namespace, key string) ([]byte, error) {
	v := t.tx.Bucket(bKV).Get(join(namespace, key))
	if v == nil {
		return nil, ErrNotFound
	}
	return bytes.Clone(v), nil
}

// DeleteKV removes a KV value.
func (t *Tx) DeleteKV(namespace, key string) {
	must(t.tx.Bucket(bKV).Delete(join(namespace, key)))
}

// ScanKV calls fn for each key in namespace starting with keyPrefix, in
// order. value points into the database file and is valid only during fn:
// copy it to keep it.
func (t *Tx) ScanKV(namespace, keyPrefix string, fn func(key string, value []byte) bool) {
	p := append(prefix(namespace), keyPrefix...)
	strip := len(prefix(namespace))
	c := t.tx.Bucket(bKV).Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if !fn(string(k[strip:]), v) {
			return
		}
	}
}

// isEmptyObject tells whether raw is the JSON object {}.
func isEmptyObject(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil && len(m) == 0
}
