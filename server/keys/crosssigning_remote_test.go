package keys

import (
	"encoding/json"
	"strings"
	"testing"
)

// remoteSigningSetup: @a:x and @c:x on server x, @b:y on server y, each
// with a device and cross-signing keys. It returns b's master key as x
// serves it to a, and a's user-signing and self-signing keys.
type remoteSigningSetup struct {
	net        *fedNet
	x, y       *Service
	aUSK, aSSK signer
	bMaster    signer
	bMasterKey map[string]any
	bDevice    map[string]any
}

func newRemoteSigningSetup(t *testing.T) remoteSigningSetup {
	t.Helper()
	net := newFedNet()
	x, xdb, _ := net.add(t, "x")
	y, ydb, _ := net.add(t, "y")
	ctx := t.Context()
	addUser(t, xdb, "@a:x", "ADEV")
	addUser(t, xdb, "@c:x", "CDEV")
	addUser(t, ydb, "@b:y", "BDEV")
	if _, err := y.Upload(ctx, "@b:y", "BDEV", UploadRequest{DeviceKeys: deviceKeys(t, newSigner(t), "@b:y", "BDEV")}); err != nil {
		t.Fatal(err)
	}
	aMaster, aSSK, aUSK := newSigner(t), newSigner(t), newSigner(t)
	if err := x.UploadSigningKeys(ctx, "@a:x", crossSigningUpload(t, "@a:x", aMaster, aSSK, aUSK), nil); err != nil {
		t.Fatal(err)
	}
	bMaster := newSigner(t)
	if err := y.UploadSigningKeys(ctx, "@b:y", crossSigningUpload(t, "@b:y", bMaster, newSigner(t), newSigner(t)), nil); err != nil {
		t.Fatal(err)
	}
	q, err := x.Query(ctx, "@a:x", map[string][]string{"@b:y": nil})
	if err != nil {
		t.Fatal(err)
	}
	st := remoteSigningSetup{net: net, x: x, y: y, aUSK: aUSK, aSSK: aSSK, bMaster: bMaster}
	if err := json.Unmarshal(q.MasterKeys["@b:y"], &st.bMasterKey); err != nil || st.bMasterKey == nil {
		t.Fatalf("x does not serve b's master key: %s", keysTestJSON(q))
	}
	if err := json.Unmarshal(q.DeviceKeys["@b:y"]["BDEV"], &st.bDevice); err != nil {
		t.Fatalf("x does not serve b's device: %s", keysTestJSON(q))
	}
	delete(st.bDevice, "unsigned")
	return st
}

// remoteSig is the signature by a's key pub on b's master key in a query answer ("" when none).
func remoteSig(t *testing.T, q *QueryResponse, pub string) string {
	t.Helper()
	sigs, err := signaturesOf(q.MasterKeys["@b:y"])
	if err != nil {
		t.Fatal(err)
	}
	return sigs["@a:x"]["ed25519:"+pub]
}

func TestSignatureOnARemoteMasterKeyIsShownToTheSignerOnly(t *testing.T) {
	st := newRemoteSigningSetup(t)
	ctx := t.Context()
	signed := st.aUSK.sign(t, "@a:x", "ed25519:"+st.aUSK.pub, st.bMasterKey)
	failures, err := st.x.UploadSignatures(ctx, "@a:x", map[string]map[string]json.RawMessage{"@b:y": {st.bMaster.pub: signed}})
	if err != nil {
		t.Fatal(err)
	}
	if len(failures) != 0 {
		t.Fatalf("failures = %s", keysTestJSON(failures))
	}
	want, _ := signaturesOf(signed)

	own, err := st.x.Query(ctx, "@a:x", map[string][]string{"@b:y": nil})
	if err != nil {
		t.Fatal(err)
	}
	if got := remoteSig(t, own, st.aUSK.pub); got == "" || got != want["@a:x"]["ed25519:"+st.aUSK.pub] {
		t.Fatalf("the signer's query shows b's master key as %s", own.MasterKeys["@b:y"])
	}
	if err := verifySignature(own.MasterKeys["@b:y"], "@a:x", "ed25519:"+st.aUSK.pub, st.aUSK.pub); err != nil {
		t.Fatalf("the merged signature does not verify: %v", err)
	}

	other, err := st.x.Query(ctx, "@c:x", map[string][]string{"@b:y": nil})
	if err != nil {
		t.Fatal(err)
	}
	if other.MasterKeys["@b:y"] == nil || remoteSig(t, other, st.aUSK.pub) != "" {
		t.Fatalf("another local user sees b's master key as %s", other.MasterKeys["@b:y"])
	}
	// Nor does b's server learn of it.
	home, err := st.y.Query(ctx, "@b:y", map[string][]string{"@b:y": nil})
	if err != nil {
		t.Fatal(err)
	}
	if remoteSig(t, home, st.aUSK.pub) != "" {
		t.Fatalf("y shows a's signature: %s", home.MasterKeys["@b:y"])
	}
	for _, e := range st.net.sent("m.signing_key_update") {
		if e.origin == "x" {
			t.Fatalf("x sent a signing key update: %s", e.content)
		}
	}
}

func TestSignatureOnARemoteKeyIsRefusedWhenItMayNotBeStored(t *testing.T) {
	st := newRemoteSigningSetup(t)
	ctx := t.Context()
	changed := func(m map[string]any, k string, v any) map[string]any {
		out := map[string]any{}
		for key, val := range m {
			out[key] = val
		}
		out[k] = v
		return out
	}
	cases := []struct {
		name, user, keyID string
		obj               json.RawMessage
		code              string
	}{
		{"a forged signature", "@b:y", st.bMaster.pub,
			newSigner(t).sign(t, "@a:x", "ed25519:"+st.aUSK.pub, st.bMasterKey), "M_INVALID_SIGNATURE"},
		{"a signature by the self-signing key", "@b:y", st.bMaster.pub,
			st.aSSK.sign(t, "@a:x", "ed25519:"+st.aSSK.pub, st.bMasterKey), "M_INVALID_SIGNATURE"},
		{"another object than the master key", "@b:y", st.bMaster.pub,
			st.aUSK.sign(t, "@a:x", "ed25519:"+st.aUSK.pub, changed(st.bMasterKey, "usage", []string{"self_signing"})), "M_INVALID_SIGNATURE"},
		{"a remote user's device", "@b:y", "BDEV",
			st.aUSK.sign(t, "@a:x", "ed25519:"+st.aUSK.pub, st.bDevice), "M_INVALID_SIGNATURE"},
		{"an unknown key", "@b:y", "bm90aGVyZQ",
			st.aUSK.sign(t, "@a:x", "ed25519:"+st.aUSK.pub, st.bMasterKey), "M_NOT_FOUND"},
		{"a key of a server that is down", "@d:down.example", "a2V5",
			st.aUSK.sign(t, "@a:x", "ed25519:"+st.aUSK.pub, st.bMasterKey), "M_UNAVAILABLE"},
		{"not a JSON object", "@b:y", st.bMaster.pub, json.RawMessage(`[1]`), "M_INVALID_SIGNATURE"},
	}
	st.net.down["down.example"] = true
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			failures, err := st.x.UploadSignatures(ctx, "@a:x", map[string]map[string]json.RawMessage{tc.user: {tc.keyID: tc.obj}})
			if err != nil {
				t.Fatal(err)
			}
			if f := string(failures[tc.user][tc.keyID]); !strings.Contains(f, `"`+tc.code+`"`) {
				t.Fatalf("failure = %q, want %s", f, tc.code)
			}
			sigs, err := st.x.store.Signatures(ctx, []string{tc.user})
			if err != nil {
				t.Fatal(err)
			}
			if len(sigs) != 0 {
				t.Fatalf("stored %+v", sigs)
			}
		})
	}
}

func TestSignatureOnARemoteKeyNeedsAUserSigningKey(t *testing.T) {
	st := newRemoteSigningSetup(t)
	// c has no cross-signing keys.
	signed := newSigner(t).sign(t, "@c:x", "ed25519:whatever", st.bMasterKey)
	failures, err := st.x.UploadSignatures(t.Context(), "@c:x", map[string]map[string]json.RawMessage{"@b:y": {st.bMaster.pub: signed}})
	if err != nil {
		t.Fatal(err)
	}
	if f := string(failures["@b:y"][st.bMaster.pub]); !strings.Contains(f, "M_INVALID_SIGNATURE") {
		t.Fatalf("failure = %q", f)
	}
}
