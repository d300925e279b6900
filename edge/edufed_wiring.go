package edge

import "edge/edge/edufed"

// attachEDUFederation plugs typing, receipts, profile and directory
// queries across servers into the transport and the client API.
func (n *Node) attachEDUFederation() {
	edufed.Install(edufed.Deps{Fed: n.Fed, Client: n.Client, Log: n.Log, NoPresence: !n.Config.Federation.Presence})
}
