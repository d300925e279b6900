package integration

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// The interop peer: Dendrite v0.13.8, installed by scripts/dendrite.sh
// (a prerequisite of `make test`, which passes its path in
// EDGE_DENDRITE_BIN).
const dendriteBinEnv = "EDGE_DENDRITE_BIN"

// dendriteNode is a Dendrite process on loopback. Its server name is its
// TLS listener, "127.0.0.1:PORT" (resolved directly, as edge's rfNodes
// are), serving a certificate of the test CA that edge trusts; clients use
// its plain HTTP listener.
type dendriteNode struct {
	Name string // server name, the TLS (federation) listener
	URL  string // client API over plain HTTP
	Dir  string
	Log  string // path of its stdout+stderr

	cmd  *exec.Cmd
	done chan struct{}
}

// dendriteBinary finds the Dendrite binary: EDGE_DENDRITE_BIN, else the
// repo's .cache/bin (where scripts/dendrite.sh puts it). A missing binary
// fails the test: the interop suite is part of `make test`.
func dendriteBinary(t *testing.T) string {
	t.Helper()
	p := os.Getenv(dendriteBinEnv)
	if p == "" {
		p, _ = filepath.Abs(filepath.Join("..", ".cache", "bin", "dendrite"))
	}
	if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Fatalf("no Dendrite binary at %s (%v): run scripts/dendrite.sh, or set %s", p, err, dendriteBinEnv)
	}
	return p
}

// dendriteFreePort returns a loopback port that was free a moment ago.
func dendriteFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// dendriteConfig is Dendrite's YAML config (version 2, the defaults of
// its generate-config with these changes): SQLite files in the test's
// directory, in-process NATS, no perspective key servers (keys are
// fetched from the origin, as edge's test nodes do), no TLS validation of
// peers (edge's test certificates come from a CA Dendrite does not know),
// open registration (with -really-enable-open-registration), no rate
// limits, presence over federation on (edge's default), logs to stderr.
var dendriteConfig = template.Must(template.New("dendrite.yaml").Parse(`version: 2
global:
  server_name: "{{.Name}}"
  private_key: matrix_key.pem
  key_validity_period: 168h0m0s
  database:
    connection_string: ""
  disable_federation: false
  presence:
    enable_inbound: true
    enable_outbound: true
  trusted_third_party_id_servers: []
  jetstream:
    storage_path: "{{.Dir}}/jetstream"
    in_memory: true
    topic_prefix: Dendrite
  metrics:
    enabled: false
  dns_cache:
    enabled: false
  server_notices:
    enabled: false
    local_part: _server
    display_name: Server Alert
    room_name: Server Alert
  report_stats:
    enabled: false
client_api:
  registration_disabled: false
  guests_disabled: true
  enable_registration_captcha: false
  rate_limiting:
    enabled: false
    threshold: 5
    cooloff_ms: 500
federation_api:
  database:
    connection_string: "file:{{.Dir}}/federationapi.db"
  send_max_retries: 16
  disable_tls_validation: true
  key_perspectives: []
  prefer_direct_fetch: true
key_server:
  database:
    connection_string: "file:{{.Dir}}/keyserver.db"
media_api:
  database:
    connection_string: "file:{{.Dir}}/mediaapi.db"
  base_path: "{{.Dir}}/media"
  max_file_size_bytes: 10485760
room_server:
  default_room_version: "10"
  database:
    connection_string: "file:{{.Dir}}/roomserver.db"
sync_api:
  database:
    connection_string: "file:{{.Dir}}/syncapi.db"
  search:
    enabled: false
user_api:
  bcrypt_cost: 4
  account_database:
    connection_string: "file:{{.Dir}}/userapi.db"
relay_api:
  database:
    connection_string: "file:{{.Dir}}/relayapi.db"
mscs:
  mscs: []
  database:
    connection_string: "file:{{.Dir}}/mscs.db"
logging:
- type: std
  level: {{.Level}}
`))

// startDendrite runs Dendrite with a fresh database, waits for its
// /versions, and stops it when the test ends; on failure the tail of its
// log goes to the test output. Its ports are picked free just before it
// binds them, so a start-up lost to another listener is retried.
func startDendrite(t *testing.T, ca *rfCA) *dendriteNode {
	t.Helper()
	binary := dendriteBinary(t)
	for attempt := 1; ; attempt++ {
		d, err := launchDendrite(t, binary, ca)
		if err == nil {
			return d
		}
		if attempt == 3 {
			t.Fatalf("dendrite: %v; log tail (whole log kept at %s):\n%s", err, d.Log, d.logTail(40))
		}
		t.Logf("dendrite attempt %d: %v; retrying; log tail:\n%s", attempt, err, d.logTail(10))
		_ = os.RemoveAll(filepath.Dir(d.Log))
	}
}

func launchDendrite(t *testing.T, binary string, ca *rfCA) (*dendriteNode, error) {
	t.Helper()
	dir := t.TempDir()
	// The log lives outside dir, which the test's end removes: a failed
	// test keeps it.
	logDir, err := os.MkdirTemp("", "edge-dendrite-log-")
	if err != nil {
		t.Fatal(err)
	}
	tlsPort, httpPort := dendriteFreePort(t), dendriteFreePort(t)
	d := &dendriteNode{
		Name: fmt.Sprintf("127.0.0.1:%d", tlsPort),
		URL:  fmt.Sprintf("http://127.0.0.1:%d", httpPort),
		Dir:  dir,
		Log:  filepath.Join(logDir, "dendrite.log"),
		done: make(chan struct{}),
	}

	// Its signing key: an ed25519 seed in Dendrite's PEM form.
	seed := make([]byte, ed25519.SeedSize)
	_, _ = rand.Read(seed)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "MATRIX PRIVATE KEY", Headers: map[string]string{"Key-ID": "ed25519:dendrite"}, Bytes: seed})
	// Its TLS certificate: the CA's loopback leaf, which edge trusts.
	leafKey, err := x509.MarshalPKCS8PrivateKey(ca.leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.leaf.Certificate[0]})
	tlsKeyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: leafKey})
	level := "info"
	if os.Getenv("EDGE_TEST_LOG") != "" {
		level = "debug"
	}
	var cfg bytes.Buffer
	if err := dendriteConfig.Execute(&cfg, map[string]string{"Name": d.Name, "Dir": dir, "Level": level}); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"matrix_key.pem": keyPEM, "tls.crt": certPEM, "tls.key": tlsKeyPEM, "dendrite.yaml": cfg.Bytes()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	logf, err := os.Create(d.Log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(binary, "-config", "dendrite.yaml",
		"-http-bind-address", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"-https-bind-address", d.Name, "-tls-cert", "tls.crt", "-tls-key", "tls.key",
		"-really-enable-open-registration")
	d.cmd.Dir = dir
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start dendrite: %v", err)
	}
	go func() {
		_ = d.cmd.Wait()
		logf.Close()
		close(d.done)
	}()

	// Up when the client API answers and the federation listener accepts.
	deadline := time.Now().Add(90 * time.Second)
	for !d.up() {
		select {
		case <-d.done:
			return d, errors.New("exited during start-up")
		default:
		}
		if time.Now().After(deadline) {
			d.stop()
			return d, errors.New("not up within 90s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Cleanup(func() {
		d.stop()
		switch {
		case t.Failed():
			t.Logf("dendrite %s log tail (whole log kept at %s):\n%s", d.Name, d.Log, d.logTail(60))
			return
		case os.Getenv("EDGE_TEST_LOG") != "":
			t.Logf("dendrite %s log:\n%s", d.Name, d.logTail(1<<30))
		}
		_ = os.RemoveAll(logDir)
	})
	return d, nil
}

// up reports whether both of Dendrite's listeners answer.
func (d *dendriteNode) up() bool {
	resp, err := http.Get(d.URL + "/_matrix/client/versions")
	if err != nil {
		return false
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false
	}
	c, err := net.DialTimeout("tcp", d.Name, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (d *dendriteNode) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// logTail is the last n lines of Dendrite's log.
func (d *dendriteNode) logTail(n int) string {
	b, err := os.ReadFile(d.Log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// register creates a Dendrite user through open registration (the dummy
// stage) and returns a logged-in mautrix client.
func (d *dendriteNode) register(t *testing.T, name string) *mautrix.Client {
	t.Helper()
	c, err := mautrix.NewClient(d.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: name, Password: "correct horse battery"})
	if err != nil {
		t.Fatalf("register %s on dendrite: %v", name, err)
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	c.DeviceID = resp.DeviceID
	return c
}

// login logs in to an existing Dendrite account as a new device.
func (d *dendriteNode) login(t *testing.T, user id.UserID, deviceName string) *mautrix.Client {
	t.Helper()
	return e2eeLogin(t, &testNode{URL: d.URL}, user, deviceName)
}
