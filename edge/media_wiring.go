package edge

import (
	"net/http"

	"edge/edge/media"
)

// mediaHandler serves the content repository (/_matrix/media and
// /_matrix/client/v1/media), authenticating with the client API's tokens.
// Its state is on disk and in the store, so each listener may have its own.
func (n *Node) mediaHandler() http.Handler {
	return media.New(media.Deps{Config: n.Config, Store: n.Store, Authenticate: n.Client.Authenticate, Log: n.Log}).Handler()
}
