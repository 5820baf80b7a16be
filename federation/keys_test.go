package federation

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/keys"
	"github.com/trustcase/node/storage"
)

func keysHTTPCode(err error) int {
	var he gomatrix.HTTPError
	if errors.As(err, &he) {
		return he.Code
	}
	return 0
}

// signedDeviceKeys is a device_keys object for userID's deviceID, self-signed.
func signedDeviceKeys(t *testing.T, userID, deviceID string) json.RawMessage {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(map[string]any{
		"user_id": userID, "device_id": deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{
			"ed25519:" + deviceID:    base64.RawStdEncoding.EncodeToString(pub),
			"curve25519:" + deviceID: "Y3VydmU",
		},
	})
	signed, err := gomatrixserverlib.SignJSON(userID, gomatrixserverlib.KeyID("ed25519:"+deviceID), priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func TestUserKeysOverFederation(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		ctx := t.Context()
		svc := keys.New(a.store.Keys(), keys.Config{ServerName: "a.test"}, nil, testLogger(t))
		a.api.Keys = svc
		const user, dev = "@alice:a.test", "ADEV"
		if err := a.store.Accounts().CreateAccount(ctx, storage.Account{UserID: user, PasswordHash: "x", CreatedTS: 1}, "", 1,
			&storage.Device{UserID: user, DeviceID: dev, TokenHash: "h", CreatedTS: 1}); err != nil {
			t.Fatal(err)
		}
		dk := signedDeviceKeys(t, user, dev)
		if _, err := svc.Upload(ctx, user, dev, keys.UploadRequest{
			DeviceKeys:  dk,
			OneTimeKeys: map[string]json.RawMessage{"signed_curve25519:K1": json.RawMessage(`{"key":"otk1"}`)},
		}); err != nil {
			t.Fatal(err)
		}
		kc := NewKeysClient(b.tr.Client, b.key)

		t.Run("user/keys/query returns our users' keys as uploaded", func(t *testing.T) {
			raw, err := kc.QueryKeys(ctx, "a.test", map[string][]string{user: nil})
			if err != nil {
				t.Fatal(err)
			}
			got := gjson.GetBytes(raw, "device_keys."+gjson.Escape(user)+"."+dev)
			if !got.Exists() || got.Get("keys.curve25519:ADEV").String() != "Y3VydmU" || !got.Get("signatures").Exists() {
				t.Fatalf("answer = %s", raw)
			}
		})
		t.Run("user/keys/claim hands out a one-time key once", func(t *testing.T) {
			want := map[string]map[string]string{user: {dev: "signed_curve25519"}}
			raw, err := kc.ClaimKeys(ctx, "a.test", want)
			if err != nil {
				t.Fatal(err)
			}
			if k := gjson.GetBytes(raw, "one_time_keys."+gjson.Escape(user)+"."+dev+".signed_curve25519:K1.key").String(); k != "otk1" {
				t.Fatalf("claim = %s", raw)
			}
			raw, err = kc.ClaimKeys(ctx, "a.test", want)
			if err != nil || gjson.GetBytes(raw, "one_time_keys."+gjson.Escape(user)).Exists() {
				t.Fatalf("second claim = %s, %v", raw, err)
			}
		})
		t.Run("user/devices lists devices with keys and a stream id", func(t *testing.T) {
			raw, err := kc.UserDevices(ctx, "a.test", user)
			if err != nil {
				t.Fatal(err)
			}
			j := gjson.ParseBytes(raw)
			if j.Get("user_id").String() != user || j.Get("stream_id").Int() <= 0 || j.Get("devices.#").Int() != 1 ||
				j.Get("devices.0.device_id").String() != dev || j.Get("devices.0.keys.user_id").String() != user {
				t.Fatalf("user/devices = %s", raw)
			}
		})
		t.Run("requests about another server's users are refused", func(t *testing.T) {
			if _, err := kc.UserDevices(ctx, "a.test", "@bob:b.test"); keysHTTPCode(err) != http.StatusForbidden {
				t.Fatalf("user/devices of b's user: %v", err)
			}
			if _, err := kc.QueryKeys(ctx, "a.test", map[string][]string{user: nil, "@bob:b.test": nil}); keysHTTPCode(err) != http.StatusForbidden {
				t.Fatalf("keys/query naming b's user: %v", err)
			}
			if _, err := kc.ClaimKeys(ctx, "a.test", map[string]map[string]string{"@carol:c.test": {"D": "signed_curve25519"}}); keysHTTPCode(err) != http.StatusForbidden {
				t.Fatalf("keys/claim naming c's user: %v", err)
			}
		})
		t.Run("bad bodies are refused with the spec's errors", func(t *testing.T) {
			for _, tc := range []struct {
				path, code string
				body       any
			}{
				{"/_matrix/federation/v1/user/keys/query", "M_BAD_JSON", map[string]any{"device_keys": 5}},
				{"/_matrix/federation/v1/user/keys/query", "M_MISSING_PARAM", map[string]any{}},
				{"/_matrix/federation/v1/user/keys/claim", "M_BAD_JSON", map[string]any{"one_time_keys": []int{1}}},
				{"/_matrix/federation/v1/user/keys/claim", "M_MISSING_PARAM", map[string]any{}},
			} {
				status, body := a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPost, "a.test", tc.path, tc.body, a.addr))
				if status != http.StatusBadRequest || body["errcode"] != tc.code {
					t.Fatalf("%s %v: %d %v, want 400 %s", tc.path, tc.body, status, body, tc.code)
				}
			}
			status, _ := a.do(t, a.rawRequest(t, http.MethodGet, "/_matrix/federation/v1/user/devices/"+user, nil))
			if status != http.StatusUnauthorized {
				t.Fatalf("unsigned user/devices: %d", status)
			}
		})
	})
}
