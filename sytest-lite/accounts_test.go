package sytest

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
)

// Accounts, registration, login, devices and profiles (sytest's 10apidoc/
// 12login/30rooms-profile areas, adapted to server-assigned IDs and one
// device per account).
func TestAccounts(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		anon := n.Anonymous()
		idRE := regexp.MustCompile(`^@[a-z0-9]{8}:` + regexp.QuoteMeta(n.ServerName) + `$`)

		t.Run("Can register with the dummy flow", func(t *testing.T) {
			// Two steps: the flows first, then the dummy stage in the session.
			ch := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{"password": "sesame-1234"}, http.StatusUnauthorized)
			if ch.Get("flows.0.stages.0").String() != "m.login.dummy" || ch.Get("session").String() == "" || !ch.Get("params").IsObject() {
				t.Fatalf("challenge = %s", ch.Raw)
			}
			body := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password":                    "sesame-1234",
				"device_id":                   "MYPHONE",
				"initial_device_display_name": "Phone",
				"auth":                        map[string]any{"type": "m.login.dummy", "session": ch.Get("session").String()},
			}, http.StatusOK)
			if body.Get("device_id").String() != "MYPHONE" || body.Get("access_token").String() == "" {
				t.Fatalf("register = %s", body.Raw)
			}
			c := &Client{Node: n, HTTP: anon.HTTP, AccessToken: body.Get("access_token").String()}
			if d := c.MustDo(t, "GET", Path("devices", "MYPHONE"), nil, http.StatusOK); d.Get("display_name").String() != "Phone" {
				t.Fatalf("initial_device_display_name not kept: %s", d.Raw)
			}
			if tp := c.MustDo(t, "GET", "/_matrix/client/v3/account/3pid", nil, http.StatusOK); !tp.Get("threepids").IsArray() || len(tp.Get("threepids").Array()) != 0 {
				t.Fatalf("GET /account/3pid = %s", tp.Raw)
			}
			who := c.MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
			if who.Get("user_id").String() != body.Get("user_id").String() || who.Get("device_id").String() != "MYPHONE" || who.Get("is_guest").Bool() {
				t.Fatalf("whoami = %s", who.Raw)
			}
			// The completed session cannot be replayed.
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "sesame-1234",
				"auth":     map[string]any{"type": "m.login.dummy", "session": ch.Get("session").String()},
			}, http.StatusBadRequest, "M_UNKNOWN")
		})

		t.Run("Server assigns an 8-character lower-case ID", func(t *testing.T) {
			seen := map[string]bool{}
			for i := 0; i < 3; i++ {
				body := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
					"username": "Alice", "password": "pw-" + randomString(8),
					"auth": map[string]any{"type": "m.login.dummy"},
				}, http.StatusOK)
				id := body.Get("user_id").String()
				if !idRE.MatchString(id) || seen[id] {
					t.Fatalf("user_id %q: want a fresh @[a-z0-9]{8}:%s (the requested username is ignored)", id, n.ServerName)
				}
				seen[id] = true
			}
		})

		t.Run("inhibit_login registers without a device", func(t *testing.T) {
			body := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "inhibit_login": true,
				"auth": map[string]any{"type": "m.login.dummy"},
			}, http.StatusOK)
			if !idRE.MatchString(body.Get("user_id").String()) || body.Get("access_token").Exists() || body.Get("device_id").Exists() {
				t.Fatalf("register = %s", body.Raw)
			}
		})

		t.Run("Guest registration gives 403 M_GUEST_ACCESS_FORBIDDEN", func(t *testing.T) {
			anon.MustFail(t, "POST", "/_matrix/client/v3/register?kind=guest", map[string]any{}, http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN")
		})

		t.Run("GET /register/available refuses chosen usernames", func(t *testing.T) {
			anon.MustFail(t, "GET", "/_matrix/client/v3/register/available?username=alice", nil, http.StatusBadRequest, "M_INVALID_USERNAME")
			anon.MustFail(t, "GET", "/_matrix/client/v3/register/available", nil, http.StatusBadRequest, "M_MISSING_PARAM")
		})

		t.Run("Can login with password", func(t *testing.T) {
			u := n.Register(t)
			flows := anon.MustDo(t, "GET", "/_matrix/client/v3/login", nil, http.StatusOK)
			if flows.Get("flows.#(type==m.login.password)").Raw == "" {
				t.Fatalf("GET /login = %s", flows.Raw)
			}
			// Clients show IDs upper case: the full MXID and the localpart both work in any case.
			local := strings.TrimPrefix(strings.Split(u.UserID, ":")[0], "@")
			for _, user := range []string{strings.ToUpper(u.UserID[:9]) + u.UserID[9:], strings.ToUpper(local)} {
				body := anon.MustDo(t, "POST", "/_matrix/client/v3/login", map[string]any{
					"type":       "m.login.password",
					"identifier": map[string]any{"type": "m.id.user", "user": user},
					"password":   u.Password,
				}, http.StatusOK)
				if body.Get("user_id").String() != u.UserID || body.Get("access_token").String() == "" || body.Get("device_id").String() == "" {
					t.Fatalf("login as %q = %s", user, body.Raw)
				}
			}
			// The deprecated top-level user field.
			anon.MustDo(t, "POST", "/_matrix/client/v3/login", map[string]any{
				"type": "m.login.password", "user": local, "password": u.Password,
			}, http.StatusOK)
		})

		t.Run("Wrong password or unknown user gives 403", func(t *testing.T) {
			u := n.Register(t)
			for _, user := range []string{u.UserID, "@nobody00:" + n.ServerName, "@" + strings.Split(u.UserID, ":")[0][1:] + ":other.test"} {
				anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{
					"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": "wrong",
				}, http.StatusForbidden, "M_FORBIDDEN")
			}
		})

		t.Run("A new login replaces the previous device", func(t *testing.T) {
			u := n.Register(t)
			u.MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
			u2 := u.Login(t)
			if u2.DeviceID == u.DeviceID || u2.AccessToken == u.AccessToken {
				t.Fatalf("login kept the device: %s / %s", u.DeviceID, u2.DeviceID)
			}
			j := u.MustFail(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			if sl := j.Get("soft_logout"); !sl.Exists() || sl.Bool() {
				t.Fatalf("want soft_logout false: %s", j.Raw)
			}
			devs := u2.MustDo(t, "GET", "/_matrix/client/v3/devices", nil, http.StatusOK)
			if devs.Get("devices.#").Int() != 1 || devs.Get("devices.0.device_id").String() != u2.DeviceID {
				t.Fatalf("devices = %s", devs.Raw)
			}
		})

		t.Run("Logout revokes the token", func(t *testing.T) {
			u := n.Register(t)
			u.MustDo(t, "POST", "/_matrix/client/v3/logout", map[string]any{}, http.StatusOK)
			u.MustFail(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			v := n.Register(t)
			v.MustDo(t, "POST", "/_matrix/client/v3/logout/all", map[string]any{}, http.StatusOK)
			v.MustFail(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			// The account itself is fine: logging in again works.
			v.Login(t).MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
		})

		t.Run("Change password needs UIA", func(t *testing.T) {
			u := n.Register(t)
			ch := u.MustDo(t, "POST", "/_matrix/client/v3/account/password", map[string]any{"new_password": "new-secret-1"}, http.StatusUnauthorized)
			if ch.Get("flows.0.stages.0").String() != "m.login.password" || ch.Get("session").String() == "" {
				t.Fatalf("challenge = %s", ch.Raw)
			}
			auth := func(pw string) map[string]any {
				return map[string]any{"type": "m.login.password", "session": ch.Get("session").String(),
					"identifier": map[string]any{"type": "m.id.user", "user": u.UserID}, "password": pw}
			}
			bad := u.MustDo(t, "POST", "/_matrix/client/v3/account/password", map[string]any{"new_password": "new-secret-1", "auth": auth("wrong")}, http.StatusUnauthorized)
			if bad.Get("errcode").String() != "M_FORBIDDEN" || bad.Get("session").String() != ch.Get("session").String() {
				t.Fatalf("wrong password in UIA = %s", bad.Raw)
			}
			u.MustDo(t, "POST", "/_matrix/client/v3/account/password", map[string]any{"new_password": "new-secret-1", "auth": auth(u.Password)}, http.StatusOK)
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{
				"type": "m.login.password", "user": u.UserID, "password": u.Password,
			}, http.StatusForbidden, "M_FORBIDDEN")
			u.Password = "new-secret-1"
			u.Login(t)
		})

		t.Run("A UIA session is bound to the request that started it", func(t *testing.T) {
			u := n.Register(t)
			ch := u.MustDo(t, "POST", "/_matrix/client/v3/account/password", map[string]any{"new_password": "x-12345678"}, http.StatusUnauthorized)
			u.MustFail(t, "POST", "/_matrix/client/v3/account/deactivate", map[string]any{
				"auth": map[string]any{"type": "m.login.password", "session": ch.Get("session").String(), "user": u.UserID, "password": u.Password},
			}, http.StatusForbidden, "M_FORBIDDEN")
			u.MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
		})

		t.Run("Deactivated account cannot login", func(t *testing.T) {
			u := n.Register(t)
			u.MustDo(t, "PUT", Path("profile", u.UserID, "displayname"), map[string]any{"displayname": "ciphertext"}, http.StatusOK)
			body := u.MustDo(t, "POST", "/_matrix/client/v3/account/deactivate", map[string]any{
				"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": u.UserID}, "password": u.Password},
			}, http.StatusOK)
			if body.Get("id_server_unbind_result").String() != "no-support" {
				t.Fatalf("deactivate = %s", body.Raw)
			}
			u.MustFail(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{
				"type": "m.login.password", "user": u.UserID, "password": u.Password,
			}, http.StatusForbidden, "M_USER_DEACTIVATED")
			n.Register(t).MustFail(t, "GET", Path("profile", u.UserID), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("Devices can be listed and renamed", func(t *testing.T) {
			u := n.Register(t)
			devs := u.MustDo(t, "GET", "/_matrix/client/v3/devices", nil, http.StatusOK)
			if devs.Get("devices.#").Int() != 1 || devs.Get("devices.0.device_id").String() != u.DeviceID || devs.Get("devices.0.last_seen_ts").Int() <= 0 {
				t.Fatalf("devices = %s", devs.Raw)
			}
			u.MustDo(t, "PUT", Path("devices", u.DeviceID), map[string]any{"display_name": "Crisis laptop"}, http.StatusOK)
			d := u.MustDo(t, "GET", Path("devices", u.DeviceID), nil, http.StatusOK)
			if d.Get("display_name").String() != "Crisis laptop" || d.Get("device_id").String() != u.DeviceID {
				t.Fatalf("device = %s", d.Raw)
			}
			u.MustFail(t, "GET", Path("devices", "NOSUCHDEVICE"), nil, http.StatusNotFound, "M_NOT_FOUND")
			u.MustFail(t, "PUT", Path("devices", "NOSUCHDEVICE"), map[string]any{"display_name": "x"}, http.StatusNotFound, "M_NOT_FOUND")
			u.MustFail(t, "PUT", Path("devices", u.DeviceID), map[string]any{"display_name": 7}, http.StatusBadRequest, "M_BAD_JSON")
		})

		t.Run("Deleting a device needs UIA and logs it out", func(t *testing.T) {
			u := n.Register(t)
			ch := u.MustDo(t, "DELETE", Path("devices", u.DeviceID), map[string]any{}, http.StatusUnauthorized)
			u.MustDo(t, "DELETE", Path("devices", u.DeviceID), map[string]any{
				"auth": map[string]any{"type": "m.login.password", "session": ch.Get("session").String(), "user": u.UserID, "password": u.Password},
			}, http.StatusOK)
			u.MustFail(t, "GET", "/_matrix/client/v3/devices", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")

			v := n.Register(t)
			v.MustDo(t, "POST", "/_matrix/client/v3/delete_devices", map[string]any{"devices": []string{v.DeviceID}}, http.StatusUnauthorized)
			v.MustDo(t, "POST", "/_matrix/client/v3/delete_devices", map[string]any{
				"devices": []string{v.DeviceID, "UNKNOWN"},
				"auth":    map[string]any{"type": "m.login.password", "user": v.UserID, "password": v.Password},
			}, http.StatusOK)
			v.MustFail(t, "GET", "/_matrix/client/v3/devices", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		})

		t.Run("Profile displayname round-trips", func(t *testing.T) {
			u := n.Register(t)
			other := n.Register(t)
			u.MustFail(t, "GET", Path("profile", u.UserID, "displayname"), nil, http.StatusNotFound, "M_NOT_FOUND")
			u.MustDo(t, "PUT", Path("profile", u.UserID, "displayname"), map[string]any{"displayname": "enc:QUJD"}, http.StatusOK)
			u.MustDo(t, "PUT", Path("profile", u.UserID, "avatar_url"), map[string]any{"avatar_url": "mxc://" + n.ServerName + "/abc"}, http.StatusOK)
			got := other.MustDo(t, "GET", Path("profile", u.UserID, "displayname"), nil, http.StatusOK)
			if got.Get("displayname").String() != "enc:QUJD" {
				t.Fatalf("displayname = %s", got.Raw)
			}
			// People type the IDs they see, upper case.
			upper := strings.ToUpper(u.UserID[:9]) + u.UserID[9:]
			if got := other.MustDo(t, "GET", Path("profile", upper, "displayname"), nil, http.StatusOK); got.Get("displayname").String() != "enc:QUJD" {
				t.Fatalf("displayname via %s = %s", upper, got.Raw)
			}
			all := other.MustDo(t, "GET", Path("profile", u.UserID), nil, http.StatusOK)
			if all.Get("displayname").String() != "enc:QUJD" || all.Get("avatar_url").String() != "mxc://"+n.ServerName+"/abc" {
				t.Fatalf("profile = %s", all.Raw)
			}
			u.MustDo(t, "DELETE", Path("profile", u.UserID, "avatar_url"), nil, http.StatusOK)
			if all := other.MustDo(t, "GET", Path("profile", u.UserID), nil, http.StatusOK); all.Get("avatar_url").Exists() {
				t.Fatalf("avatar_url survived DELETE: %s", all.Raw)
			}
		})

		t.Run("Profile errors: someone else's 403, unknown user 404, bad ID 400, wrong type 400", func(t *testing.T) {
			u := n.Register(t)
			other := n.Register(t)
			other.MustFail(t, "PUT", Path("profile", u.UserID, "displayname"), map[string]any{"displayname": "x"}, http.StatusForbidden, "M_FORBIDDEN")
			u.MustFail(t, "GET", Path("profile", "@nobody00:"+n.ServerName), nil, http.StatusNotFound, "M_NOT_FOUND")
			u.MustFail(t, "GET", Path("profile", "not-a-user-id", "displayname"), nil, http.StatusBadRequest, "M_INVALID_PARAM")
			u.MustFail(t, "PUT", Path("profile", u.UserID, "displayname"), map[string]any{"displayname": 42}, http.StatusBadRequest, "M_BAD_JSON")
			u.MustFail(t, "PUT", Path("profile", u.UserID, "displayname"), map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
			u.MustFail(t, "PUT", Path("profile", u.UserID, "avatar_url"), map[string]any{"avatar_url": "https://evil.example/x.png"}, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("Bad input: tokens, JSON types, missing fields", func(t *testing.T) {
			garbage := &Client{Node: n, HTTP: anon.HTTP, AccessToken: "garbage"}
			garbage.MustFail(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			anon.MustFail(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusUnauthorized, "M_MISSING_TOKEN")
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{"type": "m.login.password", "user": 5, "password": "x"}, http.StatusBadRequest, "M_BAD_JSON")
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", "{not json", http.StatusBadRequest, "M_NOT_JSON")
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{"type": "m.login.password", "user": "x"}, http.StatusBadRequest, "M_MISSING_PARAM")
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{"user": "x", "password": "y"}, http.StatusBadRequest, "M_MISSING_PARAM")
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{"type": "m.login.token", "token": "x"}, http.StatusBadRequest, "M_UNKNOWN")
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{"auth": map[string]any{"type": "m.login.dummy"}}, http.StatusBadRequest, "M_MISSING_PARAM")
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{"password": true}, http.StatusBadRequest, "M_BAD_JSON")
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{"password": "x", "auth": "dummy"}, http.StatusBadRequest, "M_BAD_JSON")
			u := n.Register(t)
			anon.MustFail(t, "POST", "/_matrix/client/v3/login", map[string]any{
				"type": "m.login.password", "user": u.UserID, "password": u.Password, "device_id": "has space",
			}, http.StatusBadRequest, "M_INVALID_PARAM")
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "initial_device_display_name": strings.Repeat("x", 1001), "auth": map[string]any{"type": "m.login.dummy"},
			}, http.StatusBadRequest, "M_INVALID_PARAM")
			u.MustFail(t, "PUT", Path("devices", u.DeviceID), map[string]any{"display_name": strings.Repeat("x", 1001)}, http.StatusBadRequest, "M_INVALID_PARAM")
			// None of the refused requests replaced the device.
			u.MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
			u.MustFail(t, "POST", "/_matrix/client/v3/delete_devices", map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
			u.MustFail(t, "POST", "/_matrix/client/v3/account/password", map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
			u.MustFail(t, "POST", "/_matrix/client/v3/account/password", map[string]any{
				"new_password": "ok-password", "auth": map[string]any{"type": "m.login.password", "session": "nosuchsession", "user": u.UserID, "password": u.Password},
			}, http.StatusBadRequest, "M_UNKNOWN")
		})

		t.Run("UIA sessions survive a restart", func(t *testing.T) {
			ch := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{}, http.StatusUnauthorized)
			n.Restart(t)
			anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "auth": map[string]any{"type": "m.login.dummy", "session": ch.Get("session").String()},
			}, http.StatusOK)
		})
	})
}

func TestRegistrationModes(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		t.Run("Registration closed gives 403", func(t *testing.T) {
			n := StartNode(t, b, WithRegistrationMode("closed"))
			anon := n.Anonymous()
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "auth": map[string]any{"type": "m.login.dummy"},
			}, http.StatusForbidden, "M_FORBIDDEN")
			anon.MustFail(t, "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=abc", nil, http.StatusForbidden, "M_FORBIDDEN")
			// The operator still creates accounts; they can log in.
			out := n.Admin(t, "create-user")
			id, pw := adminField(t, out, "user_id"), adminField(t, out, "initial_password")
			c := &Client{Node: n, HTTP: anon.HTTP, UserID: id, Password: pw}
			c.Login(t).MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
		})

		t.Run("Registration in token mode needs a valid token", func(t *testing.T) {
			n := StartNode(t, b, WithRegistrationMode("token"))
			anon := n.Anonymous()
			ch := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{"password": "pw-12345678"}, http.StatusUnauthorized)
			if ch.Get("flows.0.stages.0").String() != "m.login.registration_token" {
				t.Fatalf("challenge = %s", ch.Raw)
			}
			anon.MustFail(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "auth": map[string]any{"type": "m.login.dummy"},
			}, http.StatusUnauthorized, "M_UNRECOGNIZED")
			bad := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "auth": map[string]any{"type": "m.login.registration_token", "token": "wrong", "session": ch.Get("session").String()},
			}, http.StatusUnauthorized)
			if bad.Get("errcode").String() != "M_FORBIDDEN" {
				t.Fatalf("wrong token = %s", bad.Raw)
			}
			tok := strings.TrimSpace(n.Admin(t, "create-token", "-uses", "1", "-expires", "24h"))
			validity := "/_matrix/client/v1/register/m.login.registration_token/validity?token="
			if !anon.MustDo(t, "GET", validity+tok, nil, http.StatusOK).Get("valid").Bool() {
				t.Fatal("a fresh token is not valid")
			}
			if anon.MustDo(t, "GET", validity+"wrong", nil, http.StatusOK).Get("valid").Bool() {
				t.Fatal("an unknown token is valid")
			}
			anon.MustFail(t, "GET", validity+"bad%20token", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			body := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "auth": map[string]any{"type": "m.login.registration_token", "token": tok, "session": ch.Get("session").String()},
			}, http.StatusOK)
			if body.Get("access_token").String() == "" {
				t.Fatalf("register = %s", body.Raw)
			}
			// One use only.
			if anon.MustDo(t, "GET", validity+tok, nil, http.StatusOK).Get("valid").Bool() {
				t.Fatal("a used-up token is still valid")
			}
			r := anon.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
				"password": "pw-12345678", "auth": map[string]any{"type": "m.login.registration_token", "token": tok},
			}, http.StatusUnauthorized)
			if r.Get("errcode").String() != "M_FORBIDDEN" {
				t.Fatalf("second use = %s", r.Raw)
			}
		})
	})
}

func TestAdminCommands(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		t.Run("admin create-user, list-users and deactivate work", func(t *testing.T) {
			out := n.Admin(t, "create-user")
			id := adminField(t, out, "user_id")
			if !regexp.MustCompile(`^@[a-z0-9]{8}:` + regexp.QuoteMeta(n.ServerName) + `$`).MatchString(id) {
				t.Fatalf("create-user printed %q", out)
			}
			c := (&Client{Node: n, HTTP: n.Anonymous().HTTP, UserID: id, Password: adminField(t, out, "initial_password")}).Login(t)
			if list := n.Admin(t, "list-users"); !strings.Contains(list, id+"\tactive") {
				t.Fatalf("list-users = %q", list)
			}
			n.Admin(t, "deactivate", strings.ToUpper(id[:9])+id[9:])
			c.MustFail(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
			if list := n.Admin(t, "list-users"); !strings.Contains(list, id+"\tdeactivated") {
				t.Fatalf("list-users after deactivate = %q", list)
			}
		})
		t.Run("admin deactivate removes the device's E2EE keys", func(t *testing.T) {
			alice, bob := n.Register(t), n.Register(t)
			needKeys(t, alice)
			uploadDeviceKeys(t, alice)
			query := func() gjson.Result {
				q := bob.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.UserID: []string{}}}, http.StatusOK)
				return q.Get("device_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID))
			}
			if !query().Exists() {
				t.Fatal("the uploaded device keys are not served")
			}
			n.Admin(t, "deactivate", alice.UserID)
			if dev := query(); dev.Exists() {
				t.Fatalf("a deactivated account's device keys are still served: %s", dev.Raw)
			}
		})
		t.Run("admin usage errors exit 2, failures exit 1", func(t *testing.T) {
			for _, args := range [][]string{{}, {"no-such-command"}, {"deactivate"}, {"create-token", "-uses", "many"}, {"create-token", "-uses", "-1"}, {"list-users", "extra"}} {
				if _, _, code := n.AdminExit(args...); code != 2 {
					t.Errorf("admin %v: exit %d, want 2", args, code)
				}
			}
			if _, errOut, code := n.AdminExit("deactivate", "@nobody00:"+n.ServerName); code != 1 || errOut == "" {
				t.Errorf("deactivating an unknown user: exit %d (%q), want 1", code, errOut)
			}
		})
	})
}

// TestAccountsWithMautrix drives registration, login, profile, devices and
// logout through mautrix-go, the client library TrustCase users run.
func TestAccountsWithMautrix(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		t.Run("A mautrix client can register, log in, set its profile and log out", func(t *testing.T) {
			ctx := context.Background()
			mc, err := mautrix.NewClient(n.URL, "", "")
			if err != nil {
				t.Fatal(err)
			}
			reg, err := mc.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "ignored", Password: "mautrix-pw-1"})
			if err != nil {
				t.Fatalf("RegisterDummy: %v", err)
			}
			if !regexp.MustCompile(`^@[a-z0-9]{8}:`).MatchString(reg.UserID.String()) {
				t.Fatalf("registered as %s", reg.UserID)
			}
			login, err := mc.Login(ctx, &mautrix.ReqLogin{
				Type:             mautrix.AuthTypePassword,
				Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: strings.ToUpper(reg.UserID.Localpart())},
				Password:         "mautrix-pw-1",
				StoreCredentials: true,
			})
			if err != nil || login.UserID != reg.UserID {
				t.Fatalf("Login: %+v, %v", login, err)
			}
			who, err := mc.Whoami(ctx)
			if err != nil || who.DeviceID != login.DeviceID {
				t.Fatalf("Whoami: %+v, %v", who, err)
			}
			if err := mc.SetDisplayName(ctx, "enc:bWF1dHJpeA"); err != nil {
				t.Fatalf("SetDisplayName: %v", err)
			}
			if dn, err := mc.GetOwnDisplayName(ctx); err != nil || dn.DisplayName != "enc:bWF1dHJpeA" {
				t.Fatalf("GetOwnDisplayName: %+v, %v", dn, err)
			}
			devs, err := mc.GetDevicesInfo(ctx)
			if err != nil || len(devs.Devices) != 1 || devs.Devices[0].DeviceID != login.DeviceID {
				t.Fatalf("GetDevicesInfo: %+v, %v", devs, err)
			}
			if _, err := mc.Logout(ctx); err != nil {
				t.Fatalf("Logout: %v", err)
			}
			if _, err := mc.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
				t.Fatalf("Whoami after logout: %v, want M_UNKNOWN_TOKEN", err)
			}
		})
	})
}

// TestSecretsAtRest registers a user and logs in, then scans the SQLite
// database files for the password and the access tokens.
func TestSecretsAtRest(t *testing.T) {
	t.Run("Passwords and access tokens are not stored in plaintext", func(t *testing.T) {
		n := StartNode(t, SQLite)
		u := n.Register(t)
		u2 := u.Login(t)
		u2.MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
		n.Stop(t)
		files, _ := filepath.Glob(filepath.Join(n.Dir, "data", "trustcase.db*"))
		if len(files) == 0 {
			t.Fatal("no database files found")
		}
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for what, secret := range map[string]string{"password": u.Password, "first token": u.AccessToken, "second token": u2.AccessToken} {
				if bytes.Contains(raw, []byte(secret)) {
					t.Errorf("%s: the %s is stored in plaintext", filepath.Base(f), what)
				}
			}
		}
		if logs := n.Logs(); strings.Contains(logs, u.Password) || strings.Contains(logs, u2.AccessToken) {
			t.Error("the node logged a password or an access token")
		}
	})
}

// adminField reads "key: value" from an admin command's output.
func adminField(t *testing.T, out, key string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %q in admin output %q", key, out)
	return ""
}
