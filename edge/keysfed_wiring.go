package edge

import "edge/edge/keysfed"

// attachKeysFederation plugs end-to-end encryption's federation side
// (keys, device lists, to-device) into the transport and the client API.
func (n *Node) attachKeysFederation() {
	keysfed.Install(keysfed.Deps{Fed: n.Fed, Client: n.Client, Log: n.Log})
}
