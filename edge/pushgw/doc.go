// Package pushgw delivers notifications to HTTP push gateways (Sygnal and
// the like) as the Push Gateway API says: POST /_matrix/push/v1/notify
// with the event, the recipient's unread counts and the device's pushkey
// (spec: /work/shared/spec/content/push-gateway-api.md; the pushers
// themselves are the client-server API's push module).
//
// Delivery never blocks the event path: Submit queues an event for a small
// pool of workers, which ask Options.Targets whom it notifies, build one
// request per pusher, and retry failures with bounded exponential backoff.
// A gateway that answers "rejected" with a pushkey gets that pusher removed
// (Options.Rejected). Gateways are dialled only on public addresses unless
// Options.AllowPrivate says otherwise, so a pusher URL cannot make the
// server reach its own LAN (SSRF).
package pushgw
