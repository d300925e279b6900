package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"edge/edge/config"
)

// matrixErr returns the HTTP status and errcode of an error mautrix returned.
func matrixErr(err error) (status int, errcode string) {
	var he mautrix.HTTPError
	if !errors.As(err, &he) {
		return 0, ""
	}
	if he.Response != nil {
		status = he.Response.StatusCode
	}
	if he.RespError != nil {
		errcode = he.RespError.ErrCode
	}
	return status, errcode
}

// wantMatrixErr fails the test unless err is a Matrix error with this
// status and errcode.
func wantMatrixErr(t testing.TB, err error, status int, errcode string) {
	t.Helper()
	s, c := matrixErr(err)
	if s != status || c != errcode {
		t.Fatalf("got %v (HTTP %d %q), want HTTP %d %s", err, s, c, status, errcode)
	}
}

// rawResp is a response read without mautrix's interpretation.
type rawResp struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    []byte
}

// doRaw sends body (nil: none) through c as-is and returns the response
// whatever its status.
func doRaw(t testing.TB, c *mautrix.Client, method, url string, body []byte, header http.Header) rawResp {
	t.Helper()
	data, resp, err := c.MakeFullRequestWithResp(ctxT(t), mautrix.FullRequest{
		Method: method, URL: url, RequestBytes: body, Headers: header, MaxAttempts: 1,
	})
	if resp == nil {
		t.Fatalf("%s %s: no response: %v", method, url, err)
	}
	out := rawResp{Status: resp.StatusCode, Header: resp.Header, Raw: data}
	if len(data) > 0 {
		_ = json.Unmarshal(data, &out.Body)
	}
	return out
}

// wantRaw checks a raw response's status and errcode.
func (r rawResp) want(t testing.TB, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.Body["errcode"] != errcode {
		t.Fatalf("got HTTP %d %s, want HTTP %d %s", r.Status, r.Raw, status, errcode)
	}
}

func TestErrorsJSONBodies(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	sendURL := alice.BuildClientURL("v3", "rooms", roomID, "send", "m.room.message", "t1")

	for _, tc := range []struct {
		name, method, url, body string
		status                  int
		errcode                 string
	}{
		{"truncated createRoom", "POST", alice.BuildClientURL("v3", "createRoom"), `{"name": "x"`, 400, "M_NOT_JSON"},
		{"text createRoom", "POST", alice.BuildClientURL("v3", "createRoom"), `hello`, 400, "M_NOT_JSON"},
		{"wrong type createRoom", "POST", alice.BuildClientURL("v3", "createRoom"), `{"name": 5}`, 400, "M_BAD_JSON"},
		{"invite list of numbers", "POST", alice.BuildClientURL("v3", "createRoom"), `{"invite": [1, 2]}`, 400, "M_BAD_JSON"},
		{"send array", "PUT", sendURL, `[1, 2]`, 400, "M_BAD_JSON"},
		{"send not json", "PUT", sendURL, `{body:`, 400, "M_NOT_JSON"},
		{"state string", "PUT", alice.BuildClientURL("v3", "rooms", roomID, "state", "m.room.topic", ""), `"topic"`, 400, "M_BAD_JSON"},
		{"login identifier string", "POST", alice.BuildClientURL("v3", "login"), `{"type": "m.login.password", "identifier": "alice"}`, 400, "M_BAD_JSON"},
		{"filter wrong limit type", "POST", alice.BuildClientURL("v3", "user", alice.UserID, "filter"), `{"room": {"timeline": {"limit": "ten"}}}`, 400, "M_BAD_JSON"},
		{"invite user_id number", "POST", alice.BuildClientURL("v3", "rooms", roomID, "invite"), `{"user_id": 7}`, 400, "M_BAD_JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doRaw(t, alice, tc.method, tc.url, []byte(tc.body), nil).want(t, tc.status, tc.errcode)
		})
	}
	// Nothing of the failed sends reached the room.
	msgs, err := alice.Messages(ctxT(t), roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range msgs.Chunk {
		if ev.Type == event.EventMessage || ev.Type == event.StateTopic {
			t.Errorf("rejected request left event %s of type %s", ev.ID, ev.Type)
		}
	}
}

func TestErrorsRouting(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")

	doRaw(t, alice, "GET", alice.BuildClientURL("v3", "no_such_endpoint"), nil, nil).want(t, 404, "M_UNRECOGNIZED")
	doRaw(t, alice, "GET", n.URL+"/_matrix/client/v3/rooms/!r:localhost/not_a_thing", nil, nil).want(t, 404, "M_UNRECOGNIZED")
	doRaw(t, alice, "GET", n.URL+"/nothing/here", nil, nil).want(t, 404, "M_UNRECOGNIZED")

	r := doRaw(t, alice, "PUT", alice.BuildClientURL("v3", "login"), []byte(`{}`), nil)
	r.want(t, 405, "M_UNRECOGNIZED")
	if allow := r.Header.Get("Allow"); !strings.Contains(allow, "POST") || !strings.Contains(allow, "GET") {
		t.Errorf("405 Allow header = %q, want GET and POST", allow)
	}
	doRaw(t, alice, "DELETE", alice.BuildClientURL("v3", "createRoom"), nil, nil).want(t, 405, "M_UNRECOGNIZED")
	doRaw(t, alice, "POST", alice.BuildClientURL("v3", "joined_rooms"), []byte(`{}`), nil).want(t, 405, "M_UNRECOGNIZED")
}

func TestErrorsAuth(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	anon, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = anon.Whoami(ctxT(t))
	wantMatrixErr(t, err, 401, "M_MISSING_TOKEN")
	_, err = anon.JoinedRooms(ctxT(t))
	wantMatrixErr(t, err, 401, "M_MISSING_TOKEN")

	bogus, _ := mautrix.NewClient(n.URL, alice.UserID, "edge_not_a_real_token")
	_, err = bogus.Whoami(ctxT(t))
	wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")
	_, err = bogus.CreateRoom(ctxT(t), &mautrix.ReqCreateRoom{})
	wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")

	// The token may also come as the access_token query parameter.
	r := doRaw(t, anon, "GET", anon.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "account", "whoami"}, map[string]string{"access_token": alice.AccessToken}), nil, nil)
	if r.Status != 200 || r.Body["user_id"] != alice.UserID.String() {
		t.Fatalf("whoami with ?access_token: HTTP %d %s", r.Status, r.Raw)
	}
	r = doRaw(t, anon, "GET", anon.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "account", "whoami"}, map[string]string{"access_token": "nope"}), nil, nil)
	r.want(t, 401, "M_UNKNOWN_TOKEN")
}

func TestErrorsUnknownRoom(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	const nowhere = "!nowhere:localhost"

	_, err := alice.SendText(ctx, nowhere, "hello?")
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.SendStateEvent(ctx, nowhere, event.StateTopic, "", map[string]string{"topic": "x"})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.State(ctx, nowhere)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.Messages(ctx, nowhere, "", "", mautrix.DirectionBackward, nil, 10)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.JoinedMembers(ctx, nowhere)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.JoinRoomByID(ctx, nowhere)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	_, err = alice.JoinRoom(ctx, "#nowhere:localhost", nil)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	_, err = alice.LeaveRoom(ctx, nowhere)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
	_, err = alice.InviteUser(ctx, nowhere, &mautrix.ReqInviteUser{UserID: "@bob:localhost"})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = alice.GetEvent(ctx, nowhere, "$nothing")
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
}

func TestErrorsTooLarge(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.Limits.MaxRequestBytes = 100_000 })
	alice := n.register(t, "alice")
	ctx := ctxT(t)
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})

	// Content that fits the request limit but not the 65536-byte PDU limit.
	big := strings.Repeat("x", 70_000)
	_, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]string{"msgtype": "m.text", "body": big})
	wantMatrixErr(t, err, 413, "M_TOO_LARGE")
	_, err = alice.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]string{"topic": big})
	wantMatrixErr(t, err, 413, "M_TOO_LARGE")
	// Just under the limit is fine.
	if _, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]string{"msgtype": "m.text", "body": strings.Repeat("y", 60_000)}); err != nil {
		t.Fatalf("60 kB message: %v", err)
	}

	// A body over limits.max_request_bytes is refused before it is parsed.
	huge := []byte(`{"msgtype": "m.text", "body": "` + strings.Repeat("z", 150_000) + `"}`)
	doRaw(t, alice, "PUT", alice.BuildClientURL("v3", "rooms", roomID, "send", "m.room.message", "huge"), huge, nil).want(t, 413, "M_TOO_LARGE")
	doRaw(t, alice, "POST", alice.BuildClientURL("v3", "createRoom"), huge, nil).want(t, 413, "M_TOO_LARGE")
}

func TestErrorsCORS(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	check := func(what string, h http.Header) {
		t.Helper()
		if h.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("%s: Access-Control-Allow-Origin = %q", what, h.Get("Access-Control-Allow-Origin"))
		}
		methods := h.Get("Access-Control-Allow-Methods")
		for _, m := range []string{"GET", "POST", "PUT", "DELETE", "OPTIONS"} {
			if !strings.Contains(methods, m) {
				t.Errorf("%s: Access-Control-Allow-Methods = %q lacks %s", what, methods, m)
			}
		}
		headers := strings.ToLower(h.Get("Access-Control-Allow-Headers"))
		for _, hd := range []string{"authorization", "content-type", "x-requested-with"} {
			if !strings.Contains(headers, hd) {
				t.Errorf("%s: Access-Control-Allow-Headers = %q lacks %s", what, headers, hd)
			}
		}
	}
	r := doRaw(t, alice, "GET", n.URL+"/_matrix/client/versions", nil, nil)
	if r.Status != 200 {
		t.Fatalf("versions: HTTP %d", r.Status)
	}
	check("GET /versions", r.Header)
	r = doRaw(t, alice, "GET", alice.BuildClientURL("v3", "joined_rooms"), nil, nil)
	check("GET /joined_rooms", r.Header)
	r = doRaw(t, alice, "GET", alice.BuildClientURL("v3", "nope"), nil, nil)
	check("404", r.Header)

	// A browser's preflight carries no token and must still succeed.
	anon, _ := mautrix.NewClient(n.URL, "", "")
	for _, path := range []string{"/_matrix/client/v3/createRoom", "/_matrix/client/v3/rooms/!x:localhost/send/m.room.message/1", "/_matrix/client/v3/sync"} {
		pre := doRaw(t, anon, "OPTIONS", n.URL+path, nil, http.Header{
			"Origin":                         {"https://app.element.io"},
			"Access-Control-Request-Method":  {"POST"},
			"Access-Control-Request-Headers": {"authorization, content-type"},
		})
		if pre.Status != 200 && pre.Status != 204 {
			t.Errorf("OPTIONS %s: HTTP %d %s", path, pre.Status, pre.Raw)
		}
		check("OPTIONS "+path, pre.Header)
	}
}

// jsonBytes marshals a request body.
func jsonBytes(v any) ([]byte, error) { return json.Marshal(v) }

// asHTTPError unwraps a mautrix HTTP error that carries a Matrix error.
func asHTTPError(err error, he *mautrix.HTTPError) bool {
	return errors.As(err, he) && he.RespError != nil && he.Response != nil
}
