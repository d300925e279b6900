package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"edge/edge/config"
)

// cmdHealth checks that a node answers GET /_matrix/client/versions with
// 200; exit status 0 when it does. It needs nothing but the binary, so a
// scratch image can use it as its HEALTHCHECK.
func cmdHealth(args []string) error {
	fs := newFlags("health")
	cfgPath := fs.String("c", "edge.yaml", "config file (the node's listen address)")
	url := fs.String("url", "", "base URL of the node instead of -c (e.g. http://localhost:8008)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	base := *url
	if base == "" {
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return err
		}
		base = listenURL(cfg)
	}
	return checkHealth(base, *timeout)
}

// listenURL is the plain-HTTP base URL of cfg.Listen as seen from this
// host: a wildcard address is reached over loopback.
func listenURL(cfg *config.Config) string {
	host, port, _ := net.SplitHostPort(cfg.Listen)
	switch host {
	case "", "::", "0.0.0.0":
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func checkHealth(base string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	u := strings.TrimRight(base, "/") + "/_matrix/client/versions"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return usageError{fmt.Sprintf("health: %v", err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s answered %s", u, resp.Status)
	}
	fmt.Println("ok")
	return nil
}
