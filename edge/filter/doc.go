// Package filter parses and applies Matrix event filters as specified in the
// client-server API, section "Filtering" (Filter, RoomFilter,
// RoomEventFilter, EventFilter; "Lazy-loading room members"), with the
// schemas in data/api/client-server/definitions/{sync,room_event,event}_filter.yaml
// of the offline spec.
//
// The package is pure: no HTTP and no storage. Parse validates a filter body
// (errors wrap ErrBadJSON or ErrInvalidParam for the HTTP layer), the Match /
// AllowsRoom methods decide which events and rooms pass, EffectiveLimit
// applies the caller's default and maximum, and ApplyEventFields trims event
// JSON to event_fields. Every method is safe on a nil filter, which lets
// everything through.
package filter
