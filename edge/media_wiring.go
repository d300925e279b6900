package edge

import (
	"context"
	"crypto/tls"
	"net/http"

	"edge/edge/media"
	"edge/federation"
)

// mediaHandler serves the content repository (/_matrix/media and
// /_matrix/client/v1/media), authenticating with the client API's tokens.
// Its state is on disk and in the store, so each listener may have its own.
func (n *Node) mediaHandler() http.Handler {
	return n.newMedia().Handler()
}

func (n *Node) newMedia() *media.Service {
	var loc *tls.Config
	// A Location in a federation media answer is verified like federation
	// peers: the system roots plus federation.trust_ca_file.
	if f := n.Config.Federation.TrustCAFile; f != "" {
		if roots, err := federation.LoadRootCAs(n.Config.Path(f)); err == nil {
			loc = &tls.Config{RootCAs: roots}
		}
	}
	return media.New(media.Deps{Config: n.Config, Store: n.Store, Authenticate: n.Client.Authenticate, Log: n.Log,
		FetchRemote: func(ctx context.Context, server, path string) ([]byte, error) {
			return n.Fed.Client.GetRaw(ctx, server, path)
		},
		FetchRemoteLegacy: func(ctx context.Context, server, path string) ([]byte, http.Header, error) {
			return n.Fed.Client.GetRawHeader(ctx, server, path)
		}, LocationTLS: loc})
}

// attachMediaFederation serves our media to other servers:
// GET /_matrix/federation/v1/media/download/{mediaId} and /thumbnail/{mediaId},
// X-Matrix authenticated, answered as multipart/mixed.
func (n *Node) attachMediaFederation() {
	download, thumbnail := n.newMedia().FederationHandlers()
	n.Fed.HandleHTTP("GET /_matrix/federation/v1/media/download/{mediaId}", n.Fed.Authenticate(download))
	n.Fed.HandleHTTP("GET /_matrix/federation/v1/media/thumbnail/{mediaId}", n.Fed.Authenticate(thumbnail))
}
