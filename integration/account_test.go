package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/client"
	"edge/edge/config"
	"edge/edge/store"
)

const testPassword = "correct horse battery"

// newAnon is a client without credentials.
func newAnon(t testing.TB, n *testNode) *mautrix.Client {
	t.Helper()
	c, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// loginPassword logs userID in as a new device and returns its client.
func loginPassword(t testing.TB, n *testNode, user, password string) *mautrix.Client {
	t.Helper()
	c := newAnon(t, n)
	resp, err := c.Login(ctxT(t), &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
		Password:   password,
	})
	if err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	c.DeviceID = resp.DeviceID
	return c
}

// passwordAuth is an m.login.password UIA stage for c's user.
func passwordAuth(c *mautrix.Client, password, session string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": c.UserID.String()},
		"password":   password,
		"session":    session,
	}
}

// uiaStart makes the first UIA request of an endpoint and returns its
// session, checking the 401 offers flow.
func uiaStart(t testing.TB, c *mautrix.Client, url string, body map[string]any, flow ...string) string {
	t.Helper()
	raw, _ := jsonBytes(body)
	r := doRaw(t, c, "POST", url, raw, nil)
	if r.Status != 401 {
		t.Fatalf("first UIA request to %s: HTTP %d %s, want 401", url, r.Status, r.Raw)
	}
	if _, has := r.Body["errcode"]; has {
		t.Errorf("first UIA response carries an errcode: %s", r.Raw)
	}
	session, _ := r.Body["session"].(string)
	if session == "" {
		t.Fatalf("UIA response without session: %s", r.Raw)
	}
	flows, _ := r.Body["flows"].([]any)
	found := false
	for _, f := range flows {
		stages, _ := f.(map[string]any)["stages"].([]any)
		var got []string
		for _, s := range stages {
			got = append(got, s.(string))
		}
		found = found || slices.Equal(got, flow)
	}
	if !found {
		t.Fatalf("UIA flows %v lack %v", r.Body["flows"], flow)
	}
	return session
}

func TestAccountRegister(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	anon := newAnon(t, n)

	avail, err := anon.RegisterAvailable(ctx, "alice")
	if err != nil || !avail.Available {
		t.Fatalf("alice available: %v %v", avail, err)
	}

	// The UIA dance: a first request without auth gets the flows and a session.
	req := &mautrix.ReqRegister[any]{Username: "alice", Password: testPassword, DeviceID: "ALICEPHONE", InitialDeviceDisplayName: "phone"}
	resp, uia, err := anon.Register(ctx, req)
	// (mautrix turns a 401 without errcode into uia and a nil error.)
	if resp != nil || uia == nil || err != nil {
		t.Fatalf("register without auth: resp=%v uia=%v err=%v", resp, uia, err)
	}
	if !uia.HasSingleStageFlow(mautrix.AuthTypeDummy) || uia.Session == "" {
		t.Fatalf("UIA response %+v lacks the dummy flow or a session", uia)
	}
	// An unknown session is refused.
	req.Auth = mautrix.BaseAuthData{Type: mautrix.AuthTypeDummy, Session: "not-a-session"}
	_, _, err = anon.Register(ctx, req)
	if s, _ := matrixErr(err); s != 400 && s != 401 {
		t.Fatalf("register with an unknown session: %v", err)
	}
	req.Auth = mautrix.BaseAuthData{Type: mautrix.AuthTypeDummy, Session: uia.Session}
	resp, _, err = anon.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.UserID != "@alice:localhost" || resp.AccessToken == "" || resp.DeviceID != "ALICEPHONE" {
		t.Fatalf("register response %+v", resp)
	}
	alice := newAnon(t, n)
	alice.SetCredentials(resp.UserID, resp.AccessToken)
	who, err := alice.Whoami(ctx)
	if err != nil || who.UserID != resp.UserID || who.DeviceID != "ALICEPHONE" {
		t.Fatalf("whoami = %+v, %v", who, err)
	}

	// Taken, invalid and weak.
	_, err = anon.RegisterAvailable(ctx, "alice")
	wantMatrixErr(t, err, 400, "M_USER_IN_USE")
	_, err = anon.RegisterAvailable(ctx, "ALICE")
	wantMatrixErr(t, err, 400, "M_USER_IN_USE")
	_, _, err = anon.Register(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: testPassword})
	wantMatrixErr(t, err, 400, "M_USER_IN_USE")
	for _, bad := range []string{"bad name", "ali!ce", "é"} {
		_, err = anon.RegisterAvailable(ctx, bad)
		wantMatrixErr(t, err, 400, "M_INVALID_USERNAME")
		_, _, err = anon.Register(ctx, &mautrix.ReqRegister[any]{Username: bad, Password: testPassword})
		wantMatrixErr(t, err, 400, "M_INVALID_USERNAME")
	}
	_, _, err = anon.Register(ctx, &mautrix.ReqRegister[any]{Username: "weakling", Password: "short"})
	wantMatrixErr(t, err, 400, "M_WEAK_PASSWORD")

	// Guests are refused unless the operator allows them.
	_, _, err = anon.RegisterGuest(ctx, &mautrix.ReqRegister[any]{})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")

	// inhibit_login creates the account without a device.
	bobResp, err := anon.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "bob", Password: testPassword, InhibitLogin: true})
	if err != nil {
		t.Fatal(err)
	}
	if bobResp.UserID != "@bob:localhost" || bobResp.AccessToken != "" || bobResp.DeviceID != "" {
		t.Fatalf("inhibit_login response %+v", bobResp)
	}
	loginPassword(t, n, "bob", testPassword)
}

func TestAccountRegistrationDisabled(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.Registration.Enabled = false })
	anon := newAnon(t, n)
	_, _, err := anon.Register(ctxT(t), &mautrix.ReqRegister[any]{Username: "alice", Password: testPassword})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = anon.RegisterDummy(ctxT(t), &mautrix.ReqRegister[any]{Username: "alice", Password: testPassword})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	// Without tokens every token is invalid: the spec's 403.
	r := doRaw(t, anon, "GET", anon.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "register", "m.login.registration_token", "validity"}, map[string]string{"token": "x"}), nil, nil)
	r.want(t, 403, "M_FORBIDDEN")
}

func TestAccountRegistrationTokens(t *testing.T) {
	// With tokens configured, open registration still needs one.
	open := startNode(t, func(c *config.Config) { c.Registration.Tokens = []string{"letmein"} })
	_, err := newAnon(t, open).RegisterDummy(ctxT(t), &mautrix.ReqRegister[any]{Username: "alice", Password: testPassword})
	if err == nil {
		t.Fatal("registered without a token although tokens are configured")
	}

	n := startNode(t, func(c *config.Config) {
		c.Registration.Enabled = false
		c.Registration.Tokens = []string{"letmein"}
	})
	anon := newAnon(t, n)
	validity := func(token string) rawResp {
		return doRaw(t, anon, "GET", anon.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "register", "m.login.registration_token", "validity"}, map[string]string{"token": token}), nil, nil)
	}
	if r := validity("letmein"); r.Status != 200 || r.Body["valid"] != true {
		t.Fatalf("validity(letmein) = HTTP %d %s", r.Status, r.Raw)
	}
	if r := validity("nope"); r.Status != 200 || r.Body["valid"] != false {
		t.Fatalf("validity(nope) = HTTP %d %s", r.Status, r.Raw)
	}

	url := anon.BuildClientURL("v3", "register")
	body := map[string]any{"username": "alice", "password": testPassword}
	session := uiaStart(t, anon, url, body, "m.login.registration_token")

	// Dummy alone is not a flow here.
	body["auth"] = map[string]any{"type": "m.login.dummy", "session": session}
	raw, _ := jsonBytes(body)
	if r := doRaw(t, anon, "POST", url, raw, nil); r.Status != 401 || r.Body["errcode"] == nil {
		t.Fatalf("dummy stage where only a token is offered: HTTP %d %s", r.Status, r.Raw)
	}
	// A wrong token fails the stage; the session stays usable.
	body["auth"] = map[string]any{"type": "m.login.registration_token", "token": "wrong", "session": session}
	raw, _ = jsonBytes(body)
	if r := doRaw(t, anon, "POST", url, raw, nil); r.Status != 401 || r.Body["errcode"] == nil || r.Body["session"] != session {
		t.Fatalf("wrong token: HTTP %d %s", r.Status, r.Raw)
	}
	body["auth"] = map[string]any{"type": "m.login.registration_token", "token": "letmein", "session": session}
	raw, _ = jsonBytes(body)
	r := doRaw(t, anon, "POST", url, raw, nil)
	if r.Status != 200 || r.Body["user_id"] != "@alice:localhost" || r.Body["access_token"] == nil {
		t.Fatalf("register with token: HTTP %d %s", r.Status, r.Raw)
	}
}

func TestAccountLogin(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	n.register(t, "alice")
	anon := newAnon(t, n)

	flows, err := anon.GetLoginFlows(ctx)
	if err != nil || !flows.HasFlow(mautrix.AuthTypePassword) {
		t.Fatalf("GET /login = %+v, %v", flows, err)
	}

	// identifier with a localpart, with a full user ID, and the legacy user field.
	a := loginPassword(t, n, "alice", testPassword)
	b := loginPassword(t, n, "@alice:localhost", testPassword)
	if a.AccessToken == b.AccessToken || a.DeviceID == b.DeviceID {
		t.Fatal("two logins share a token or device")
	}
	var legacy mautrix.RespLogin
	if _, err := anon.MakeRequest(ctx, "POST", anon.BuildClientURL("v3", "login"),
		map[string]any{"type": "m.login.password", "user": "alice", "password": testPassword}, &legacy); err != nil {
		t.Fatalf("legacy user field: %v", err)
	}
	if legacy.UserID != "@alice:localhost" || legacy.AccessToken == "" {
		t.Fatalf("legacy login %+v", legacy)
	}
	for _, c := range []*mautrix.Client{a, b} {
		if who, err := c.Whoami(ctx); err != nil || who.UserID != "@alice:localhost" || who.DeviceID != c.DeviceID {
			t.Fatalf("whoami = %+v, %v", who, err)
		}
	}

	// Logging in again with a device ID replaces that device's token.
	again, err := anon.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
		Password:   testPassword, DeviceID: a.DeviceID})
	if err != nil || again.DeviceID != a.DeviceID {
		t.Fatalf("login with device_id: %+v %v", again, err)
	}
	_, err = a.Whoami(ctx)
	wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")

	for _, bad := range []struct{ user, password string }{
		{"alice", "wrong password"}, {"nobody", testPassword}, {"@alice:elsewhere.example", testPassword}, {"alice", ""},
	} {
		_, err := anon.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: bad.user}, Password: bad.password})
		wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	}
	_, err = anon.Login(ctx, &mautrix.ReqLogin{Type: "m.login.magic", Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}})
	wantMatrixErr(t, err, 400, "M_UNKNOWN")
}

func TestAccountLogout(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	first := n.register(t, "alice")
	second := loginPassword(t, n, "alice", testPassword)
	third := loginPassword(t, n, "alice", testPassword)

	if _, err := first.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := first.Whoami(ctx)
	wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")
	_, err = first.JoinedRooms(ctx)
	wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")
	if _, err := second.Whoami(ctx); err != nil {
		t.Fatalf("logging out one device ended another: %v", err)
	}
	devices, err := second.GetDevicesInfo(ctx)
	if err == nil {
		for _, d := range devices.Devices {
			if d.DeviceID == first.DeviceID {
				t.Errorf("logged-out device %s still listed", d.DeviceID)
			}
		}
	}

	if _, err := second.LogoutAll(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{second, third} {
		_, err = c.Whoami(ctx)
		wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")
	}
	// The account itself survives.
	loginPassword(t, n, "alice", testPassword)
}

func TestAccountPasswordChange(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	main := n.register(t, "alice")
	other := loginPassword(t, n, "alice", testPassword)
	url := main.BuildClientURL("v3", "account", "password")

	session := uiaStart(t, main, url, map[string]any{"new_password": "a new secret"}, "m.login.password")
	// A wrong password fails the stage with M_FORBIDDEN and keeps the session.
	raw, _ := jsonBytes(map[string]any{"new_password": "a new secret", "auth": passwordAuth(main, "not it", session)})
	if r := doRaw(t, main, "POST", url, raw, nil); r.Status != 401 || r.Body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong password: HTTP %d %s", r.Status, r.Raw)
	}
	// Someone else's session cannot be borrowed.
	bob := n.register(t, "bob")
	raw, _ = jsonBytes(map[string]any{"new_password": "bob's new secret", "auth": passwordAuth(bob, testPassword, session)})
	if r := doRaw(t, bob, "POST", url, raw, nil); r.Status == 200 {
		t.Fatal("bob completed alice's UIA session")
	}
	raw, _ = jsonBytes(map[string]any{"new_password": "a new secret", "auth": passwordAuth(main, testPassword, session)})
	if r := doRaw(t, main, "POST", url, raw, nil); r.Status != 200 {
		t.Fatalf("change password: HTTP %d %s", r.Status, r.Raw)
	}
	if _, err := main.Whoami(ctx); err != nil {
		t.Fatalf("the changing device was logged out: %v", err)
	}
	_, err := other.Whoami(ctx)
	wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")
	_, err = newAnon(t, n).Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: testPassword})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	other = loginPassword(t, n, "alice", "a new secret")

	// logout_devices=false keeps the other devices; a weak password is refused.
	session = uiaStart(t, main, url, map[string]any{"new_password": "third secret", "logout_devices": false}, "m.login.password")
	raw, _ = jsonBytes(map[string]any{"new_password": "x", "logout_devices": false, "auth": passwordAuth(main, "a new secret", session)})
	if r := doRaw(t, main, "POST", url, raw, nil); r.Status != 400 || r.Body["errcode"] != "M_WEAK_PASSWORD" {
		t.Fatalf("weak new password: HTTP %d %s", r.Status, r.Raw)
	}
	session = uiaStart(t, main, url, map[string]any{"new_password": "third secret", "logout_devices": false}, "m.login.password")
	raw, _ = jsonBytes(map[string]any{"new_password": "third secret", "logout_devices": false, "auth": passwordAuth(main, "a new secret", session)})
	if r := doRaw(t, main, "POST", url, raw, nil); r.Status != 200 {
		t.Fatalf("change password keeping devices: HTTP %d %s", r.Status, r.Raw)
	}
	if _, err := other.Whoami(ctx); err != nil {
		t.Fatalf("logout_devices=false logged a device out: %v", err)
	}
	loginPassword(t, n, "alice", "third secret")
}

func TestAccountDeactivate(t *testing.T) {
	n := startNode(t)
	ctx := ctxT(t)
	alice := n.register(t, "alice")
	bob := n.register(t, "bob")
	roomID := mustCreateRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := alice.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	aliceRoom := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})

	url := alice.BuildClientURL("v3", "account", "deactivate")
	session := uiaStart(t, alice, url, map[string]any{}, "m.login.password")
	raw, _ := jsonBytes(map[string]any{"auth": passwordAuth(alice, testPassword, session)})
	if r := doRaw(t, alice, "POST", url, raw, nil); r.Status != 200 || r.Body["id_server_unbind_result"] == nil {
		t.Fatalf("deactivate: HTTP %d %s", r.Status, r.Raw)
	}

	_, err := alice.Whoami(ctx)
	wantMatrixErr(t, err, 401, "M_UNKNOWN_TOKEN")
	_, err = newAnon(t, n).Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: testPassword})
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	// A deactivated user ID is never handed out again.
	_, err = newAnon(t, n).RegisterAvailable(ctx, "alice")
	wantMatrixErr(t, err, 400, "M_USER_IN_USE")

	// She left both rooms.
	for _, r := range []id.RoomID{roomID, aliceRoom} {
		var member event.MemberEventContent
		if r == aliceRoom {
			if _, err := bob.JoinRoomByID(ctx, r); err != nil {
				t.Fatalf("bob joins alice's room: %v", err)
			}
		}
		if err := bob.StateEvent(ctx, r, event.StateMember, alice.UserID.String(), &member); err != nil {
			t.Fatal(err)
		}
		if member.Membership != event.MembershipLeave {
			t.Errorf("alice's membership in %s after deactivation = %q", r, member.Membership)
		}
	}
	joined, err := bob.JoinedMembers(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	if _, still := joined.Joined[alice.UserID]; still {
		t.Error("alice still listed in joined_members")
	}
}

func TestAccountRateLimits(t *testing.T) {
	n := startNode(t, func(c *config.Config) {
		c.RateLimits.LoginPerSecond, c.RateLimits.LoginBurst = 0.01, 3
		c.RateLimits.SendPerSecond, c.RateLimits.SendBurst = 0.01, 5
	})
	ctx := ctxT(t)
	alice := n.register(t, "alice")
	anon := newAnon(t, n)
	login := func() error {
		_, err := anon.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: testPassword})
		return err
	}
	for i := range 3 {
		if err := login(); err != nil {
			t.Fatalf("login %d within the burst: %v", i, err)
		}
	}
	err := login()
	wantMatrixErr(t, err, 429, "M_LIMIT_EXCEEDED")
	var he mautrix.HTTPError
	if !asHTTPError(err, &he) || he.RespError.ExtraData["retry_after_ms"] == nil {
		t.Fatalf("429 without retry_after_ms: %v", err)
	}
	if ms, _ := he.RespError.ExtraData["retry_after_ms"].(float64); ms < 1 {
		t.Errorf("retry_after_ms = %v", ms)
	}
	if he.Response.Header.Get("Retry-After") == "" {
		t.Error("429 without a Retry-After header")
	}
	// Wrong passwords count too, so the limit stops guessing.
	_, err = anon.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "guess"})
	wantMatrixErr(t, err, 429, "M_LIMIT_EXCEEDED")

	// Sending is limited per user; the room creation took one token.
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	txn := mautrix.ReqSendEvent{TransactionID: "retry-me"}
	first, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]string{"msgtype": "m.text", "body": "x"}, txn)
	if err != nil {
		t.Fatal(err)
	}
	var limited error
	for i := range 10 {
		if _, err := alice.SendText(ctx, roomID, "spam"); err != nil {
			limited = err
			if i < 3 {
				t.Fatalf("send %d limited inside the burst: %v", i, err)
			}
			break
		}
	}
	wantMatrixErr(t, limited, 429, "M_LIMIT_EXCEEDED")
	// A retried transaction is answered from the record, not limited.
	again, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]string{"msgtype": "m.text", "body": "x"}, txn)
	if err != nil || again.EventID != first.EventID {
		t.Fatalf("retried transaction: %v %v, want %s", again, err, first.EventID)
	}
}

func TestAccountSecretsHashed(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "alice")
	other := loginPassword(t, n, "alice", testPassword)
	token, token2 := alice.AccessToken, other.AccessToken
	n.stop()

	raw, err := os.ReadFile(filepath.Join(n.Dir, "edge.db"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte("@alice:localhost")) {
		t.Fatal("edge.db does not mention alice: wrong file?")
	}
	for _, secret := range []string{token, token2, testPassword} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("edge.db contains %q in clear", secret)
		}
	}
}

func TestAccountSharedSecretRegistration(t *testing.T) {
	n := startNode(t, func(c *config.Config) { c.Registration.SharedSecret = "s3cret" })
	ctx := ctxT(t)
	anon := newAnon(t, n)
	url := n.URL + "/_synapse/admin/v1/register"
	nonce := func() string {
		t.Helper()
		var r struct {
			Nonce string `json:"nonce"`
		}
		if _, err := anon.MakeRequest(ctx, "GET", url, nil, &r); err != nil || r.Nonce == "" {
			t.Fatalf("nonce: %q %v", r.Nonce, err)
		}
		return r.Nonce
	}
	body := func(nonce, user string, admin bool, secret string) map[string]any {
		return map[string]any{"nonce": nonce, "username": user, "password": testPassword, "admin": admin,
			"mac": client.SharedSecretMAC(secret, nonce, user, testPassword, admin)}
	}
	var resp mautrix.RespRegister
	// A wrong MAC is refused, and burns the nonce.
	used := nonce()
	_, err := anon.MakeRequest(ctx, "POST", url, body(used, "root", true, "guess"), &resp)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = anon.MakeRequest(ctx, "POST", url, body(used, "root", true, "s3cret"), &resp)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")
	_, err = anon.MakeRequest(ctx, "POST", url, body("made-up", "root", true, "s3cret"), &resp)
	wantMatrixErr(t, err, 403, "M_FORBIDDEN")

	if _, err := anon.MakeRequest(ctx, "POST", url, body(nonce(), "root", true, "s3cret"), &resp); err != nil {
		t.Fatal(err)
	}
	if resp.UserID != "@root:localhost" || resp.AccessToken == "" {
		t.Fatalf("admin register response %+v", resp)
	}
	root := newAnon(t, n)
	root.SetCredentials(resp.UserID, resp.AccessToken)
	if who, err := root.Whoami(ctx); err != nil || who.UserID != resp.UserID {
		t.Fatalf("whoami: %v %v", who, err)
	}
	var admin bool
	_ = n.Store.View(func(tx *store.Tx) error {
		u, err := tx.User("root")
		admin = err == nil && u.Admin
		return nil
	})
	if !admin {
		t.Error("admin=true did not make an admin")
	}
	_, err = anon.MakeRequest(ctx, "POST", url, body(nonce(), "root", false, "s3cret"), &resp)
	wantMatrixErr(t, err, 400, "M_USER_IN_USE")
	_, err = anon.MakeRequest(ctx, "POST", url, body(nonce(), "Bad Name", false, "s3cret"), &resp)
	wantMatrixErr(t, err, 400, "M_INVALID_USERNAME")
	loginPassword(t, n, "root", testPassword)

	// Without a secret the endpoint does not exist.
	closed := startNode(t, func(c *config.Config) { c.Registration.SharedSecret = "" })
	_, err = newAnon(t, closed).MakeRequest(ctx, "GET", closed.URL+"/_synapse/admin/v1/register", nil, &resp)
	wantMatrixErr(t, err, 404, "M_NOT_FOUND")
}
