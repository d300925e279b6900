// Package room is the event graph of a node: it builds and signs PDUs in
// the format of each room version, authorises them with the spec's auth
// rules (https://spec.matrix.org/latest/rooms/), and persists them with
// their state as layered snapshots through edge/store.
//
// It knows nothing of HTTP. Writes to a room happen inside one store write
// transaction, which also serialises them: an event's prev_events, depth and
// auth_events are chosen from the state the same transaction commits.
package room
