package client

import (
	"net/http"
	"strings"
	"time"
)

// Events are stamped (origin_server_ts) in whole milliseconds, and a
// request that creates events can begin and end within the millisecond in
// which its client read the clock: its events would then share that
// millisecond with a time read before the request or after the answer, and
// timestamp_to_event, inclusive at ts as in Synapse, would find an event
// "before" a time read before it was sent or "after" one read after it
// (Complement's TestJumpToDateEndpoint raced a same-millisecond createRoom,
// join and send). Two measures, by cost:
//
//   - Room-shaping requests (createRoom, joins, membership changes,
//     upgrades, profile changes) are rare and make many events: they start
//     in a millisecond after the one they arrived in and answer in one
//     after the one they finished in, so their events lie strictly between
//     the client's readings. It costs such a request at most 2 ms.
//   - Sends, state and redactions are the hot path: they only answer once
//     the clock has left the millisecond of the last event this server
//     stamped, usually already true after the commit's fsync. Their events
//     lie strictly before any time read after the answer; one may share
//     the millisecond of a reading taken just before the request.
type stampRule int

const (
	stampNone   stampRule = iota
	stampApart            // both sides: start and answer in fresh milliseconds
	stampBefore           // answer after the last stamp's millisecond
)

// stampRuleFor tells how a client route (pattern as registered) keeps its
// events' timestamps apart from its client's clock readings.
func stampRuleFor(pattern string) stampRule {
	method, path, _ := strings.Cut(pattern, " ")
	switch method {
	case http.MethodPost:
		switch path {
		case "/createRoom", "/join/{roomIdOrAlias}", "/knock/{roomIdOrAlias}",
			"/rooms/{roomId}/ban", "/rooms/{roomId}/invite", "/rooms/{roomId}/join", "/rooms/{roomId}/kick",
			"/rooms/{roomId}/leave", "/rooms/{roomId}/unban", "/rooms/{roomId}/upgrade":
			return stampApart
		}
	case http.MethodPut:
		if strings.HasPrefix(path, "/profile/") {
			return stampApart
		}
		if strings.HasPrefix(path, "/rooms/{roomId}/send/") || strings.HasPrefix(path, "/rooms/{roomId}/state/") ||
			strings.HasPrefix(path, "/rooms/{roomId}/redact/") {
			return stampBefore
		}
	}
	return stampNone
}

// freshMillisecond returns once the clock's millisecond is past ms.
func freshMillisecond(ms int64) {
	for {
		d := time.Until(time.UnixMilli(ms + 1))
		if d <= 0 {
			return
		}
		time.Sleep(d)
	}
}

// stamped wraps an event-creating handler by its rule.
func (s *Server) stamped(rule stampRule, h authedFunc) authedFunc {
	switch rule {
	case stampApart:
		return func(r *http.Request, sess *Session) (any, error) {
			freshMillisecond(time.Now().UnixMilli())
			resp, err := h(r, sess)
			freshMillisecond(time.Now().UnixMilli())
			return resp, err
		}
	case stampBefore:
		return func(r *http.Request, sess *Session) (any, error) {
			resp, err := h(r, sess)
			freshMillisecond(s.Rooms.LastStamp())
			return resp, err
		}
	}
	return h
}
