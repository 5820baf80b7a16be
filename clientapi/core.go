package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accounts"
)

// registerCore serves what clients ask before and right after login.
func (a *API) registerCore(root, client, v3 *mux.Router) {
	client.Handle("/versions", a.public(a.versions)).Methods(http.MethodGet)
	root.Handle("/.well-known/matrix/client", a.public(a.wellKnown)).Methods(http.MethodGet)
	v3.Handle("/capabilities", a.authed(a.capabilities)).Methods(http.MethodGet)
	v3.Handle("/voip/turnServer", a.authed(func(*http.Request, *accounts.Device) (any, error) {
		// No TURN server is configured: the spec's answer is an empty object.
		return struct{}{}, nil
	})).Methods(http.MethodGet)
	v3.Handle("/thirdparty/protocols", a.authed(func(*http.Request, *accounts.Device) (any, error) {
		return struct{}{}, nil
	})).Methods(http.MethodGet)
}

// versions advertises only the spec versions whose endpoints this node serves.
func (a *API) versions(*http.Request, *accounts.Device) (any, error) {
	return map[string]any{
		"versions":          []string{"r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"},
		"unstable_features": map[string]bool{},
	}, nil
}

func (a *API) wellKnown(*http.Request, *accounts.Device) (any, error) {
	base := a.Config.Client.PublicBaseURL
	if base == "" {
		base = "http://" + a.Config.Client.Listen
	}
	return map[string]any{"m.homeserver": map[string]string{"base_url": base}}, nil
}

func (a *API) capabilities(*http.Request, *accounts.Device) (any, error) {
	available := map[string]string{}
	for _, v := range a.Rooms.SupportedVersions() {
		available[v] = "stable"
	}
	return map[string]any{"capabilities": map[string]any{
		"m.change_password": map[string]bool{"enabled": true},
		"m.room_versions":   map[string]any{"default": a.Rooms.DefaultVersion(), "available": available},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": true},
		"m.3pid_changes":    map[string]bool{"enabled": false},
	}}, nil
}
