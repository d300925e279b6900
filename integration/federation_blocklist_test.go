package integration

import (
	"errors"
	"strings"
	"testing"
	"time"

	"edge/edge/config"
	"edge/wellknown"
)

// TestFederationBlocklist: B is named "fed.test:PORT", and a DNS server
// on loopback (miekg/dns, configured as federation.nameservers) answers
// fed.test with 127.0.0.1. A node with allow_private_addresses off refuses
// it — key fetches, requests and its transaction queue alike — and never
// opens a connection to B; neither does it reach an IP-literal loopback
// peer. A node with it on reaches B through the same DNS answer.
func TestFederationBlocklist(t *testing.T) {
	ca := newFedCA(t)
	ns := startFedDNS(t, map[string]string{"fed.test": "127.0.0.1"})
	b := newFedNode(t, ca, fedOpts{host: "fed.test"})
	peer := newFedNode(t, ca, fedOpts{})
	withDNS := func(allow bool) func(*config.Config) {
		return func(c *config.Config) {
			c.Federation.Nameservers = []string{ns}
			c.Federation.AllowPrivateAddresses = allow
		}
	}
	strict := newFedNode(t, ca, fedOpts{cfg: withDNS(false)})
	lax := newFedNode(t, ca, fedOpts{cfg: withDNS(true)})
	ctx := ctxT(t)
	if !strings.HasPrefix(b.Name, "fed.test:") {
		t.Fatalf("B is named %s", b.Name)
	}
	bBefore, peerBefore := b.Accepted.Load(), peer.Accepted.Load()

	var v struct {
		Server struct{ Name string } `json:"server"`
	}
	for _, dest := range []string{b.Name, peer.Name} {
		err := strict.Fed.Client.Get(ctx, dest, "/_matrix/federation/v1/version", &v)
		if !errors.Is(err, wellknown.ErrPrivateAddress) {
			t.Errorf("strict node → %s: %v, want a refused private address", dest, err)
		}
	}
	if _, err := strict.Fed.Keyring.VerifyKey(ctx, b.Name, "ed25519:any", time.Now()); !errors.Is(err, wellknown.ErrPrivateAddress) {
		t.Errorf("strict node fetching B's keys: %v", err)
	}
	if err := strict.Fed.Queue.SendEDU(b.Name, fedEDU("m.test", map[string]any{"n": 1})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the strict node's queue to fail", func() bool {
		return fedQueueStatus(t, strict.MetricsURL, b.Name).Failures >= 1
	})
	if st := fedQueueStatus(t, strict.MetricsURL, b.Name); st.Pending != 1 || !strings.Contains(st.LastError, "loopback") {
		t.Errorf("strict node's queue for B: %+v", st)
	}
	if n := b.Accepted.Load() - bBefore; n != 0 {
		t.Errorf("B accepted %d connections from the strict node", n)
	}
	if n := peer.Accepted.Load() - peerBefore; n != 0 {
		t.Errorf("the loopback peer accepted %d connections from the strict node", n)
	}

	// The same name, the same DNS answer, private addresses allowed.
	if err := lax.Fed.Client.Get(ctx, b.Name, "/_matrix/federation/v1/version", &v); err != nil || v.Server.Name != "edge" {
		t.Fatalf("lax node → B: %+v %v", v, err)
	}
	pub, err := lax.Fed.Keyring.VerifyKey(ctx, b.Name, b.signingKey().ID, time.Now())
	if err != nil || !pub.Equal(b.signingKey().Public()) {
		t.Fatalf("lax node fetching B's keys: %v", err)
	}
	if b.Accepted.Load() == bBefore {
		t.Error("B counted no connection from the lax node")
	}
}
