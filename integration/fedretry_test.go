package integration

import (
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"edge/edge/config"
)

// switchDNS is a DNS server on 127.0.0.1 whose A records can come and go,
// as a Docker network's names do while their containers stop and start.
type switchDNS struct {
	addr string
	mu   sync.Mutex
	a    map[string]string // lower-case name without the dot → IPv4
}

func startSwitchDNS(t *testing.T) *switchDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &switchDNS{addr: pc.LocalAddr().String(), a: map[string]string{}}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		d.mu.Lock()
		ip, ok := d.a[strings.ToLower(strings.TrimSuffix(q.Name, "."))]
		d.mu.Unlock()
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A:   net.ParseIP(ip).To4(),
			})
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return d
}

func (d *switchDNS) set(name, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ip == "" {
		delete(d.a, name)
	} else {
		d.a[name] = ip
	}
}

// TestFederationPeerBackAfterRestarts: as Complement's "stopped server"
// cases of TestToDeviceMessagesOverFederation and
// TestDeviceListsUpdateOverFederation. B (named peer.test, found through
// DNS) is stopped and its name gone from DNS; alice on A sends bob on B a
// to-device message and logs in a new device; A restarts and fails to
// reach B; then B starts and its name is back. Bob gets the message and
// alice's device-list change within seconds: A's retries must not keep
// reusing the empty DNS answer of B's absence.
func TestFederationPeerBackAfterRestarts(t *testing.T) {
	ca := newFedCA(t)
	ns := startSwitchDNS(t)
	ns.set("peer.test", "127.0.0.1")
	b := newFedNode(t, ca, fedOpts{host: "peer.test"})
	a := newFedNode(t, ca, fedOpts{cfg: func(c *config.Config) {
		c.Federation.Nameservers = []string{ns.addr}
		// Retries come quickly, so only the DNS cache can delay them.
		c.Federation.RetryMinInterval = time.Second
	}})
	aT, bT := &testNode{URL: "http://" + a.ClientAddr}, &testNode{URL: "http://" + b.ClientAddr}
	alice, bob := aT.register(t, "alice"), bT.register(t, "bob")
	ctx := ctxT(t)

	roomID := mustCreateRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joins through A: %v", err)
	}
	since := ""
	syncBob := func() *mautrix.RespSync {
		resp, err := bob.SyncRequest(ctxT(t), 500, since, "", false, "")
		if err != nil {
			t.Fatalf("bob's sync: %v", err)
		}
		since = resp.NextBatch
		return resp
	}
	syncBob()

	b.stop()
	ns.set("peer.test", "")
	if _, err := alice.SendToDevice(ctx, event.Type{Type: "my.test.type", Class: event.ToDeviceEventType}, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{bob.UserID: {bob.DeviceID: {Raw: map[string]any{"my_key": "my_value"}}}},
	}); err != nil {
		t.Fatal(err)
	}
	newE2EEDevice(t, e2eeLogin(t, aT, alice.UserID, "second"))

	a.stop()
	a.start(t)
	waitFor(t, 15*time.Second, "A failing to reach B after its restart", func() bool {
		return fedQueueStatus(t, a.MetricsURL, b.Name).Failures >= 1
	})
	ns.set("peer.test", "127.0.0.1")
	b.start(t)

	var gotMessage, gotChange bool
	waitFor(t, 15*time.Second, "bob receiving alice's to-device message and device-list change", func() bool {
		resp := syncBob()
		for _, ev := range resp.ToDevice.Events {
			gotMessage = gotMessage || (ev.Sender == alice.UserID && ev.Type.Type == "my.test.type" && ev.Content.Raw["my_key"] == "my_value")
		}
		gotChange = gotChange || slices.Contains(resp.DeviceLists.Changed, alice.UserID)
		return gotMessage && gotChange
	})
}
