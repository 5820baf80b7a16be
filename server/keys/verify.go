package keys

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// unpaddedBase64 decodes Matrix's unpadded base64 (padded input is accepted too).
func unpaddedBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// signedBytes is the canonical JSON that a signature on obj covers: obj
// without its "signatures" and "unsigned" members.
// spec: appendices, "Signing JSON".
func signedBytes(obj json.RawMessage) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.CanonicalJSON(raw)
}

// signaturesOf reads obj's "signatures" member: user → key ID → signature.
func signaturesOf(obj json.RawMessage) (map[string]map[string]string, error) {
	var v struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(obj, &v); err != nil {
		return nil, errors.New("signatures must map user IDs to key IDs to strings")
	}
	return v.Signatures, nil
}

// verifySignature checks that signer's key keyID (with public key pubB64,
// unpadded base64) signed obj.
func verifySignature(obj json.RawMessage, signer, keyID, pubB64 string) error {
	sigs, err := signaturesOf(obj)
	if err != nil {
		return err
	}
	sigB64, ok := sigs[signer][keyID]
	if !ok {
		return errors.New("no signature by " + signer + " with " + keyID)
	}
	return verifyRaw(obj, sigB64, pubB64)
}

// verifyRaw checks one base64 signature over obj's signed bytes.
func verifyRaw(obj json.RawMessage, sigB64, pubB64 string) error {
	pub, err := unpaddedBase64(pubB64)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return errors.New("the ed25519 key is not 32 bytes of base64")
	}
	sig, err := unpaddedBase64(sigB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return errors.New("the signature is not 64 bytes of base64")
	}
	msg, err := signedBytes(obj)
	if err != nil {
		return err
	}
	if !ed25519.Verify(ed25519.PublicKey(pub), msg, sig) {
		return errors.New("the signature does not verify")
	}
	return nil
}

// withSignatures returns obj with extra signatures merged into its
// "signatures" member (stored signatures uploaded later by others).
func withSignatures(obj json.RawMessage, extra map[string]map[string]string) json.RawMessage {
	if len(extra) == 0 {
		return obj
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return obj
	}
	sigs, _ := signaturesOf(obj)
	if sigs == nil {
		sigs = map[string]map[string]string{}
	}
	for user, byKey := range extra {
		if sigs[user] == nil {
			sigs[user] = map[string]string{}
		}
		for k, v := range byKey {
			sigs[user][k] = v
		}
	}
	raw, err := json.Marshal(sigs)
	if err != nil {
		return obj
	}
	m["signatures"] = raw
	out, err := json.Marshal(m)
	if err != nil {
		return obj
	}
	return out
}
