package clientapi

import "github.com/gorilla/mux"

func (a *API) registerSync(v3 *mux.Router) {}
