package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"edge/edge/room"
	"edge/edge/store"
)

// Reporting content (spec: Reporting Content module): users report events,
// rooms and users; the reports are kept in the KV for server admins, who
// read them through Synapse's event_reports admin API.

// reportNamespace holds reports keyed by their zero-padded stream
// position, so a key scan walks them in the order they were received.
const reportNamespace = "report"

// contentReport is one stored report.
type contentReport struct {
	ID         uint64 `json:"id"`
	Kind       string `json:"kind"` // "event", "room" or "user"
	ReceivedTS int64  `json:"received_ts"`
	Reporter   string `json:"reporter"`
	RoomID     string `json:"room_id,omitempty"`
	EventID    string `json:"event_id,omitempty"`
	Sender     string `json:"sender,omitempty"`      // the reported event's sender
	TargetUser string `json:"target_user,omitempty"` // the reported user
	Reason     string `json:"reason"`
	Score      *int   `json:"score,omitempty"`
}

func reportKey(id uint64) string { return fmt.Sprintf("%020d", id) }

// routesReport registers the client reporting endpoints and the admin
// views of the reports; routesAdmin calls it.
func (s *Server) routesReport() {
	s.authed("POST /rooms/{roomId}/report/{eventId}", s.reportEvent)
	s.authed("POST /rooms/{roomId}/report", s.reportRoom)
	s.authed("POST /users/{userId}/report", s.reportUser)
	s.admin("GET /_synapse/admin/v1/event_reports", s.adminListReports("event"))
	s.admin("GET /_synapse/admin/v1/event_reports/{reportId}", s.adminGetReport)
	// Not in Synapse: the same listing for room and user reports, which
	// would otherwise be invisible to admins.
	s.admin("GET /_synapse/admin/v1/room_reports", s.adminListReports("room"))
	s.admin("GET /_synapse/admin/v1/user_reports", s.adminListReports("user"))
}

// storeReport gives a report its stream position and writes it.
func storeReport(tx *store.Tx, rep *contentReport) {
	rep.ID = tx.NextPos()
	rep.ReceivedTS = time.Now().UnixMilli()
	b, _ := json.Marshal(rep)
	tx.PutKV(reportNamespace, reportKey(rep.ID), b)
}

// reportEvent: POST /rooms/{roomId}/report/{eventId}
// The reporter must be joined and able to see the event; anything else is
// 404 so that a report does not reveal events the reporter cannot see.
func (s *Server) reportEvent(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Reason *string `json:"reason"`
		Score  *int    `json:"score"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	// score was removed in v1.18; older clients still send it, and
	// Synapse held it to -100 (most offensive) … 0.
	if req.Score != nil && (*req.Score < -100 || *req.Score > 0) {
		return nil, errInvalidParam("score must be an integer between -100 and 0")
	}
	if err := check(s.limits.send, sess.UserID); err != nil {
		return nil, err
	}
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	notFound := errNotFound("Unable to report event: it does not exist or you aren't able to see it")
	rep := &contentReport{Kind: "event", Reporter: sess.UserID, RoomID: roomID, EventID: eventID, Score: req.Score}
	if req.Reason != nil {
		rep.Reason = *req.Reason
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		if _, _, err := s.requireJoined(tx, roomID, sess.UserID); err != nil {
			return notFound
		}
		ev, err := s.Rooms.EventByID(tx, eventID)
		if errors.Is(err, room.ErrEventNotFound) {
			return notFound
		} else if err != nil {
			return err
		}
		if ev.RoomID != roomID || !s.newVisibility(tx, roomID, sess.UserID).canSee(ev) {
			return notFound
		}
		rep.Sender = ev.Sender
		storeReport(tx, rep)
		return nil
	})
}

// reportRoom: POST /rooms/{roomId}/report
// Membership is not required (v1.13): rooms reach users through the
// directory and invites. Unknown rooms are 404.
func (s *Server) reportRoom(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Reason *string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Reason == nil {
		return nil, errMissingParam("Missing reason")
	}
	if err := check(s.limits.send, sess.UserID); err != nil {
		return nil, err
	}
	roomID := r.PathValue("roomId")
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		if _, err := tx.Room(roomID); errors.Is(err, store.ErrNotFound) {
			return errNotFound("Room %s not found", roomID)
		} else if err != nil {
			return err
		}
		storeReport(tx, &contentReport{Kind: "room", Reporter: sess.UserID, RoomID: roomID, Reason: *req.Reason})
		return nil
	})
}

// reportUser: POST /users/{userId}/report
// Sharing a room is not required (v1.14). An unknown local user is 404;
// remote users cannot be checked here and are accepted.
func (s *Server) reportUser(r *http.Request, sess *Session) (any, error) {
	var req struct {
		Reason *string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Reason == nil {
		return nil, errMissingParam("Missing reason")
	}
	target := r.PathValue("userId")
	if !validUserID(target) {
		return nil, errInvalidParam("Invalid user ID")
	}
	if err := check(s.limits.send, sess.UserID); err != nil {
		return nil, err
	}
	return empty{}, s.Store.Write(func(tx *store.Tx) error {
		if s.isLocalUser(target) {
			if _, err := tx.User(localpart(target)); errors.Is(err, store.ErrNotFound) {
				return errNotFound("User %s not found", target)
			} else if err != nil {
				return err
			}
		}
		storeReport(tx, &contentReport{Kind: "user", Reporter: sess.UserID, TargetUser: target, Reason: *req.Reason})
		return nil
	})
}

// reportJSON is a report as Synapse's admin API shows it, with the
// room's current name and canonical alias.
func (s *Server) reportJSON(tx *store.Tx, rep *contentReport) map[string]any {
	j := map[string]any{
		"id":          rep.ID,
		"received_ts": rep.ReceivedTS,
		"user_id":     rep.Reporter,
		"reason":      nilIfEmpty(rep.Reason),
	}
	switch rep.Kind {
	case "event":
		j["event_id"], j["sender"], j["score"] = rep.EventID, rep.Sender, rep.Score
	case "user":
		j["target_user_id"] = rep.TargetUser
	}
	if rep.RoomID != "" {
		j["room_id"] = rep.RoomID
		j["name"], j["canonical_alias"] = nil, nil
		if _, st, err := s.roomState(tx, rep.RoomID); err == nil {
			j["name"] = nilIfEmpty(s.stateContentField(tx, st, "m.room.name", "name"))
			j["canonical_alias"] = nilIfEmpty(s.stateContentField(tx, st, "m.room.canonical_alias", "alias"))
		}
	}
	return j
}

// adminListReports serves GET /_synapse/admin/v1/event_reports (and the
// room_reports and user_reports listings): newest first unless dir=f,
// from/limit offsets, filters user_id (the reporter) and room_id.
func (s *Server) adminListReports(kind string) authedFunc {
	return func(r *http.Request, _ *Session) (any, error) {
		from, limit, err := pageParams(r, 100)
		if err != nil {
			return nil, err
		}
		q := r.URL.Query()
		dir := q.Get("dir")
		if dir == "" {
			dir = "b"
		}
		if dir != "b" && dir != "f" {
			return nil, errInvalidParam("Query parameter dir must be b or f")
		}
		userID, roomID := q.Get("user_id"), q.Get("room_id")
		var all []map[string]any
		err = s.Store.View(func(tx *store.Tx) error {
			var reps []*contentReport
			tx.ScanKV(reportNamespace, "", func(_ string, v []byte) bool {
				var rep contentReport
				if json.Unmarshal(v, &rep) == nil && rep.Kind == kind &&
					(userID == "" || rep.Reporter == userID) && (roomID == "" || rep.RoomID == roomID) {
					reps = append(reps, &rep)
				}
				return true
			})
			for _, rep := range reps {
				all = append(all, s.reportJSON(tx, rep))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if dir == "b" {
			for i, j := 0, len(all)-1; i < j; i, j = i+1, j-1 {
				all[i], all[j] = all[j], all[i]
			}
		}
		page := []map[string]any{}
		if from < len(all) {
			page = all[from:min(len(all), from+limit)]
		}
		resp := map[string]any{kind + "_reports": page, "total": len(all)}
		if from+len(page) < len(all) {
			resp["next_token"] = from + len(page)
		}
		return resp, nil
	}
}

// adminGetReport: GET /_synapse/admin/v1/event_reports/{reportId}
// One event report with the reported event's JSON.
func (s *Server) adminGetReport(r *http.Request, _ *Session) (any, error) {
	id, err := strconv.ParseUint(r.PathValue("reportId"), 10, 64)
	if err != nil {
		return nil, errInvalidParam("The report_id parameter must be a string representing a positive integer")
	}
	var resp map[string]any
	err = s.Store.View(func(tx *store.Tx) error {
		v, err := tx.GetKV(reportNamespace, reportKey(id))
		if errors.Is(err, store.ErrNotFound) {
			return errNotFound("Event report not found")
		} else if err != nil {
			return err
		}
		var rep contentReport
		if err := json.Unmarshal(v, &rep); err != nil {
			return err
		}
		if rep.Kind != "event" {
			return errNotFound("Event report not found")
		}
		resp = s.reportJSON(tx, &rep)
		resp["event_json"] = nil
		if ev, err := s.Rooms.EventByID(tx, rep.EventID); err == nil {
			resp["event_json"] = json.RawMessage(ev.Raw)
		}
		return nil
	})
	return resp, err
}
