package edge

import (
	"edge/edge/client"
	"edge/edge/roomfed"
)

// attachRoomFederation plugs the room federation engine into the
// federation transport, the room service and the client API's joins,
// knocks, invites, leaves and backfill.
func (n *Node) attachRoomFederation() error {
	eng := roomfed.New(roomfed.Deps{Fed: n.Fed, Rooms: n.Rooms, Store: n.Store, Log: n.Log, FasterJoins: n.Config.Federation.FasterJoins,
		MaxJoinEvents: n.Config.Federation.MaxJoinEvents})
	n.Client.RemoteJoin = eng.Join
	n.Client.RemoteKnock = eng.Knock
	n.Client.RemoteBackfill = eng.Backfill
	n.Client.RemoteTimestamp = eng.RemoteTimestamp
	n.Client.RemoteBackfillAt = eng.BackfillAt
	n.Client.AwaitFullState = eng.AwaitFullState
	n.Client.RemoteHierarchy = eng.Hierarchy
	n.Client.RemoteEventRelationships = eng.EventRelationships
	n.Client.SetRemoteMembership(client.RemoteMembership{Invite: eng.Invite, Leave: eng.Leave})
	eng.ServeInvites(n.Client.AcceptRemoteInvite)
	eng.OnFullState(n.Client.FullStateReached)
	eng.OnRescind(roomfed.InviteRescinds{Pending: n.Client.PendingRemoteInviteFrom, Rescind: n.Client.RescindRemoteInvite})
	eng.ResumePartialJoins() // rooms a restart left with partial state
	return nil
}
