package integration

import (
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
)

func TestPushers(t *testing.T) {
	n := startNode(t)
	alice := n.register(t, "")
	bob := n.register(t, "")
	ctx := ctxT(t)
	list := func(c *mautrix.Client) []map[string]any {
		t.Helper()
		var resp struct {
			Pushers []map[string]any `json:"pushers"`
		}
		if _, err := c.MakeRequest(ctx, http.MethodGet, c.BuildClientURL("v3", "pushers"), nil, &resp); err != nil {
			t.Fatal(err)
		}
		return resp.Pushers
	}
	set := func(c *mautrix.Client, body map[string]any) error {
		_, err := c.MakeRequest(ctx, http.MethodPost, c.BuildClientURL("v3", "pushers", "set"), body, nil)
		return err
	}
	httpPusher := func(pushkey string) map[string]any {
		return map[string]any{
			"kind": "http", "app_id": "im.vector.app.android", "pushkey": pushkey,
			"app_display_name": "Element", "device_display_name": "phone", "lang": "en",
			"data": map[string]any{"url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only"},
		}
	}
	if got := list(alice); len(got) != 0 {
		t.Fatalf("new user has pushers: %v", got)
	}
	if err := set(alice, httpPusher("key-1")); err != nil {
		t.Fatal(err)
	}
	got := list(alice)
	if len(got) != 1 || got[0]["pushkey"] != "key-1" || got[0]["kind"] != "http" {
		t.Fatalf("alice's pushers = %v", got)
	}
	// Bob registering the same app_id + pushkey without append takes it over.
	if err := set(bob, httpPusher("key-1")); err != nil {
		t.Fatal(err)
	}
	if got := list(alice); len(got) != 0 {
		t.Fatalf("alice's pusher survived bob's takeover: %v", got)
	}
	// kind null deletes.
	del := httpPusher("key-1")
	del["kind"] = nil
	if err := set(bob, del); err != nil {
		t.Fatal(err)
	}
	if got := list(bob); len(got) != 0 {
		t.Fatalf("deleted pusher still listed: %v", got)
	}
	bad := httpPusher("key-2")
	bad["data"] = map[string]any{"url": "https://push.example.org/elsewhere"}
	wantMatrixErr(t, set(alice, bad), 400, "M_INVALID_PARAM")
	wantMatrixErr(t, set(alice, map[string]any{"kind": "http", "pushkey": "k"}), 400, "M_MISSING_PARAM")
	email := httpPusher("a@example.org")
	email["kind"] = "email"
	wantMatrixErr(t, set(alice, email), 400, "M_INVALID_PARAM")
}
