package client

import (
	"net/http"
	"strings"
	"time"
)

// Events are stamped (origin_server_ts) in whole milliseconds, and a
// request that creates events can begin and end within the millisecond in
// which its client read the clock: its events would then share that
// millisecond with times read before the request or after the answer,
// and timestamp_to_event, inclusive at ts as in Synapse, would find an
// event "before" a time read before it was sent (Complement's
// TestJumpToDateEndpoint raced this). So a request that creates events
// starts in a millisecond after the one it arrived in, and answers in a
// millisecond after the one it finished in: its events' timestamps are
// strictly after any time read before the request and strictly before any
// read after the answer. It costs such a request at most 2 ms.

// createsEvents tells whether a client route (pattern as registered)
// creates room events.
func createsEvents(pattern string) bool {
	method, path, _ := strings.Cut(pattern, " ")
	switch method {
	case http.MethodPost:
		switch path {
		case "/createRoom", "/join/{roomIdOrAlias}", "/knock/{roomIdOrAlias}",
			"/rooms/{roomId}/ban", "/rooms/{roomId}/invite", "/rooms/{roomId}/join", "/rooms/{roomId}/kick",
			"/rooms/{roomId}/leave", "/rooms/{roomId}/unban", "/rooms/{roomId}/upgrade":
			return true
		}
	case http.MethodPut:
		return strings.HasPrefix(path, "/rooms/{roomId}/send/") || strings.HasPrefix(path, "/rooms/{roomId}/state/") ||
			strings.HasPrefix(path, "/rooms/{roomId}/redact/") || strings.HasPrefix(path, "/profile/")
	}
	return false
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

// stampedApart wraps an event-creating handler so that its events'
// timestamps fall strictly between the client's clock readings around it.
func stampedApart(h authedFunc) authedFunc {
	return func(r *http.Request, sess *Session) (any, error) {
		freshMillisecond(time.Now().UnixMilli())
		resp, err := h(r, sess)
		freshMillisecond(time.Now().UnixMilli())
		return resp, err
	}
}
