package clientapi

import "github.com/gorilla/mux"

func (a *API) registerAccounts(v3 *mux.Router) {}
