package edge

import (
	"edge/edge/client"
	"edge/edge/roomfed"
)

// attachRoomFederation plugs the room federation engine into the
// federation transport, the room service and the client API's joins,
// invites and leaves.
func (n *Node) attachRoomFederation() error {
	eng := roomfed.New(roomfed.Deps{Fed: n.Fed, Rooms: n.Rooms, Store: n.Store, Log: n.Log})
	n.Client.RemoteJoin = eng.Join
	n.Client.SetRemoteMembership(client.RemoteMembership{Invite: eng.Invite, Leave: eng.Leave})
	eng.ServeInvites(n.Client.AcceptRemoteInvite)
	return nil
}
