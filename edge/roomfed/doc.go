// Package roomfed is the room federation engine: it sends local events to
// the servers in a room, checks and applies the PDUs other servers send
// (https://spec.matrix.org/latest/server-server-api/#pdus), joins rooms on
// other servers and answers their joins, and serves events and state to
// servers in a room.
package roomfed
