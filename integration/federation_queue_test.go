package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"edge/edge/config"
	"edge/edge/store"
	"edge/federation"
)

// TestFederationQueue: A queues 30 PDUs and 120 EDUs for B while B is
// down. A's attempt fails and it backs off for minutes; the metrics
// endpoints show the backlog and the failure. B comes back and sends A a
// transaction of its own, which tells A that B is up: A delivers
// everything at once, in order, in two transactions (at most 100 EDUs
// each), and nothing twice.
func TestFederationQueue(t *testing.T) {
	ca := newFedCA(t)
	var inbox fedInbox
	b := newFedNode(t, ca, fedOpts{setup: inbox.install})
	a := newFedNode(t, ca, fedOpts{cfg: func(c *config.Config) {
		// Only B's own request, not the timer, can end this backoff in time.
		c.Federation.RetryMinInterval = 10 * time.Minute
		c.Federation.RetryMaxInterval = 24 * time.Hour
	}})
	ctx := ctxT(t)
	b.stop()

	const nPDU, nEDU = 30, 120
	err := a.Store.Write(func(tx *store.Tx) error {
		for i := range max(nPDU, nEDU) {
			if i < nPDU {
				pdu, _ := json.Marshal(map[string]any{"room_id": "!queue:" + a.Name, "type": "m.test", "sender": "@a:" + a.Name,
					"content": map[string]any{"seq": i}})
				a.Fed.Queue.SendPDUTx(tx, []string{b.Name, a.Name}, pdu) // our own name is skipped
			}
			a.Fed.Queue.SendEDUTx(tx, b.Name, fedEDU("m.test.seq", map[string]any{"seq": i}))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "A's first attempt to fail", func() bool {
		st := fedQueueStatus(t, a.MetricsURL, b.Name)
		return st.Failures >= 1 && !st.InFlight
	})
	st := fedQueueStatus(t, a.MetricsURL, b.Name)
	if st.Pending != nPDU+nEDU || st.LastError == "" || st.RetryAt.Before(time.Now().Add(4*time.Minute)) {
		t.Fatalf("queue status while B is down: %+v", st)
	}
	if s := fedQueueStatus(t, a.MetricsURL, a.Name); s.Destination != "" {
		t.Errorf("A queued for itself: %+v", s)
	}
	m := fedMetrics(t, a.MetricsURL)
	series := func(name, dest string) string { return fmt.Sprintf("%s{destination=%q}", name, dest) }
	if m[series("edge_federation_queue_pending", b.Name)] != nPDU+nEDU ||
		m[series("edge_federation_queue_failures", b.Name)] < 1 ||
		m[series("edge_federation_queue_retry_timestamp_seconds", b.Name)] < float64(time.Now().Unix()) ||
		m[series("edge_federation_sent_transactions_total", b.Name)] != 0 ||
		m["edge_federation_destinations"] != 1 {
		t.Fatalf("metrics while B is down: %v", m)
	}

	b.start(t)
	time.Sleep(300 * time.Millisecond)
	if edus, pdus := inbox.snapshot(); len(edus)+len(pdus) != 0 {
		t.Fatalf("A sent during its backoff: %d EDUs, %d PDUs", len(edus), len(pdus))
	}
	if err := b.Fed.Client.Put(ctx, a.Name, "/_matrix/federation/v1/send/hello", json.RawMessage(fedTxn(b.Name)), nil); err != nil {
		t.Fatalf("B → A: %v", err)
	}
	waitFor(t, 20*time.Second, "B to receive the queue", func() bool {
		edus, pdus := inbox.snapshot()
		return len(edus) >= nEDU && len(pdus) >= nPDU
	})
	waitFor(t, 5*time.Second, "A's queue to drain", func() bool {
		st := fedQueueStatus(t, a.MetricsURL, b.Name)
		return st.Pending == 0 && !st.InFlight
	})
	time.Sleep(300 * time.Millisecond) // anything sent twice would arrive now
	edus, pdus := inbox.snapshot()
	checkSeqs := func(kind string, items []fedReceived, n int) {
		t.Helper()
		if len(items) != n {
			t.Errorf("B received %d %s, want %d", len(items), kind, n)
		}
		for i, it := range items {
			if it.Origin != a.Name || it.Content["seq"] != float64(i) {
				t.Errorf("%s #%d: origin %s seq %v, want %s seq %d (in order, once)", kind, i, it.Origin, it.Content["seq"], a.Name, i)
				return
			}
		}
	}
	checkSeqs("EDUs", edus, nEDU)
	checkSeqs("PDUs", pdus, nPDU)

	st = fedQueueStatus(t, a.MetricsURL, b.Name)
	if st.Failures != 0 || st.SentTransactions != 2 || st.SentPDUs != nPDU || st.SentEDUs != nEDU || st.LastSuccess.IsZero() {
		t.Errorf("queue status after delivery: %+v", st)
	}
	m = fedMetrics(t, a.MetricsURL)
	if m[series("edge_federation_queue_pending", b.Name)] != 0 ||
		m[series("edge_federation_queue_failures", b.Name)] != 0 ||
		m[series("edge_federation_sent_transactions_total", b.Name)] != 2 ||
		m[series("edge_federation_sent_edus_total", b.Name)] != nEDU ||
		m[series("edge_federation_sent_pdus_total", b.Name)] != nPDU ||
		m[series("edge_federation_queue_last_success_timestamp_seconds", b.Name)] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("metrics after delivery: %v", m)
	}
	if _, ok := m[series("edge_federation_queue_retry_timestamp_seconds", b.Name)]; ok {
		t.Error("a retry time is still reported for a destination that is up")
	}
	// The admin listener serves nothing else, and not the client API.
	resp, err := http.Get(a.MetricsURL + "/_matrix/client/versions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("client API on the metrics listener: HTTP %d", resp.StatusCode)
	}
}

// fedEnqueueOffline queues n EDUs (content {"seq": i}) for dest in the
// store of the stopped node configured at cfgPath, through the federation
// package's own queue, as the node would.
func fedEnqueueOffline(t *testing.T, cfgPath, dest string, n int) {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := config.ReadSigningKeys(cfg.Path(cfg.SigningKeyPath))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cfg.Path(cfg.DatabasePath))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fed, err := federation.New(federation.Deps{Config: cfg, Store: st, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	defer fed.Close()
	if err := st.Write(func(tx *store.Tx) error {
		for i := range n {
			fed.Queue.SendEDUTx(tx, dest, fedEDU("m.test.seq", map[string]any{"seq": i}))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestFederationBinary drives the edge binary: `edge init` with the
// federation flags (and its refusals), and a sender killed with SIGKILL
// mid-queue — once while the destination is down, once with a transaction
// in flight that the destination has already processed — which after
// restarts delivers every item exactly once.
func TestFederationBinary(t *testing.T) {
	bin := buildEdge(t)
	ca := newFedCA(t)

	t.Run("init flags", func(t *testing.T) {
		dir := t.TempDir()
		certFile, keyFile := ca.issueFiles(t, dir, "127.0.0.1")
		fedAddr, metrics := freeAddr(t), freeAddr(t)
		nodeDir := filepath.Join(dir, "node")
		code, out, errOut := edgeCmd(t, bin, "init", "--server-name", fedAddr, "--dir", nodeDir, "--listen", freeAddr(t),
			"--federation-listen", fedAddr, "--tls-cert", certFile, "--tls-key", keyFile, "--trust-ca", ca.file,
			"--allow-private-federation", "--metrics-listen", metrics)
		if code != 0 {
			t.Fatalf("edge init: exit %d\n%s%s", code, out, errOut)
		}
		cfg, err := config.Load(filepath.Join(nodeDir, "edge.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.ServerName != fedAddr || cfg.FederationAddr() != fedAddr || cfg.TLSCertFile != certFile || cfg.TLSKeyFile != keyFile ||
			cfg.Federation.TrustCAFile != ca.file || !cfg.Federation.AllowPrivateAddresses || cfg.MetricsListen != metrics {
			t.Errorf("edge init wrote %+v", cfg)
		}

		// Relative file names are taken against the working directory and
		// written absolute; without --federation-listen the default port is used.
		cwd, _ := os.Getwd()
		relCert, _ := filepath.Rel(cwd, certFile)
		relKey, _ := filepath.Rel(cwd, keyFile)
		code, out, errOut = edgeCmd(t, bin, "init", "--server-name", "lan.example", "--dir", filepath.Join(dir, "default"),
			"--tls-cert", relCert, "--tls-key", relKey)
		if code != 0 {
			t.Fatalf("edge init with relative files: exit %d\n%s%s", code, out, errOut)
		}
		cfg, err = config.Load(filepath.Join(dir, "default", "edge.yaml"))
		if err != nil || cfg.FederationAddr() != "[::]:8448" || cfg.TLSCertFile != certFile || cfg.Federation.AllowPrivateAddresses {
			t.Errorf("edge init defaults: %+v %v", cfg, err)
		}

		notPEM := filepath.Join(dir, "junk.pem")
		if err := os.WriteFile(notPEM, []byte("junk"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, otherKey := ca.issueFiles(t, t.TempDir(), "127.0.0.1")
		for _, tc := range []struct {
			name  string
			args  []string
			field string
		}{
			{"cert without key", []string{"--tls-cert", certFile}, "--tls-key"},
			{"key without cert", []string{"--tls-key", keyFile}, "--tls-cert"},
			{"listener without certificate", []string{"--federation-listen", "127.0.0.1:8448"}, "federation_listen"},
			{"listener not host:port", []string{"--federation-listen", "8448", "--tls-cert", certFile, "--tls-key", keyFile}, "federation_listen"},
			{"missing certificate", []string{"--tls-cert", filepath.Join(dir, "nope.pem"), "--tls-key", keyFile}, "tls_cert_file"},
			{"missing key", []string{"--tls-cert", certFile, "--tls-key", filepath.Join(dir, "nope.pem")}, "tls_key_file"},
			{"key of another certificate", []string{"--tls-cert", certFile, "--tls-key", otherKey}, "tls_key_file"},
			{"trust CA not PEM", []string{"--trust-ca", notPEM}, "federation.trust_ca_file"},
			{"trust CA missing", []string{"--trust-ca", filepath.Join(dir, "nope.pem")}, "federation.trust_ca_file"},
			{"metrics not host:port", []string{"--metrics-listen", "9100"}, "metrics_listen"},
		} {
			target := filepath.Join(dir, "bad")
			args := append([]string{"init", "--server-name", "lan.example", "--dir", target}, tc.args...)
			code, _, errOut := edgeCmd(t, bin, args...)
			if code == 0 || !strings.Contains(errOut, tc.field) {
				t.Errorf("%s: exit %d, stderr %q does not name %s", tc.name, code, errOut, tc.field)
			}
			noStackTrace(t, "edge init ("+tc.name+")", errOut)
			if _, err := os.Stat(filepath.Join(target, "edge.yaml")); err == nil {
				t.Fatalf("%s: edge init wrote a config anyway", tc.name)
			}
		}
	})

	t.Run("kill -9 mid-queue", func(t *testing.T) {
		const total = 250 // three transactions: 100, 100, 50
		var (
			mu       sync.Mutex
			seen     = map[float64]int{}
			arrived  = make(chan struct{})
			release  = make(chan struct{})
			gateOnce sync.Once
		)
		inbox := &fedInbox{onEDU: func(r fedReceived) {
			mu.Lock()
			seen[r.Content["seq"].(float64)]++
			mu.Unlock()
			// The first EDU holds its transaction open until the sender is dead.
			gateOnce.Do(func() { close(arrived); <-release })
		}}
		defer func() {
			select {
			case <-release:
			default:
				close(release)
			}
		}()
		b := newFedNode(t, ca, fedOpts{setup: inbox.install, stopped: true})
		distinct := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(seen)
		}

		// A: made by `edge init` with the federation flags, run as `edge run`.
		dir := t.TempDir()
		certFile, keyFile := ca.issueFiles(t, dir, "127.0.0.1")
		fedAddr, clientAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
		nodeDir := filepath.Join(dir, "a")
		code, out, errOut := edgeCmd(t, bin, "init", "--server-name", fedAddr, "--dir", nodeDir, "--listen", clientAddr,
			"--federation-listen", fedAddr, "--tls-cert", certFile, "--tls-key", keyFile, "--trust-ca", ca.file,
			"--allow-private-federation", "--metrics-listen", metricsAddr)
		if code != 0 {
			t.Fatalf("edge init: exit %d\n%s%s", code, out, errOut)
		}
		cfgPath := filepath.Join(nodeDir, "edge.yaml")
		cfg, err := config.Load(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Federation.TrustedKeyServers = nil // never matrix.org from a test
		cfg.Federation.RetryMinInterval, cfg.Federation.RetryMaxInterval = 200*time.Millisecond, time.Second
		if err := os.Remove(cfgPath); err != nil {
			t.Fatal(err)
		}
		if err := config.WriteFile(cfgPath, cfg); err != nil {
			t.Fatal(err)
		}
		aName, metricsURL := fedAddr, "http://"+metricsAddr
		fedEnqueueOffline(t, cfgPath, b.Name, total)

		// 1. B is down: A tries, fails, and is killed while backing off.
		p := startEdge(t, bin, cfgPath, clientAddr)
		waitFor(t, 15*time.Second, "A to fail sending to the absent B", func() bool {
			st := fedQueueStatus(t, metricsURL, b.Name)
			return st.Failures >= 1 && st.Pending == total
		})
		p.kill()

		// 2. B is up; A restarts and is killed while B processes A's first
		// transaction, so A never learns that B has it.
		b.start(t)
		p = startEdge(t, bin, cfgPath, clientAddr)
		select {
		case <-arrived:
		case <-time.After(30 * time.Second):
			p.kill() // its log is complete once it is dead
			t.Fatalf("B received nothing from the restarted A:\n%s", p.stderr)
		}
		p.kill()
		close(release)
		waitFor(t, 10*time.Second, "B to finish the first transaction", func() bool { return distinct() == 100 })

		// 3. A restarts: it resends the transaction in flight (B answers
		// from its record) and then the rest.
		p = startEdge(t, bin, cfgPath, clientAddr)
		waitFor(t, 30*time.Second, "B to receive all items", func() bool { return distinct() == total })
		waitFor(t, 10*time.Second, "A's queue to drain", func() bool {
			st := fedQueueStatus(t, metricsURL, b.Name)
			return st.Pending == 0 && !st.InFlight && st.SentTransactions == 3
		})
		time.Sleep(300 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		for i := range total {
			if n := seen[float64(i)]; n != 1 {
				t.Errorf("EDU %d delivered %d times, want once", i, n)
			}
		}
		if len(seen) != total {
			t.Errorf("B received %d distinct EDUs, want %d", len(seen), total)
		}
		edus, _ := inbox.snapshot()
		if len(edus) != total {
			t.Errorf("B's hook ran %d times for %d EDUs", len(edus), total)
		}
		for _, e := range edus {
			if e.Origin != aName {
				t.Fatalf("EDU from %s, want %s", e.Origin, aName)
			}
		}
		p.kill()
		if strings.Contains(p.stderr.String(), "panic") {
			t.Errorf("A logged a panic:\n%s", p.stderr)
		}
	})
}
