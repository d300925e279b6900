package edufed

import (
	"net/http"

	"edge/edge/client"
)

// installOpenID registers GET /_matrix/federation/v1/openid/userinfo. The
// spec leaves it without X-Matrix authentication: the caller is any third
// party holding a token, identified by the token alone.
func installOpenID(d Deps) {
	d.Fed.HandleHTTP("GET /_matrix/federation/v1/openid/userinfo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		userID, err := d.Client.OpenIDUserInfo(r.URL.Query().Get("access_token"))
		if err != nil {
			client.WriteError(w, err)
			return
		}
		client.WriteJSON(w, http.StatusOK, map[string]string{"sub": userID})
	}))
}
