package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"edge/edge"
	"edge/edge/config"
	"edge/edge/status"
	"edge/federation"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// cmdStatus inspects a remote server's federation setup:
// edge status [-c edge.yaml] [--json] [--trust-ca FILE] [--allow-private]
// [--nameserver ADDR]... [--notary SERVER]... SERVER
// or, without SERVER, shows the running node's health from its admin
// listener: edge status [-c edge.yaml] [--json]
func cmdStatus(args []string) error {
	fs := newFlags("status")
	cfgPath := fs.String("c", "", "config file whose federation settings (trust_ca_file, allow_private_addresses, nameservers, trusted_key_servers) apply")
	asJSON := fs.Bool("json", false, "print the full report (or the node's status) as JSON")
	trustCA := fs.String("trust-ca", "", "PEM file of extra CA certificates to trust")
	allowPrivate := fs.Bool("allow-private", false, "allow loopback and private addresses")
	var nameservers, notaries listFlag
	fs.Var(&nameservers, "nameserver", "DNS server ip:port (repeatable)")
	fs.Var(&notaries, "notary", "key server to cross-check the keys with (repeatable; default: the config's trusted_key_servers)")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of each network step")
	// Flags may follow the server name: parse what comes after it too.
	var rest []string
	for a := args; ; {
		if err := parse(fs, a); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		rest, a = append(rest, fs.Arg(0)), fs.Args()[1:]
	}
	if len(rest) == 0 {
		return nodeStatus(*cfgPath, *asJSON)
	}
	if len(rest) != 1 {
		return usageError{"status: exactly one SERVER is required\n\nusage: edge status [-c edge.yaml] [--json] [--trust-ca FILE] [--allow-private] [--nameserver ADDR] [--notary SERVER] SERVER"}
	}
	opts := status.Options{AllowPrivate: *allowPrivate, Nameservers: nameservers, Timeout: *timeout}
	caFile := *trustCA
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		f := cfg.Federation
		opts.AllowPrivate = opts.AllowPrivate || f.AllowPrivateAddresses
		if len(opts.Nameservers) == 0 {
			opts.Nameservers = f.Nameservers
		}
		if caFile == "" && f.TrustCAFile != "" {
			caFile = cfg.Path(f.TrustCAFile)
		}
		// Prefer the authenticated admin listener; metrics_listen also
		// knows the queues.
		if token, err := readAdminToken(cfg); cfg.AdminListen != "" && err == nil {
			opts.AdminURL, opts.AdminToken = adminURL(cfg.AdminListen), token
		} else {
			opts.AdminURL = adminURL(cfg.MetricsListen)
		}
		if len(notaries) == 0 {
			for _, t := range f.TrustedKeyServers {
				opts.Notaries = append(opts.Notaries, status.Notary{ServerName: t.ServerName, VerifyKeys: t.VerifyKeys})
			}
		}
	}
	for _, n := range notaries {
		opts.Notaries = append(opts.Notaries, status.Notary{ServerName: n})
	}
	if caFile != "" {
		pool, err := federation.LoadRootCAs(caFile)
		if err != nil {
			return fmt.Errorf("status: --trust-ca: %w", err)
		}
		opts.RootCAs = pool
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*(*timeout))
	defer cancel()
	rep, err := status.Inspect(ctx, rest[0], opts)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		status.WriteText(os.Stdout, rep)
	}
	if !rep.FederationOK {
		// Exit 1 without main's "edge: <error>" line: the report says why.
		cancel()
		os.Exit(1)
	}
	return nil
}

// adminURL is the URL of the node's admin listener at listen, or "" when
// there is none; a wildcard address is reached on loopback.
func adminURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if listen == "" || err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// readAdminToken reads the token the running node wrote beside its config.
func readAdminToken(cfg *config.Config) (string, error) {
	b, err := os.ReadFile(edge.AdminTokenPath(cfg.Dir))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// nodeStatus prints the running node's health: uptime, version, users,
// rooms, store, caches and peers, from its admin listener.
func nodeStatus(cfgPath string, asJSON bool) error {
	if cfgPath == "" {
		cfgPath = "edge.yaml"
		if _, err := os.Stat(cfgPath); err != nil {
			return usageError{"status: give a SERVER to check, or run it beside the node's edge.yaml (or pass -c FILE) for the node's own health\n\nusage: edge status [-c edge.yaml] [--json] [flags] [SERVER]"}
		}
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	if cfg.AdminListen == "" {
		return errors.New("status: admin_listen is off in " + cfgPath + ": set it (e.g. " + config.DefaultAdminListen + ") and restart the node")
	}
	token, err := readAdminToken(cfg)
	if err != nil {
		return fmt.Errorf("status: no admin token (%w): is the node running? `edge run` writes it at start", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := status.FetchNodeStatus(ctx, adminURL(cfg.AdminListen), token)
	if errors.Is(err, status.ErrAdminUnauthorized) {
		return fmt.Errorf("status: %w: another process may hold %s, or the node restarted and %s is stale", err, cfg.AdminListen, status.AdminTokenFile)
	}
	if err != nil {
		return fmt.Errorf("status: the node's admin listener at %s did not answer (%w): is `edge run` running with this config?", cfg.AdminListen, err)
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	status.WriteNodeText(os.Stdout, st)
	return nil
}
