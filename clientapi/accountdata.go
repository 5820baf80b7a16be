package clientapi

import "github.com/gorilla/mux"

func (a *API) registerAccountData(v3 *mux.Router) {}
