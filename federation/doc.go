// Package federation is edge's server-server transport: the signing keys it
// publishes, the keyring and notary that establish other servers' keys, X-Matrix
// request authentication, server ACLs, the outbound federation client, and the
// per-destination transaction queues (and the inbound /send endpoint that
// answers them). Room-level federation (joins, backfill, PDU processing) builds
// on it through hooks.
//
// It implements these sections of the Server-Server API
// (https://spec.matrix.org/latest/server-server-api/):
//
//   - "Retrieving server keys": publishing keys (GET /_matrix/key/v2/server),
//     querying keys through another server (the notary endpoints
//     GET /_matrix/key/v2/query/{serverName} and POST /_matrix/key/v2/query),
//     and using them, with valid_until_ts capped at seven days.
//   - "Authentication", "Request Authentication": the X-Matrix Authorization
//     header, signed over method, uri, origin, destination and content, with
//     the header grammar of RFC 9110 section 11.4.
//   - "Transactions": PUT /_matrix/federation/v1/send/{txnId}, at most 50 PDUs
//     and 100 EDUs, one transaction in flight per destination.
//   - "Server Access Control Lists (ACLs)" and the m.room.server_acl event of
//     the Client-Server API.
//   - "Server implementation": GET /_matrix/federation/v1/version.
//   - "TLS": certificate verification for every outbound request.
//
// Server names are resolved through a [Resolver]; the spec's discovery steps
// live in edge's wellknown package, which satisfies it.
package federation
