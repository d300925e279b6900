package federation

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors. Callers test them with errors.Is; returned errors wrap
// them with %w and name the server, key or address involved.
var (
	// ErrUnauthorized: an inbound request's X-Matrix authentication is
	// missing, malformed, for another destination, or does not verify.
	ErrUnauthorized = errors.New("federation: request not authenticated")
	// ErrACLDenied: the room's m.room.server_acl denies the server.
	ErrACLDenied = errors.New("federation: server denied by the room's server ACL")
	// ErrKeyNotFound: the server's key responses do not contain the key ID
	// (or none valid until the time asked for).
	ErrKeyNotFound = errors.New("federation: signing key not found")
	// ErrKeyFetch: the server's keys could not be fetched, directly or from
	// any notary; a backoff is running.
	ErrKeyFetch = errors.New("federation: fetching server keys failed")
	// ErrBadKeyResponse: a key response failed validation (server name,
	// key format, self-signature, notary signature).
	ErrBadKeyResponse = errors.New("federation: invalid key response")
	// ErrAddressRefused: the destination resolved only to addresses the
	// policy forbids (loopback, private …) while allow_private_addresses is off.
	ErrAddressRefused = errors.New("federation: refusing to connect to a non-public address")
	// ErrResponseTooLarge: a response body exceeded max_response_bytes.
	ErrResponseTooLarge = errors.New("federation: response too large")
	// ErrSelf: a request or key lookup addressed to this server itself.
	ErrSelf = errors.New("federation: destination is this server")
)

// Error is a Matrix error response, the one shape this package answers
// errors in.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"errcode"`
	Message string `json:"error"`
	// RoomVersion goes with M_INCOMPATIBLE_ROOM_VERSION: the room's
	// version, which the asking server does not support.
	RoomVersion string `json:"room_version,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func newErr(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func errBadJSON(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "M_BAD_JSON", format, a...)
}

func errNotJSON(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "M_NOT_JSON", format, a...)
}

// RemoteError is a non-2xx answer from another server.
type RemoteError struct {
	Destination string
	Status      int
	Code        string // the errcode, when the body was a Matrix error
	Message     string
	RoomVersion string // room_version, with M_INCOMPATIBLE_ROOM_VERSION
}

func (e *RemoteError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%s answered %d %s: %s", e.Destination, e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("%s answered %d", e.Destination, e.Status)
}

// toError maps any error to a Matrix error: the one place where package
// sentinels become errcodes and statuses.
func toError(err error) *Error {
	var me *Error
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &me):
		return me
	case errors.Is(err, ErrUnauthorized):
		return newErr(http.StatusUnauthorized, "M_UNAUTHORIZED", "%s", err.Error())
	case errors.Is(err, ErrACLDenied):
		return newErr(http.StatusForbidden, "M_FORBIDDEN", "Server is banned from this room")
	case errors.As(err, &tooBig):
		return newErr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body too large")
	}
	return newErr(http.StatusInternalServerError, "M_UNKNOWN", "Internal server error")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, err error) {
	e := toError(err)
	writeJSON(w, e.Status, e)
}
