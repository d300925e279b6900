// Package wellknown does Matrix server discovery, both ways: it serves
// /.well-known/matrix/server and /.well-known/matrix/client for this server,
// and it resolves a remote server name to the addresses, Host header and TLS
// name to use for federation requests.
//
// Resolution follows the numbered steps of the Server-Server API, "Resolving
// server names" (https://spec.matrix.org/latest/server-server-api/#resolving-server-names):
// IP literal, explicit port, GET https://<hostname>/.well-known/matrix/server
// (then 3.1–3.5 on the delegated name), SRV _matrix-fed._tcp, the deprecated
// SRV _matrix._tcp, and finally <hostname>:8448. Every lookup can be recorded
// in a [Report] so that an operator can see why discovery went where it went.
//
// The package is a leaf: it imports nothing from edge, and takes its
// configuration as plain struct fields ([Options], [Discovery]).
package wellknown
