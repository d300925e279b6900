package integration

import (
	"net/http"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
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
	// An incremental sync carries the deletion as empty content.
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
}

// MSC4306: manual and automatic thread subscriptions, the cause event's
// checks, and an unsubscription refusing automatic subscriptions caused
// by events older than it.
func TestMSCThreadSubscriptions(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{})
	send := func(content map[string]any) string {
		t.Helper()
		resp, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventMessage, content)
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID.String()
	}
	root := send(map[string]any{"msgtype": "m.text", "body": "root"})
	inThread := func(body string) map[string]any {
		return map[string]any{"msgtype": "m.text", "body": body,
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}
	}
	reply1 := send(inThread("one"))
	url := func(threadRoot string) string {
		return n.URL + "/_matrix/client/unstable/io.element.msc4306/rooms/" + roomID.String() + "/thread/" + threadRoot + "/subscription"
	}
	expect := func(method, threadRoot string, body any, status int, errcode string) map[string]any {
		t.Helper()
		got, resp := udDo(t, alice, method, url(threadRoot), body)
		if got != status || (errcode != "" && resp["errcode"] != errcode) {
			t.Fatalf("%s %s %v: %d %v, want %d %s", method, threadRoot, body, got, resp, status, errcode)
		}
		return resp
	}

	expect("GET", root, nil, 404, "M_NOT_FOUND")
	expect("PUT", "$nope:localhost", map[string]any{}, 404, "M_NOT_FOUND")
	expect("PUT", root, map[string]any{"automatic": root}, 400, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD")
	expect("PUT", root, map[string]any{"automatic": 5}, 400, "M_BAD_JSON")
	expect("PUT", root, map[string]any{"automatic": reply1}, 200, "")
	if r := expect("GET", root, nil, 200, ""); r["automatic"] != true {
		t.Fatalf("after automatic subscribe: %v", r)
	}
	expect("PUT", root, map[string]any{}, 200, "")
	if r := expect("GET", root, nil, 200, ""); r["automatic"] != false {
		t.Fatalf("after manual subscribe: %v", r)
	}
	// An automatic subscription does not downgrade a manual one.
	expect("PUT", root, map[string]any{"automatic": reply1}, 200, "")
	if r := expect("GET", root, nil, 200, ""); r["automatic"] != false {
		t.Fatalf("automatic over manual: %v", r)
	}
	reply2 := send(inThread("two"))
	expect("DELETE", root, nil, 200, "")
	expect("DELETE", root, nil, 200, "") // idempotent
	expect("GET", root, nil, 404, "M_NOT_FOUND")
	reply3 := send(inThread("three"))
	for _, old := range []string{reply1, reply2} {
		expect("PUT", root, map[string]any{"automatic": old}, 409, "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION")
		expect("GET", root, nil, 404, "M_NOT_FOUND")
	}
	expect("PUT", root, map[string]any{"automatic": reply3}, 200, "")
	expect("GET", root, nil, 200, "")

	// A reply in another thread is not a cause for this one.
	other := send(map[string]any{"msgtype": "m.text", "body": "other root"})
	resp, err := alice.SendMessageEvent(ctxT(t), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "x",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": other}})
	if err != nil {
		t.Fatal(err)
	}
	expect("PUT", root, map[string]any{"automatic": resp.EventID.String()}, 400, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD")

	// Someone outside the room sees nothing of it.
	bob := n.register(t, "")
	if got, r := udDo(t, bob, "PUT", url(root), map[string]any{}); got != 404 {
		t.Fatalf("non-member PUT: %d %v", got, r)
	}
}

// MSC4155: invite filtering by user and server globs, for invites from
// this server's users and over federation: blocked invites are refused
// with 403, ignored ones succeed for the inviter but never reach the
// invitee, and a user rule beats a server rule.
func TestMSCInviteFiltering(t *testing.T) {
	ca := newRFCA(t)
	a, b := startRFNode(t, ca), startRFNode(t, ca)
	bob := a.register(t, "")   // a local inviter
	carol := b.register(t, "") // a remote inviter
	setConfig := func(c *mautrix.Client, cfg map[string]any) {
		t.Helper()
		if err := c.SetAccountData(ctxT(t), "org.matrix.msc4155.invite_permission_config", cfg); err != nil {
			t.Fatal(err)
		}
	}
	invite := func(inviter, invitee *mautrix.Client) (id.RoomID, error) {
		t.Helper()
		roomID := mustCreateRoom(t, inviter, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		_, err := inviter.InviteUser(ctxT(t), roomID, &mautrix.ReqInviteUser{UserID: invitee.UserID})
		return roomID, err
	}
	mustRefuse := func(inviter, invitee *mautrix.Client) {
		t.Helper()
		_, err := invite(inviter, invitee)
		udWantErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	}
	invites := func(c *mautrix.Client) map[id.RoomID]*mautrix.SyncInvitedRoom {
		t.Helper()
		resp, err := c.SyncRequest(ctxT(t), 0, "", "", false, event.PresenceOnline)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Rooms.Invite
	}

	// Blocking a user, locally and over federation.
	alice := a.register(t, "")
	// (a malformed field counts as empty without voiding the others)
	setConfig(alice, map[string]any{"blocked_users": []string{bob.UserID.String(), "@" + carol.UserID.Localpart() + ":*"},
		"allowed_servers": "not a list"})
	mustRefuse(bob, alice)
	mustRefuse(carol, alice)
	if inv := invites(alice); len(inv) != 0 {
		t.Fatalf("blocked invites reached alice: %v", inv)
	}

	// Ignoring a whole server: the inviter succeeds, alice sees nothing,
	// and the inviting server has the invite in the room.
	alice = a.register(t, "")
	setConfig(alice, map[string]any{"ignored_servers": []string{b.Name}, "ignored_users": nil})
	roomID, err := invite(carol, alice)
	if err != nil {
		t.Fatalf("an ignored invite must succeed for the inviter: %v", err)
	}
	if m := rfMembership(t, carol, roomID, alice.UserID); m != "invite" {
		t.Fatalf("B's room has alice as %q, want invite", m)
	}
	if inv := invites(alice); len(inv) != 0 {
		t.Fatalf("an ignored invite reached alice: %v", inv)
	}

	// A user rule beats a server rule: every server is blocked ("?" and
	// "*" globs) but carol is allowed.
	alice = a.register(t, "")
	setConfig(alice, map[string]any{"blocked_servers": []string{"127.0.0.?:*"}, "allowed_users": []string{carol.UserID.String()}})
	mustRefuse(bob, alice)
	allowed, err := invite(carol, alice)
	if err != nil {
		t.Fatalf("an allowed user's invite: %v", err)
	}
	if inv := invites(alice); inv[allowed] == nil || len(inv) != 1 {
		t.Fatalf("alice's invites = %v, want only %s", inv, allowed)
	}
	if _, err := alice.JoinRoomByID(ctxT(t), allowed); err != nil {
		t.Fatalf("joining the allowed invite: %v", err)
	}

	// A sync with no invites leaves rooms.invite out, as Synapse does.
	fresh := a.register(t, "")
	status, resp := udDo(t, fresh, "GET", a.URL+"/_matrix/client/v3/sync", nil)
	if rooms, _ := resp["rooms"].(map[string]any); status != 200 || rooms == nil || rooms["invite"] != nil || rooms["join"] != nil {
		t.Fatalf("empty sync: %d %v", status, resp)
	}
}

// Threaded read receipts and unread_thread_notifications: a thread's
// notifications are counted apart when the filter asks, and each kind of
// receipt clears only what it covers.
func TestThreadedReceiptCounts(t *testing.T) {
	n := startNode(t)
	alice, bob := n.register(t, ""), n.register(t, "")
	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctxT(t), roomID); err != nil {
		t.Fatal(err)
	}
	send := func(evType event.Type, content map[string]any) string {
		t.Helper()
		resp, err := alice.SendMessageEvent(ctxT(t), roomID, evType, content)
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID.String()
	}
	msg := func(body, relType, parent string) map[string]any {
		c := map[string]any{"msgtype": "m.text", "body": body}
		if relType != "" {
			c["m.relates_to"] = map[string]any{"rel_type": relType, "event_id": parent}
		}
		return c
	}
	// A <- B, C (mention), E in A's thread; D (mention) in the main
	// timeline; F references A and G annotates F.
	evA := send(event.EventMessage, msg("root", "", ""))
	evB := send(event.EventMessage, msg("in thread", "m.thread", evA))
	send(event.EventMessage, msg("hey "+bob.UserID.String(), "m.thread", evA))
	evD := send(event.EventMessage, msg("hello "+bob.UserID.String(), "", ""))
	send(event.EventMessage, msg("end thread", "m.thread", evA))
	evF := send(event.EventMessage, msg("reference", "m.reference", evA))
	evG := send(event.EventReaction, map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": evF, "key": "x"}})

	// counts syncs bob with or without the thread filter and returns the
	// room's unread_notifications and unread_thread_notifications.
	counts := func(threaded bool) (notif, highlight float64, threads map[string]any) {
		t.Helper()
		u := n.URL + "/_matrix/client/v3/sync"
		if threaded {
			u += "?filter=" + url.QueryEscape(`{"room":{"timeline":{"unread_thread_notifications":true}}}`)
		}
		status, resp := udDo(t, bob, "GET", u, nil)
		if status != 200 {
			t.Fatalf("sync: %d %v", status, resp)
		}
		jr := resp["rooms"].(map[string]any)["join"].(map[string]any)[roomID.String()].(map[string]any)
		un := jr["unread_notifications"].(map[string]any)
		threads, _ = jr["unread_thread_notifications"].(map[string]any)
		if _, present := jr["unread_thread_notifications"]; present && (!threaded || len(threads) == 0) {
			t.Fatalf("unread_thread_notifications present (threaded=%v): %v", threaded, jr["unread_thread_notifications"])
		}
		return un["notification_count"].(float64), un["highlight_count"].(float64), threads
	}
	check := func(step string, total, totalHL, mainN, mainHL, threadN, threadHL float64) {
		t.Helper()
		if n, h, _ := counts(false); n != total || h != totalHL {
			t.Errorf("%s: unthreaded counts %v/%v, want %v/%v", step, n, h, total, totalHL)
		}
		n, h, threads := counts(true)
		if n != mainN || h != mainHL {
			t.Errorf("%s: main counts %v/%v, want %v/%v", step, n, h, mainN, mainHL)
		}
		th, _ := threads[evA].(map[string]any)
		if threadN == 0 {
			if th != nil {
				t.Errorf("%s: thread counts %v, want none", step, th)
			}
		} else if th == nil || th["notification_count"] != threadN || th["highlight_count"] != threadHL {
			t.Errorf("%s: thread counts %v, want %v/%v", step, th, threadN, threadHL)
		}
	}
	receipt := func(eventID string, body map[string]any) {
		t.Helper()
		u := n.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID.String()) + "/receipt/m.read/" + url.PathEscape(eventID)
		if status, resp := udDo(t, bob, "POST", u, body); status != 200 {
			t.Fatalf("receipt %s %v: %d %v", eventID, body, status, resp)
		}
	}
	check("nothing read", 6, 2, 3, 1, 3, 1)
	receipt(evA, map[string]any{"thread_id": "main"})
	check("main read to A", 5, 2, 2, 1, 3, 1)
	receipt(evB, map[string]any{"thread_id": evA})
	check("thread read to B", 4, 2, 2, 1, 2, 1)
	receipt(evD, map[string]any{})
	check("all read to D", 2, 0, 1, 0, 1, 0)
	receipt(evG, map[string]any{"thread_id": evA})
	check("thread read to G", 1, 0, 1, 0, 0, 0)
	// New events add to the remembered counts, in their own thread.
	send(event.EventMessage, msg("more "+bob.UserID.String(), "m.thread", evA))
	check("a new thread mention", 2, 1, 1, 0, 1, 1)
	send(event.EventMessage, msg("main again", "", ""))
	check("a new main message", 3, 1, 2, 0, 1, 1)
}
