package roomfed

import (
	"encoding/json"
	"errors"
	"net/http"

	"edge/edge/room"
	"edge/edge/store"
)

// restrictedJoinContent is the content of a make_join template for
// userID in roomID: {"membership":"join"}, and in a restricted room
// (join rule restricted or knock_restricted) that the user is neither
// joined to nor invited to, join_authorised_via_users_server naming a
// local member able to invite, which auth rule 4.3.5.2 (room versions 8+)
// asks for; send_join then countersigns the event as that user's server.
// The user must be joined to one of the allowed rooms as this server sees
// it (server-server API, make_join: M_UNABLE_TO_AUTHORISE_JOIN when this
// server is in none of them, M_UNABLE_TO_GRANT_JOIN when no local member
// may invite). Dendrite and Synapse ask this of the resident server.
func (e *Engine) restrictedJoinContent(tx *store.Tx, roomID, userID string) (json.RawMessage, error) {
	content := map[string]string{"membership": "join"}
	via, err := e.rooms.RestrictedJoinVia(tx, roomID, userID, e.name)
	switch {
	case errors.Is(err, room.ErrRoomNotFound):
		// the template's own lookup reports it
	case errors.Is(err, room.ErrCannotAuthoriseJoin):
		return nil, fedErr(http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN", err.Error())
	case errors.Is(err, room.ErrCannotGrantJoin):
		return nil, fedErr(http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN", err.Error())
	case errors.Is(err, room.ErrJoinNotAllowed):
		return nil, errForbidden(err.Error())
	case err != nil:
		return nil, err
	case via != "":
		content[room.JoinAuthorisedVia] = via
	}
	return json.Marshal(content)
}
