package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// devicesPassword is what testNode.register gives every user.
const devicesPassword = "correct horse battery"

// devicesLogin logs user in again as a new device with a display name.
func devicesLogin(t testing.TB, n *testNode, user id.UserID, deviceID id.DeviceID, name string) *mautrix.Client {
	t.Helper()
	c, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Login(ctxT(t), &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user.String()},
		Password:                 devicesPassword,
		DeviceID:                 deviceID,
		InitialDeviceDisplayName: name,
		StoreCredentials:         true,
	})
	if err != nil {
		t.Fatalf("login %s/%s: %v", user, deviceID, err)
	}
	return c
}

// devicesUIA makes a request that must answer with a 401 user-interactive
// auth challenge, and decodes the challenge. (mautrix's helpers drop the
// body of an error without an errcode, so this goes through MakeRequest.)
func devicesUIA(t testing.TB, c *mautrix.Client, method, url string, body any) *mautrix.RespUserInteractive {
	t.Helper()
	contents, err := c.MakeRequest(ctxT(t), method, url, body, nil)
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusUnauthorized {
		t.Fatalf("want a 401 UIA challenge, got %v", err)
	}
	var uia mautrix.RespUserInteractive
	if err := json.Unmarshal(contents, &uia); err != nil {
		t.Fatalf("UIA body %q: %v", contents, err)
	}
	return &uia
}

func devicesPasswordAuth(user id.UserID, password, session string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": user.String()},
		"password":   password,
		"session":    session,
	}
}

func TestDevicesListGetUpdate(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	phone := devicesLogin(t, n, alice.UserID, "PHONE", "Alice's phone")
	ctx := ctxT(t)

	list, err := alice.GetDevicesInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[id.DeviceID]mautrix.RespDeviceInfo{}
	for _, d := range list.Devices {
		byID[d.DeviceID] = d
	}
	if len(byID) != 2 {
		t.Fatalf("devices = %+v", list.Devices)
	}
	ph, ok := byID["PHONE"]
	if !ok || ph.DisplayName != "Alice's phone" || ph.LastSeenTS == 0 || ph.LastSeenIP != "127.0.0.1" {
		t.Fatalf("PHONE = %+v", ph)
	}
	if _, ok := byID[alice.DeviceID]; !ok {
		t.Fatalf("registering device %s missing", alice.DeviceID)
	}

	// One device, and renaming it from another of the user's devices.
	if err := alice.SetDeviceInfo(ctx, "PHONE", &mautrix.ReqDeviceInfo{DisplayName: "Old phone"}); err != nil {
		t.Fatal(err)
	}
	got, err := phone.GetDeviceInfo(ctx, "PHONE")
	if err != nil || got.DisplayName != "Old phone" || got.DeviceID != "PHONE" {
		t.Fatalf("after rename = %+v, %v", got, err)
	}
	// A body without display_name leaves the name alone.
	st, body := udDo(t, alice, http.MethodPut, alice.BuildClientURL("v3", "devices", "PHONE"), map[string]any{})
	udWantStatus(t, st, body, 200, "")
	if got, err := alice.GetDeviceInfo(ctx, "PHONE"); err != nil || got.DisplayName != "Old phone" {
		t.Fatalf("after empty update = %+v, %v", got, err)
	}

	// Unknown devices, and other users' devices, are 404s.
	_, err = alice.GetDeviceInfo(ctx, "NOSUCHDEVICE")
	udWantErr(t, err, 404, "M_NOT_FOUND")
	udWantErr(t, alice.SetDeviceInfo(ctx, "NOSUCHDEVICE", &mautrix.ReqDeviceInfo{DisplayName: "x"}), 404, "M_NOT_FOUND")
	_, err = alice.GetDeviceInfo(ctx, bob.DeviceID)
	udWantErr(t, err, 404, "M_NOT_FOUND")
	udWantErr(t, alice.SetDeviceInfo(ctx, bob.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "mine now"}), 404, "M_NOT_FOUND")
	if bd, err := bob.GetDeviceInfo(ctx, bob.DeviceID); err != nil || bd.DisplayName == "mine now" {
		t.Fatalf("bob's device = %+v, %v", bd, err)
	}
	// Names over 100 characters, wrong types.
	udWantErr(t, alice.SetDeviceInfo(ctx, "PHONE", &mautrix.ReqDeviceInfo{DisplayName: strings.Repeat("n", 101)}), 400, "M_TOO_LARGE")
	st, body = udDo(t, alice, http.MethodPut, alice.BuildClientURL("v3", "devices", "PHONE"), map[string]any{"display_name": 7})
	udWantStatus(t, st, body, 400, "M_BAD_JSON")
	// Bob's list holds only his own.
	bl, err := bob.GetDevicesInfo(ctx)
	if err != nil || len(bl.Devices) != 1 || bl.Devices[0].DeviceID != bob.DeviceID {
		t.Fatalf("bob's devices = %+v, %v", bl, err)
	}
}

func TestDevicesDeleteUIA(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	old := devicesLogin(t, n, alice.UserID, "OLDLAPTOP", "laptop")
	ctx := ctxT(t)

	// First request: a 401 listing the password flow and a session, no errcode.
	oldURL := alice.BuildClientURL("v3", "devices", "OLDLAPTOP")
	uia := devicesUIA(t, alice, http.MethodDelete, oldURL, map[string]any{})
	if uia.Session == "" || !uia.HasSingleStageFlow(mautrix.AuthTypePassword) || uia.ErrCode != "" {
		t.Fatalf("challenge = %+v", uia)
	}
	// A wrong password: still 401, now with M_FORBIDDEN, same session.
	retry := devicesUIA(t, alice, http.MethodDelete, oldURL, map[string]any{"auth": devicesPasswordAuth(alice.UserID, "wrong password", uia.Session)})
	if retry.ErrCode != "M_FORBIDDEN" || retry.Session != uia.Session {
		t.Fatalf("wrong password = %+v", retry)
	}
	if _, err := old.Whoami(ctx); err != nil {
		t.Fatalf("device deleted without auth: %v", err)
	}
	// The right password completes it.
	if err := alice.DeleteDevice(ctx, "OLDLAPTOP", &mautrix.ReqDeleteDevice[any]{Auth: devicesPasswordAuth(alice.UserID, devicesPassword, uia.Session)}); err != nil {
		t.Fatal(err)
	}
	_, err := old.Whoami(ctx)
	udWantErr(t, err, 401, "M_UNKNOWN_TOKEN")
	list, err := alice.GetDevicesInfo(ctx)
	if err != nil || len(list.Devices) != 1 || list.Devices[0].DeviceID != alice.DeviceID {
		t.Fatalf("devices after delete = %+v, %v", list, err)
	}
	// Deleting it again still asks for auth, then succeeds: it is gone either way.
	again := devicesUIA(t, alice, http.MethodDelete, oldURL, nil)
	if err := alice.DeleteDevice(ctx, "OLDLAPTOP", &mautrix.ReqDeleteDevice[any]{Auth: devicesPasswordAuth(alice.UserID, devicesPassword, again.Session)}); err != nil {
		t.Fatal(err)
	}
	// A session cannot be reused once it completed.
	err = alice.DeleteDevice(ctx, alice.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: map[string]any{"type": "m.login.password", "session": uia.Session}})
	udWantErr(t, err, 400, "M_UNKNOWN")
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatalf("current device hurt by a bad session: %v", err)
	}
}

func TestDevicesBulkDelete(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	d1 := devicesLogin(t, n, alice.UserID, "D1", "")
	d2 := devicesLogin(t, n, alice.UserID, "D2", "")
	keep := devicesLogin(t, n, alice.UserID, "KEEP", "")
	ctx := ctxT(t)

	// The devices list is required.
	st, body := udDo(t, alice, http.MethodPost, alice.BuildClientURL("v3", "delete_devices"), map[string]any{})
	udWantStatus(t, st, body, 400, "M_MISSING_PARAM")

	req := &mautrix.ReqDeleteDevices[any]{Devices: []id.DeviceID{"D1", "D2", "NEVERWAS", bob.DeviceID}}
	uia := devicesUIA(t, alice, http.MethodPost, alice.BuildClientURL("v3", "delete_devices"), req)
	if !uia.HasSingleStageFlow(mautrix.AuthTypePassword) {
		t.Fatalf("challenge = %+v", uia)
	}
	req.Auth = devicesPasswordAuth(alice.UserID, devicesPassword, uia.Session)
	if err := alice.DeleteDevices(ctx, req); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{d1, d2} {
		_, err := c.Whoami(ctx)
		udWantErr(t, err, 401, "M_UNKNOWN_TOKEN")
	}
	for _, c := range []*mautrix.Client{keep, alice, bob} {
		if _, err := c.Whoami(ctx); err != nil {
			t.Fatalf("%s/%s lost its token: %v", c.UserID, c.DeviceID, err)
		}
	}
	// Another user's device ID in the list is not theirs to delete.
	if bd, err := bob.GetDeviceInfo(ctx, bob.DeviceID); err != nil || bd.DeviceID != bob.DeviceID {
		t.Fatalf("bob's device = %+v, %v", bd, err)
	}
}
