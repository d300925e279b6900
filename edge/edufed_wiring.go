package edge

import "edge/edge/edufed"

// attachEDUFederation plugs typing, receipts, profile and directory
// queries across servers into the transport and the client API. It chains
// any OnEDU hook set before, so call it after attachKeysFederation.
func (n *Node) attachEDUFederation() {
	edufed.Install(edufed.Deps{Fed: n.Fed, Client: n.Client, Log: n.Log, NoPresence: !n.Config.Federation.Presence})
}
