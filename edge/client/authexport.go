package client

import "net/http"

// Authenticate resolves the request's access token (header or
// access_token query parameter) for APIs served beside the client API,
// such as the media repository; its errors are *Error values.
func (s *Server) Authenticate(r *http.Request) (*Session, error) {
	return s.authenticate(r)
}

// WriteError writes err as a Matrix error body, mapping it the way the
// client API's handlers do (a non-*Error becomes 500 M_UNKNOWN).
func WriteError(w http.ResponseWriter, err error) { writeError(w, err) }

// WriteJSON writes v as a JSON body with status.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }
