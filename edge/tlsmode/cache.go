package tlsmode

import (
	"context"
	"errors"

	"golang.org/x/crypto/acme/autocert"

	"edge/edge/store"
)

// kvACME is the store KV namespace of the ACME cache: autocert's account
// key and each host's key and certificate chain (PEM), under autocert's
// own key names.
const kvACME = "acme"

// StoreCache is an autocert.Cache in the node's database, so certificates
// survive restarts without a new order and never sit in readable files
// (the database is 0600).
type StoreCache struct{ Store *store.Store }

var _ autocert.Cache = StoreCache{}

// Get returns autocert.ErrCacheMiss for an absent key.
func (c StoreCache) Get(_ context.Context, key string) ([]byte, error) {
	var v []byte
	err := c.Store.View(func(tx *store.Tx) error {
		var err error
		v, err = tx.GetKV(kvACME, key)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, autocert.ErrCacheMiss
	}
	return v, err
}

// Put stores data under key.
func (c StoreCache) Put(_ context.Context, key string, data []byte) error {
	return c.Store.Write(func(tx *store.Tx) error {
		tx.PutKV(kvACME, key, data)
		return nil
	})
}

// Delete removes key.
func (c StoreCache) Delete(_ context.Context, key string) error {
	return c.Store.Write(func(tx *store.Tx) error {
		tx.DeleteKV(kvACME, key)
		return nil
	})
}
