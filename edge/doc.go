// Package edge wires a node together: it opens the store, loads the signing
// key, builds the room service and the APIs on top of it, and serves them.
package edge
