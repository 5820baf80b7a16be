package clientapi

import "github.com/gorilla/mux"

func (a *API) registerRooms(v3, v1 *mux.Router) {}
