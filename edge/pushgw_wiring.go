package edge

import (
	"edge/edge/pushgw"
	"edge/edge/room"
)

// withPushGateway starts push delivery for the node and returns next
// extended to hand it every durable event (local or federated). Delivery
// queues without blocking, so the event path stays as fast as before.
func (n *Node) withPushGateway(next func(*room.Event)) func(*room.Event) {
	p := pushgw.New(pushgw.Options{
		AllowPrivate: n.Config.Push.AllowPrivateGateways,
		Log:          n.Log.With("component", "pushgw"),
		Targets:      n.pushTargets,
		Rejected: func(userID, appID, pushKey string) error {
			return n.Client.RemovePusher(userID, appID, pushKey)
		},
	})
	n.push = p
	return func(ev *room.Event) {
		next(ev)
		p.Submit(ev)
	}
}

// PushGateway is the node's push delivery (nil before Open finished).
func (n *Node) PushGateway() *pushgw.Pusher { return n.push }

// pushTargets adapts the client API's push rule evaluation to delivery.
func (n *Node) pushTargets(ev *room.Event) (pushgw.Event, []pushgw.Target, error) {
	info, targets, err := n.Client.PushTargets(ev)
	if err != nil {
		return pushgw.Event{}, nil, err
	}
	out := make([]pushgw.Target, 0, len(targets))
	for _, t := range targets {
		out = append(out, pushgw.Target{UserID: t.UserID, UserIsTarget: t.UserIsTarget, Tweaks: t.Actions.Tweaks(),
			Unread: t.Unread, Pushers: t.Pushers})
	}
	return pushgw.Event{ID: ev.ID, RoomID: ev.RoomID, Type: ev.Type, Sender: ev.Sender,
		SenderDisplayName: info.SenderDisplayName, RoomName: info.RoomName, RoomAlias: info.RoomAlias,
		Content: ev.Content}, out, nil
}
