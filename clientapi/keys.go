package clientapi

import "github.com/gorilla/mux"

func (a *API) registerKeys(v3 *mux.Router) {}
