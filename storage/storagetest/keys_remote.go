package storagetest

import (
	"encoding/json"
	"reflect"
	"testing"
)

// testKeysRemoteDeviceList: a remote user's device-list change joins the
// device-list stream, and a user's stream ids come newest first.
func testKeysRemoteDeviceList(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	if ids, err := ks.DeviceListStreamIDs(ctx, "@r:remote", 2); err != nil || len(ids) != 0 {
		t.Fatalf("stream ids before any change = %v, %v", ids, err)
	}
	p0, err := ks.DeviceListPosition(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.AddDeviceListChange(ctx, "@r:remote"); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.UploadKeys(ctx, "@a:x", "DEV", json.RawMessage(`{"device_id":"DEV"}`), nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := ks.AddDeviceListChange(ctx, "@r:remote"); err != nil {
		t.Fatal(err)
	}
	p1, err := ks.DeviceListPosition(ctx)
	if err != nil || p1 != p0+3 {
		t.Fatalf("position %d after three changes from %d (%v)", p1, p0, err)
	}
	ids, err := ks.DeviceListStreamIDs(ctx, "@r:remote", 5)
	if err != nil || !reflect.DeepEqual(ids, []int64{p0 + 3, p0 + 1}) {
		t.Fatalf("stream ids = %v, %v; want [%d %d]", ids, err, p0+3, p0+1)
	}
	if ids, _ := ks.DeviceListStreamIDs(ctx, "@r:remote", 1); !reflect.DeepEqual(ids, []int64{p0 + 3}) {
		t.Fatalf("latest stream id = %v", ids)
	}
	changed, _, err := ks.DeviceListChanges(ctx, "@r:remote", p0, p1, 0, 0)
	if err != nil || !reflect.DeepEqual(changed, []string{"@r:remote"}) {
		t.Fatalf("changes = %v, %v", changed, err)
	}
}
