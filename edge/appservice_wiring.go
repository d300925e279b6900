package edge

import (
	"errors"
	"time"

	"edge/edge/appservice"
	"edge/edge/room"
	"edge/edge/store"
)

// attachAppServices loads the application service registrations, makes
// their sender users, lets the client API accept their as_tokens, and
// starts pushing them the events they are interested in.
func (n *Node) attachAppServices() error {
	regs, err := appservice.Load(n.Config.Dir, n.Config.AppServices, n.Config.ServerName)
	if err != nil {
		return err
	}
	if len(regs) == 0 {
		return nil
	}
	err = n.Store.Write(func(tx *store.Tx) error {
		for _, r := range regs {
			u := &store.User{Localpart: r.SenderLocalpart, CreatedTS: time.Now().UnixMilli(), DisplayName: r.SenderLocalpart}
			if err := tx.CreateUser(u); err != nil && !errors.Is(err, store.ErrExists) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	n.Client.AppServices = &appservice.Set{Regs: regs}
	p := appservice.NewPusher(appservice.Options{Store: n.Store, Rooms: n.Rooms, Regs: regs, Log: n.Log.With("component", "appservice")})
	n.appServices = p
	n.Client.AppServiceFeed = p
	n.Typing.OnChange = func(roomID string, userIDs []string) {
		p.EDU("m.typing", roomID, "", map[string]any{"user_ids": userIDs})
	}
	next := n.Rooms.OnEvent
	n.Rooms.OnEvent = func(ev *room.Event) {
		next(ev)
		p.Submit(ev)
	}
	n.Log.Info("application services loaded", "count", len(regs))
	return nil
}
