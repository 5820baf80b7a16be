package keys

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

// fedNet connects keys services of several server names in-process: each
// service's RemoteKeys calls the other service's federation answers (real
// code and stores on both sides, no HTTP), and queued EDUs are recorded.
type fedNet struct {
	mu       sync.Mutex
	services map[string]*Service
	down     map[string]bool // servers that refuse every request
	slow     map[string]bool // servers that never answer
	edus     []sentEDU
}

type sentEDU struct {
	origin, dest, typ string
	content           json.RawMessage
}

func newFedNet() *fedNet {
	return &fedNet{services: map[string]*Service{}, down: map[string]bool{}, slow: map[string]bool{}}
}

// fedPeer is one server's view of the network (its RemoteKeys and EDUQueue).
type fedPeer struct {
	net    *fedNet
	origin string
}

func (p fedPeer) target(ctx context.Context, server string) (*Service, error) {
	p.net.mu.Lock()
	svc, down, slow := p.net.services[server], p.net.down[server], p.net.slow[server]
	p.net.mu.Unlock()
	if slow {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if svc == nil || down {
		return nil, errors.New("connection refused")
	}
	return svc, nil
}

func (p fedPeer) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error) {
	svc, err := p.target(ctx, server)
	if err != nil {
		return nil, err
	}
	ans, err := svc.QueryUserKeys(ctx, spec.ServerName(p.origin), deviceKeys)
	if err != nil {
		return nil, err
	}
	return json.Marshal(ans)
}

func (p fedPeer) ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error) {
	svc, err := p.target(ctx, server)
	if err != nil {
		return nil, err
	}
	ans, err := svc.ClaimUserKeys(ctx, spec.ServerName(p.origin), oneTimeKeys)
	if err != nil {
		return nil, err
	}
	return json.Marshal(ans)
}

func (p fedPeer) UserDevices(ctx context.Context, server, userID string) (json.RawMessage, error) {
	svc, err := p.target(ctx, server)
	if err != nil {
		return nil, err
	}
	ans, err := svc.UserDevices(ctx, spec.ServerName(p.origin), userID)
	if err != nil {
		return nil, err
	}
	return json.Marshal(ans)
}

func (p fedPeer) EnqueueEDU(_ context.Context, destinations []string, eduType string, content any) error {
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	p.net.mu.Lock()
	defer p.net.mu.Unlock()
	for _, d := range destinations {
		p.net.edus = append(p.net.edus, sentEDU{origin: p.origin, dest: d, typ: eduType, content: raw})
	}
	return nil
}

func (n *fedNet) sent(typ string) []sentEDU {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []sentEDU
	for _, e := range n.edus {
		if e.typ == typ {
			out = append(out, e)
		}
	}
	return out
}

// add builds a federating keys service for serverName on its own SQLite store.
func (n *fedNet) add(t *testing.T, serverName string) (*Service, storage.Store, *recordingWaker) {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), serverName+".db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetOutput(io.Discard)
	w := &recordingWaker{}
	peer := fedPeer{net: n, origin: serverName}
	svc := New(db.Keys(), Config{ServerName: serverName}, w, log, WithFederation(peer, peer))
	n.mu.Lock()
	n.services[serverName] = svc
	n.mu.Unlock()
	return svc, db, w
}

func TestKeysQueryAndClaimFanOutToRemoteServers(t *testing.T) {
	net := newFedNet()
	x, xdb, _ := net.add(t, "x")
	y, ydb, _ := net.add(t, "y")
	ctx := t.Context()
	addUser(t, xdb, "@a:x", "ADEV")
	addUser(t, ydb, "@b:y", "BDEV")
	if _, err := x.Upload(ctx, "@a:x", "ADEV", UploadRequest{DeviceKeys: deviceKeys(t, newSigner(t), "@a:x", "ADEV")}); err != nil {
		t.Fatal(err)
	}
	bKeys := deviceKeys(t, newSigner(t), "@b:y", "BDEV")
	if _, err := y.Upload(ctx, "@b:y", "BDEV", UploadRequest{
		DeviceKeys:  bKeys,
		OneTimeKeys: map[string]json.RawMessage{"signed_curve25519:AAA": json.RawMessage(`{"key":"k1"}`)},
	}); err != nil {
		t.Fatal(err)
	}
	net.down["down.example"] = true

	resp, err := x.Query(ctx, "@a:x", map[string][]string{"@a:x": nil, "@b:y": nil, "@c:down.example": nil})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := resp.DeviceKeys["@a:x"]["ADEV"]; !ok {
		t.Fatalf("local keys missing: %v", resp.DeviceKeys)
	}
	got, ok := resp.DeviceKeys["@b:y"]["BDEV"]
	if !ok || !sameKey(got, bKeys) {
		t.Fatalf("remote keys = %s, want %s", got, bKeys)
	}
	if _, ok := resp.Failures["down.example"]; !ok || len(resp.Failures) != 1 {
		t.Fatalf("failures = %v, want down.example only", resp.Failures)
	}

	claimed, err := x.Claim(ctx, map[string]map[string]string{"@b:y": {"BDEV": "signed_curve25519"}, "@c:down.example": {"D": "signed_curve25519"}})
	if err != nil {
		t.Fatal(err)
	}
	if k := claimed.OneTimeKeys["@b:y"]["BDEV"]["signed_curve25519:AAA"]; string(k) != `{"key":"k1"}` {
		t.Fatalf("claimed = %v", claimed.OneTimeKeys)
	}
	if _, ok := claimed.Failures["down.example"]; !ok {
		t.Fatalf("claim failures = %v", claimed.Failures)
	}
	// The one-time key is used up on y.
	if counts, _, _ := y.KeyCounts(ctx, "@b:y", "BDEV"); counts["signed_curve25519"] != 0 {
		t.Fatalf("y still counts %v", counts)
	}
}

func TestKeysQueryListsAServerThatDoesNotAnswerInTimeAsAFailure(t *testing.T) {
	net := newFedNet()
	x, _, _ := net.add(t, "x")
	net.slow["slow.example"] = true
	start := time.Now()
	resp, err := x.QueryWithTimeout(t.Context(), "@a:x", map[string][]string{"@c:slow.example": nil}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("query took %v with a 200ms timeout", took)
	}
	if f := string(resp.Failures["slow.example"]); !strings.Contains(f, "M_UNAVAILABLE") || !strings.Contains(f, "in time") {
		t.Fatalf("failure = %s", f)
	}
}

func TestFederationKeyRequestsRefuseOtherServersUsers(t *testing.T) {
	net := newFedNet()
	x, xdb, _ := net.add(t, "x")
	ctx := t.Context()
	addUser(t, xdb, "@a:x", "ADEV")
	_, err := x.QueryUserKeys(ctx, "y", map[string][]string{"@a:x": nil, "@b:y": nil})
	wantCode(t, err, 403, "M_FORBIDDEN")
	_, err = x.ClaimUserKeys(ctx, "y", map[string]map[string]string{"@b:z": {"D": "signed_curve25519"}})
	wantCode(t, err, 403, "M_FORBIDDEN")
	_, err = x.UserDevices(ctx, "y", "@b:y")
	wantCode(t, err, 403, "M_FORBIDDEN")
}

func TestUserDevicesListsKeysAndStreamID(t *testing.T) {
	net := newFedNet()
	x, xdb, _ := net.add(t, "x")
	ctx := t.Context()
	addUser(t, xdb, "@a:x", "ADEV")
	empty, err := x.UserDevices(ctx, "y", "@a:x")
	if err != nil {
		t.Fatal(err)
	}
	if r := empty.(*UserDevicesResponse); len(r.Devices) != 0 || r.StreamID != 0 {
		t.Fatalf("before keys: %+v", r)
	}
	keys := deviceKeys(t, newSigner(t), "@a:x", "ADEV")
	if _, err := x.Upload(ctx, "@a:x", "ADEV", UploadRequest{DeviceKeys: keys}); err != nil {
		t.Fatal(err)
	}
	got, err := x.UserDevices(ctx, "y", "@a:x")
	if err != nil {
		t.Fatal(err)
	}
	r := got.(*UserDevicesResponse)
	if r.UserID != "@a:x" || r.StreamID <= 0 || len(r.Devices) != 1 || r.Devices[0].DeviceID != "ADEV" || !sameKey(r.Devices[0].Keys, keys) {
		t.Fatalf("user devices = %+v", r)
	}
}

func TestToDeviceCrossesServersOnceAndIsNotRelayed(t *testing.T) {
	net := newFedNet()
	x, xdb, _ := net.add(t, "x")
	y, ydb, yw := net.add(t, "y")
	ctx := t.Context()
	addUser(t, xdb, "@a:x", "ADEV")
	addUser(t, ydb, "@b:y", "BDEV")
	msgs := map[string]map[string]json.RawMessage{
		"@b:y":   {"BDEV": json.RawMessage(`{"ciphertext":"c1"}`)},
		"@c:z":   {"*": json.RawMessage(`{"ciphertext":"c2"}`)},
		"@a:x":   {"ADEV": json.RawMessage(`{"ciphertext":"c3"}`)},
		"@bad":   {"D": json.RawMessage(`{}`)},
		"@c2:z":  {"CDEV": json.RawMessage(`{"ciphertext":"c4"}`)},
		"@e:y":   {},
		"@f:y:1": {"D": json.RawMessage(`{}`)},
	}
	for range 2 { // a client retry with the same txn id
		if err := x.SendToDevice(ctx, "@a:x", "ADEV", "m.room.encrypted", "txn1", msgs); err != nil {
			t.Fatal(err)
		}
	}
	sent := net.sent("m.direct_to_device")
	byDest := map[string][]sentEDU{}
	for _, e := range sent {
		byDest[e.dest] = append(byDest[e.dest], e)
	}
	if len(byDest["y"]) != 2 || len(byDest["z"]) != 2 || len(byDest["y:1"]) != 2 || len(byDest) != 3 {
		t.Fatalf("EDUs by destination: %v", byDest)
	}
	var c struct {
		Sender    string                                `json:"sender"`
		Type      string                                `json:"type"`
		MessageID string                                `json:"message_id"`
		Messages  map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(byDest["z"][0].content, &c); err != nil {
		t.Fatal(err)
	}
	if c.Sender != "@a:x" || c.Type != "m.room.encrypted" || c.MessageID == "" || len(c.Messages) != 2 || string(c.Messages["@c:z"]["*"]) != `{"ciphertext":"c2"}` {
		t.Fatalf("EDU to z = %s", byDest["z"][0].content)
	}
	if string(byDest["y"][0].content) != string(byDest["y"][1].content) {
		t.Fatalf("a retried send changed the EDU:\n%s\n%s", byDest["y"][0].content, byDest["y"][1].content)
	}

	// y receives both copies; its user gets the message once.
	for _, e := range byDest["y"] {
		if err := json.Unmarshal(e.content, &c); err != nil {
			t.Fatal(err)
		}
		if err := y.ReceiveToDevice(ctx, "x", c.Sender, c.Type, c.MessageID, c.Messages); err != nil {
			t.Fatal(err)
		}
	}
	pos, _ := y.ToDevicePosition(ctx)
	got, err := y.ToDeviceSince(ctx, "@b:y", "BDEV", 0, pos, 10)
	if err != nil || len(got) != 1 || !strings.Contains(string(got[0]), `"c1"`) || !strings.Contains(string(got[0]), `"sender":"@a:x"`) {
		t.Fatalf("@b:y got %q, %v", got, err)
	}
	if !yw.has("@b:y") {
		t.Fatal("@b:y was not woken")
	}

	// An EDU naming users of a third server is not relayed; one whose
	// sender is not of the origin is refused.
	before := len(net.sent("m.direct_to_device"))
	if err := y.ReceiveToDevice(ctx, "x", "@a:x", "m.test", "other", map[string]map[string]json.RawMessage{"@c:z": {"D": json.RawMessage(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	if after := len(net.sent("m.direct_to_device")); after != before {
		t.Fatalf("y relayed an inbound EDU (%d → %d EDUs)", before, after)
	}
	if err := y.ReceiveToDevice(ctx, "x", "@mallory:z", "m.test", "m2", map[string]map[string]json.RawMessage{"@b:y": {"BDEV": json.RawMessage(`{}`)}}); err == nil {
		t.Fatal("a sender of another server than the origin was accepted")
	}
	if err := y.ReceiveToDevice(ctx, "x", "@a:x", "m.test", "", map[string]map[string]json.RawMessage{"@b:y": {"BDEV": json.RawMessage(`{}`)}}); err == nil {
		t.Fatal("an EDU without message_id was accepted")
	}
	if got, _ := y.ToDeviceSince(ctx, "@b:y", "BDEV", 0, pos+10, 10); len(got) != 1 {
		t.Fatalf("@b:y has %d messages after refused EDUs, want 1", len(got))
	}
}

func TestInboundDeviceListUpdates(t *testing.T) {
	net := newFedNet()
	x, _, w := net.add(t, "x")
	ctx := t.Context()
	rcv := x.DeviceListEDU()
	p0, _ := x.DeviceListPosition(ctx)
	// A user of another server than the sender: refused.
	if err := rcv.ReceiveEDU(ctx, "y", json.RawMessage(`{"user_id":"@b:z","device_id":"D","stream_id":1}`)); err == nil {
		t.Fatal("an update for a user of another server was accepted")
	}
	if err := x.SigningKeyEDU().ReceiveEDU(ctx, "y", json.RawMessage(`{"user_id":"@b:z","master_key":{"user_id":"@b:z"}}`)); err == nil {
		t.Fatal("a signing-key update for a user of another server was accepted")
	}
	for _, bad := range []string{`{"user_id":"not-a-user"}`, `[]`, `{}`} {
		if err := rcv.ReceiveEDU(ctx, "y", json.RawMessage(bad)); err == nil {
			t.Fatalf("%s was accepted", bad)
		}
	}
	// A user of the sender sharing no room with a local user: ignored.
	if err := rcv.ReceiveEDU(ctx, "y", json.RawMessage(`{"user_id":"@b:y","device_id":"D","stream_id":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := x.SigningKeyEDU().ReceiveEDU(ctx, "y", json.RawMessage(`{"user_id":"@b:y","master_key":{"user_id":"@b:y"}}`)); err != nil {
		t.Fatal(err)
	}
	if p1, _ := x.DeviceListPosition(ctx); p1 != p0 || len(w.woken) != 0 {
		t.Fatalf("an update for a stranger moved the stream (%d → %d) or woke %v", p0, p1, w.woken)
	}
}

func TestDeviceListUpdatesAreNotSentWithoutSharedRooms(t *testing.T) {
	net := newFedNet()
	x, xdb, _ := net.add(t, "x")
	ctx := t.Context()
	addUser(t, xdb, "@a:x", "ADEV")
	if _, err := x.Upload(ctx, "@a:x", "ADEV", UploadRequest{DeviceKeys: deviceKeys(t, newSigner(t), "@a:x", "ADEV")}); err != nil {
		t.Fatal(err)
	}
	if err := x.DeviceRemoved(ctx, "@a:x", "ADEV"); err != nil {
		t.Fatal(err)
	}
	if sent := net.sent("m.device_list_update"); len(sent) != 0 {
		t.Fatalf("updates sent with no room shared: %v", sent)
	}
}
