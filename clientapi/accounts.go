package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
)

// spec: client-server API, "Client Authentication", "User-Interactive
// Authentication API", "Account registration and management", "Device
// Management".

func (a *API) registerAccounts(v3, v1 *mux.Router) {
	v3.Handle("/login", a.public(a.loginFlows)).Methods(http.MethodGet)
	v3.Handle("/login", a.public(a.login)).Methods(http.MethodPost)
	v3.Handle("/logout", a.authed(a.logout)).Methods(http.MethodPost)
	v3.Handle("/logout/all", a.authed(a.logoutAll)).Methods(http.MethodPost)
	v3.Handle("/account/whoami", a.authed(a.whoami)).Methods(http.MethodGet)
	v3.Handle("/account/password", a.authed(a.changePassword)).Methods(http.MethodPost)
	v3.Handle("/account/deactivate", a.authed(a.deactivate)).Methods(http.MethodPost)
	v3.Handle("/account/3pid", a.authed(a.threePIDs)).Methods(http.MethodGet)
	v3.Handle("/register", a.public(a.register)).Methods(http.MethodPost)
	v3.Handle("/register/available", a.public(a.usernameAvailable)).Methods(http.MethodGet)
	v1.Handle("/register/m.login.registration_token/validity", a.public(a.registrationTokenValidity)).Methods(http.MethodGet)
	v3.Handle("/devices", a.authed(a.devices)).Methods(http.MethodGet)
	v3.Handle("/devices/{deviceId}", a.authed(a.device)).Methods(http.MethodGet)
	v3.Handle("/devices/{deviceId}", a.authed(a.renameDevice)).Methods(http.MethodPut)
	v3.Handle("/devices/{deviceId}", a.authed(a.deleteDevice)).Methods(http.MethodDelete)
	v3.Handle("/delete_devices", a.authed(a.deleteDevices)).Methods(http.MethodPost)
}

// decodeStrict decodes a JSON object body into v and also returns it as a
// generic map, so handlers can tell a missing field from a zero one.
func decodeStrict(r *http.Request, v any) (map[string]json.RawMessage, error) {
	var raw map[string]json.RawMessage
	if err := decodeJSON(r, &raw); err != nil {
		return nil, err
	}
	buf, _ := json.Marshal(raw)
	if err := json.Unmarshal(buf, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, mxerr.BadJSON("field %q has the wrong type: expected %s", typeErr.Field, typeErr.Type)
		}
		return nil, mxerr.BadJSON("%v", err)
	}
	return raw, nil
}

// uiaAnswer turns an incomplete UIA into its 401 answer.
func uiaAnswer(err error) (any, error) {
	var ch *accounts.Challenge
	if errors.As(err, &ch) {
		return Response{Status: http.StatusUnauthorized, Body: ch}, nil
	}
	return nil, err
}

type loginResponse struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token,omitempty"`
	DeviceID    string `json:"device_id,omitempty"`
	HomeServer  string `json:"home_server,omitempty"` // deprecated in the spec, still read by older clients
	WellKnown   any    `json:"well_known,omitempty"`
}

func (a *API) loginFlows(*http.Request, *accounts.Device) (any, error) {
	return map[string]any{"flows": []map[string]string{{"type": "m.login.password"}}}, nil
}

func (a *API) login(r *http.Request, _ *accounts.Device) (any, error) {
	var req struct {
		Type       string               `json:"type"`
		Identifier *accounts.Identifier `json:"identifier"`
		User       string               `json:"user"`
		Password   string               `json:"password"`
		DeviceID   string               `json:"device_id"`
		DeviceName string               `json:"initial_device_display_name"`
	}
	if _, err := decodeStrict(r, &req); err != nil {
		return nil, err
	}
	switch req.Type {
	case "m.login.password":
	case "":
		return nil, mxerr.MissingParam("type is required")
	default:
		return nil, mxerr.Unknown("login type %q is not supported; use m.login.password", req.Type)
	}
	user := req.User
	if req.Identifier != nil {
		if req.Identifier.Type != "m.id.user" {
			return nil, mxerr.Unknown("identifier type %q is not supported; use m.id.user", req.Identifier.Type)
		}
		user = req.Identifier.User
	}
	if user == "" {
		return nil, mxerr.MissingParam("identifier.user is required")
	}
	if req.Password == "" {
		return nil, mxerr.MissingParam("password is required")
	}
	res, err := a.Accounts.Login(r.Context(), user, req.Password, req.DeviceID, req.DeviceName)
	if err != nil {
		return nil, err
	}
	resp := loginResponse{UserID: res.UserID, AccessToken: res.AccessToken, DeviceID: res.DeviceID, HomeServer: a.Config.ServerName}
	// Only an operator-set public URL is worth telling a client to switch to.
	if base := a.Config.Client.PublicBaseURL; base != "" {
		resp.WellKnown = map[string]any{"m.homeserver": map[string]string{"base_url": base}}
	}
	return resp, nil
}

func (a *API) logout(r *http.Request, dev *accounts.Device) (any, error) {
	return struct{}{}, a.Accounts.Logout(r.Context(), dev)
}

func (a *API) logoutAll(r *http.Request, dev *accounts.Device) (any, error) {
	return struct{}{}, a.Accounts.LogoutAll(r.Context(), dev.UserID)
}

func (a *API) whoami(_ *http.Request, dev *accounts.Device) (any, error) {
	return map[string]any{"user_id": dev.UserID, "device_id": dev.DeviceID, "is_guest": false}, nil
}

func (a *API) changePassword(r *http.Request, dev *accounts.Device) (any, error) {
	var req struct {
		Auth          *accounts.AuthDict `json:"auth"`
		NewPassword   string             `json:"new_password"`
		LogoutDevices *bool              `json:"logout_devices"`
	}
	if _, err := decodeStrict(r, &req); err != nil {
		return nil, err
	}
	uia := accounts.UIARequest{Auth: req.Auth, Binding: accounts.Binding("POST", "/account/password", dev.UserID)}
	if err := a.Accounts.ChangePassword(r.Context(), dev.UserID, req.NewPassword, uia); err != nil {
		return uiaAnswer(err)
	}
	return struct{}{}, nil
}

func (a *API) deactivate(r *http.Request, dev *accounts.Device) (any, error) {
	var req struct {
		Auth     *accounts.AuthDict `json:"auth"`
		Erase    bool               `json:"erase"`
		IDServer string             `json:"id_server"`
	}
	if _, err := decodeStrict(r, &req); err != nil {
		return nil, err
	}
	uia := accounts.UIARequest{Auth: req.Auth, Binding: accounts.Binding("POST", "/account/deactivate", dev.UserID)}
	if err := a.Accounts.Deactivate(r.Context(), dev.UserID, uia); err != nil {
		return uiaAnswer(err)
	}
	// No third-party identifiers are ever bound here.
	return map[string]string{"id_server_unbind_result": "no-support"}, nil
}

// threePIDs: accounts here have no third-party identifiers (no e-mail, and
// phone numbers are only kept hashed by the directory), so the list is empty.
func (a *API) threePIDs(*http.Request, *accounts.Device) (any, error) {
	return map[string]any{"threepids": []any{}}, nil
}

func (a *API) register(r *http.Request, _ *accounts.Device) (any, error) {
	var req struct {
		Auth         *accounts.AuthDict `json:"auth"`
		Password     string             `json:"password"`
		DeviceID     string             `json:"device_id"`
		DeviceName   string             `json:"initial_device_display_name"`
		InhibitLogin bool               `json:"inhibit_login"`
		Username     string             `json:"username"` // ignored: IDs are server-assigned
		RefreshToken bool               `json:"refresh_token"`
	}
	if _, err := decodeStrict(r, &req); err != nil {
		return nil, err
	}
	res, err := a.Accounts.Register(r.Context(), accounts.Registration{
		Kind:                     r.URL.Query().Get("kind"),
		Password:                 req.Password,
		DeviceID:                 req.DeviceID,
		InitialDeviceDisplayName: req.DeviceName,
		InhibitLogin:             req.InhibitLogin,
		UIA:                      accounts.UIARequest{Auth: req.Auth, Binding: accounts.Binding("POST", "/register")},
	})
	if err != nil {
		return uiaAnswer(err)
	}
	return loginResponse{UserID: res.UserID, AccessToken: res.AccessToken, DeviceID: res.DeviceID, HomeServer: a.Config.ServerName}, nil
}

// usernameAvailable: user IDs are assigned by the server, so no requested
// username is ever valid for registration; saying "available" would promise
// an ID the client will not get.
func (a *API) usernameAvailable(r *http.Request, _ *accounts.Device) (any, error) {
	if r.URL.Query().Get("username") == "" {
		return nil, mxerr.MissingParam("username is required")
	}
	return nil, mxerr.New(http.StatusBadRequest, "M_INVALID_USERNAME",
		"this server assigns user IDs at registration; usernames cannot be chosen")
}

func (a *API) registrationTokenValidity(r *http.Request, _ *accounts.Device) (any, error) {
	tok := r.URL.Query().Get("token")
	if tok == "" {
		return nil, mxerr.MissingParam("token is required")
	}
	ok, err := a.Accounts.RegistrationTokenValid(r.Context(), tok)
	if err != nil {
		return nil, err
	}
	return map[string]bool{"valid": ok}, nil
}

func (a *API) devices(r *http.Request, dev *accounts.Device) (any, error) {
	devs, err := a.Accounts.Devices(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"devices": devs}, nil
}

func (a *API) device(r *http.Request, dev *accounts.Device) (any, error) {
	id, err := pathVar(r, "deviceId")
	if err != nil {
		return nil, err
	}
	return a.Accounts.Device(r.Context(), dev.UserID, id)
}

func (a *API) renameDevice(r *http.Request, dev *accounts.Device) (any, error) {
	id, err := pathVar(r, "deviceId")
	if err != nil {
		return nil, err
	}
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if _, err := decodeStrict(r, &req); err != nil {
		return nil, err
	}
	if _, err := a.Accounts.Device(r.Context(), dev.UserID, id); err != nil {
		return nil, err
	}
	if req.DisplayName != nil {
		if err := a.Accounts.SetDeviceDisplayName(r.Context(), dev.UserID, id, *req.DisplayName); err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}

func (a *API) deleteDevice(r *http.Request, dev *accounts.Device) (any, error) {
	id, err := pathVar(r, "deviceId")
	if err != nil {
		return nil, err
	}
	var req struct {
		Auth *accounts.AuthDict `json:"auth"`
	}
	if _, err := decodeStrict(r, &req); err != nil {
		return nil, err
	}
	if _, err := a.Accounts.Device(r.Context(), dev.UserID, id); err != nil {
		return nil, err
	}
	uia := accounts.UIARequest{Auth: req.Auth, Binding: accounts.Binding("DELETE", "/devices", dev.UserID, id)}
	if err := a.Accounts.DeleteDevices(r.Context(), dev.UserID, []string{id}, uia); err != nil {
		return uiaAnswer(err)
	}
	return struct{}{}, nil
}

func (a *API) deleteDevices(r *http.Request, dev *accounts.Device) (any, error) {
	var req struct {
		Auth    *accounts.AuthDict `json:"auth"`
		Devices []string           `json:"devices"`
	}
	raw, err := decodeStrict(r, &req)
	if err != nil {
		return nil, err
	}
	if _, ok := raw["devices"]; !ok {
		return nil, mxerr.MissingParam("devices is required")
	}
	ids := slices.Clone(req.Devices)
	slices.Sort(ids)
	uia := accounts.UIARequest{Auth: req.Auth, Binding: accounts.Binding("POST", "/delete_devices", dev.UserID, strings.Join(ids, "\x00"))}
	if err := a.Accounts.DeleteDevices(r.Context(), dev.UserID, req.Devices, uia); err != nil {
		return uiaAnswer(err)
	}
	return struct{}{}, nil
}
