// Package client serves the Matrix client-server API
// (https://spec.matrix.org/latest/client-server-api/) under /_matrix/client:
// accounts and devices, rooms and their events, /sync, and the per-user
// data Element relies on. One file per endpoint group; each handler's doc
// comment names its method and path.
package client
