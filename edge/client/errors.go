package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"edge/edge/room"
	"edge/edge/store"
)

// Error is a Matrix error response.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"errcode"`
	Message string `json:"error"`
	// RetryAfterMS is set on M_LIMIT_EXCEEDED.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
	// Extra fields (UIA flows, soft_logout …) merged into the body.
	Extra map[string]any `json:"-"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func newErr(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func errNotJSON(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "M_NOT_JSON", format, a...)
}
func errBadJSON(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "M_BAD_JSON", format, a...)
}
func errInvalidParam(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "M_INVALID_PARAM", format, a...)
}
func errMissingParam(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "M_MISSING_PARAM", format, a...)
}
func errForbidden(format string, a ...any) *Error {
	return newErr(http.StatusForbidden, "M_FORBIDDEN", format, a...)
}
func errNotFound(format string, a ...any) *Error {
	return newErr(http.StatusNotFound, "M_NOT_FOUND", format, a...)
}
func errUnrecognized(status int) *Error {
	return newErr(status, "M_UNRECOGNIZED", "Unrecognized request")
}

// toError maps any error to a Matrix error: the one mapping function from
// package sentinels to errcodes and statuses.
func toError(err error) *Error {
	var me *Error
	switch {
	case errors.As(err, &me):
		return me
	case errors.Is(err, room.ErrRoomNotFound):
		return errNotFound("Room not found")
	case errors.Is(err, room.ErrEventNotFound), errors.Is(err, store.ErrNotFound):
		return errNotFound("Not found")
	case errors.Is(err, room.ErrForbidden):
		return errForbidden("%s", err.Error())
	case errors.Is(err, room.ErrTooLarge):
		return newErr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Event too large")
	case errors.Is(err, room.ErrTooComplex):
		// As Synapse refuses a room over its complexity limit.
		return newErr(http.StatusBadRequest, "M_RESOURCE_LIMIT_EXCEEDED", "%s", err.Error())
	case errors.Is(err, room.ErrUnsupported):
		return newErr(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "%s", err.Error())
	case errors.Is(err, room.ErrBadEvent):
		return errBadJSON("%s", err.Error())
	}
	return newErr(http.StatusInternalServerError, "M_UNKNOWN", "Internal server error")
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = 500, []byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError writes err as a Matrix error body.
func writeError(w http.ResponseWriter, err error) {
	e := toError(err)
	body := map[string]any{"errcode": e.Code, "error": e.Message}
	if e.RetryAfterMS > 0 {
		body["retry_after_ms"] = e.RetryAfterMS
		w.Header().Set("Retry-After", strconv.FormatInt((e.RetryAfterMS+999)/1000, 10))
	}
	for k, v := range e.Extra {
		if v == nil {
			delete(body, k) // lets a 401 UIA response go without errcode
		} else {
			body[k] = v
		}
	}
	writeJSON(w, e.Status, body)
}
