package store

import "bytes"

// ScanKVFrom calls fn for each key in namespace that is ≥ start, in key
// order, until fn returns false. Features that keep a stream in the KV
// (keys ending in a fixed-width position) use it to read "everything
// after position p" without walking the entries before p. As with ScanKV,
// value points into the database and is valid only until the transaction
// ends: callers that keep it must copy it.
func (t *Tx) ScanKVFrom(namespace, start string, fn func(key string, value []byte) bool) {
	p := prefix(namespace)
	c := t.tx.Bucket(bKV).Cursor()
	for k, v := c.Seek(append(bytes.Clone(p), start...)); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if !fn(string(k[len(p):]), v) {
			return
		}
	}
}
