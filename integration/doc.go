// Package integration holds tests that run real edge nodes on loopback
// listeners and drive them with Matrix client libraries written by others
// (maunium.net/go/mautrix), the way Element and other servers would.
package integration
