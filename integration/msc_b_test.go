package integration

import (
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// MSC3930: the poll rules are server defaults a client can read, with the
// one-to-one variants before the general ones.
func TestMSCPollPushRules(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	base := n.URL + "/_matrix/client/v3/pushrules/global/"
	status, rule := udDo(t, alice, "GET", base+"override/.org.matrix.msc3930.rule.poll_response", nil)
	if status != 200 || rule["default"] != true || len(rule["actions"].([]any)) != 0 {
		t.Fatalf("poll_response: %d %v", status, rule)
	}
	status, all := udDo(t, alice, "GET", base, nil)
	if status != 200 {
		t.Fatalf("GET pushrules: %d", status)
	}
	index := map[string]int{}
	for i, r := range all["underride"].([]any) {
		index[r.(map[string]any)["rule_id"].(string)] = i + 1
	}
	for _, pair := range [][2]string{{"poll_start_one_to_one", "poll_start"}, {"poll_end_one_to_one", "poll_end"}} {
		one, general := index[".org.matrix.msc3930.rule."+pair[0]], index[".org.matrix.msc3930.rule."+pair[1]]
		if one == 0 || general == 0 || one > general {
			t.Errorf("underride positions %s=%d %s=%d", pair[0], one, pair[1], general)
		}
	}
}

// MSC3890: deleting (logging out) a device deletes its local notification
// settings from the user's account data, and a later sync says so.
func TestMSCDeviceLocalNotificationSettingsGoWithDevice(t *testing.T) {
	n := startNode(t)
	one := n.register(t, "")
	two, err := mautrix.NewClient(n.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	login, err := two.Login(ctxT(t), &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: one.UserID.String()},
		Password:   "correct horse battery", StoreCredentials: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	typ := "org.matrix.msc3890.local_notification_settings." + login.DeviceID.String()
	other := "org.matrix.msc3890.local_notification_settings.SOMEOTHER"
	for _, ty := range []string{typ, other} {
		if err := one.SetAccountData(ctxT(t), ty, map[string]any{"is_silenced": true}); err != nil {
			t.Fatal(err)
		}
	}
	first, err := one.SyncRequest(ctxT(t), 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := two.Logout(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	err = one.GetAccountData(ctxT(t), typ, &got)
	udWantErr(t, err, http.StatusNotFound, "M_NOT_FOUND")
	// Another device's settings stay.
	if err := one.GetAccountData(ctxT(t), other, &got); err != nil || got["is_silenced"] != true {
		t.Fatalf("other device's settings: %v %v", got, err)
	}
	// An incremental sync carries the deletion as empty content; an
	// initial one no longer lists the type.
	inc, err := one.SyncRequest(ctxT(t), 0, first.NextBatch, "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range inc.AccountData.Events {
		if ev.Type.Type == typ {
			found = len(ev.Content.Raw) == 0
		}
	}
	if !found {
		t.Errorf("incremental sync lacks the emptied %s: %+v", typ, inc.AccountData.Events)
	}
	init, err := one.SyncRequest(ctxT(t), 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range init.AccountData.Events {
		if ev.Type.Type == typ {
			t.Errorf("initial sync still lists %s", typ)
		}
	}
}
