package status

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// altSvcH3 returns the UDP address an Alt-Svc header offers h3 on, or ""
// ("h3=":8448"; ma=86400": the same host, port 8448).
func altSvcH3(altSvc, tcpAddr string) string {
	host, _, err := net.SplitHostPort(tcpAddr)
	if err != nil {
		return ""
	}
	for _, alt := range strings.Split(altSvc, ",") {
		proto, rest, ok := strings.Cut(strings.TrimSpace(alt), "=")
		if !ok || proto != "h3" {
			continue
		}
		auth, _, _ := strings.Cut(rest, ";")
		auth = strings.Trim(strings.TrimSpace(auth), `"`)
		h, p, err := net.SplitHostPort(auth)
		if err != nil || p == "" {
			continue
		}
		if h == "" {
			h = host
		}
		return net.JoinHostPort(h, p)
	}
	return ""
}

// http3Check fetches the key response over HTTP/3 where the server
// advertises it. Clients only try h3 after an Alt-Svc, so an unadvertised
// server is not probed (which would cost a QUIC handshake timeout).
func (in *inspector) http3Check(ctx context.Context, c *Connection, tlsName, host string) {
	udp := altSvcH3(c.AltSvc, c.Addr)
	if udp == "" {
		c.HTTP3 = "not advertised (no h3 in Alt-Svc)"
		return
	}
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{ServerName: tlsName, MinVersion: tls.VersionTLS13,
			InsecureSkipVerify: true}, // the certificate is judged on the TCP connection
		QUICConfig: &quic.Config{HandshakeIdleTimeout: min(in.opts.Timeout, 3*time.Second)},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddrEarly(ctx, udp, tlsCfg, cfg)
		},
	}
	defer tr.Close()
	_, _, err := get(ctx, &http.Client{Transport: tr, Timeout: in.opts.Timeout}, "https://"+host+"/_matrix/key/v2/server")
	if err == nil {
		c.HTTP3 = "ok (" + udp + ")"
		return
	}
	c.HTTP3 = "failed (" + udp + "): " + err.Error()
	in.warn("HTTP3", c.Addr, "Alt-Svc offers h3 on "+udp+" but "+err.Error(),
		"open UDP "+udp+" in the firewall or stop advertising h3: clients that try it first lose time")
}
