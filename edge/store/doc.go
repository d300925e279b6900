// Package store keeps a node's data in one bbolt file: accounts, devices,
// access tokens, room events with their numeric ids (NIDs), layered state
// snapshots, timelines and per-user stream data.
//
// Nothing outside this package sees bbolt. Writes go through Store.Write,
// which groups concurrent requests into one transaction and one fsync
// (group commit) without delaying a lone writer; a request's writes are
// committed together or not at all, and Write returns only after the fsync,
// so what a handler acknowledges survives kill -9.
//
// Buckets are declared once in keys.go and named <key>_<value>.
package store
