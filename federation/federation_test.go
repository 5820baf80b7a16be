package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

func TestKeyRingFetchesPeerKeysAndCachesThemInTheStore(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		signed, err := gomatrixserverlib.SignJSON(string(a.name), a.key.KeyID, a.key.Private, []byte(`{"hello":"world"}`))
		if err != nil {
			t.Fatal(err)
		}
		verify := func() error {
			res, err := b.tr.KeyRing.VerifyJSONs(t.Context(), []gomatrixserverlib.VerifyJSONRequest{{
				ServerName: a.name, AtTS: spec.AsTimestamp(time.Now()), Message: signed,
				ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck,
			}})
			if err != nil {
				return err
			}
			return res[0].Error
		}
		if err := verify(); err != nil {
			t.Fatalf("b could not verify a's signature: %v", err)
		}
		id := storage.ServerKeyID{ServerName: "a.test", KeyID: string(a.key.KeyID)}
		cached, err := b.store.Federation().ServerKeys(t.Context(), []storage.ServerKeyID{id})
		if err != nil {
			t.Fatal(err)
		}
		k, ok := cached[id]
		if !ok {
			t.Fatal("a's key is not in b's server_keys")
		}
		if k.Key != spec.Base64Bytes(a.key.Public()).Encode() || k.ValidUntilTS <= time.Now().UnixMilli() || k.ExpiredTS != 0 {
			t.Fatalf("cached key = %+v", k)
		}
		// With a gone, the cached key (still valid) keeps working.
		a.srv.Close()
		if err := verify(); err != nil {
			t.Fatalf("verification from the cache failed: %v", err)
		}
		// A signature by another key under a's name does not verify.
		other, _ := signing.LoadOrCreate("a.test", t.TempDir())
		forged, _ := gomatrixserverlib.SignJSON("a.test", a.key.KeyID, other.Private, []byte(`{"hello":"world"}`))
		signed = forged
		if err := verify(); err == nil {
			t.Fatal("a signature made with another private key verified")
		}
	})
}

func TestSendRequiresValidXMatrixAuthentication(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		txn := map[string]any{"origin": "b.test", "origin_server_ts": 1, "pdus": []any{}}
		path := "/_matrix/federation/v1/send/t1"
		expect401 := func(t *testing.T, req *http.Request) {
			t.Helper()
			status, body := a.do(t, req)
			if status != http.StatusUnauthorized || body["errcode"] != "M_UNAUTHORIZED" {
				t.Fatalf("got %d %v, want 401 M_UNAUTHORIZED", status, body)
			}
		}
		t.Run("unsigned request is 401", func(t *testing.T) {
			expect401(t, a.rawRequest(t, http.MethodPut, path, []byte(`{"pdus":[]}`)))
		})
		t.Run("request for another destination is 401", func(t *testing.T) {
			expect401(t, fedtest.SignedRequest(t, b.key, http.MethodPut, "c.test", path, txn, a.addr))
		})
		t.Run("signature by the wrong key is 401", func(t *testing.T) {
			forger, _ := signing.LoadOrCreate("b.test", t.TempDir())
			forger.KeyID = b.key.KeyID
			expect401(t, fedtest.SignedRequest(t, forger, http.MethodPut, "a.test", path, txn, a.addr))
		})
		t.Run("signature over other content is 401", func(t *testing.T) {
			req := fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", path, txn, a.addr)
			tampered := fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", path,
				map[string]any{"origin": "b.test", "origin_server_ts": 2, "pdus": []any{}}, a.addr)
			tampered.Header.Set("Authorization", req.Header.Get("Authorization"))
			expect401(t, tampered)
		})
		t.Run("origin whose keys cannot be fetched is 401", func(t *testing.T) {
			stranger, _ := signing.LoadOrCreate("nowhere.invalid:1", t.TempDir())
			expect401(t, fedtest.SignedRequest(t, stranger, http.MethodPut, "a.test", path, txn, a.addr))
		})
		t.Run("X-Matrix header without sig is 401", func(t *testing.T) {
			req := a.rawRequest(t, http.MethodPut, path, []byte(`{"pdus":[]}`))
			req.Header.Set("Authorization", `X-Matrix origin="b.test",key="`+string(b.key.KeyID)+`"`)
			expect401(t, req)
		})
		t.Run("garbage JSON is 400 M_NOT_JSON", func(t *testing.T) {
			req := a.rawRequest(t, http.MethodPut, path, []byte(`{"pdus": [`))
			req.Header.Set("Authorization", fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", path, txn, a.addr).Header.Get("Authorization"))
			status, body := a.do(t, req)
			if status != http.StatusBadRequest || body["errcode"] != "M_NOT_JSON" {
				t.Fatalf("got %d %v, want 400 M_NOT_JSON", status, body)
			}
		})
		t.Run("a valid signature is accepted", func(t *testing.T) {
			status, body := a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", path, txn, a.addr))
			if status != http.StatusOK {
				t.Fatalf("got %d %v", status, body)
			}
		})
	})
}

func TestSendValidatesTheTransaction(t *testing.T) {
	ca := fedtest.NewCA(t)
	backends(t, func(t *testing.T, open opener) {
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		cases := []struct {
			name     string
			txn      any
			wantCode string
		}{
			{"more than 50 PDUs is 400", map[string]any{"pdus": make([]map[string]any, 51)}, "M_BAD_JSON"},
			{"more than 100 EDUs is 400", map[string]any{"pdus": []any{}, "edus": make([]map[string]any, 101)}, "M_BAD_JSON"},
			{"missing pdus is 400", map[string]any{"origin": "b.test"}, "M_BAD_JSON"},
			{"pdus of the wrong type is 400", map[string]any{"pdus": "no"}, "M_BAD_JSON"},
			{"a body that is not an object is 400", []int{1}, "M_BAD_JSON"},
			{"an origin other than the signer is 400", map[string]any{"origin": "c.test", "pdus": []any{}}, "M_INVALID_PARAM"},
		}
		for i, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				path := fmt.Sprintf("/_matrix/federation/v1/send/bad%d", i)
				status, body := a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", path, c.txn, a.addr))
				if status != http.StatusBadRequest || body["errcode"] != c.wantCode {
					t.Fatalf("got %d %v, want 400 %s", status, body, c.wantCode)
				}
				// Nothing was recorded: the same txn id with a good body works.
				status, body = a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", path,
					map[string]any{"pdus": []any{}}, a.addr))
				if status != http.StatusOK {
					t.Fatalf("good retry of a rejected txn id: %d %v", status, body)
				}
			})
		}
		t.Run("exactly 50 PDUs and 100 EDUs is accepted", func(t *testing.T) {
			pdus := make([]json.RawMessage, 50)
			for i := range pdus {
				pdus[i] = fedtest.Event(t, b.key, gomatrixserverlib.RoomVersionV10, "!r:b.test", "m.test", map[string]int{"n": i}, int64(i+1))
			}
			edus := make([]map[string]any, 100)
			for i := range edus {
				edus[i] = map[string]any{"edu_type": "m.unknown", "content": map[string]any{}}
			}
			status, body := a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", "/_matrix/federation/v1/send/full",
				map[string]any{"pdus": pdus, "edus": edus}, a.addr))
			if status != http.StatusOK {
				t.Fatalf("got %d %v", status, body)
			}
			if got := len(body["pdus"].(map[string]any)); got != 50 {
				t.Fatalf("%d PDU results, want 50", got)
			}
		})
	})
}

func TestSendReplayReturnsTheStoredResponse(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		inbox := newInbox("!known:b.test")
		a.api.Rooms = inbox
		known := fedtest.Event(t, b.key, gomatrixserverlib.RoomVersionV10, "!known:b.test", "m.test", map[string]int{"n": 1}, 1)
		unknown := fedtest.Event(t, b.key, gomatrixserverlib.RoomVersionV12, "!other:b.test", "m.test", map[string]int{"n": 2}, 1)
		knownID := eventIDOf(t, gomatrixserverlib.RoomVersionV10, known)
		unknownID := eventIDOf(t, gomatrixserverlib.RoomVersionV12, unknown)

		// Through b's real client: signing, resolution, TLS with the CA.
		res, err := b.tr.Client.SendTransaction(t.Context(), gomatrixserverlib.Transaction{
			TransactionID: "txn1", Origin: "b.test", Destination: "a.test",
			OriginServerTS: spec.AsTimestamp(time.Now()), PDUs: []json.RawMessage{known, unknown},
		})
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		if r, ok := res.PDUs[knownID]; !ok || r.Error != "" {
			t.Errorf("known room PDU result = %+v (present %v), want success", r, ok)
		}
		if r := res.PDUs[unknownID]; !strings.Contains(r.Error, "unknown room") {
			t.Errorf("unknown room PDU result = %+v, want an unknown room error", r)
		}
		if got := inbox.received(); len(got) != 1 {
			t.Fatalf("inbox got %v, want the one PDU of the known room", got)
		}
		// A replay (even with other content) gets the same answer and is not
		// processed again.
		again, err := b.tr.Client.SendTransaction(t.Context(), gomatrixserverlib.Transaction{
			TransactionID: "txn1", Origin: "b.test", Destination: "a.test",
			OriginServerTS: spec.AsTimestamp(time.Now()), PDUs: []json.RawMessage{known},
		})
		if err != nil {
			t.Fatalf("replay: %v", err)
		}
		first, _ := json.Marshal(res)
		second, _ := json.Marshal(again)
		if string(first) != string(second) {
			t.Fatalf("replay answered %s, first answer was %s", second, first)
		}
		if got := inbox.received(); len(got) != 1 {
			t.Fatalf("the replay was processed again: inbox has %v", got)
		}
	})
}

func TestSendDispatchesToDeviceEDUs(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		td := &recordingToDevice{}
		a.api.ToDevice = td
		edus := []map[string]any{
			{"edu_type": "m.direct_to_device", "content": map[string]any{
				"sender": "@bob:b.test", "type": "m.room_key_request", "message_id": "m1",
				"messages": map[string]any{"@alice:a.test": map[string]any{"DEV": map[string]any{"k": "v"}}},
			}},
			// A sender of another server is refused (not delivered).
			{"edu_type": "m.direct_to_device", "content": map[string]any{
				"sender": "@mallory:c.test", "type": "x", "message_id": "m2",
				"messages": map[string]any{"@alice:a.test": map[string]any{"*": map[string]any{}}},
			}},
			{"edu_type": "m.typing", "content": map[string]any{"room_id": "!r:b.test"}},
			{"no_type": true},
		}
		status, body := a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", "/_matrix/federation/v1/send/edus",
			map[string]any{"pdus": []any{}, "edus": edus}, a.addr))
		if status != http.StatusOK {
			t.Fatalf("got %d %v", status, body)
		}
		if len(td.got) != 1 || td.got[0] != "@bob:b.test m.room_key_request m1 @alice:a.test/DEV" {
			t.Fatalf("to-device receiver got %v", td.got)
		}
	})
}

type recordingToDevice struct{ got []string }

func (r *recordingToDevice) ReceiveToDevice(_ context.Context, _ spec.ServerName, sender, evType, msgID string, msgs map[string]map[string]json.RawMessage) error {
	for user, devs := range msgs {
		for dev := range devs {
			r.got = append(r.got, fmt.Sprintf("%s %s %s %s/%s", sender, evType, msgID, user, dev))
		}
	}
	return nil
}

func eventIDOf(t *testing.T, version gomatrixserverlib.RoomVersion, pdu json.RawMessage) string {
	t.Helper()
	ev, err := gomatrixserverlib.MustGetRoomVersion(version).NewEventFromUntrustedJSON(pdu)
	if err != nil {
		t.Fatal(err)
	}
	return ev.EventID()
}

func TestFederationErrorsAreMatrixJSON(t *testing.T) {
	ca := fedtest.NewCA(t)
	nodes := newNodes(t, ca, openSQLite, "a.test", "b.test")
	a, b := nodes[0], nodes[1]
	a.api.MaxBodyBytes = 1024
	big := map[string]any{"pdus": []any{}, "padding": strings.Repeat("x", 2048)}
	cases := []struct {
		name   string
		req    *http.Request
		status int
		code   string
	}{
		{"a body over the limit is 413 M_TOO_LARGE",
			fedtest.SignedRequest(t, b.key, http.MethodPut, "a.test", "/_matrix/federation/v1/send/big", big, a.addr), 413, "M_TOO_LARGE"},
		{"an unknown path is 404 M_UNRECOGNIZED",
			a.rawRequest(t, http.MethodGet, "/_matrix/federation/v1/nope", nil), 404, "M_UNRECOGNIZED"},
		{"a wrong method is 405 M_UNRECOGNIZED",
			a.rawRequest(t, http.MethodGet, "/_matrix/federation/v1/send/x", nil), 405, "M_UNRECOGNIZED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body := a.do(t, c.req)
			if status != c.status || body["errcode"] != c.code {
				t.Fatalf("got %d %v, want %d %s", status, body, c.status, c.code)
			}
		})
	}
}

func TestToDeviceFuncPassesTheMessageIDAsTxnID(t *testing.T) {
	var got []string
	f := ToDeviceFunc(func(_ context.Context, sender, senderDev, evType, txn string, msgs map[string]map[string]json.RawMessage) error {
		got = append(got, fmt.Sprintf("%s|%s|%s|%s|%d", sender, senderDev, evType, txn, len(msgs)))
		return nil
	})
	msgs := map[string]map[string]json.RawMessage{"@a:a.test": {"D": json.RawMessage(`{}`)}}
	if err := f.ReceiveToDevice(t.Context(), "b.test", "@b:b.test", "m.x", "mid", msgs); err != nil {
		t.Fatal(err)
	}
	if err := f.ReceiveToDevice(t.Context(), "b.test", "@b:b.test", "m.x", "", msgs); err == nil {
		t.Error("an EDU without message_id was accepted")
	}
	if fmt.Sprint(got) != "[@b:b.test||m.x|mid|1]" {
		t.Fatalf("got %v", got)
	}
}

// countingKeyStore counts server key reads of a real store.
type countingKeyStore struct {
	storage.FederationStore
	reads int
}

func (c *countingKeyStore) ServerKeys(ctx context.Context, ids []storage.ServerKeyID) (map[storage.ServerKeyID]storage.ServerKey, error) {
	c.reads++
	return c.FederationStore.ServerKeys(ctx, ids)
}

func TestKeyDatabaseKeepsStoredKeysInMemoryUntilTheyAreRefreshed(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ctx := t.Context()
		peer, _ := signing.LoadOrCreate("peer.test", t.TempDir())
		own, _ := signing.LoadOrCreate("own.test", t.TempDir())
		store := &countingKeyStore{FederationStore: open(t).Federation()}
		db := &KeyDatabase{Store: store, Key: own}
		req := gomatrixserverlib.PublicKeyLookupRequest{ServerName: "peer.test", KeyID: peer.KeyID}
		valid := spec.AsTimestamp(time.Now().Add(time.Hour))
		if err := db.StoreKeys(ctx, map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{
			req: {VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(peer.Public())}, ValidUntilTS: valid},
		}); err != nil {
			t.Fatal(err)
		}
		fetch := func() gomatrixserverlib.PublicKeyLookupResult {
			t.Helper()
			res, err := db.FetchKeys(ctx, map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp{req: spec.AsTimestamp(time.Now())})
			if err != nil {
				t.Fatal(err)
			}
			r, ok := res[req]
			if !ok {
				t.Fatal("the stored key was not found")
			}
			return r
		}
		for i := 0; i < 3; i++ {
			if r := fetch(); r.ValidUntilTS != valid {
				t.Fatalf("valid_until_ts = %d, want %d", r.ValidUntilTS, valid)
			}
		}
		if store.reads != 1 {
			t.Fatalf("the store was read %d times for three lookups, want once", store.reads)
		}
		// A refresh reaches the next lookup.
		later := spec.AsTimestamp(time.Now().Add(2 * time.Hour))
		if err := db.StoreKeys(ctx, map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{
			req: {VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(peer.Public())}, ValidUntilTS: later},
		}); err != nil {
			t.Fatal(err)
		}
		if r := fetch(); r.ValidUntilTS != later {
			t.Fatalf("after a refresh valid_until_ts = %d, want %d", r.ValidUntilTS, later)
		}
	})
}
