package fedtest

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/signing"
)

// SignedRequest builds a request from key's server to destination, signed
// with X-Matrix, sent to addr (host:port of the destination's federation
// listener). content nil means no body.
func SignedRequest(t testing.TB, key signing.Key, method string, destination spec.ServerName, path string, content any, addr string) *http.Request {
	t.Helper()
	fr := fclient.NewFederationRequest(method, key.ServerName, destination, path)
	if content != nil {
		if err := fr.SetContent(content); err != nil {
			t.Fatalf("request content: %v", err)
		}
	}
	if err := fr.Sign(key.ServerName, key.KeyID, key.Private); err != nil {
		t.Fatalf("signing: %v", err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Scheme = "https"
	req.URL.Host = addr
	req.Host = string(destination)
	return req
}

// Event builds a signed room event of key's server in a room of version.
func Event(t testing.TB, key signing.Key, version gomatrixserverlib.RoomVersion, roomID, evType string, content any, depth int64) json.RawMessage {
	t.Helper()
	c, err := json.Marshal(content)
	if err != nil {
		t.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(version)
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID:   "@alice:" + string(key.ServerName),
		RoomID:     roomID,
		Type:       evType,
		Content:    c,
		Depth:      depth,
		PrevEvents: []string{},
		AuthEvents: []string{},
	}
	ev, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), key.ServerName, key.KeyID, key.Private)
	if err != nil {
		t.Fatalf("building an event: %v", err)
	}
	return ev.JSON()
}
