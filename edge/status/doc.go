// Package status inspects a remote Matrix server the way a peer would talk
// to it, for `edge status SERVER`: server discovery (well-known, both SRV
// names, CNAMEs, addresses), per address the TLS handshake and certificates,
// the signed key response and /_matrix/federation/v1/version, plus client
// discovery and a notary cross-check of the server's keys. It reports what
// the Matrix Federation Tester reports and more, as one JSON-tagged [Report].
//
// It implements the client side of these Server-Server API sections
// (https://spec.matrix.org/latest/server-server-api/): "Resolving server
// names", "TLS", "Retrieving server keys" and "GET /_matrix/federation/v1/version";
// and of the Client-Server API's "Well-known URIs" for the client document.
//
// It also holds [NodeStatus], the running node's health that its admin
// listener serves for `edge status` without a SERVER.
package status
