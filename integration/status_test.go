package integration

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"edge/edge/config"
	"edge/edge/status"
	"edge/edge/store"
)

// `edge status` against real nodes with TLS federation listeners.

// startStatusDNS serves zone (records in zone-file form) on loopback UDP;
// unknown names get NXDOMAIN.
func startStatusDNS(t *testing.T, zone ...string) string {
	t.Helper()
	var rrs []dns.RR
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatal(err)
		}
		rrs = append(rrs, rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q, known := req.Question[0], false
		for _, rr := range rrs {
			if h := rr.Header(); strings.EqualFold(h.Name, q.Name) {
				known = true
				if h.Rrtype == q.Qtype || h.Rrtype == dns.TypeCNAME {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
		if !known {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// statusOf inspects server as a node trusting ca would.
func statusOf(t *testing.T, ca *fedCA, server, nameserver, adminURL string, notaries ...status.Notary) *status.Report {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t)) // nothing answers the well-known
	wkPort, _ := strconv.Atoi(port)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := status.Inspect(ctx, server, status.Options{
		Nameservers: []string{nameserver}, RootCAs: ca.pool, AllowPrivate: true, Notaries: notaries,
		WellKnownPort: wkPort, Timeout: 5 * time.Second, AdminURL: adminURL,
	})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestStatusHealthyNode(t *testing.T) {
	ca := newFedCA(t)
	a := newFedNode(t, ca, fedOpts{})
	b := newFedNode(t, ca, fedOpts{})
	// b sends a an EDU, so b's own view of a has a success in it.
	if err := b.Store.Write(func(tx *store.Tx) error {
		b.Fed.Queue.SendEDUTx(tx, a.Name, fedEDU("m.test.status", map[string]any{}))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b's EDU to reach a", func() bool {
		return !fedQueueStatus(t, b.MetricsURL, a.Name).LastSuccess.IsZero()
	})
	rep := statusOf(t, ca, a.Name, startStatusDNS(t), b.MetricsURL, status.Notary{ServerName: b.Name})
	if !rep.FederationOK || len(rep.Failures) != 0 {
		t.Fatalf("want FederationOK, failures: %+v", rep.Failures)
	}
	if len(rep.Connections) != 1 || rep.Connections[0].Addr != a.FedAddr {
		t.Fatalf("connections: %+v", rep.Connections)
	}
	c := rep.Connections[0]
	ch := c.Checks
	key := a.signingKey().ID
	if !ch.AllChecksOK || !ch.MatchingServerName || !ch.ValidCertificates || !ch.FutureValidUntilTS || !ch.HasEd25519Key ||
		!ch.MatchingKeyServerName || !ch.Ed25519Checks[key].ValidEd25519 || !ch.Ed25519Checks[key].MatchingSignature {
		t.Fatalf("checks: %+v", ch)
	}
	if c.TLSVersion == "" || c.CipherSuite == "" || len(c.Certificates) == 0 || c.Certificates[0].SHA256Fingerprint == "" {
		t.Fatalf("TLS details: %+v", c)
	}
	if rep.Version == nil || rep.Version.Name == "" {
		t.Fatalf("version: %+v", rep.Version)
	}
	// The harness's certificates live 24 hours: well inside the warning window.
	if w := rep.Warnings; len(w) == 0 || !strings.Contains(statusFinding(w, "CertificateExpiry"), "days left") {
		t.Fatalf("no expiry warning for a 24h certificate: %+v", w)
	}
	// b, asked as a notary, fetched a's keys and agrees.
	if len(rep.Notaries) != 1 || !rep.Notaries[0].Match || rep.Notaries[0].Keys[key] == "" {
		t.Fatalf("notary: %+v", rep.Notaries)
	}
	if lv := rep.LocalView; lv == nil || !lv.Known || lv.LastSuccess.IsZero() || lv.SentTransactions == 0 || lv.Failures != 0 || lv.LastLatencyMS <= 0 {
		t.Fatalf("b's view of a: %+v", rep.LocalView)
	}
	var text strings.Builder
	status.WriteText(&text, rep)
	for _, want := range []string{"✓ MatchingServerName", "✓ " + key + " ValidEd25519, ✓ MatchingSignature", "notary " + b.Name + ": ✓ same keys", "this node: 0 pending", "FederationOK: ✓ yes"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q", want)
		}
	}
	t.Log("\n" + text.String())
}

func statusFinding(fs []status.Finding, check string) string {
	for _, f := range fs {
		if f.Check == check {
			return f.Reason
		}
	}
	return ""
}

func TestStatusWrongCertificateName(t *testing.T) {
	ca := newFedCA(t)
	n := newFedNode(t, ca, fedOpts{stopped: true})
	ca.issueFiles(t, n.Dir, "other.test") // replaces the certificate for 127.0.0.1
	n.start(t)
	rep := statusOf(t, ca, n.Name, startStatusDNS(t), "")
	if rep.FederationOK || len(rep.Connections) != 1 {
		t.Fatalf("FederationOK with a certificate for another name: %+v", rep.Connections)
	}
	ch := rep.Connections[0].Checks
	if ch.MatchingServerName || !ch.ValidCertificates || ch.AllChecksOK || !ch.AllEd25519ChecksOK {
		t.Fatalf("checks: %+v", ch)
	}
	if !strings.Contains(statusFinding(rep.Failures, "MatchingServerName"), "other.test") {
		t.Fatalf("failures: %+v", rep.Failures)
	}
}

// TestStatusSRVNode: a node named srv.test found through its SRV record.
func TestStatusSRVNode(t *testing.T) {
	ca := newFedCA(t)
	n := newFedNode(t, ca, fedOpts{host: "srv.test", cfg: func(c *config.Config) { c.ServerName = "srv.test" }})
	_, port, _ := net.SplitHostPort(n.FedAddr)
	ns := startStatusDNS(t,
		"_matrix-fed._tcp.srv.test. 60 IN SRV 10 5 "+port+" fed.srv.test.",
		"fed.srv.test. 60 IN CNAME srv.test.",
		"srv.test. 60 IN A 127.0.0.1",
	)
	rep := statusOf(t, ca, "srv.test", ns, "")
	if !rep.FederationOK {
		t.Fatalf("failures: %+v", rep.Failures)
	}
	srv := rep.DNS.SRV
	if len(srv) != 2 || srv[0].Name != "_matrix-fed._tcp.srv.test" || len(srv[0].Records) != 1 ||
		srv[0].Records[0].Target != "fed.srv.test" || strconv.Itoa(int(srv[0].Records[0].Port)) != port ||
		srv[1].Name != "_matrix._tcp.srv.test" || !srv[1].Deprecated || len(srv[1].Records) != 0 {
		t.Fatalf("SRV: %+v", srv)
	}
	if len(rep.DNS.CNAMEs) != 1 || rep.DNS.CNAMEs[0] != "fed.srv.test → srv.test" {
		t.Fatalf("CNAMEs: %v", rep.DNS.CNAMEs)
	}
	if rep.Resolution.Result.Step != "4" || rep.TLSServerName != "srv.test" || rep.DNS.Addrs[0] != n.FedAddr {
		t.Fatalf("step %s, TLS name %s, addrs %v", rep.Resolution.Result.Step, rep.TLSServerName, rep.DNS.Addrs)
	}
}

// TestStatusCommand runs `edge status --json` as a user would.
func TestStatusCommand(t *testing.T) {
	bin := buildEdge(t)
	ca := newFedCA(t)
	good := newFedNode(t, ca, fedOpts{})
	bad := newFedNode(t, ca, fedOpts{stopped: true})
	ca.issueFiles(t, bad.Dir, "other.test")
	bad.start(t)
	ns := startStatusDNS(t)

	run := func(args ...string) (int, status.Report, string) {
		t.Helper()
		code, out, errOut := edgeCmd(t, bin, append([]string{"status"}, args...)...)
		var rep status.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("edge status %v: output is not JSON (%v):\n%s\nstderr: %s", args, err, out, errOut)
		}
		return code, rep, errOut
	}
	code, rep, errOut := run("--json", "--trust-ca", ca.file, "--allow-private", "--nameserver", ns, good.Name)
	if code != 0 || !rep.FederationOK || rep.ServerName != good.Name || len(rep.Connections) != 1 {
		t.Fatalf("healthy: exit %d, ok %v, stderr %s", code, rep.FederationOK, errOut)
	}
	code, rep, _ = run("--json", "--trust-ca", ca.file, "--allow-private", "--nameserver", ns, bad.Name)
	if code != 1 || rep.FederationOK || rep.Connections[0].Checks.MatchingServerName {
		t.Fatalf("wrong certificate name: exit %d, ok %v", code, rep.FederationOK)
	}
	// The node's config supplies the CA and the private-address allowance.
	code, rep, errOut = run("-c", good.CfgPath, "--json", "--nameserver", ns, bad.Name)
	if code != 1 || rep.FederationOK || !rep.Connections[0].Checks.ValidCertificates {
		t.Fatalf("with -c: exit %d, ok %v, stderr %s", code, rep.FederationOK, errOut)
	}
	if rep.LocalView == nil || rep.LocalView.Error != "" || rep.LocalView.Known {
		t.Fatalf("with -c, this node's view of a peer it never sent to: %+v", rep.LocalView)
	}
	code, rep, errOut = run("-c", good.CfgPath, "--json", "--nameserver", ns, good.Name)
	if code != 0 || !rep.FederationOK {
		t.Fatalf("with -c, own name: exit %d, failures %+v, stderr %s", code, rep.Failures, errOut)
	}
	// Without the CA the certificate is not trusted; flags may follow SERVER.
	code, out, _ := edgeCmd(t, bin, "status", "--allow-private", good.Name, "--nameserver", ns)
	if code != 1 || !strings.Contains(out, "✗ ValidCertificates") || !strings.Contains(out, "FederationOK: ✗ no") {
		t.Fatalf("untrusted CA, text: exit %d\n%s", code, out)
	}
	noStackTrace(t, "edge status", out)
	if code, _, errOut := edgeCmd(t, bin, "status"); code != 2 || !strings.Contains(errOut, "SERVER") {
		t.Fatalf("no server: exit %d, %s", code, errOut)
	}
}
