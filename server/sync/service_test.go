package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	stdsync "sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage/sqlite"
)

// extras stands in for the account-data and E2EE services (their real
// implementations live in server/accountdata and server/keys and are tested
// there); it lets these tests check how /sync assembles their sections.
type extras struct {
	mu        stdsync.Mutex
	adPos     int64
	tdPos     int64
	dlPos     int64
	global    []json.RawMessage
	toDevice  []json.RawMessage
	changed   []string
	tdFromArg int64
	tdCalls   int // ToDeviceSince calls
	builds    int // KeyCounts calls: one per build
}

func (e *extras) AccountDataPosition(context.Context) (int64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.adPos, nil
}
func (e *extras) AccountDataSince(_ context.Context, _ string, from, to int64) ([]json.RawMessage, map[string][]json.RawMessage, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if from >= to {
		return nil, nil, nil
	}
	return e.global, nil, nil
}
func (e *extras) EphemeralPosition(context.Context) (int64, error) { return 0, nil }
func (e *extras) EphemeralSince(context.Context, string, []string, int64, int64) (map[string][]json.RawMessage, error) {
	return nil, nil
}
func (e *extras) ToDevicePosition(context.Context) (int64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tdPos, nil
}
func (e *extras) DeviceListPosition(context.Context) (int64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dlPos, nil
}

// ToDeviceSince treats toDevice[i] as the message at position i+1.
func (e *extras) ToDeviceSince(_ context.Context, _, _ string, from, to int64, limit int) ([]json.RawMessage, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.tdFromArg = from
	e.tdCalls++
	var out []json.RawMessage
	for i, m := range e.toDevice {
		if pos := int64(i + 1); pos > from && pos <= to && len(out) < limit {
			out = append(out, m)
		}
	}
	return out, nil
}
func (e *extras) DeviceListChanges(_ context.Context, _ string, from, to int64) ([]string, []string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if from >= to {
		return nil, nil, nil
	}
	return e.changed, nil, nil
}
func (e *extras) KeyCounts(context.Context, string, string) (map[string]int, []string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.builds++
	return map[string]int{"signed_curve25519": 7}, []string{"signed_curve25519"}, nil
}

func newTestService(t *testing.T, e *extras) (*Service, *Notifier) {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetOutput(io.Discard)
	n := NewNotifier()
	var ad AccountData
	var e2ee E2EE
	if e != nil {
		ad, e2ee = e, e
	}
	return New(db.Sync(), n, ad, e2ee, log), n
}

func TestSyncLongPoll(t *testing.T) {
	t.Run("a cancelled long-poll returns and leaves no waiter behind", func(t *testing.T) {
		svc, n := newTestService(t, nil)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := svc.Sync(ctx, Request{UserID: "@a:x", DeviceID: "D", Since: Token{}.String(), Timeout: time.Hour})
			done <- err
		}()
		cancel()
		select {
		case err := <-done:
			// Cancelled while waiting it answers empty; cancelled while
			// reading the database it reports the cancellation.
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled sync: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a cancelled long-poll did not return")
		}
		if l := n.listeners(); l != 0 {
			t.Fatalf("%d waiters left after the request ended", l)
		}
	})

	t.Run("to-device messages, device lists and account data wake and fill the sync", func(t *testing.T) {
		e := &extras{}
		svc, n := newTestService(t, e)
		first, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D"})
		if err != nil {
			t.Fatal(err)
		}
		if first.OTKCounts["signed_curve25519"] != 7 || len(first.FallbackTypes) != 1 {
			t.Fatalf("key counts = %v %v", first.OTKCounts, first.FallbackTypes)
		}
		done := make(chan *Response, 1)
		go func() {
			resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: first.NextBatch, Timeout: time.Minute})
			if err != nil {
				t.Error(err)
			}
			done <- resp
		}()
		// Commit, then wake (as the keys and account-data services do).
		e.mu.Lock()
		e.tdPos, e.dlPos, e.adPos = 1, 2, 5
		e.toDevice = []json.RawMessage{json.RawMessage(`{"type":"m.room_key","sender":"@b:x","content":{}}`)}
		e.changed = []string{"@b:x"}
		e.global = []json.RawMessage{json.RawMessage(`{"type":"m.direct","content":{}}`)}
		e.mu.Unlock()
		n.Wake("@a:x")
		var resp *Response
		select {
		case resp = <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the wake did not end the long-poll")
		}
		if len(resp.ToDevice.Events) != 1 || len(resp.DeviceLists.Changed) != 1 || len(resp.AccountData.Events) != 1 {
			t.Fatalf("sections: to_device %d, device_lists.changed %v, account_data %d",
				len(resp.ToDevice.Events), resp.DeviceLists.Changed, len(resp.AccountData.Events))
		}
		tok, err := ParseToken(resp.NextBatch)
		if err != nil || tok.ToDevice != 1 || tok.DeviceLists != 2 || tok.AccountData != 5 {
			t.Fatalf("next_batch %q = %+v, %v", resp.NextBatch, tok, err)
		}
		// The next sync tells the E2EE service what the client has seen.
		if _, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: resp.NextBatch}); err != nil {
			t.Fatal(err)
		}
		if e.tdFromArg != 1 {
			t.Errorf("ToDeviceSince from = %d, want 1 (the acknowledged position)", e.tdFromArg)
		}
	})

	t.Run("a to-device queue longer than a batch is delivered over several syncs without loss", func(t *testing.T) {
		e := &extras{}
		total := 2*maxToDevice + 37
		for i := 0; i < total; i++ {
			e.toDevice = append(e.toDevice, json.RawMessage(fmt.Sprintf(`{"type":"m.test","content":{"n":%d}}`, i)))
		}
		e.tdPos = int64(total)
		svc, _ := newTestService(t, e)
		since := ""
		var got []json.RawMessage
		for i := 0; i < 10 && len(got) < total; i++ {
			resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: since})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.ToDevice.Events) > maxToDevice {
				t.Fatalf("a batch of %d messages", len(resp.ToDevice.Events))
			}
			got = append(got, resp.ToDevice.Events...)
			since = resp.NextBatch
		}
		if len(got) != total {
			t.Fatalf("delivered %d of %d messages", len(got), total)
		}
		for i, m := range got {
			if want := fmt.Sprintf(`{"type":"m.test","content":{"n":%d}}`, i); string(m) != want {
				t.Fatalf("message %d = %s", i, m)
			}
		}
	})

	t.Run("a filter hides account data types", func(t *testing.T) {
		e := &extras{adPos: 1, global: []json.RawMessage{
			json.RawMessage(`{"type":"m.direct","content":{}}`), json.RawMessage(`{"type":"m.push_rules","content":{}}`)}}
		svc, _ := newTestService(t, e)
		resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Filter: `{"account_data":{"not_types":["m.push_rules"]}}`})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.AccountData.Events) != 1 {
			t.Fatalf("account data = %s", resp.AccountData.Events)
		}
	})

	t.Run("without the extra services every section is present and empty", func(t *testing.T) {
		svc, _ := newTestService(t, nil)
		resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D"})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(resp)
		var m map[string]json.RawMessage
		_ = json.Unmarshal(raw, &m)
		for _, k := range []string{"next_batch", "rooms", "account_data", "presence", "to_device", "device_lists",
			"device_one_time_keys_count", "device_unused_fallback_key_types"} {
			if v, ok := m[k]; !ok || string(v) == "null" {
				t.Errorf("%s missing or null in %s", k, raw)
			}
		}
	})
	t.Run("a long-poll from the current position waits for a wake before building, and ends at its timeout", func(t *testing.T) {
		e := &extras{}
		svc, n := newTestService(t, e)
		first, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D"})
		if err != nil {
			t.Fatal(err)
		}
		// Nothing new: the long-poll ends at its timeout (once, not
		// waiting again) and still carries the key counts.
		e.mu.Lock()
		e.builds = 0
		e.mu.Unlock()
		resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: first.NextBatch, Timeout: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if resp.NextBatch != first.NextBatch || resp.OTKCounts["signed_curve25519"] != 7 {
			t.Fatalf("timed-out long-poll: next_batch %s (want %s), counts %v", resp.NextBatch, first.NextBatch, resp.OTKCounts)
		}
		e.mu.Lock()
		builds := e.builds
		e.builds = 0
		e.mu.Unlock()
		if builds != 1 {
			t.Fatalf("a timed-out long-poll built %d responses, want 1 (at the timeout)", builds)
		}

		done := make(chan *Response, 1)
		go func() {
			resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: first.NextBatch, Timeout: time.Minute})
			if err != nil {
				t.Error(err)
			}
			done <- resp
		}()
		for n.listeners() == 0 { // the long-poll is waiting
			time.Sleep(time.Millisecond)
		}
		e.mu.Lock()
		e.adPos = 3
		e.global = []json.RawMessage{json.RawMessage(`{"type":"m.direct","content":{}}`)}
		e.mu.Unlock()
		n.Wake("@a:x")
		select {
		case resp = <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the wake did not end the long-poll")
		}
		if len(resp.AccountData.Events) != 1 {
			t.Fatalf("account data after the wake: %s", resp.AccountData.Events)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.builds != 1 {
			t.Fatalf("a long-poll woken once built %d responses, want 1", e.builds)
		}
	})

	t.Run("an unmoved to-device stream is read once per acknowledged position", func(t *testing.T) {
		e := &extras{tdPos: 1, toDevice: []json.RawMessage{json.RawMessage(`{"type":"m.test","content":{}}`)}}
		svc, n := newTestService(t, e)
		first, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D"})
		if err != nil || len(first.ToDevice.Events) != 1 {
			t.Fatalf("initial sync: %v, to_device %s", err, first.ToDevice.Events)
		}
		// The next syncs acknowledge position 1: the first deletes, the
		// others have nothing to ask for until the stream moves.
		for i := 0; i < 3; i++ {
			resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: first.NextBatch})
			if err != nil || len(resp.ToDevice.Events) != 0 {
				t.Fatalf("sync %d: %v, to_device %s", i, err, resp.ToDevice.Events)
			}
		}
		e.mu.Lock()
		if e.tdCalls != 2 || e.tdFromArg != 1 {
			t.Fatalf("ToDeviceSince called %d times (last from %d), want 2 (the initial sync, then the acknowledgement of 1)", e.tdCalls, e.tdFromArg)
		}
		e.tdPos = 2
		e.toDevice = append(e.toDevice, json.RawMessage(`{"type":"m.test2","content":{}}`))
		e.mu.Unlock()
		n.Wake("@a:x")
		resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: first.NextBatch})
		if err != nil || len(resp.ToDevice.Events) != 1 {
			t.Fatalf("after the stream moved: %v, to_device %s", err, resp.ToDevice.Events)
		}
	})
	t.Run("a long-poll from the device's last answer waits without reading the streams; a wake in between is not lost", func(t *testing.T) {
		e := &extras{}
		svc, n := newTestService(t, e)
		first, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D"})
		if err != nil {
			t.Fatal(err)
		}
		// Committed and woken between the answer and the next long-poll:
		// the long-poll answers at once.
		e.mu.Lock()
		e.adPos = 1
		e.global = []json.RawMessage{json.RawMessage(`{"type":"m.direct","content":{}}`)}
		e.mu.Unlock()
		n.Wake("@a:x")
		resp, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: first.NextBatch, Timeout: time.Minute})
		if err != nil || len(resp.AccountData.Events) != 1 {
			t.Fatalf("long-poll after a wake: %v, account data %s", err, resp.AccountData.Events)
		}
		// A to-device queue longer than a batch: the partial answer is not
		// current, the next long-poll gets the rest at once.
		e.mu.Lock()
		for i := 0; i < maxToDevice+5; i++ {
			e.toDevice = append(e.toDevice, json.RawMessage(`{"type":"m.test","content":{}}`))
		}
		e.tdPos = int64(len(e.toDevice))
		e.mu.Unlock()
		n.Wake("@a:x")
		part, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: resp.NextBatch, Timeout: time.Minute})
		if err != nil || len(part.ToDevice.Events) != maxToDevice {
			t.Fatalf("first batch: %v, %d messages", err, len(part.ToDevice.Events))
		}
		rest, err := svc.Sync(t.Context(), Request{UserID: "@a:x", DeviceID: "D", Since: part.NextBatch, Timeout: time.Minute})
		if err != nil || len(rest.ToDevice.Events) != 5 {
			t.Fatalf("rest: %v, %d messages", err, len(rest.ToDevice.Events))
		}
	})
	t.Run("concurrent syncs share position reads but never see a position older than their call", func(t *testing.T) {
		e := &extras{}
		svc, _ := newTestService(t, e)
		var wg stdsync.WaitGroup
		errs := make(chan error, 16)
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					e.mu.Lock()
					e.adPos++
					want := e.adPos
					e.mu.Unlock()
					tok, err := svc.positions(t.Context())
					if err == nil && tok.AccountData < want {
						err = fmt.Errorf("position %d read after %d was committed", tok.AccountData, want)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})
}
