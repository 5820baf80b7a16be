package storagetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/trustcase/node/storage"
)

func testKeyStore(t *testing.T, open Opener) {
	t.Run("upload stores keys and counts one-time keys per algorithm", func(t *testing.T) { testKeysUpload(t, open) })
	t.Run("a one-time key ID reused with other content is refused and nothing is stored", func(t *testing.T) { testKeysOTKConflict(t, open) })
	t.Run("concurrent claims never hand out the same one-time key", func(t *testing.T) { testKeysConcurrentClaims(t, open) })
	t.Run("the fallback key is handed out once one-time keys run out, and marked used", func(t *testing.T) { testKeysFallback(t, open) })
	t.Run("changed device keys add a device-list change, the same keys do not", func(t *testing.T) { testKeysDeviceListStream(t, open) })
	t.Run("a remote user's device-list change joins the stream; stream ids come newest first", func(t *testing.T) { testKeysRemoteDeviceList(t, open) })
	t.Run("a remote user's cached device list follows its server's updates and is dropped on a gap", func(t *testing.T) { testKeysRemoteDeviceListCache(t, open) })
	t.Run("a remote user's cached device list is not used after a membership change in its rooms", func(t *testing.T) { testKeysRemoteDeviceListMembership(t, open) })
	t.Run("to-device messages are queued in order and deleted once acknowledged", func(t *testing.T) { testKeysToDevice(t, open) })
	t.Run("a to-device txn id is used once per sending device", func(t *testing.T) { testKeysToDeviceTxn(t, open) })
	t.Run("a full to-device queue refuses the whole send", func(t *testing.T) { testKeysToDeviceCap(t, open) })
	t.Run("cross-signing keys and signatures are stored per user", func(t *testing.T) { testKeysCrossSigning(t, open) })
	t.Run("deleting a device removes its keys and queue", func(t *testing.T) { testKeysDeleteDevice(t, open) })
	t.Run("backup versions: create, current, update, delete", func(t *testing.T) { testKeysBackupVersions(t, open) })
	t.Run("backup keys: the better session key wins and etag/count follow", func(t *testing.T) { testKeysBackupKeys(t, open) })
}

func keysOTK(alg, id, js string) storage.OneTimeKey {
	return storage.OneTimeKey{Algorithm: alg, KeyID: id, JSON: json.RawMessage(js)}
}

func testKeysUpload(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	dk := json.RawMessage(`{"device_id":"DEV","user_id":"@a:x"}`)
	counts, err := ks.UploadKeys(ctx, "@a:x", "DEV", dk, []storage.OneTimeKey{
		keysOTK("signed_curve25519", "AAA", `{"key":"k1"}`),
		keysOTK("signed_curve25519", "AAB", `{"key":"k2"}`),
		keysOTK("curve25519", "AAC", `"k3"`),
	}, []storage.OneTimeKey{keysOTK("signed_curve25519", "FFF", `{"key":"f","fallback":true}`)})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	if want := map[string]int{"signed_curve25519": 2, "curve25519": 1}; !reflect.DeepEqual(counts, want) {
		t.Fatalf("counts = %v, want %v", counts, want)
	}
	got, err := ks.DeviceKeys(ctx, []string{"@a:x", "@nobody:x"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !keysJSONEqual(got["@a:x"]["DEV"], dk) {
		t.Fatalf("device keys = %s", keysJSON(got))
	}
	fb, err := ks.UnusedFallbackAlgorithms(ctx, "@a:x", "DEV")
	if err != nil || !reflect.DeepEqual(fb, []string{"signed_curve25519"}) {
		t.Fatalf("unused fallback = %v, %v", fb, err)
	}
	// Uploading the same one-time key again is fine and adds nothing.
	counts, err = ks.UploadKeys(ctx, "@a:x", "DEV", nil, []storage.OneTimeKey{keysOTK("curve25519", "AAC", `"k3"`)}, nil)
	if err != nil || counts["curve25519"] != 1 {
		t.Fatalf("re-upload: %v %v", counts, err)
	}
	// Another device has its own counts.
	if c, err := ks.OneTimeKeyCounts(ctx, "@a:x", "OTHER"); err != nil || len(c) != 0 {
		t.Fatalf("other device counts = %v, %v", c, err)
	}
}

func testKeysOTKConflict(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", nil, []storage.OneTimeKey{keysOTK("curve25519", "AAA", `"k1"`)}, nil); err != nil {
		t.Fatal(err)
	}
	dk := json.RawMessage(`{"device_id":"DEV"}`)
	_, err := ks.UploadKeys(ctx, "@a:x", "DEV", dk, []storage.OneTimeKey{
		keysOTK("curve25519", "NEW", `"n"`),
		keysOTK("curve25519", "AAA", `"different"`),
	}, nil)
	if !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("err = %v, want ErrConflict", err)
	}
	counts, _ := ks.OneTimeKeyCounts(ctx, "@a:x", "DEV")
	if counts["curve25519"] != 1 {
		t.Fatalf("counts after refused upload = %v, want the one key", counts)
	}
	if got, _ := ks.DeviceKeys(ctx, []string{"@a:x"}); len(got) != 0 {
		t.Fatalf("device keys stored by a refused upload: %s", keysJSON(got))
	}
}

func testKeysConcurrentClaims(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	const n = 20
	var keys []storage.OneTimeKey
	for i := 0; i < n; i++ {
		keys = append(keys, keysOTK("signed_curve25519", fmt.Sprintf("K%03d", i), fmt.Sprintf(`{"key":"%d"}`, i)))
	}
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", nil, keys, nil); err != nil {
		t.Fatal(err)
	}
	const claimers = 30
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	errs := make(chan error, claimers)
	for i := 0; i < claimers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := ks.ClaimKeys(ctx, []storage.ClaimRequest{{UserID: "@a:x", DeviceID: "DEV", Algorithm: "signed_curve25519"}})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, k := range got {
				seen[k.KeyID]++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("claim: %v", err)
	}
	if len(seen) != n {
		t.Fatalf("%d distinct keys handed out, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("key %s handed out %d times", id, c)
		}
	}
	if counts, _ := ks.OneTimeKeyCounts(ctx, "@a:x", "DEV"); len(counts) != 0 {
		t.Fatalf("keys left after claiming all: %v", counts)
	}
}

func testKeysFallback(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", nil,
		[]storage.OneTimeKey{keysOTK("signed_curve25519", "O1", `{"key":"o1"}`)},
		[]storage.OneTimeKey{keysOTK("signed_curve25519", "F1", `{"key":"f1","fallback":true}`)}); err != nil {
		t.Fatal(err)
	}
	req := []storage.ClaimRequest{{UserID: "@a:x", DeviceID: "DEV", Algorithm: "signed_curve25519"}}
	for i, want := range []struct {
		id       string
		fallback bool
	}{{"O1", false}, {"F1", true}, {"F1", true}} {
		got, err := ks.ClaimKeys(ctx, req)
		if err != nil || len(got) != 1 || got[0].KeyID != want.id || got[0].Fallback != want.fallback {
			t.Fatalf("claim #%d = %+v, %v; want %s fallback=%v", i+1, got, err, want.id, want.fallback)
		}
		if i == 1 {
			if fb, _ := ks.UnusedFallbackAlgorithms(ctx, "@a:x", "DEV"); len(fb) != 0 {
				t.Fatalf("fallback still unused after its claim: %v", fb)
			}
		}
	}
	// Re-uploading the same fallback key keeps it used; a new one is unused.
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", nil, nil, []storage.OneTimeKey{keysOTK("signed_curve25519", "F1", `{"key":"f1","fallback":true}`)}); err != nil {
		t.Fatal(err)
	}
	if fb, _ := ks.UnusedFallbackAlgorithms(ctx, "@a:x", "DEV"); len(fb) != 0 {
		t.Fatalf("same fallback re-uploaded reads unused: %v", fb)
	}
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", nil, nil, []storage.OneTimeKey{keysOTK("signed_curve25519", "F2", `{"key":"f2","fallback":true}`)}); err != nil {
		t.Fatal(err)
	}
	if fb, _ := ks.UnusedFallbackAlgorithms(ctx, "@a:x", "DEV"); !reflect.DeepEqual(fb, []string{"signed_curve25519"}) {
		t.Fatalf("new fallback not unused: %v", fb)
	}
	// Nothing for an unknown algorithm or device.
	got, err := ks.ClaimKeys(ctx, []storage.ClaimRequest{{UserID: "@a:x", DeviceID: "DEV", Algorithm: "other"}, {UserID: "@a:x", DeviceID: "NOPE", Algorithm: "signed_curve25519"}})
	if err != nil || len(got) != 0 {
		t.Fatalf("claim of nothing = %+v, %v", got, err)
	}
}

func testKeysDeviceListStream(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	p0, err := ks.DeviceListPosition(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dk := json.RawMessage(`{"device_id":"DEV","v":1}`)
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", dk, nil, nil); err != nil {
		t.Fatal(err)
	}
	p1, _ := ks.DeviceListPosition(ctx)
	if p1 <= p0 {
		t.Fatalf("position %d after a first upload, was %d", p1, p0)
	}
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", dk, nil, nil); err != nil {
		t.Fatal(err)
	}
	if p2, _ := ks.DeviceListPosition(ctx); p2 != p1 {
		t.Fatalf("the same keys moved the position %d → %d", p1, p2)
	}
	changed, left, err := ks.DeviceListChanges(ctx, "@a:x", p0, p1, 0, 0)
	if err != nil || !reflect.DeepEqual(changed, []string{"@a:x"}) || len(left) != 0 {
		t.Fatalf("own changes = %v %v %v", changed, left, err)
	}
	// @b shares no room with @a: it does not see @a's change.
	changed, _, err = ks.DeviceListChanges(ctx, "@b:x", p0, p1, 0, 0)
	if err != nil || len(changed) != 0 {
		t.Fatalf("@b sees %v, %v", changed, err)
	}
	if changed, _, _ := ks.DeviceListChanges(ctx, "@a:x", p1, p1, 0, 0); len(changed) != 0 {
		t.Fatalf("empty range has changes: %v", changed)
	}
}

func testKeysToDevice(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	for i := 1; i <= 3; i++ {
		_, err := ks.QueueToDevice(ctx, keysSend("@s:x", "SDEV", fmt.Sprintf("t%d", i), 100), []storage.ToDeviceMessage{
			{UserID: "@a:x", DeviceID: "DEV", Event: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))},
			{UserID: "@b:x", DeviceID: "BDEV", Event: json.RawMessage(fmt.Sprintf(`{"b":%d}`, i))},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	to, err := ks.ToDevicePosition(ctx)
	if err != nil || to != 6 {
		t.Fatalf("position = %d, %v; want 6", to, err)
	}
	got, err := ks.ToDeviceSince(ctx, "@a:x", "DEV", 0, to, 2)
	if err != nil || len(got) != 2 || !keysJSONEqual(got[0], json.RawMessage(`{"n":1}`)) || !keysJSONEqual(got[1], json.RawMessage(`{"n":2}`)) {
		t.Fatalf("first page = %s, %v", keysJSON(got), err)
	}
	// The client synced to position 3 (after n=2): those two are deleted.
	got, err = ks.ToDeviceSince(ctx, "@a:x", "DEV", 3, to, 10)
	if err != nil || len(got) != 1 || !keysJSONEqual(got[0], json.RawMessage(`{"n":3}`)) {
		t.Fatalf("after ack = %s, %v", keysJSON(got), err)
	}
	// Re-reading from 0 shows the acknowledged ones are gone for good.
	got, _ = ks.ToDeviceSince(ctx, "@a:x", "DEV", 0, to, 10)
	if len(got) != 1 {
		t.Fatalf("acknowledged messages came back: %s", keysJSON(got))
	}
	// The other device's queue is untouched.
	got, _ = ks.ToDeviceSince(ctx, "@b:x", "BDEV", 0, to, 10)
	if len(got) != 3 {
		t.Fatalf("other device has %d messages, want 3", len(got))
	}
	// The position never goes down when rows are deleted.
	ks.ToDeviceSince(ctx, "@a:x", "DEV", to, to, 10)
	ks.ToDeviceSince(ctx, "@b:x", "BDEV", to, to, 10)
	if p, _ := ks.ToDevicePosition(ctx); p != to {
		t.Fatalf("position after acks = %d, want %d", p, to)
	}
}

func testKeysToDeviceTxn(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	msg := []storage.ToDeviceMessage{{UserID: "@a:x", DeviceID: "DEV", Event: json.RawMessage(`{}`)}}
	for i, want := range []bool{false, true} {
		dup, err := ks.QueueToDevice(ctx, keysSend("@s:x", "SDEV", "txn", 100), msg)
		if err != nil || dup != want {
			t.Fatalf("send #%d: duplicate=%v err=%v, want %v", i+1, dup, err, want)
		}
	}
	// Another sending device may use the same txn id.
	if dup, err := ks.QueueToDevice(ctx, keysSend("@s:x", "SDEV2", "txn", 100), msg); err != nil || dup {
		t.Fatalf("other device: duplicate=%v err=%v", dup, err)
	}
	got, _ := ks.ToDeviceSince(ctx, "@a:x", "DEV", 0, 100, 10)
	if len(got) != 2 {
		t.Fatalf("%d messages queued, want 2", len(got))
	}
	// Txn ids recorded before the cut-off are forgotten: the id works again.
	later := keysSend("@s:x", "SDEV", "txn", 100)
	later.NowMS, later.ForgetTxnsBeforeMS = 5000, 2000
	if dup, err := ks.QueueToDevice(ctx, later, msg); err != nil || dup {
		t.Fatalf("txn id after its lifetime: duplicate=%v err=%v", dup, err)
	}
	// …and is remembered again from then on.
	later.ForgetTxnsBeforeMS = 4000
	if dup, err := ks.QueueToDevice(ctx, later, msg); err != nil || !dup {
		t.Fatalf("txn id within its lifetime: duplicate=%v err=%v", dup, err)
	}
}

func testKeysToDeviceCap(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	msg := func(dev string) storage.ToDeviceMessage {
		return storage.ToDeviceMessage{UserID: "@a:x", DeviceID: dev, Event: json.RawMessage(`{}`)}
	}
	for i := 0; i < 3; i++ {
		if _, err := ks.QueueToDevice(ctx, keysSend("@s:x", "SDEV", fmt.Sprint(i), 3), []storage.ToDeviceMessage{msg("DEV")}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := ks.QueueToDevice(ctx, keysSend("@s:x", "SDEV", "full", 3), []storage.ToDeviceMessage{msg("OTHER"), msg("DEV")})
	if !errors.Is(err, storage.ErrQueueFull) {
		t.Fatalf("err = %v, want ErrQueueFull", err)
	}
	if got, _ := ks.ToDeviceSince(ctx, "@a:x", "OTHER", 0, 100, 10); len(got) != 0 {
		t.Fatalf("a refused send queued for another device: %d", len(got))
	}
	// The refused txn id was not used up: it works once the queue drained.
	ks.ToDeviceSince(ctx, "@a:x", "DEV", 100, 100, 10)
	if dup, err := ks.QueueToDevice(ctx, keysSend("@s:x", "SDEV", "full", 3), []storage.ToDeviceMessage{msg("DEV")}); err != nil || dup {
		t.Fatalf("retry after drain: dup=%v err=%v", dup, err)
	}
}

func testKeysCrossSigning(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	p0, _ := ks.DeviceListPosition(ctx)
	keys := map[string]json.RawMessage{
		"master":       json.RawMessage(`{"usage":["master"],"v":1}`),
		"self_signing": json.RawMessage(`{"usage":["self_signing"]}`),
	}
	if err := ks.SetCrossSigningKeys(ctx, "@a:x", keys); err != nil {
		t.Fatal(err)
	}
	if err := ks.SetCrossSigningKeys(ctx, "@a:x", map[string]json.RawMessage{"master": json.RawMessage(`{"usage":["master"],"v":2}`)}); err != nil {
		t.Fatal(err)
	}
	got, err := ks.CrossSigningKeys(ctx, []string{"@a:x", "@b:x"})
	if err != nil || len(got) != 1 || len(got["@a:x"]) != 2 || !keysJSONEqual(got["@a:x"]["master"], json.RawMessage(`{"usage":["master"],"v":2}`)) {
		t.Fatalf("cross-signing keys = %s, %v", keysJSON(got), err)
	}
	sigs := []storage.KeySignature{
		{TargetUserID: "@a:x", TargetKeyID: "DEV", SignerUserID: "@a:x", SignerKeyID: "ed25519:SSK", Signature: "s1"},
		{TargetUserID: "@b:x", TargetKeyID: "BMK", SignerUserID: "@a:x", SignerKeyID: "ed25519:USK", Signature: "s2"},
	}
	if err := ks.AddSignatures(ctx, sigs); err != nil {
		t.Fatal(err)
	}
	sigs[0].Signature = "s1b" // a newer signature by the same key replaces the old one
	if err := ks.AddSignatures(ctx, sigs[:1]); err != nil {
		t.Fatal(err)
	}
	stored, err := ks.Signatures(ctx, []string{"@a:x"})
	if err != nil || len(stored) != 1 || stored[0].Signature != "s1b" {
		t.Fatalf("signatures on @a = %+v, %v", stored, err)
	}
	if p, _ := ks.DeviceListPosition(ctx); p-p0 < 4 {
		t.Fatalf("device-list stream moved %d, want a change per upload and signed user", p-p0)
	}
}

func testKeysDeleteDevice(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", json.RawMessage(`{}`),
		[]storage.OneTimeKey{keysOTK("curve25519", "A", `"a"`)}, []storage.OneTimeKey{keysOTK("curve25519", "F", `"f"`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.QueueToDevice(ctx, keysSend("@s:x", "S", "t", 10), []storage.ToDeviceMessage{{UserID: "@a:x", DeviceID: "DEV", Event: json.RawMessage(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	p0, _ := ks.DeviceListPosition(ctx)
	if err := ks.DeleteDevice(ctx, "@a:x", "DEV"); err != nil {
		t.Fatal(err)
	}
	if dk, _ := ks.DeviceKeys(ctx, []string{"@a:x"}); len(dk) != 0 {
		t.Fatalf("device keys left: %s", keysJSON(dk))
	}
	if c, _ := ks.OneTimeKeyCounts(ctx, "@a:x", "DEV"); len(c) != 0 {
		t.Fatalf("one-time keys left: %v", c)
	}
	if fb, _ := ks.UnusedFallbackAlgorithms(ctx, "@a:x", "DEV"); len(fb) != 0 {
		t.Fatalf("fallback keys left: %v", fb)
	}
	if got, _ := ks.ToDeviceSince(ctx, "@a:x", "DEV", 0, 100, 10); len(got) != 0 {
		t.Fatalf("queued messages left: %d", len(got))
	}
	p1, _ := ks.DeviceListPosition(ctx)
	if changed, _, _ := ks.DeviceListChanges(ctx, "@a:x", p0, p1, 0, 0); !reflect.DeepEqual(changed, []string{"@a:x"}) {
		t.Fatalf("no device-list change for the removed device: %v", changed)
	}
}

func testKeysBackupVersions(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	if _, err := ks.BackupVersion(ctx, "@a:x", 0); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("no backup: err = %v, want ErrNotFound", err)
	}
	v1, err := ks.CreateBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{"public_key":"p1"}`))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := ks.CreateBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{"public_key":"p2"}`))
	if err != nil || v2 <= v1 {
		t.Fatalf("second version %d (first %d), %v", v2, v1, err)
	}
	cur, err := ks.BackupVersion(ctx, "@a:x", 0)
	if err != nil || cur.Version != v2 || !keysJSONEqual(cur.AuthData, json.RawMessage(`{"public_key":"p2"}`)) {
		t.Fatalf("current = %+v, %v", cur, err)
	}
	if _, err := ks.BackupVersion(ctx, "@b:x", v1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("another user's version: err = %v", err)
	}
	if err := ks.UpdateBackupVersion(ctx, "@a:x", v1, json.RawMessage(`{"public_key":"p1b"}`)); err != nil {
		t.Fatal(err)
	}
	if err := ks.UpdateBackupVersion(ctx, "@b:x", v1, json.RawMessage(`{}`)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("update of another user's version: %v", err)
	}
	if err := ks.DeleteBackupVersion(ctx, "@a:x", v2); err != nil {
		t.Fatal(err)
	}
	if err := ks.DeleteBackupVersion(ctx, "@a:x", v2); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	cur, err = ks.BackupVersion(ctx, "@a:x", 0)
	if err != nil || cur.Version != v1 || !keysJSONEqual(cur.AuthData, json.RawMessage(`{"public_key":"p1b"}`)) {
		t.Fatalf("current after deleting v2 = %+v, %v", cur, err)
	}
}

func testKeysBackupKeys(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	old, _ := ks.CreateBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`))
	v, _ := ks.CreateBackupVersion(ctx, "@a:x", "alg", json.RawMessage(`{}`))
	key := func(room, sess string, fmi, fwd int64, verified bool, data string) storage.BackupKey {
		return storage.BackupKey{RoomID: room, SessionID: sess, FirstMessageIndex: fmi, ForwardedCount: fwd, IsVerified: verified, SessionData: json.RawMessage(data)}
	}
	etag, count, err := ks.PutBackupKeys(ctx, "@a:x", v, []storage.BackupKey{
		key("!r1", "s1", 5, 1, false, `{"d":"first"}`),
		key("!r2", "s2", 0, 0, false, `{"d":"r2"}`),
	})
	if err != nil || count != 2 {
		t.Fatalf("put: etag %d count %d, %v", etag, count, err)
	}
	steps := []struct {
		name    string
		k       storage.BackupKey
		wins    bool
		wantDat string
	}{
		{"unverified with a higher index loses", key("!r1", "s1", 9, 0, false, `{"d":"worse"}`), false, `{"d":"first"}`},
		{"lower first_message_index wins", key("!r1", "s1", 2, 3, false, `{"d":"lower index"}`), true, `{"d":"lower index"}`},
		{"same index, lower forwarded_count wins", key("!r1", "s1", 2, 1, false, `{"d":"fewer forwards"}`), true, `{"d":"fewer forwards"}`},
		{"same index and count does not replace", key("!r1", "s1", 2, 1, false, `{"d":"same"}`), false, `{"d":"fewer forwards"}`},
		{"verified wins over a lower index", key("!r1", "s1", 7, 4, true, `{"d":"verified"}`), true, `{"d":"verified"}`},
		{"unverified never replaces verified", key("!r1", "s1", 0, 0, false, `{"d":"unverified"}`), false, `{"d":"verified"}`},
	}
	for _, st := range steps {
		before := etag
		etag, count, err = ks.PutBackupKeys(ctx, "@a:x", v, []storage.BackupKey{st.k})
		if err != nil || count != 2 {
			t.Fatalf("%s: count %d, %v", st.name, count, err)
		}
		if (etag != before) != st.wins {
			t.Errorf("%s: etag %d → %d", st.name, before, etag)
		}
		got, err := ks.BackupKeys(ctx, "@a:x", v, "!r1", "s1")
		if err != nil || len(got) != 1 || !keysJSONEqual(got[0].SessionData, json.RawMessage(st.wantDat)) {
			t.Fatalf("%s: stored %s, %v", st.name, keysJSON(got), err)
		}
	}
	if _, _, err := ks.PutBackupKeys(ctx, "@a:x", old, []storage.BackupKey{key("!r", "s", 0, 0, false, `{}`)}); !errors.Is(err, storage.ErrWrongBackupVersion) {
		t.Fatalf("put to old version: %v, want ErrWrongBackupVersion", err)
	}
	if _, _, err := ks.PutBackupKeys(ctx, "@a:x", v+100, nil); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("put to unknown version: %v, want ErrNotFound", err)
	}
	if all, err := ks.BackupKeys(ctx, "@a:x", v, "", ""); err != nil || len(all) != 2 {
		t.Fatalf("all keys = %d, %v", len(all), err)
	}
	if room, _ := ks.BackupKeys(ctx, "@a:x", v, "!r2", ""); len(room) != 1 || room[0].SessionID != "s2" {
		t.Fatalf("room keys = %s", keysJSON(room))
	}
	before := etag
	etag, count, err = ks.DeleteBackupKeys(ctx, "@a:x", v, "!r1", "")
	if err != nil || count != 1 || etag == before {
		t.Fatalf("delete room: etag %d→%d count %d, %v", before, etag, count, err)
	}
	if _, err := ks.BackupKeys(ctx, "@a:x", v+100, "", ""); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("keys of unknown version: %v", err)
	}
	if err := ks.DeleteBackupVersion(ctx, "@a:x", v); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.BackupKeys(ctx, "@a:x", v, "", ""); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("keys of deleted version: %v", err)
	}
}

func keysJSONEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func keysJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func keysSend(user, device, txn string, maxQueued int) storage.ToDeviceSend {
	return storage.ToDeviceSend{SenderUserID: user, SenderDeviceID: device, TxnID: txn, NowMS: 1000, MaxQueued: maxQueued}
}
