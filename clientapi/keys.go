package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/keys"
	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/sync"
)

func (a *API) registerKeys(v3 *mux.Router) {
	get, post, put, del := http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete
	v3.Handle("/keys/upload", a.authed(a.keysUpload)).Methods(post)
	v3.Handle("/keys/query", a.authed(a.keysQuery)).Methods(post)
	v3.Handle("/keys/claim", a.authed(a.keysClaim)).Methods(post)
	v3.Handle("/keys/changes", a.authed(a.keysChanges)).Methods(get)
	v3.Handle("/keys/device_signing/upload", a.authed(a.deviceSigningUpload)).Methods(post)
	v3.Handle("/keys/signatures/upload", a.authed(a.signaturesUpload)).Methods(post)
	v3.Handle("/sendToDevice/{eventType}/{txnId}", a.authed(a.sendToDevice)).Methods(put)

	v3.Handle("/room_keys/version", a.authed(a.createBackup)).Methods(post)
	v3.Handle("/room_keys/version", a.authed(a.getBackup)).Methods(get)
	v3.Handle("/room_keys/version/{backupVersion}", a.authed(a.getBackup)).Methods(get)
	v3.Handle("/room_keys/version/{backupVersion}", a.authed(a.updateBackup)).Methods(put)
	v3.Handle("/room_keys/version/{backupVersion}", a.authed(a.deleteBackup)).Methods(del)
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		v3.Handle(p, a.authed(a.getBackupKeys)).Methods(get)
		v3.Handle(p, a.authed(a.putBackupKeys)).Methods(put)
		v3.Handle(p, a.authed(a.deleteBackupKeys)).Methods(del)
	}
}

func (a *API) keysUpload(r *http.Request, dev *accounts.Device) (any, error) {
	var req keys.UploadRequest
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	counts, err := a.Keys.Upload(r.Context(), dev.UserID, dev.DeviceID, req)
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_key_counts": counts}, nil
}

func (a *API) keysQuery(r *http.Request, dev *accounts.Device) (any, error) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		Timeout    int64               `json:"timeout"` // ms for remote servers
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.DeviceKeys == nil {
		return nil, mxerr.MissingParam("device_keys is required")
	}
	return a.Keys.QueryWithTimeout(r.Context(), dev.UserID, req.DeviceKeys, time.Duration(req.Timeout)*time.Millisecond)
}

func (a *API) keysClaim(r *http.Request, dev *accounts.Device) (any, error) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     int64                        `json:"timeout"` // ms for remote servers
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.OneTimeKeys == nil {
		return nil, mxerr.MissingParam("one_time_keys is required")
	}
	return a.Keys.ClaimWithTimeout(r.Context(), req.OneTimeKeys, time.Duration(req.Timeout)*time.Millisecond)
}

func (a *API) keysChanges(r *http.Request, dev *accounts.Device) (any, error) {
	q := r.URL.Query()
	if q.Get("from") == "" || q.Get("to") == "" {
		return nil, mxerr.MissingParam("from and to are required sync tokens")
	}
	from, err := sync.ParseToken(q.Get("from"))
	if err != nil {
		return nil, err
	}
	to, err := sync.ParseToken(q.Get("to"))
	if err != nil {
		return nil, err
	}
	changed, left, err := a.Keys.Changes(r.Context(), dev.UserID, from.DeviceLists, to.DeviceLists)
	if err != nil {
		return nil, err
	}
	return map[string]any{"changed": changed, "left": left}, nil
}

// userAuthorizer is user-interactive auth (m.login.password) for requests
// of other areas, if the accounts service offers it under this name: nil
// error when the flow is complete (then done marks the session used), a
// *accounts.Challenge while it is not.
type userAuthorizer interface {
	AuthorizeUser(ctx context.Context, userID string, uia accounts.UIARequest) (done func(), err error)
}

// authorizeUser runs password UIA for the user's request. Until accounts
// offers AuthorizeUser, it goes through DeleteDevices with no devices,
// which runs the same password flow (session, binding, completion) and
// deletes nothing.
func (a *API) authorizeUser(ctx context.Context, userID string, uia accounts.UIARequest) (done func(), err error) {
	if authz, ok := any(a.Accounts).(userAuthorizer); ok {
		return authz.AuthorizeUser(ctx, userID, uia)
	}
	return func() {}, a.Accounts.DeleteDevices(ctx, userID, nil, uia)
}

func (a *API) deviceSigningUpload(r *http.Request, dev *accounts.Device) (any, error) {
	var req struct {
		Auth        *accounts.AuthDict `json:"auth"`
		Master      json.RawMessage    `json:"master_key"`
		SelfSigning json.RawMessage    `json:"self_signing_key"`
		UserSigning json.RawMessage    `json:"user_signing_key"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	upload := map[string]json.RawMessage{}
	for typ, js := range map[string]json.RawMessage{"master": req.Master, "self_signing": req.SelfSigning, "user_signing": req.UserSigning} {
		if len(js) > 0 && string(js) != "null" {
			upload[typ] = js
		}
	}
	ctx := r.Context()
	done := func() {}
	// spec: replacing existing cross-signing keys needs UIA; the first
	// upload (and the same keys again) does not.
	authorize := func() error {
		uia := accounts.UIARequest{Auth: req.Auth, Binding: accounts.Binding("POST", "/keys/device_signing/upload", dev.UserID)}
		var err error
		done, err = a.authorizeUser(ctx, dev.UserID, uia)
		return err
	}
	if err := a.Keys.UploadSigningKeys(ctx, dev.UserID, upload, authorize); err != nil {
		return uiaAnswer(err)
	}
	done()
	return struct{}{}, nil
}

func (a *API) signaturesUpload(r *http.Request, dev *accounts.Device) (any, error) {
	var req map[string]map[string]json.RawMessage
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	failures, err := a.Keys.UploadSignatures(r.Context(), dev.UserID, req)
	if err != nil {
		return nil, err
	}
	return map[string]any{"failures": failures}, nil
}

func (a *API) sendToDevice(r *http.Request, dev *accounts.Device) (any, error) {
	eventType, err := pathVar(r, "eventType")
	if err != nil {
		return nil, err
	}
	txnID, err := pathVar(r, "txnId")
	if err != nil {
		return nil, err
	}
	var req struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Messages == nil {
		return nil, mxerr.MissingParam("messages is required")
	}
	if err := a.Keys.SendToDevice(r.Context(), dev.UserID, dev.DeviceID, eventType, txnID, req.Messages); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

type backupVersionBody struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   string          `json:"version"`
}

func (a *API) createBackup(r *http.Request, dev *accounts.Device) (any, error) {
	var req backupVersionBody
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	v, err := a.Keys.CreateBackup(r.Context(), dev.UserID, req.Algorithm, req.AuthData)
	if err != nil {
		return nil, err
	}
	return map[string]string{"version": v}, nil
}

func (a *API) getBackup(r *http.Request, dev *accounts.Device) (any, error) {
	version := ""
	if _, ok := mux.Vars(r)["backupVersion"]; ok {
		var err error
		if version, err = pathVar(r, "backupVersion"); err != nil {
			return nil, err
		}
	}
	return a.Keys.Backup(r.Context(), dev.UserID, version)
}

func (a *API) updateBackup(r *http.Request, dev *accounts.Device) (any, error) {
	version, err := pathVar(r, "backupVersion")
	if err != nil {
		return nil, err
	}
	var req backupVersionBody
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	if err := a.Keys.UpdateBackup(r.Context(), dev.UserID, version, req.Version, req.Algorithm, req.AuthData); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) deleteBackup(r *http.Request, dev *accounts.Device) (any, error) {
	version, err := pathVar(r, "backupVersion")
	if err != nil {
		return nil, err
	}
	if err := a.Keys.DeleteBackup(r.Context(), dev.UserID, version); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// backupTarget reads ?version= and the optional {roomId}/{sessionId}.
func backupTarget(r *http.Request) (version, roomID, sessionID string, err error) {
	version = r.URL.Query().Get("version")
	if version == "" {
		return "", "", "", mxerr.MissingParam("the version query parameter is required")
	}
	vars := mux.Vars(r)
	if _, ok := vars["roomId"]; ok {
		if roomID, err = pathVar(r, "roomId"); err != nil {
			return
		}
	}
	if _, ok := vars["sessionId"]; ok {
		if sessionID, err = pathVar(r, "sessionId"); err != nil {
			return
		}
	}
	return version, roomID, sessionID, nil
}

func (a *API) getBackupKeys(r *http.Request, dev *accounts.Device) (any, error) {
	version, roomID, sessionID, err := backupTarget(r)
	if err != nil {
		return nil, err
	}
	rooms, err := a.Keys.BackupKeys(r.Context(), dev.UserID, version, roomID, sessionID)
	if err != nil {
		return nil, err
	}
	switch {
	case sessionID != "":
		sess, ok := rooms[roomID][sessionID]
		if !ok {
			return nil, mxerr.NotFound("no key for this session in the backup")
		}
		return sess, nil
	case roomID != "":
		sessions := rooms[roomID]
		if sessions == nil {
			sessions = map[string]keys.BackupSession{}
		}
		return map[string]any{"sessions": sessions}, nil
	}
	out := map[string]any{}
	for room, sessions := range rooms {
		out[room] = map[string]any{"sessions": sessions}
	}
	return map[string]any{"rooms": out}, nil
}

func (a *API) putBackupKeys(r *http.Request, dev *accounts.Device) (any, error) {
	version, roomID, sessionID, err := backupTarget(r)
	if err != nil {
		return nil, err
	}
	rooms := map[string]map[string]keys.BackupSession{}
	switch {
	case sessionID != "":
		var sess keys.BackupSession
		if err := decodeJSON(r, &sess); err != nil {
			return nil, err
		}
		rooms[roomID] = map[string]keys.BackupSession{sessionID: sess}
	case roomID != "":
		var body struct {
			Sessions map[string]keys.BackupSession `json:"sessions"`
		}
		if err := decodeJSON(r, &body); err != nil {
			return nil, err
		}
		if body.Sessions == nil {
			return nil, mxerr.MissingParam("sessions is required")
		}
		rooms[roomID] = body.Sessions
	default:
		var body struct {
			Rooms map[string]struct {
				Sessions map[string]keys.BackupSession `json:"sessions"`
			} `json:"rooms"`
		}
		if err := decodeJSON(r, &body); err != nil {
			return nil, err
		}
		if body.Rooms == nil {
			return nil, mxerr.MissingParam("rooms is required")
		}
		for room, rk := range body.Rooms {
			rooms[room] = rk.Sessions
		}
	}
	return a.Keys.PutBackupKeys(r.Context(), dev.UserID, version, rooms)
}

func (a *API) deleteBackupKeys(r *http.Request, dev *accounts.Device) (any, error) {
	version, roomID, sessionID, err := backupTarget(r)
	if err != nil {
		return nil, err
	}
	return a.Keys.DeleteBackupKeys(r.Context(), dev.UserID, version, roomID, sessionID)
}
