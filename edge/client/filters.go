package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"edge/edge/filter"
	"edge/edge/room"
	"edge/edge/store"
)

// eventView is what filters need to know of an event.
func eventView(ev *room.Event) filter.EventView {
	hasURL := false
	if len(ev.Content) > 0 && strings.Contains(string(ev.Content), `"url"`) {
		var c map[string]json.RawMessage
		if json.Unmarshal(ev.Content, &c) == nil {
			_, hasURL = c["url"]
		}
	}
	return filter.EventView{Type: ev.Type, Sender: ev.Sender, RoomID: ev.RoomID, HasURL: hasURL}
}

// roomEventFilter is a RoomEventFilter from a query parameter (/messages,
// /context) with its lazy-loading flags resolved.
type roomEventFilter struct {
	f                       *filter.RoomEventFilter
	Limit                   int
	LazyLoadMembers         bool
	IncludeRedundantMembers bool
	// rel_types / not_rel_types (MSC3874, also under its unstable prefix),
	// which edge/filter does not know: only /messages and /context use them.
	relTypes, notRelTypes []string
}

// relFilter is the MSC3874 part of a RoomEventFilter.
type relFilter struct {
	RelTypes            []string `json:"rel_types"`
	NotRelTypes         []string `json:"not_rel_types"`
	UnstableRelTypes    []string `json:"org.matrix.msc3874.rel_types"`
	UnstableNotRelTypes []string `json:"org.matrix.msc3874.not_rel_types"`
}

func parseFilterParam(param string) (*roomEventFilter, error) {
	out := &roomEventFilter{}
	if param == "" {
		return out, nil
	}
	var f filter.RoomEventFilter
	if !json.Valid([]byte(param)) {
		return nil, errNotJSON("filter is not JSON")
	}
	if err := json.Unmarshal([]byte(param), &f); err != nil {
		return nil, errBadJSON("Invalid filter: %s", jsonMessage(err))
	}
	var rf relFilter
	if err := json.Unmarshal([]byte(param), &rf); err != nil {
		return nil, errBadJSON("Invalid filter: %s", jsonMessage(err))
	}
	out.relTypes = append(rf.RelTypes, rf.UnstableRelTypes...)
	out.notRelTypes = append(rf.NotRelTypes, rf.UnstableNotRelTypes...)
	out.f = &f
	out.Limit = f.EffectiveLimit(0, maxPageLimit)
	out.LazyLoadMembers, out.IncludeRedundantMembers = f.LazyLoad()
	return out, nil
}

func (f *roomEventFilter) matchRoomEvent(ev *room.Event) bool {
	if f.f != nil && !f.f.Match(eventView(ev)) {
		return false
	}
	if len(f.relTypes) == 0 && len(f.notRelTypes) == 0 {
		return true
	}
	relType, _ := relationOf(ev.Content)
	if relType != "" && slices.Contains(f.notRelTypes, relType) {
		return false
	}
	// rel_types keeps only events with one of the relations, so none
	// without a relation.
	return len(f.relTypes) == 0 || (relType != "" && slices.Contains(f.relTypes, relType))
}

// loadFilter resolves /sync's filter parameter: inline JSON or a stored ID.
func (s *Server) loadFilter(tx *store.Tx, userID, param string) (*filter.Filter, error) {
	if param == "" {
		return &filter.Filter{}, nil
	}
	data := []byte(param)
	if !filter.IsInline(param) {
		raw, err := tx.Filter(userID, param)
		if errors.Is(err, store.ErrNotFound) {
			return nil, errNotFound("Unknown filter %s", param)
		} else if err != nil {
			return nil, err
		}
		data = raw
	}
	f, err := filter.Parse(data)
	if err != nil {
		return nil, filterError(err)
	}
	return f, nil
}

func filterError(err error) error {
	if errors.Is(err, filter.ErrInvalidParam) {
		return errInvalidParam("%s", err.Error())
	}
	return errBadJSON("%s", err.Error())
}

func (s *Server) routesFilters() {
	s.authed("POST /user/{userId}/filter", s.postFilter)
	s.authed("GET /user/{userId}/filter/{filterId}", s.getFilter)
}

// postFilter: POST /user/{userId}/filter
func (s *Server) postFilter(r *http.Request, sess *Session) (any, error) {
	if r.PathValue("userId") != sess.UserID {
		return nil, errForbidden("Cannot create filters for other users")
	}
	raw, err := decodeObject(r)
	if err != nil {
		return nil, err
	}
	if _, err := filter.Parse(raw); err != nil {
		return nil, filterError(err)
	}
	var id string
	err = s.Store.Write(func(tx *store.Tx) error {
		id = tx.PutFilter(sess.UserID, raw)
		return nil
	})
	return map[string]string{"filter_id": id}, err
}

// getFilter: GET /user/{userId}/filter/{filterId}
func (s *Server) getFilter(r *http.Request, sess *Session) (any, error) {
	if r.PathValue("userId") != sess.UserID {
		return nil, errForbidden("Cannot read other users' filters")
	}
	var raw json.RawMessage
	err := s.Store.View(func(tx *store.Tx) error {
		var err error
		raw, err = tx.Filter(sess.UserID, r.PathValue("filterId"))
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("Unknown filter")
		}
		return err
	})
	return raw, err
}
