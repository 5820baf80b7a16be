package clientapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accountdata"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
)

func (a *API) registerAccountData(v3 *mux.Router) {
	get, put, post, del := http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete
	v3.Handle("/user/{userId}/account_data/{type}", a.authed(a.getAccountData)).Methods(get)
	v3.Handle("/user/{userId}/account_data/{type}", a.authed(a.putAccountData)).Methods(put)
	v3.Handle("/user/{userId}/rooms/{roomId}/account_data/{type}", a.authed(a.getAccountData)).Methods(get)
	v3.Handle("/user/{userId}/rooms/{roomId}/account_data/{type}", a.authed(a.putAccountData)).Methods(put)

	tags := "/user/{userId}/rooms/{roomId}/tags"
	v3.Handle(tags, a.authed(a.getTags)).Methods(get)
	v3.Handle(tags+"/{tag}", a.authed(a.putTag)).Methods(put)
	v3.Handle(tags+"/{tag}", a.authed(a.deleteTag)).Methods(del)

	v3.Handle("/pushrules/", a.authed(a.getPushRules)).Methods(get)
	v3.Handle("/pushrules", a.authed(a.getPushRules)).Methods(get)
	v3.Handle("/pushrules/global/", a.authed(a.getGlobalPushRules)).Methods(get)
	v3.Handle("/pushrules/global", a.authed(a.getGlobalPushRules)).Methods(get)
	rule := "/pushrules/global/{kind}/{ruleId}"
	v3.Handle(rule, a.authed(a.getPushRule)).Methods(get)
	v3.Handle(rule, a.authed(a.putPushRule)).Methods(put)
	v3.Handle(rule, a.authed(a.deletePushRule)).Methods(del)
	v3.Handle(rule+"/enabled", a.authed(a.getPushRuleEnabled)).Methods(get)
	v3.Handle(rule+"/enabled", a.authed(a.putPushRuleEnabled)).Methods(put)
	v3.Handle(rule+"/actions", a.authed(a.getPushRuleActions)).Methods(get)
	v3.Handle(rule+"/actions", a.authed(a.putPushRuleActions)).Methods(put)

	v3.Handle("/rooms/{roomId}/receipt/{receiptType}/{eventId}", a.authed(a.postReceipt)).Methods(post)
	v3.Handle("/rooms/{roomId}/read_markers", a.authed(a.postReadMarkers)).Methods(post)
	v3.Handle("/rooms/{roomId}/typing/{userId}", a.authed(a.putTyping)).Methods(put)
}

func (a *API) getAccountData(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "userId", "roomId", "type")
	if err != nil {
		return nil, err
	}
	return a.AccountData.Get(r.Context(), dev.UserID, v[0], v[1], v[2])
}

func (a *API) putAccountData(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "userId", "roomId", "type")
	if err != nil {
		return nil, err
	}
	var content json.RawMessage
	if err := decodeJSON(r, &content); err != nil {
		return nil, err
	}
	return struct{}{}, a.AccountData.Put(r.Context(), dev.UserID, v[0], v[1], v[2], content)
}

func (a *API) getTags(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "userId", "roomId")
	if err != nil {
		return nil, err
	}
	tags, err := a.AccountData.Tags(r.Context(), dev.UserID, v[0], v[1])
	if err != nil {
		return nil, err
	}
	return map[string]any{"tags": tags}, nil
}

func (a *API) putTag(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "userId", "roomId", "tag")
	if err != nil {
		return nil, err
	}
	var body json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	return struct{}{}, a.AccountData.SetTag(r.Context(), dev.UserID, v[0], v[1], v[2], body)
}

func (a *API) deleteTag(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "userId", "roomId", "tag")
	if err != nil {
		return nil, err
	}
	return struct{}{}, a.AccountData.DeleteTag(r.Context(), dev.UserID, v[0], v[1], v[2])
}

func (a *API) getPushRules(r *http.Request, dev *accounts.Device) (any, error) {
	return a.AccountData.PushRules(r.Context(), dev.UserID)
}

func (a *API) getGlobalPushRules(r *http.Request, dev *accounts.Device) (any, error) {
	rs, err := a.AccountData.PushRules(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return rs.Global, nil
}

func (a *API) getPushRule(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "kind", "ruleId")
	if err != nil {
		return nil, err
	}
	return a.AccountData.PushRule(r.Context(), dev.UserID, v[0], v[1])
}

func (a *API) putPushRule(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "kind", "ruleId")
	if err != nil {
		return nil, err
	}
	var req accountdata.PutRuleRequest
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	return struct{}{}, a.AccountData.PutRule(r.Context(), dev.UserID, v[0], v[1], q.Get("before"), q.Get("after"), req)
}

func (a *API) deletePushRule(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "kind", "ruleId")
	if err != nil {
		return nil, err
	}
	return struct{}{}, a.AccountData.DeleteRule(r.Context(), dev.UserID, v[0], v[1])
}

func (a *API) getPushRuleEnabled(r *http.Request, dev *accounts.Device) (any, error) {
	rule, err := a.getPushRule(r, dev)
	if err != nil {
		return nil, err
	}
	return map[string]bool{"enabled": rule.(accountdata.Rule).Enabled}, nil
}

func (a *API) putPushRuleEnabled(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "kind", "ruleId")
	if err != nil {
		return nil, err
	}
	var req struct {
		Enabled *bool `json:"enabled"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Enabled == nil {
		return nil, mxerr.MissingParam("enabled is required")
	}
	return struct{}{}, a.AccountData.SetEnabled(r.Context(), dev.UserID, v[0], v[1], *req.Enabled)
}

func (a *API) getPushRuleActions(r *http.Request, dev *accounts.Device) (any, error) {
	rule, err := a.getPushRule(r, dev)
	if err != nil {
		return nil, err
	}
	return map[string]any{"actions": rule.(accountdata.Rule).Actions}, nil
}

func (a *API) putPushRuleActions(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "kind", "ruleId")
	if err != nil {
		return nil, err
	}
	var req struct {
		Actions []any `json:"actions"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	return struct{}{}, a.AccountData.SetActions(r.Context(), dev.UserID, v[0], v[1], req.Actions)
}

func (a *API) postReceipt(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "roomId", "receiptType", "eventId")
	if err != nil {
		return nil, err
	}
	var req struct {
		ThreadID *string `json:"thread_id"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	thread := ""
	if req.ThreadID != nil {
		if *req.ThreadID == "" {
			return nil, mxerr.InvalidParam("thread_id must be a non-empty string")
		}
		thread = *req.ThreadID
	}
	return struct{}{}, a.AccountData.SendReceipt(r.Context(), dev.UserID, v[0], v[1], v[2], thread)
}

func (a *API) postReadMarkers(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	var req struct {
		FullyRead   string `json:"m.fully_read"`
		Read        string `json:"m.read"`
		ReadPrivate string `json:"m.read.private"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	return struct{}{}, a.AccountData.ReadMarkers(r.Context(), dev.UserID, roomID, req.FullyRead, req.Read, req.ReadPrivate)
}

func (a *API) putTyping(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "roomId", "userId")
	if err != nil {
		return nil, err
	}
	var req struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Typing == nil {
		return nil, mxerr.MissingParam("typing is required")
	}
	var timeout time.Duration
	if req.Timeout != nil {
		if *req.Timeout < 0 {
			return nil, mxerr.InvalidParam("timeout must not be negative")
		}
		timeout = time.Duration(min(*req.Timeout, int64(accountdata.MaxTypingTimeout/time.Millisecond))) * time.Millisecond
	}
	return struct{}{}, a.AccountData.SetTyping(r.Context(), dev.UserID, v[1], v[0], *req.Typing, timeout)
}
