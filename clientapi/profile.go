package clientapi

import "github.com/gorilla/mux"

func (a *API) registerProfile(v3 *mux.Router) {}
