package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"edge/edge"
	"edge/edge/client"
	"edge/edge/config"
	"edge/edge/store"
	"edge/edge/tlsmode"
	"edge/federation"
)

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError{fmt.Sprintf("%s: %v", fs.Name(), err)}
	}
	return nil
}

// cmdInit writes a commented edge.yaml and a signing key.
func cmdInit(args []string) error {
	fs := newFlags("init")
	name := fs.String("server-name", "", "the server name (e.g. example.org)")
	dir := fs.String("dir", ".", "directory for edge.yaml, the key and the database")
	listen := fs.String("listen", "[::]:8008", "listener address")
	fedListen := fs.String("federation-listen", "", "TLS listener for federation (default [::]:8448 with --tls-cert)")
	tlsCert := fs.String("tls-cert", "", "PEM certificate (chain) of the federation listener")
	tlsKey := fs.String("tls-key", "", "PEM key of the federation listener")
	trustCA := fs.String("trust-ca", "", "PEM file of an extra CA the federation client trusts")
	allowPrivate := fs.Bool("allow-private-federation", false, "let federation reach loopback and private addresses")
	metrics := fs.String("metrics-listen", "", "admin listener for metrics (keep it on loopback)")
	tlsMode := fs.String("tls", "", "certificate source: off, files (--tls-cert/--tls-key), acme or internal (default files with --tls-cert, else off)")
	tlsListen := fs.String("tls-listen", "", "client API TLS listener (default [::]:443 with --tls)")
	tlsHosts := fs.String("tls-hosts", "", "comma-separated names the certificate covers besides the server name")
	acmeEmail := fs.String("acme-email", "", "ACME account contact address")
	acmeStaging := fs.Bool("acme-staging", false, "use Let's Encrypt's staging CA")
	acmeDir := fs.String("acme-directory", "", "ACME directory URL (default Let's Encrypt)")
	acmeHTTP := fs.String("acme-http-listen", "", "port-80 listener for HTTP-01 challenges and https redirects (e.g. [::]:80)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *name == "" {
		return usageError{"init: --server-name is required"}
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return usageError{"init: --tls-cert and --tls-key go together (tls_cert_file, tls_key_file)"}
	}
	switch *tlsMode {
	case "", config.TLSOff, config.TLSACME, config.TLSInternal:
		if *tlsMode != "" && *tlsCert != "" {
			return usageError{"init: --tls-cert and --tls-key are for --tls files"}
		}
	case config.TLSFiles:
		if *tlsCert == "" {
			return usageError{"init: --tls files needs --tls-cert and --tls-key"}
		}
	default:
		return usageError{fmt.Sprintf("init: --tls %q is not one of off, files, acme, internal", *tlsMode)}
	}
	tlsOn := *tlsCert != "" || *tlsMode == config.TLSACME || *tlsMode == config.TLSInternal
	if *fedListen != "" && !tlsOn {
		return usageError{"init: --federation-listen needs a certificate: --tls acme|internal, or --tls-cert and --tls-key (federation_listen is TLS)"}
	}
	cfg := config.Default(*name)
	cfg.Listen = *listen
	cfg.MetricsListen = *metrics
	cfg.Federation.AllowPrivateAddresses = *allowPrivate
	// Paths are written absolute: the config resolves relative ones
	// against its own directory, the operator typed them against the cwd.
	abs := func(p string) (string, error) {
		if p == "" {
			return "", nil
		}
		return filepath.Abs(p)
	}
	var err error
	if cfg.TLSCertFile, err = abs(*tlsCert); err != nil {
		return err
	}
	if cfg.TLSKeyFile, err = abs(*tlsKey); err != nil {
		return err
	}
	if cfg.Federation.TrustCAFile, err = abs(*trustCA); err != nil {
		return err
	}
	cfg.TLS.Mode = *tlsMode
	cfg.TLS.Listen = *tlsListen
	if *tlsHosts != "" {
		cfg.TLS.Hosts = strings.Split(*tlsHosts, ",")
	}
	cfg.TLS.ACME.Email = *acmeEmail
	cfg.TLS.ACME.Staging = *acmeStaging
	cfg.TLS.ACME.DirectoryURL = *acmeDir
	cfg.TLS.ACME.HTTPListen = *acmeHTTP
	if tlsOn {
		cfg.FederationListen = *fedListen
		if cfg.FederationListen == "" {
			cfg.FederationListen = config.DefaultFederationListen
		}
	}
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	cfg.Registration.SharedSecret = hex.EncodeToString(secret)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	// Files given now are checked now, not at the first `edge run`.
	if cfg.TLSCertFile != "" {
		if _, err := edge.LoadCertificateFiles(cfg, nil); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	if cfg.Federation.TrustCAFile != "" {
		if _, err := federation.LoadRootCAs(cfg.Federation.TrustCAFile); err != nil {
			return fmt.Errorf("init: federation.trust_ca_file: %w", err)
		}
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	cfgPath := filepath.Join(*dir, "edge.yaml")
	if _, err := os.Stat(cfgPath); err == nil {
		return fmt.Errorf("%s already exists; not overwriting", cfgPath)
	}
	keyPath := filepath.Join(*dir, cfg.SigningKeyPath)
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		key, err := config.GenerateSigningKey()
		if err != nil {
			return err
		}
		if err := config.WriteSigningKey(keyPath, key); err != nil {
			return err
		}
		fmt.Printf("wrote signing key %s (%s)\n", keyPath, key.ID)
	} else {
		fmt.Printf("keeping existing signing key %s\n", keyPath)
	}
	if cfg.TLS.Mode == config.TLSInternal {
		caCert := filepath.Join(*dir, cfg.TLS.Internal.CACertFile)
		if _, err := os.Stat(caCert); errors.Is(err, os.ErrNotExist) {
			if _, err := tlsmode.CreateCA(caCert, filepath.Join(*dir, cfg.TLS.Internal.CAKeyFile), *name); err != nil {
				return fmt.Errorf("init: internal CA: %w", err)
			}
			fmt.Printf("wrote internal CA %s (key %s, mode 0600)\n", caCert, cfg.TLS.Internal.CAKeyFile)
		} else {
			fmt.Printf("keeping existing internal CA %s\n", caCert)
		}
		abs, _ := filepath.Abs(caCert)
		fmt.Println(tlsmode.TrustHint(abs))
	}
	if err := config.WriteFile(cfgPath, cfg); err != nil {
		return err
	}
	fmt.Printf("wrote %s for %s; start with: edge run -c %s\n", cfgPath, *name, cfgPath)
	if addr := cfg.FederationAddr(); addr != "" {
		fmt.Printf("federation over TLS on %s\n", addr)
	}
	return nil
}

func loadConfig(path string) (*config.Config, error) {
	return config.Load(path)
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// cmdRun serves until SIGINT or SIGTERM.
func cmdRun(args []string) error {
	fs := newFlags("run")
	cfgPath := fs.String("c", "edge.yaml", "config file")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log.Level)
	if key, made, err := cfg.EnsureSigningKey(); err != nil {
		return err
	} else if made {
		log.Info("generated a signing key (signing_key_generate)", "path", cfg.Path(cfg.SigningKeyPath), "key_id", key.ID)
	}
	node, err := edge.Open(cfg, log)
	if err != nil {
		return err
	}
	defer node.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return node.Run(ctx)
}

// cmdRegister creates a user: directly in the database when the node is
// stopped, through the running node's shared-secret endpoint otherwise.
func cmdRegister(args []string) error {
	// Accept the user before or after the flags.
	var user string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		user, args = args[0], args[1:]
	}
	fs := newFlags("register")
	cfgPath := fs.String("c", "edge.yaml", "config file")
	admin := fs.Bool("admin", false, "make the user a server admin")
	password := fs.String("password", "", "password (read from stdin when omitted)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if user == "" && fs.NArg() > 0 {
		user = fs.Arg(0)
	}
	if user == "" {
		return usageError{"register: USER is required"}
	}
	user = strings.ToLower(strings.TrimPrefix(user, "@"))
	if i := strings.IndexByte(user, ':'); i >= 0 {
		user = user[:i]
	}
	if !client.ValidLocalpart(user) {
		return usageError{fmt.Sprintf("register: %q is not a valid user name (a-z, 0-9, . _ = - / +)", user)}
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *password == "" {
		fmt.Fprint(os.Stderr, "password: ")
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return fmt.Errorf("register: reading password: %w", err)
		}
		*password = strings.TrimRight(line, "\r\n")
	}
	if len(*password) < cfg.Registration.MinPasswordLength {
		return fmt.Errorf("register: password must be at least %d characters", cfg.Registration.MinPasswordLength)
	}
	st, err := store.Open(cfg.Path(cfg.DatabasePath))
	if err == nil {
		defer st.Close()
		err = st.Write(func(tx *store.Tx) error { return client.CreateUser(tx, user, *password, *admin) })
		if errors.Is(err, store.ErrExists) {
			return fmt.Errorf("register: @%s:%s already exists", user, cfg.ServerName)
		}
		if err == nil {
			fmt.Printf("created @%s:%s\n", user, cfg.ServerName)
		}
		return err
	}
	if !strings.Contains(err.Error(), "in use") {
		return err
	}
	return registerOnline(cfg, user, *password, *admin)
}

// registerOnline registers through /_synapse/admin/v1/register of the node
// listening at cfg.Listen.
func registerOnline(cfg *config.Config, user, password string, admin bool) error {
	if cfg.Registration.SharedSecret == "" {
		return errors.New("register: the node is running and registration.shared_secret is empty; set it or stop the node")
	}
	host, port, _ := net.SplitHostPort(cfg.Listen)
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "localhost"
	}
	base := "http://" + net.JoinHostPort(host, port) + "/_synapse/admin/v1/register"
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(base)
	if err != nil {
		return fmt.Errorf("register: the node is running but unreachable at %s: %w", base, err)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	err = json.NewDecoder(resp.Body).Decode(&nonce)
	resp.Body.Close()
	if err != nil || nonce.Nonce == "" {
		return fmt.Errorf("register: no nonce from %s", base)
	}
	body, _ := json.Marshal(map[string]any{
		"nonce": nonce.Nonce, "username": user, "password": password, "admin": admin,
		"mac": client.SharedSecretMAC(cfg.Registration.SharedSecret, nonce.Nonce, user, password, admin),
	})
	resp, err = hc.Post(base, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct {
		UserID string `json:"user_id"`
		Error  string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("register: %s (HTTP %d)", out.Error, resp.StatusCode)
	}
	fmt.Printf("created %s\n", out.UserID)
	return nil
}

func cmdVersion(args []string) error {
	fmt.Printf("edge %s %s/%s %s\n", edge.Version, runtime.GOOS, runtime.GOARCH, runtime.Version())
	return nil
}
