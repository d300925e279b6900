package config

// Federation configures the server-server API: signing-key validity,
// trusted notaries, and which addresses outbound requests may reach.
type Federation struct {
	// AllowPrivateAddresses lets outbound federation reach loopback and
	// private networks (tests, LANs). Off by default: a remote server name
	// must not turn this node into a proxy into its own network.
	AllowPrivateAddresses bool `yaml:"allow_private_addresses"`
}

// DefaultFederation is the federation section `edge init` writes.
func DefaultFederation() Federation {
	return Federation{}
}

func (f *Federation) validate() error { return nil }
