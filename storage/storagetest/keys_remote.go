package storagetest

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/trustcase/node/storage"
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

// testKeysRemoteDeviceListCache: a remote user's cached device list follows
// its server's updates in order, and is dropped when one shows a gap.
func testKeysRemoteDeviceListCache(t *testing.T, open Opener) {
	ks := open(t).Keys()
	ctx := t.Context()
	const u = "@r:remote"
	latest := func() int64 {
		ids, err := ks.DeviceListStreamIDs(ctx, u, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) == 0 {
			return 0
		}
		return ids[0]
	}
	cached := func() (storage.RemoteDeviceList, bool) {
		got, err := ks.RemoteDeviceLists(ctx, []string{u, "@other:remote"})
		if err != nil {
			t.Fatal(err)
		}
		l, ok := got[u]
		if len(got) > 1 {
			t.Fatalf("lists for users never cached: %v", got)
		}
		return l, ok
	}
	if _, ok := cached(); ok {
		t.Fatal("a list is cached before any was stored")
	}
	list := storage.RemoteDeviceList{
		UserID: u, StreamID: 5, MasterKey: json.RawMessage(`{"m":1}`),
		Devices: map[string]storage.RemoteDevice{"D1": {Keys: json.RawMessage(`{"d":1}`), DisplayName: "phone"}},
	}
	p0 := latest()
	if err := ks.AddDeviceListChange(ctx, u); err != nil {
		t.Fatal(err)
	}
	if stored, err := ks.CacheRemoteDeviceList(ctx, list, p0); err != nil || stored {
		t.Fatalf("caching over a newer change: stored %v, %v", stored, err)
	}
	if stored, err := ks.CacheRemoteDeviceList(ctx, list, latest()); err != nil || !stored {
		t.Fatalf("caching: stored %v, %v", stored, err)
	}
	l, ok := cached()
	if !ok || l.StreamID != 5 || string(l.MasterKey) != `{"m":1}` || l.SelfSigningKey != nil ||
		len(l.Devices) != 1 || string(l.Devices["D1"].Keys) != `{"d":1}` || l.Devices["D1"].DisplayName != "phone" {
		t.Fatalf("cached list = %+v", l)
	}

	apply := func(up storage.RemoteDeviceUpdate, want int) {
		t.Helper()
		up.UserID = u
		before := latest()
		got, err := ks.ApplyRemoteDeviceUpdate(ctx, up)
		if err != nil || got != want {
			t.Fatalf("update %+v: outcome %d, %v; want %d", up, got, err, want)
		}
		if moved := latest() != before; moved != (want != storage.RemoteUpdateNotCached && up.StreamID > l.StreamID) {
			t.Fatalf("update %+v: device-list change added = %v", up, moved)
		}
	}
	apply(storage.RemoteDeviceUpdate{DeviceID: "D2", StreamID: 6, PrevIDs: []int64{5}, Keys: json.RawMessage(`{"d":2}`)}, storage.RemoteUpdateApplied)
	if l, _ = cached(); l.StreamID != 6 || len(l.Devices) != 2 || string(l.Devices["D2"].Keys) != `{"d":2}` {
		t.Fatalf("after adding D2: %+v", l)
	}
	apply(storage.RemoteDeviceUpdate{DeviceID: "D2", StreamID: 6, PrevIDs: []int64{5}, Deleted: true}, storage.RemoteUpdateApplied) // seen already
	if l, _ = cached(); len(l.Devices) != 2 {
		t.Fatalf("a repeated update changed the list: %+v", l)
	}
	apply(storage.RemoteDeviceUpdate{DeviceID: "D1", StreamID: 7, PrevIDs: []int64{6}, Deleted: true}, storage.RemoteUpdateApplied)
	if l, _ = cached(); l.StreamID != 7 || len(l.Devices) != 1 || l.Devices["D1"].Keys != nil {
		t.Fatalf("after deleting D1: %+v", l)
	}
	p1 := latest()
	if ok, err := ks.UpdateRemoteSigningKeys(ctx, u, json.RawMessage(`{"m":2}`), nil); err != nil || !ok {
		t.Fatalf("signing keys update: %v, %v", ok, err)
	}
	if l, _ = cached(); string(l.MasterKey) != `{"m":2}` || l.SelfSigningKey != nil || latest() == p1 {
		t.Fatalf("after a signing-key update: %+v (position %d → %d)", l, p1, latest())
	}
	// An update that skips one: the list is dropped.
	apply(storage.RemoteDeviceUpdate{DeviceID: "D3", StreamID: 9, PrevIDs: []int64{8}, Keys: json.RawMessage(`{}`)}, storage.RemoteUpdateGap)
	if _, ok := cached(); ok {
		t.Fatal("the list is still cached after a gap")
	}
	l = storage.RemoteDeviceList{}
	apply(storage.RemoteDeviceUpdate{DeviceID: "D3", StreamID: 10, PrevIDs: []int64{9}}, storage.RemoteUpdateNotCached)
	if ok, err := ks.UpdateRemoteSigningKeys(ctx, u, json.RawMessage(`{}`), nil); err != nil || ok {
		t.Fatalf("signing keys of an uncached user: %v, %v", ok, err)
	}
	// Dropping forgets the list.
	if stored, err := ks.CacheRemoteDeviceList(ctx, list, latest()); err != nil || !stored {
		t.Fatal(stored, err)
	}
	if err := ks.DropRemoteDeviceList(ctx, u); err != nil {
		t.Fatal(err)
	}
	if _, ok := cached(); ok {
		t.Fatal("the list is cached after DropRemoteDeviceList")
	}
}

// testKeysRemoteDeviceListMembership: a cached list is not used after a
// membership change in a room its user is in (the user's server may have
// stopped sending updates meanwhile), until it is cached again.
func testKeysRemoteDeviceListMembership(t *testing.T, open Opener) {
	db := open(t)
	ks, rs := db.Keys(), db.Rooms()
	ctx := t.Context()
	const alice, remote, carol = "@alice:a.test", "@r:remote", "@carol:a.test"
	w := &roomWriter{roomID: "!k:a.test"}
	create := w.ev("m.room.create", sptr(""), alice, `{"room_version":"11"}`)
	create.NewRoom = &storage.NewRoom{Version: "11"}
	evs := []storage.NewEvent{create, w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`),
		w.ev("m.room.member", sptr(remote), remote, `{"membership":"join"}`)}
	if _, err := rs.PersistEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	list := storage.RemoteDeviceList{UserID: remote, StreamID: 3, Devices: map[string]storage.RemoteDevice{"D": {Keys: json.RawMessage(`{}`)}}}
	isCached := func() bool {
		got, err := ks.RemoteDeviceLists(ctx, []string{remote})
		if err != nil {
			t.Fatal(err)
		}
		_, ok := got[remote]
		return ok
	}
	if stored, err := ks.CacheRemoteDeviceList(ctx, list, 0); err != nil || !stored || !isCached() {
		t.Fatalf("caching: %v %v", stored, err)
	}
	// A message is no membership change.
	if _, err := rs.PersistEvents(ctx, []storage.NewEvent{w.ev("m.room.message", nil, alice, `{"body":"x"}`)}); err != nil {
		t.Fatal(err)
	}
	if !isCached() {
		t.Fatal("a message invalidated the cached list")
	}
	if _, err := rs.PersistEvents(ctx, []storage.NewEvent{w.ev("m.room.member", sptr(carol), carol, `{"membership":"join"}`)}); err != nil {
		t.Fatal(err)
	}
	if isCached() {
		t.Fatal("the list fetched before a membership change is still used")
	}
	if stored, err := ks.CacheRemoteDeviceList(ctx, list, 0); err != nil || !stored || !isCached() {
		t.Fatalf("caching again: %v %v", stored, err)
	}
}
