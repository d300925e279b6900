package config

import "fmt"

// Push configures delivery to HTTP push gateways (edge/pushgw).
type Push struct {
	// AllowPrivateGateways lets pushers' data.url reach loopback, private
	// and link-local addresses (a gateway on the LAN, tests). Off, such
	// gateways are refused when dialled, so a pusher cannot make the
	// server probe its own network.
	AllowPrivateGateways bool `yaml:"allow_private_gateways"`
}

// pushSection renders the push settings with comments.
func pushSection(p Push) string {
	return fmt.Sprintf(`# Push notifications through HTTP push gateways (e.g. Sygnal).
push:
  # Let gateways on loopback/private/link-local addresses be reached.
  allow_private_gateways: %t
`, p.AllowPrivateGateways)
}
