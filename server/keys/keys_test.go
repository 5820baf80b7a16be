package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

type recordingWaker struct {
	mu    sync.Mutex
	woken []string
}

func (w *recordingWaker) Wake(userIDs ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.woken = append(w.woken, userIDs...)
}

func (w *recordingWaker) has(u string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.woken {
		if x == u {
			return true
		}
	}
	return false
}

func newTestService(t *testing.T) (*Service, storage.Store, *recordingWaker) {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetOutput(io.Discard)
	w := &recordingWaker{}
	return New(db.Keys(), Config{ServerName: "x"}, w, log), db, w
}

func addUser(t *testing.T, db storage.Store, userID, deviceID string) {
	t.Helper()
	err := db.Accounts().CreateAccount(t.Context(), storage.Account{UserID: userID, PasswordHash: "x", CreatedTS: 1}, "", 1,
		&storage.Device{UserID: userID, DeviceID: deviceID, TokenHash: userID + deviceID, CreatedTS: 1})
	if err != nil {
		t.Fatal(err)
	}
}

type signer struct {
	pub  string
	priv ed25519.PrivateKey
}

func newSigner(t *testing.T) signer {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

// sign adds userID's signature with key ID keyID to obj.
func (s signer) sign(t *testing.T, userID, keyID string, obj any) json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(userID, gomatrixserverlib.KeyID(keyID), s.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func deviceKeys(t *testing.T, s signer, userID, deviceID string) json.RawMessage {
	return s.sign(t, userID, "ed25519:"+deviceID, map[string]any{
		"user_id":    userID,
		"device_id":  deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{
			"ed25519:" + deviceID:    s.pub,
			"curve25519:" + deviceID: "Y3VydmU",
		},
	})
}

func wantCode(t *testing.T, err error, status int, code string) {
	t.Helper()
	var mx *mxerr.Error
	if !errors.As(err, &mx) || mx.Status != status || mx.Code != code {
		t.Fatalf("err = %v, want %d %s", err, status, code)
	}
}

func TestUploadVerifiesDeviceKeys(t *testing.T) {
	svc, db, _ := newTestService(t)
	ctx := t.Context()
	dev := newSigner(t)
	other := newSigner(t)
	good := deviceKeys(t, dev, "@a:x", "DEV")

	bad := []struct {
		name string
		keys json.RawMessage
	}{
		{"another user's keys", deviceKeys(t, dev, "@b:x", "DEV")},
		{"another device's keys", deviceKeys(t, dev, "@a:x", "OTHER")},
		{"signed by another key", func() json.RawMessage {
			var m map[string]any
			json.Unmarshal(deviceKeys(t, other, "@a:x", "DEV"), &m)
			m["keys"].(map[string]any)["ed25519:DEV"] = dev.pub
			return json.RawMessage(keysTestJSON(m))
		}()},
		{"tampered after signing", json.RawMessage(strings.Replace(string(good), "Y3VydmU", "dGFtcGVy", 1))},
		{"no signature", func() json.RawMessage {
			var m map[string]any
			json.Unmarshal(good, &m)
			delete(m, "signatures")
			return json.RawMessage(keysTestJSON(m))
		}()},
		{"no algorithms", dev.sign(t, "@a:x", "ed25519:DEV", map[string]any{
			"user_id": "@a:x", "device_id": "DEV", "algorithms": []string{},
			"keys": map[string]string{"ed25519:DEV": dev.pub},
		})},
		{"no ed25519 key", dev.sign(t, "@a:x", "ed25519:DEV", map[string]any{
			"user_id": "@a:x", "device_id": "DEV", "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
			"keys": map[string]string{"curve25519:DEV": "abc"},
		})},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Upload(ctx, "@a:x", "DEV", UploadRequest{
				DeviceKeys:  tc.keys,
				OneTimeKeys: map[string]json.RawMessage{"curve25519:AAA": json.RawMessage(`"k"`)},
			})
			wantCode(t, err, 400, "M_INVALID_PARAM")
			// Nothing stored: neither the keys nor the one-time key.
			if dk, _ := db.Keys().DeviceKeys(ctx, []string{"@a:x"}); len(dk) != 0 {
				t.Fatalf("device keys stored: %v", dk)
			}
			if c, _ := db.Keys().OneTimeKeyCounts(ctx, "@a:x", "DEV"); len(c) != 0 {
				t.Fatalf("one-time keys stored: %v", c)
			}
		})
	}

	counts, err := svc.Upload(ctx, "@a:x", "DEV", UploadRequest{
		DeviceKeys: good,
		OneTimeKeys: map[string]json.RawMessage{
			"signed_curve25519:AAA": dev.sign(t, "@a:x", "ed25519:DEV", map[string]string{"key": "k1"}),
			"signed_curve25519:AAB": dev.sign(t, "@a:x", "ed25519:DEV", map[string]string{"key": "k2"}),
		},
	})
	if err != nil || !reflect.DeepEqual(counts, map[string]int{"signed_curve25519": 2}) {
		t.Fatalf("good upload: %v, %v", counts, err)
	}
	// A reused one-time key ID with other content is refused.
	_, err = svc.Upload(ctx, "@a:x", "DEV", UploadRequest{OneTimeKeys: map[string]json.RawMessage{
		"signed_curve25519:AAA": dev.sign(t, "@a:x", "ed25519:DEV", map[string]string{"key": "other"}),
	}})
	wantCode(t, err, 400, "M_INVALID_PARAM")
	// Malformed key IDs and values.
	for _, keys := range []map[string]json.RawMessage{
		{"noalgorithm": json.RawMessage(`"k"`)},
		{":AAA": json.RawMessage(`"k"`)},
		{"curve25519:": json.RawMessage(`"k"`)},
		{"curve25519:X": json.RawMessage(`42`)},
	} {
		if _, err := svc.Upload(ctx, "@a:x", "DEV", UploadRequest{OneTimeKeys: keys}); err == nil {
			t.Errorf("upload of %v accepted", keys)
		}
	}
}

func keysTestJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestQueryShowsUserSigningKeyOnlyToItsOwner(t *testing.T) {
	svc, db, _ := newTestService(t)
	ctx := t.Context()
	addUser(t, db, "@a:x", "DEV")
	dev := newSigner(t)
	if _, err := svc.Upload(ctx, "@a:x", "DEV", UploadRequest{DeviceKeys: deviceKeys(t, dev, "@a:x", "DEV")}); err != nil {
		t.Fatal(err)
	}
	master, ssk, usk := newSigner(t), newSigner(t), newSigner(t)
	upload := crossSigningUpload(t, "@a:x", master, ssk, usk)
	if need, err := svc.SigningUploadNeedsAuth(ctx, "@a:x", upload); err != nil || need {
		t.Fatalf("first upload needs auth = %v, %v", need, err)
	}
	if err := svc.UploadSigningKeys(ctx, "@a:x", upload, nil); err != nil {
		t.Fatal(err)
	}
	if need, _ := svc.SigningUploadNeedsAuth(ctx, "@a:x", crossSigningUpload(t, "@a:x", master, ssk, usk)); need {
		t.Fatal("the same keys again need auth")
	}
	if need, _ := svc.SigningUploadNeedsAuth(ctx, "@a:x", crossSigningUpload(t, "@a:x", newSigner(t), ssk, usk)); !need {
		t.Fatal("replacing the master key needs no auth")
	}

	own, err := svc.Query(ctx, "@a:x", map[string][]string{"@a:x": {}})
	if err != nil {
		t.Fatal(err)
	}
	if own.DeviceKeys["@a:x"]["DEV"] == nil || own.MasterKeys["@a:x"] == nil || own.SelfSigningKeys["@a:x"] == nil || own.UserSigningKeys["@a:x"] == nil {
		t.Fatalf("own query = %s", keysTestJSON(own))
	}
	theirs, err := svc.Query(ctx, "@b:x", map[string][]string{"@a:x": {"DEV"}, "@far:remote.example": {}})
	if err != nil {
		t.Fatal(err)
	}
	if theirs.MasterKeys["@a:x"] == nil || theirs.SelfSigningKeys["@a:x"] == nil {
		t.Fatalf("other's query lacks public cross-signing keys: %s", keysTestJSON(theirs))
	}
	if _, ok := theirs.UserSigningKeys["@a:x"]; ok {
		t.Fatal("the user-signing key is shown to another user")
	}
	if theirs.Failures["remote.example"] == nil {
		t.Fatalf("no failure for the remote server: %s", keysTestJSON(theirs.Failures))
	}
	// Selecting an unknown device returns no keys for it.
	none, _ := svc.Query(ctx, "@b:x", map[string][]string{"@a:x": {"NOPE"}})
	if len(none.DeviceKeys["@a:x"]) != 0 {
		t.Fatalf("unknown device returned keys: %s", keysTestJSON(none.DeviceKeys))
	}
}

func crossSigningUpload(t *testing.T, userID string, master, ssk, usk signer) map[string]json.RawMessage {
	key := func(s signer, usage string) map[string]any {
		return map[string]any{"user_id": userID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + s.pub: s.pub}}
	}
	return map[string]json.RawMessage{
		"master":       json.RawMessage(keysTestJSON(key(master, "master"))),
		"self_signing": master.sign(t, userID, "ed25519:"+master.pub, key(ssk, "self_signing")),
		"user_signing": master.sign(t, userID, "ed25519:"+master.pub, key(usk, "user_signing")),
	}
}

func TestSigningKeysMustBeSignedByTheMasterKey(t *testing.T) {
	svc, _, _ := newTestService(t)
	ctx := t.Context()
	master, ssk, usk := newSigner(t), newSigner(t), newSigner(t)
	upload := crossSigningUpload(t, "@a:x", master, ssk, usk)
	// Signed by another key instead of the master key.
	forged := crossSigningUpload(t, "@a:x", newSigner(t), ssk, usk)
	upload["self_signing"] = forged["self_signing"]
	wantCode(t, svc.UploadSigningKeys(ctx, "@a:x", upload, nil), 400, "M_INVALID_PARAM")

	// A self-signing key alone, with no master key stored, is refused.
	only := crossSigningUpload(t, "@a:x", master, ssk, usk)
	delete(only, "master")
	wantCode(t, svc.UploadSigningKeys(ctx, "@a:x", only, nil), 400, "M_INVALID_PARAM")

	// Keys for another user, or with the wrong usage.
	wrongUser := crossSigningUpload(t, "@b:x", master, ssk, usk)
	wantCode(t, svc.UploadSigningKeys(ctx, "@a:x", wrongUser, nil), 400, "M_INVALID_PARAM")
	wrongUsage := crossSigningUpload(t, "@a:x", master, ssk, usk)
	wrongUsage["master"] = json.RawMessage(strings.Replace(string(wrongUsage["master"]), `"master"`, `"self_signing"`, 1))
	wantCode(t, svc.UploadSigningKeys(ctx, "@a:x", wrongUsage, nil), 400, "M_INVALID_PARAM")
}

func TestSignatureUploadVerifiesEachSignature(t *testing.T) {
	svc, db, _ := newTestService(t)
	ctx := t.Context()
	addUser(t, db, "@a:x", "DEV")
	addUser(t, db, "@b:x", "BDEV")
	dev := newSigner(t)
	if _, err := svc.Upload(ctx, "@a:x", "DEV", UploadRequest{DeviceKeys: deviceKeys(t, dev, "@a:x", "DEV")}); err != nil {
		t.Fatal(err)
	}
	aMaster, aSSK, aUSK := newSigner(t), newSigner(t), newSigner(t)
	if err := svc.UploadSigningKeys(ctx, "@a:x", crossSigningUpload(t, "@a:x", aMaster, aSSK, aUSK), nil); err != nil {
		t.Fatal(err)
	}
	bMaster, bSSK, bUSK := newSigner(t), newSigner(t), newSigner(t)
	if err := svc.UploadSigningKeys(ctx, "@b:x", crossSigningUpload(t, "@b:x", bMaster, bSSK, bUSK), nil); err != nil {
		t.Fatal(err)
	}
	q, _ := svc.Query(ctx, "@a:x", map[string][]string{"@a:x": {}, "@b:x": {}})
	var ownDevice, bMasterKey map[string]any
	json.Unmarshal(q.DeviceKeys["@a:x"]["DEV"], &ownDevice)
	delete(ownDevice, "unsigned")
	json.Unmarshal(q.MasterKeys["@b:x"], &bMasterKey)

	body := map[string]map[string]json.RawMessage{
		"@a:x": {"DEV": aSSK.sign(t, "@a:x", "ed25519:"+aSSK.pub, ownDevice)},
		"@b:x": {
			bMaster.pub: aUSK.sign(t, "@a:x", "ed25519:"+aUSK.pub, bMasterKey),
			// Signed with the self-signing key, which may not sign others' keys.
			"unknown": aUSK.sign(t, "@a:x", "ed25519:"+aUSK.pub, bMasterKey),
		},
	}
	failures, err := svc.UploadSignatures(ctx, "@a:x", body)
	if err != nil {
		t.Fatal(err)
	}
	if len(failures["@a:x"]) != 0 || failures["@b:x"][bMaster.pub] != nil || failures["@b:x"]["unknown"] == nil {
		t.Fatalf("failures = %s", keysTestJSON(failures))
	}
	// A forged signature is reported and not stored.
	forged := newSigner(t).sign(t, "@a:x", "ed25519:"+aUSK.pub, bMasterKey)
	failures, _ = svc.UploadSignatures(ctx, "@a:x", map[string]map[string]json.RawMessage{"@b:x": {bMaster.pub: forged}})
	if failures["@b:x"][bMaster.pub] == nil {
		t.Fatalf("forged signature accepted: %s", keysTestJSON(failures))
	}
	// The signature on a's own device shows up in anyone's query; the one
	// by a's user-signing key on b's master key only in a's (see
	// TestUserSigningSignaturesAreVisibleOnlyToTheSigner).
	q, _ = svc.Query(ctx, "@b:x", map[string][]string{"@a:x": {}, "@b:x": {}})
	sigs, _ := signaturesOf(q.DeviceKeys["@a:x"]["DEV"])
	if sigs["@a:x"]["ed25519:"+aSSK.pub] == "" || sigs["@a:x"]["ed25519:DEV"] == "" {
		t.Fatalf("device signatures = %v", sigs)
	}
	sigs, _ = signaturesOf(q.MasterKeys["@b:x"])
	if got := sigs["@a:x"]; got != nil {
		t.Fatalf("b sees a's user-signing signature on its master key: %v", sigs)
	}
	q, _ = svc.Query(ctx, "@a:x", map[string][]string{"@b:x": {}})
	sigs, _ = signaturesOf(q.MasterKeys["@b:x"])
	if got := sigs["@a:x"]["ed25519:"+aUSK.pub]; got == "" || got == forgedSig(forged, aUSK.pub) {
		t.Fatalf("master key signatures = %v", sigs)
	}
}

// Spec, Cross-signing (end_to_end_encryption.md): in the diagram "Dotted
// boxes and lines represent keys and signatures that are only visible to
// the user who created them"; Alice's user-signing key's signature on Bob's
// master key is such a dotted line, so Bob, the signed user, does not see it
// either, nor does a third user, nor another server.
func TestUserSigningSignaturesAreVisibleOnlyToTheSigner(t *testing.T) {
	svc, db, _ := newTestService(t)
	ctx := t.Context()
	signers := map[string][4]signer{} // master, self-signing, user-signing, device
	for _, u := range []string{"@alice:x", "@bob:x", "@carol:x"} {
		addUser(t, db, u, "DEV")
		dev := newSigner(t)
		if _, err := svc.Upload(ctx, u, "DEV", UploadRequest{DeviceKeys: deviceKeys(t, dev, u, "DEV")}); err != nil {
			t.Fatal(err)
		}
		m, ss, us := newSigner(t), newSigner(t), newSigner(t)
		if err := svc.UploadSigningKeys(ctx, u, crossSigningUpload(t, u, m, ss, us), nil); err != nil {
			t.Fatal(err)
		}
		signers[u] = [4]signer{m, ss, us, dev}
	}
	bobMaster, bobDev := signers["@bob:x"][0], signers["@bob:x"][3]
	aliceSSK, aliceUSK := signers["@alice:x"][1], signers["@alice:x"][2]

	// Bob's master key as alice sees it, and her own device to self-sign.
	q, err := svc.Query(ctx, "@alice:x", map[string][]string{"@alice:x": {}, "@bob:x": {}})
	if err != nil {
		t.Fatal(err)
	}
	var bobKey, aliceDev map[string]any
	json.Unmarshal(q.MasterKeys["@bob:x"], &bobKey)
	json.Unmarshal(q.DeviceKeys["@alice:x"]["DEV"], &aliceDev)
	delete(aliceDev, "unsigned")
	failures, err := svc.UploadSignatures(ctx, "@alice:x", map[string]map[string]json.RawMessage{
		"@bob:x":   {bobMaster.pub: aliceUSK.sign(t, "@alice:x", "ed25519:"+aliceUSK.pub, bobKey)},
		"@alice:x": {"DEV": aliceSSK.sign(t, "@alice:x", "ed25519:"+aliceSSK.pub, aliceDev)},
	})
	if err != nil || len(failures) != 0 {
		t.Fatalf("UploadSignatures: %v %s", err, keysTestJSON(failures))
	}
	// Bob's device signs his master key: the owner's signature.
	failures, err = svc.UploadSignatures(ctx, "@bob:x", map[string]map[string]json.RawMessage{
		"@bob:x": {bobMaster.pub: bobDev.sign(t, "@bob:x", "ed25519:DEV", bobKey)},
	})
	if err != nil || len(failures) != 0 {
		t.Fatalf("UploadSignatures: %v %s", err, keysTestJSON(failures))
	}

	uskSig := "ed25519:" + aliceUSK.pub
	masterSigs := func(t *testing.T, caller string) map[string]map[string]string {
		t.Helper()
		q, err := svc.Query(ctx, caller, map[string][]string{"@alice:x": {}, "@bob:x": {}})
		if err != nil {
			t.Fatal(err)
		}
		// Self-signatures stay visible to everyone.
		dev, _ := signaturesOf(q.DeviceKeys["@alice:x"]["DEV"])
		if dev["@alice:x"]["ed25519:"+aliceSSK.pub] == "" {
			t.Fatalf("%s does not see alice's self-signing signature on her device: %v", caller, dev)
		}
		own, _ := signaturesOf(q.MasterKeys["@bob:x"])
		if own["@bob:x"]["ed25519:DEV"] == "" {
			t.Fatalf("%s does not see bob's own signature on his master key: %v", caller, own)
		}
		return own
	}
	t.Run("the signer sees it", func(t *testing.T) {
		if masterSigs(t, "@alice:x")["@alice:x"][uskSig] == "" {
			t.Fatal("alice does not see her signature on bob's master key")
		}
	})
	t.Run("a third user does not", func(t *testing.T) {
		if got := masterSigs(t, "@carol:x")["@alice:x"]; got != nil {
			t.Fatalf("carol sees %v", got)
		}
	})
	t.Run("the signed user does not", func(t *testing.T) {
		if got := masterSigs(t, "@bob:x")["@alice:x"]; got != nil {
			t.Fatalf("bob sees %v", got)
		}
	})
	t.Run("another server does not", func(t *testing.T) {
		resp := newQueryResponse()
		if err := svc.queryLocal(ctx, "", []string{"@bob:x"}, nil, resp); err != nil {
			t.Fatal(err)
		}
		sigs, _ := signaturesOf(resp.MasterKeys["@bob:x"])
		if sigs["@alice:x"] != nil || sigs["@bob:x"]["ed25519:DEV"] == "" {
			t.Fatalf("signatures for other servers = %v", sigs)
		}
	})
}

func forgedSig(obj json.RawMessage, pub string) string {
	s, _ := signaturesOf(obj)
	return s["@a:x"]["ed25519:"+pub]
}

func TestSendToDevice(t *testing.T) {
	svc, db, w := newTestService(t)
	ctx := t.Context()
	addUser(t, db, "@a:x", "DEV")
	addUser(t, db, "@b:x", "BDEV")
	msgs := map[string]map[string]json.RawMessage{
		"@a:x":                {"*": json.RawMessage(`{"n":1}`)},
		"@b:x":                {"BDEV": json.RawMessage(`{"n":2}`), "GONE": json.RawMessage(`{"n":3}`)},
		"@nobody:x":           {"*": json.RawMessage(`{}`)},
		"@far:remote.example": {"D": json.RawMessage(`{}`)},
	}
	if err := svc.SendToDevice(ctx, "@s:x", "SDEV", "m.test", "t1", msgs); err != nil {
		t.Fatal(err)
	}
	if err := svc.SendToDevice(ctx, "@s:x", "SDEV", "m.test", "t1", msgs); err != nil {
		t.Fatalf("repeated txn: %v", err)
	}
	if !w.has("@a:x") || !w.has("@b:x") {
		t.Fatalf("woken = %v", w.woken)
	}
	pos, _ := svc.ToDevicePosition(ctx)
	got, err := svc.ToDeviceSince(ctx, "@a:x", "DEV", 0, pos, 100)
	if err != nil || len(got) != 1 {
		t.Fatalf("@a got %d, %v", len(got), err)
	}
	var ev struct {
		Type    string          `json:"type"`
		Sender  string          `json:"sender"`
		Content json.RawMessage `json:"content"`
	}
	json.Unmarshal(got[0], &ev)
	if ev.Type != "m.test" || ev.Sender != "@s:x" || string(ev.Content) != `{"n":1}` {
		t.Fatalf("event = %s", got[0])
	}
	if got, _ := svc.ToDeviceSince(ctx, "@b:x", "BDEV", 0, pos, 100); len(got) != 1 {
		t.Fatalf("@b got %d messages, want 1 (the txn repeat queues nothing)", len(got))
	}

	wantCode(t, svc.SendToDevice(ctx, "@s:x", "SDEV", "m.test", "t2", map[string]map[string]json.RawMessage{
		"@a:x": {"DEV": json.RawMessage(`"not an object"`)},
	}), 400, "M_BAD_JSON")

	svc.cfg.MaxQueuedToDevice = 1
	err = svc.SendToDevice(ctx, "@s:x", "SDEV", "m.test", "t3", map[string]map[string]json.RawMessage{"@a:x": {"DEV": json.RawMessage(`{}`)}})
	wantCode(t, err, 429, "M_LIMIT_EXCEEDED")
}

func TestDeviceRemovedForgetsTheDevice(t *testing.T) {
	svc, db, w := newTestService(t)
	ctx := t.Context()
	addUser(t, db, "@a:x", "DEV")
	dev := newSigner(t)
	if _, err := svc.Upload(ctx, "@a:x", "DEV", UploadRequest{
		DeviceKeys:   deviceKeys(t, dev, "@a:x", "DEV"),
		OneTimeKeys:  map[string]json.RawMessage{"curve25519:A": json.RawMessage(`"a"`)},
		FallbackKeys: map[string]json.RawMessage{"curve25519:F": json.RawMessage(`"f"`)},
	}); err != nil {
		t.Fatal(err)
	}
	from, _ := svc.DeviceListPosition(ctx)
	if err := svc.DeviceRemoved(ctx, "@a:x", "DEV"); err != nil {
		t.Fatal(err)
	}
	otk, fb, err := svc.KeyCounts(ctx, "@a:x", "DEV")
	if err != nil || !reflect.DeepEqual(otk, map[string]int{"signed_curve25519": 0}) || len(fb) != 0 {
		t.Fatalf("counts after removal = %v %v %v", otk, fb, err)
	}
	to, _ := svc.DeviceListPosition(ctx)
	changed, _, err := svc.DeviceListChanges(ctx, "@a:x", from, to)
	if err != nil || !reflect.DeepEqual(changed, []string{"@a:x"}) {
		t.Fatalf("changes = %v, %v", changed, err)
	}
	if !w.has("@a:x") {
		t.Fatal("the user was not woken")
	}
}

func TestDeviceListPositionPacking(t *testing.T) {
	for _, c := range [][2]int64{{0, 0}, {1, 0}, {0, 1}, {5, 1<<nidBits - 1}, {1<<(63-nidBits) - 1, 7}} {
		p, err := packDeviceListPos(c[0], c[1])
		if err != nil {
			t.Fatalf("pack %v: %v", c, err)
		}
		if a, b := unpackDeviceListPos(p); a != c[0] || b != c[1] {
			t.Fatalf("round trip %v → %d → %d %d", c, p, a, b)
		}
	}
	// Monotonic: either part growing makes the position grow.
	p1, _ := packDeviceListPos(3, 1000)
	p2, _ := packDeviceListPos(3, 1001)
	p3, _ := packDeviceListPos(4, 0)
	if !(p1 < p2 && p2 < p3) {
		t.Fatalf("not monotonic: %d %d %d", p1, p2, p3)
	}
	if _, err := packDeviceListPos(0, 1<<nidBits); err == nil {
		t.Fatal("an event nid beyond the limit was packed")
	}
}

func TestBackupRules(t *testing.T) {
	svc, _, _ := newTestService(t)
	ctx := t.Context()
	if _, err := svc.Backup(ctx, "@a:x", ""); err == nil {
		t.Fatal("backup found before any was created")
	}
	v1, err := svc.CreateBackup(ctx, "@a:x", BackupAlgorithm, json.RawMessage(`{"public_key":"abc"}`))
	if err != nil {
		t.Fatal(err)
	}
	v2, _ := svc.CreateBackup(ctx, "@a:x", BackupAlgorithm, json.RawMessage(`{"public_key":"def"}`))
	i, b := int64(0), false
	sess := BackupSession{FirstMessageIndex: &i, ForwardedCount: &i, IsVerified: &b, SessionData: json.RawMessage(`{"ciphertext":"c"}`)}
	_, err = svc.PutBackupKeys(ctx, "@a:x", v1, map[string]map[string]BackupSession{"!r:x": {"s": sess}})
	var mx *mxerr.Error
	if !errors.As(err, &mx) || mx.Status != 403 || mx.Code != "M_WRONG_ROOM_KEYS_VERSION" || mx.Extra["current_version"] != v2 {
		t.Fatalf("stale version: %v (%+v)", err, mx)
	}
	res, err := svc.PutBackupKeys(ctx, "@a:x", v2, map[string]map[string]BackupSession{"!r:x": {"s": sess}})
	if err != nil || res.Count != 1 {
		t.Fatalf("put: %+v, %v", res, err)
	}
	_, err = svc.PutBackupKeys(ctx, "@a:x", "999", nil)
	wantCode(t, err, 404, "M_NOT_FOUND")
	_, err = svc.PutBackupKeys(ctx, "@a:x", "abc", nil)
	wantCode(t, err, 404, "M_NOT_FOUND")
	_, err = svc.PutBackupKeys(ctx, "@a:x", v2, map[string]map[string]BackupSession{"!r:x": {"s": {SessionData: json.RawMessage(`{}`)}}})
	wantCode(t, err, 400, "M_BAD_JSON")
	wantCode(t, svc.UpdateBackup(ctx, "@a:x", v2, "", "other.algorithm", json.RawMessage(`{}`)), 400, "M_INVALID_PARAM")
	wantCode(t, svc.UpdateBackup(ctx, "@a:x", v2, v1, BackupAlgorithm, json.RawMessage(`{}`)), 400, "M_INVALID_PARAM")
	if err := svc.UpdateBackup(ctx, "@a:x", v2, v2, BackupAlgorithm, json.RawMessage(`{"public_key":"new"}`)); err != nil {
		t.Fatal(err)
	}
	info, err := svc.Backup(ctx, "@a:x", "")
	if err != nil || info.Version != v2 || info.Count != 1 || string(info.AuthData) != `{"public_key":"new"}` {
		t.Fatalf("info = %+v, %v", info, err)
	}
}

func TestReplacingSigningKeysCallsAuthorize(t *testing.T) {
	svc, _, _ := newTestService(t)
	ctx := t.Context()
	calls := 0
	deny := func() error { calls++; return mxerr.Forbidden("no") }
	master, ssk, usk := newSigner(t), newSigner(t), newSigner(t)
	if err := svc.UploadSigningKeys(ctx, "@a:x", crossSigningUpload(t, "@a:x", master, ssk, usk), deny); err != nil || calls != 0 {
		t.Fatalf("first upload: %v, authorize called %d times", err, calls)
	}
	if err := svc.UploadSigningKeys(ctx, "@a:x", crossSigningUpload(t, "@a:x", master, ssk, usk), deny); err != nil || calls != 0 {
		t.Fatalf("same keys again: %v, authorize called %d times", err, calls)
	}
	// Bad keys are refused before any auth is asked for.
	bad := crossSigningUpload(t, "@b:x", newSigner(t), ssk, usk)
	wantCode(t, svc.UploadSigningKeys(ctx, "@a:x", bad, deny), 400, "M_INVALID_PARAM")
	if calls != 0 {
		t.Fatal("authorize called for keys that are refused anyway")
	}
	replacement := crossSigningUpload(t, "@a:x", newSigner(t), newSigner(t), newSigner(t))
	wantCode(t, svc.UploadSigningKeys(ctx, "@a:x", replacement, deny), 403, "M_FORBIDDEN")
	got, _ := svc.Query(ctx, "@a:x", map[string][]string{"@a:x": {}})
	if crossSigningPublicKey(got.MasterKeys["@a:x"]) != master.pub {
		t.Fatal("the master key was replaced although authorize refused")
	}
	if err := svc.UploadSigningKeys(ctx, "@a:x", replacement, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	got, _ = svc.Query(ctx, "@a:x", map[string][]string{"@a:x": {}})
	if crossSigningPublicKey(got.MasterKeys["@a:x"]) == master.pub {
		t.Fatal("the master key was not replaced after authorization")
	}
}
