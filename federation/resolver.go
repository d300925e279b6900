package federation

import (
	"context"
	"fmt"
	"net/netip"

	"edge/wellknown"
)

// Resolver turns a server name into where to connect: the endpoints to
// dial, the Host header and the name the certificate must match. Contract
// (as wellknown.ServerResolver): safe for concurrent use, honours ctx, and
// never returns a nil Result with a nil error. The client caches results
// per destination for a few minutes, so implementations need not.
type Resolver interface {
	Resolve(ctx context.Context, serverName string) (*wellknown.Result, error)
}

// The spec's discovery (well-known, SRV, A/AAAA) is the wellknown package's.
var _ Resolver = (*wellknown.Resolver)(nil)

// IPLiteralResolver resolves only server names that are IP literals, with
// or without a port (step 1 of the spec's algorithm), which need no DNS.
// It is the resolver for tests and for LANs of IP-named servers; every
// other name is an error.
type IPLiteralResolver struct{}

var _ Resolver = IPLiteralResolver{}

// Resolve implements Resolver.
func (IPLiteralResolver) Resolve(_ context.Context, serverName string) (*wellknown.Result, error) {
	n, err := wellknown.ParseServerName(serverName)
	if err != nil {
		return nil, err
	}
	if !n.IsIP() {
		return nil, fmt.Errorf("%w: %q is not an IP literal and no discovery resolver is configured", wellknown.ErrNoAddress, serverName)
	}
	port := n.Port
	if port == 0 {
		port = wellknown.DefaultPort
	}
	return &wellknown.Result{
		ServerName:    serverName,
		Step:          "1",
		Host:          serverName,
		TLSServerName: n.IP.String(),
		Endpoints:     []wellknown.Endpoint{{Addr: netip.AddrPortFrom(n.IP, uint16(port))}},
	}, nil
}
