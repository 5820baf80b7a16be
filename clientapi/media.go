package clientapi

import "github.com/gorilla/mux"

func (a *API) registerMedia(root, v1 *mux.Router) {}
