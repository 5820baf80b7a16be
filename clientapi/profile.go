package clientapi

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
)

// spec: client-server API, "Profiles". Profile reads need an access token
// (the spec allows servers to require one; TrustCase profiles are not public).

func (a *API) registerProfile(v3 *mux.Router) {
	v3.Handle("/profile/{userId}", a.authed(a.getProfile)).Methods(http.MethodGet)
	v3.Handle("/profile/{userId}/{keyName}", a.authed(a.getProfileField)).Methods(http.MethodGet)
	v3.Handle("/profile/{userId}/{keyName}", a.authed(a.putProfileField)).Methods(http.MethodPut)
	v3.Handle("/profile/{userId}/{keyName}", a.authed(a.deleteProfileField)).Methods(http.MethodDelete)
}

func profileVars(r *http.Request) (userID, key string, err error) {
	if userID, err = pathVar(r, "userId"); err != nil {
		return "", "", err
	}
	if _, ok := mux.Vars(r)["keyName"]; ok {
		key, err = pathVar(r, "keyName")
	}
	return userID, key, err
}

func (a *API) getProfile(r *http.Request, _ *accounts.Device) (any, error) {
	userID, _, err := profileVars(r)
	if err != nil {
		return nil, err
	}
	fields, err := a.Accounts.UserProfile(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	return fields, nil
}

func (a *API) getProfileField(r *http.Request, _ *accounts.Device) (any, error) {
	userID, key, err := profileVars(r)
	if err != nil {
		return nil, err
	}
	v, err := a.Accounts.UserProfileField(r.Context(), userID, key)
	if err != nil {
		return nil, err
	}
	return map[string]json.RawMessage{key: v}, nil
}

func (a *API) putProfileField(r *http.Request, dev *accounts.Device) (any, error) {
	userID, key, err := profileVars(r)
	if err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	v, ok := body[key]
	if !ok {
		return nil, mxerr.MissingParam("the body must carry %q", key)
	}
	if err := a.Accounts.SetProfileField(r.Context(), dev, userID, key, v); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) deleteProfileField(r *http.Request, dev *accounts.Device) (any, error) {
	userID, key, err := profileVars(r)
	if err != nil {
		return nil, err
	}
	if err := a.Accounts.DeleteProfileField(r.Context(), dev, userID, key); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
