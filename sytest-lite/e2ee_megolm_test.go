//go:build goolm

package sytest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/crypto/goolm/account"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Megolm rooms end to end through the node, played by mautrix-go's crypto
// machine (OlmMachine over its pure-Go olm) wired as mautrix's cryptohelper
// wires it — sync responses feed the machine (to-device events, device-list
// changes, one-time key counts), member and history-visibility events reach
// it, encrypted timeline events are decrypted — but with in-memory stores
// instead of cryptohelper's cgo SQLite. Each scenario runs on its own node
// and ends by checking that nothing the users said is anywhere the node
// keeps data. (Build tag goolm: CI sets it, see .ci/run.)

// megolmDevice is one logged-in device with its own crypto machine. Its
// sync is driven step by step by the test (a long-poll per step), so a
// scenario decides when a device is offline — or, after startLoop, by
// mautrix's own sync loop, as an application runs it.
type megolmDevice struct {
	name   string
	c      *Client
	ctx    context.Context
	cli    *mautrix.Client
	state  mautrix.StateStore
	mach   *crypto.OlmMachine
	syncer megolmSyncer
	filter string

	loopDone chan struct{} // closed when the sync loop ended (nil: no loop)
	loopErr  error

	mu        sync.Mutex // guards the rest (the loop's goroutine writes them)
	since     string
	last      *mautrix.RespSync
	changed   chan struct{}               // closed and replaced after each sync
	seen      map[id.EventID]*event.Event // m.room.encrypted events from sync
	decrypted map[id.EventID]*event.Event
	pending   map[id.EventID]error // not decrypted yet: the last error
	late      int                  // decrypted only after a later sync brought the key
}

// megolmSyncer is mautrix's DefaultSyncer plus the device's bookkeeping after
// each response; its sync loop ends on the first failure instead of retrying.
type megolmSyncer struct {
	*mautrix.DefaultSyncer
	d *megolmDevice
}

func (s megolmSyncer) ProcessResponse(ctx context.Context, resp *mautrix.RespSync, since string) error {
	if err := s.DefaultSyncer.ProcessResponse(ctx, resp, since); err != nil {
		return err
	}
	s.d.afterSync(ctx, resp)
	return nil
}

func (megolmSyncer) OnFailedSync(_ *mautrix.RespSync, err error) (time.Duration, error) {
	return 0, err
}

func newMegolmDevice(t *testing.T, ctx context.Context, c *Client, name string) *megolmDevice {
	t.Helper()
	logs := &lockedBuffer{}
	log := zerolog.New(logs).With().Timestamp().Str("device", name).Logger().Level(zerolog.DebugLevel)
	t.Cleanup(func() {
		if t.Failed() {
			out := logs.String()
			if len(out) > 40000 {
				out = "…" + out[len(out)-40000:]
			}
			t.Logf("--- mautrix log of %s (%s %s) ---\n%s", name, c.UserID, c.DeviceID, out)
		}
	})
	cli, err := mautrix.NewClient(c.Node.URL, id.UserID(c.UserID), c.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID(c.DeviceID)
	cli.Log = log
	state := mautrix.NewMemoryStateStore()
	cli.StateStore = state
	mach := crypto.NewOlmMachine(cli, &log, crypto.NewMemoryStore(nil), state.(crypto.StateStore))
	if err := mach.Load(ctx); err != nil {
		t.Fatalf("%s: loading the olm account: %v", name, err)
	}
	// Device keys and one-time keys, as cryptohelper does for a new device.
	if err := mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("%s: uploading keys: %v", name, err)
	}
	d := &megolmDevice{
		name: name, c: c, ctx: ctx, cli: cli, state: state, mach: mach,
		changed:   make(chan struct{}),
		seen:      map[id.EventID]*event.Event{},
		decrypted: map[id.EventID]*event.Event{},
		pending:   map[id.EventID]error{},
	}
	d.syncer = megolmSyncer{DefaultSyncer: mautrix.NewDefaultSyncer(), d: d}
	cli.Syncer = d.syncer
	d.syncer.OnSync(mach.ProcessSyncResponse)
	d.syncer.OnEvent(cli.StateStoreSyncHandler)
	d.syncer.OnEventType(event.StateMember, mach.HandleMemberEvent)
	d.syncer.OnEventType(event.StateHistoryVisibility, mach.HandleHistoryVisibility)
	d.syncer.OnEventType(event.EventEncrypted, d.onEncrypted)
	// A timeline limit above what any scenario sends between two syncs, so
	// no message is skipped by a limited timeline.
	f, err := cli.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 100}}})
	if err != nil {
		t.Fatalf("%s: creating a filter: %v", name, err)
	}
	d.filter = f.FilterID
	return d
}

func (d *megolmDevice) userID() id.UserID { return id.UserID(d.c.UserID) }

func (d *megolmDevice) onEncrypted(ctx context.Context, evt *event.Event) {
	if evt.RoomID == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seen[evt.ID] = evt
	d.tryDecrypt(ctx, evt)
}

// tryDecrypt runs with d.mu held.
func (d *megolmDevice) tryDecrypt(ctx context.Context, evt *event.Event) {
	dec, err := d.mach.DecryptMegolmEvent(ctx, evt)
	if err != nil {
		d.pending[evt.ID] = err
		return
	}
	if _, was := d.pending[evt.ID]; was {
		d.late++
		delete(d.pending, evt.ID)
	}
	d.decrypted[evt.ID] = dec
}

// afterSync records a processed response. Events whose key had not arrived
// are retried, as cryptohelper waits for a late room key.
func (d *megolmDevice) afterSync(ctx context.Context, resp *mautrix.RespSync) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.since, d.last = resp.NextBatch, resp
	for evID := range d.pending {
		d.tryDecrypt(ctx, d.seen[evID])
	}
	close(d.changed)
	d.changed = make(chan struct{})
}

// sync does one /sync long-poll and feeds the answer to the machine and the
// handlers.
func (d *megolmDevice) sync(t *testing.T, timeoutMS int) {
	t.Helper()
	d.mu.Lock()
	since := d.since
	d.mu.Unlock()
	resp, err := d.cli.FullSyncRequest(d.ctx, mautrix.ReqSync{Since: since, Timeout: timeoutMS, FilterID: d.filter})
	if err != nil {
		t.Fatalf("%s: /sync: %v", d.name, err)
	}
	if err := d.syncer.ProcessResponse(d.ctx, resp, since); err != nil {
		t.Fatalf("%s: processing /sync: %v", d.name, err)
	}
}

// startLoop hands the device's sync to mautrix's own loop
// (Client.SyncWithContext, 30 s long-polls) from where it is; it stops when
// the test ends.
func (d *megolmDevice) startLoop(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	since := d.since
	d.mu.Unlock()
	store := mautrix.NewMemorySyncStore()
	_ = store.SaveNextBatch(d.ctx, d.userID(), since)
	_ = store.SaveFilterID(d.ctx, d.userID(), d.filter)
	d.cli.Store = store
	ctx, cancel := context.WithCancel(d.ctx)
	d.loopDone = make(chan struct{})
	go func() {
		d.loopErr = d.cli.SyncWithContext(ctx)
		close(d.loopDone)
	}()
	t.Cleanup(func() {
		cancel()
		<-d.loopDone
	})
}

// syncUntil syncs (or, with a sync loop, waits for its syncs) until cond
// holds, failing after 30 s. cond runs with d.mu held.
func (d *megolmDevice) syncUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		d.mu.Lock()
		ok, changed := cond(), d.changed
		d.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s: not within 30s%s", d.name, what, d.pendingReport())
		}
		if d.loopDone == nil {
			d.sync(t, 2000)
			continue
		}
		select {
		case <-changed:
		case <-d.loopDone:
			t.Fatalf("%s: %s: the sync loop ended: %v", d.name, what, d.loopErr)
		case <-time.After(time.Until(deadline)):
		}
	}
}

// lastSync returns the last /sync response processed.
func (d *megolmDevice) lastSync() *mautrix.RespSync {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

func (d *megolmDevice) pendingReport() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("; undecrypted events:")
	for evID, err := range d.pending {
		fmt.Fprintf(&b, "\n  %s: %v", evID, err)
	}
	return b.String()
}

// waitJoined syncs until the room is encrypted and every user is joined, as
// this device's state store sees it.
func (d *megolmDevice) waitJoined(t *testing.T, roomID id.RoomID, users ...id.UserID) {
	t.Helper()
	d.syncUntil(t, fmt.Sprintf("room %s encrypted with %v joined", roomID, users), func() bool {
		if enc, _ := d.state.IsEncrypted(d.ctx, roomID); !enc {
			return false
		}
		for _, u := range users {
			if !d.state.IsMembership(d.ctx, roomID, u, event.MembershipJoin) {
				return false
			}
		}
		return true
	})
}

// send encrypts a text message with the room's Megolm session and sends it,
// first sharing the session with the room's members (their devices, over
// Olm) when there is none or it was invalidated — cryptohelper's Encrypt.
func (d *megolmDevice) send(t *testing.T, roomID id.RoomID, text string) id.EventID {
	t.Helper()
	return d.sendContent(t, roomID, &event.MessageEventContent{MsgType: event.MsgText, Body: text})
}

func (d *megolmDevice) sendContent(t *testing.T, roomID id.RoomID, content *event.MessageEventContent) id.EventID {
	t.Helper()
	enc, err := d.mach.EncryptMegolmEvent(d.ctx, roomID, event.EventMessage, content)
	if errors.Is(err, crypto.ErrNoGroupSession) || errors.Is(err, crypto.ErrSessionExpired) || errors.Is(err, crypto.ErrSessionNotShared) {
		members, merr := d.state.GetRoomJoinedOrInvitedMembers(d.ctx, roomID)
		if merr != nil {
			t.Fatalf("%s: room members: %v", d.name, merr)
		}
		if err := d.mach.ShareGroupSession(d.ctx, roomID, members); err != nil {
			t.Fatalf("%s: sharing the Megolm session: %v", d.name, err)
		}
		enc, err = d.mach.EncryptMegolmEvent(d.ctx, roomID, event.EventMessage, content)
	}
	if err != nil {
		t.Fatalf("%s: encrypting: %v", d.name, err)
	}
	resp, err := d.cli.SendMessageEvent(d.ctx, roomID, event.EventEncrypted, enc)
	if err != nil {
		t.Fatalf("%s: sending the encrypted event: %v", d.name, err)
	}
	return resp.EventID
}

// waitDecrypted syncs until every event in want has been decrypted to its
// text, from a device the machine knows with keys that match the session.
func (d *megolmDevice) waitDecrypted(t *testing.T, want map[id.EventID]string) {
	t.Helper()
	d.syncUntil(t, fmt.Sprintf("decrypting %d messages", len(want)), func() bool {
		for evID := range want {
			if d.decrypted[evID] == nil {
				return false
			}
		}
		return true
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	for evID, text := range want {
		dec := d.decrypted[evID]
		msg := dec.Content.AsMessage()
		if dec.Type != event.EventMessage || msg.Body != text {
			t.Errorf("%s: %s decrypted to %s %q, want m.room.message %q", d.name, evID, dec.Type.Type, msg.Body, text)
		}
		if dec.Mautrix.TrustSource == nil || dec.Mautrix.TrustState == id.TrustStateDeviceKeyMismatch || dec.Mautrix.TrustState == id.TrustStateUnknownDevice {
			t.Errorf("%s: %s decrypted with trust %s: the sender's device keys from the node do not back the session", d.name, evID, dec.Mautrix.TrustState)
		}
	}
}

// assertAllDecryptedExcept fails for any encrypted event this device saw,
// other than those in before, that it could not decrypt.
func (d *megolmDevice) assertAllDecryptedExcept(t *testing.T, before map[id.EventID]bool) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for evID := range d.seen {
		if before[evID] || d.decrypted[evID] != nil {
			continue
		}
		t.Errorf("%s: unable to decrypt %s: %v", d.name, evID, d.pending[evID])
	}
	t.Logf("%s: %d encrypted events seen, %d decrypted (%d only after a later sync brought the key)",
		d.name, len(d.seen), len(d.decrypted), d.late)
}

// uploadFallbackKey generates a fallback key in the machine's olm account
// and uploads it signed (mautrix's machine does not manage fallback keys).
func (d *megolmDevice) uploadFallbackKey(t *testing.T) string {
	t.Helper()
	acc, ok := d.mach.GetAccount().Internal.(*account.Account)
	if !ok {
		t.Fatalf("the olm account is %T, not goolm's", d.mach.GetAccount().Internal)
	}
	if err := acc.GenFallbackKey(); err != nil {
		t.Fatal(err)
	}
	var keyID string
	var key id.Curve25519
	for keyID, key = range acc.FallbackKeyUnpublished() {
	}
	otk := mautrix.OneTimeKey{Key: key, Fallback: true, IsSigned: true}
	sig, err := d.mach.GetAccount().SignJSON(&otk)
	if err != nil {
		t.Fatal(err)
	}
	otk.Signatures = map[id.UserID]map[id.KeyID]string{d.userID(): {id.NewKeyID(id.KeyAlgorithmEd25519, d.c.DeviceID): sig}}
	fullID := "signed_curve25519:" + keyID
	d.c.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
		"fallback_keys": map[string]any{fullID: &otk},
	}, http.StatusOK)
	acc.MarkKeysAsPublished()
	return fullID
}

// megolmRoom creates a private room with m.room.encryption (Megolm) in its
// initial state, has every member join, and waits until all see it whole.
func megolmRoom(t *testing.T, owner *megolmDevice, members ...*megolmDevice) id.RoomID {
	t.Helper()
	var invite []id.UserID
	for _, m := range members {
		invite = append(invite, m.userID())
	}
	emptyKey := ""
	resp, err := owner.cli.CreateRoom(owner.ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		Invite: invite,
		InitialState: []*event.Event{{
			Type:     event.StateEncryption,
			StateKey: &emptyKey,
			Content:  event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
		}},
	})
	if err != nil {
		t.Fatalf("creating the encrypted room: %v", err)
	}
	for _, m := range members {
		if _, err := m.cli.JoinRoomByID(m.ctx, resp.RoomID); err != nil {
			t.Fatalf("%s: joining: %v", m.name, err)
		}
	}
	all := append([]id.UserID{owner.userID()}, invite...)
	for _, d := range append([]*megolmDevice{owner}, members...) {
		d.waitJoined(t, resp.RoomID, all...)
	}
	return resp.RoomID
}

// secret returns a distinctive plaintext.
func secret(who string, i int) string {
	return fmt.Sprintf("megolm secret %s %d %s", who, i, randomString(12))
}

// converse has a send a message that b decrypts, then b one that a
// decrypts, rounds times, and returns the plaintexts and event IDs.
func converse(t *testing.T, roomID id.RoomID, a, b *megolmDevice, rounds int) ([]string, []id.EventID) {
	t.Helper()
	var texts []string
	var ids []id.EventID
	for i := 0; i < rounds; i++ {
		for _, p := range [][2]*megolmDevice{{a, b}, {b, a}} {
			from, to := p[0], p[1]
			text := secret(from.name, i)
			evID := from.send(t, roomID, text)
			to.waitDecrypted(t, map[id.EventID]string{evID: text})
			texts = append(texts, text)
			ids = append(ids, evID)
		}
	}
	return texts, ids
}

func TestE2EEMegolm(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		start := func(t *testing.T) (*Node, context.Context) {
			n := StartNode(t, b)
			c := register(t, n)
			needKeys(t, c)
			needRooms(t, c)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			t.Cleanup(cancel)
			return n, ctx
		}

		t.Run("Two users exchange Megolm messages both ways, and an encrypted file, and decrypt every one", func(t *testing.T) {
			n, ctx := start(t)
			alice := newMegolmDevice(t, ctx, register(t, n), "alice")
			bob := newMegolmDevice(t, ctx, register(t, n), "bob")
			room := megolmRoom(t, alice, bob)

			texts, _ := converse(t, room, alice, bob, 3)
			// A burst each way without waiting in between.
			fromAlice, fromBob := map[id.EventID]string{}, map[id.EventID]string{}
			for i := 0; i < 5; i++ {
				text := secret("alice burst", i)
				fromAlice[alice.send(t, room, text)] = text
				texts = append(texts, text)
				text = secret("bob burst", i)
				fromBob[bob.send(t, room, text)] = text
				texts = append(texts, text)
			}
			bob.waitDecrypted(t, fromAlice)
			alice.waitDecrypted(t, fromBob)

			// An encrypted attachment: the client encrypts the file (its key
			// travels in the Megolm-encrypted event); the node stores and
			// serves ciphertext.
			fileSecret := secret("alice file", 0)
			fileData := []byte(fileSecret + strings.Repeat(" and more of the file", 40))
			ef := attachment.NewEncryptedFile()
			cipherFile := slices.Clone(fileData)
			ef.EncryptInPlace(cipherFile)
			up, err := alice.cli.UploadBytes(ctx, cipherFile, "application/octet-stream")
			if err != nil {
				t.Fatalf("uploading the encrypted file: %v", err)
			}
			fileName := secret("alice filename", 0)
			fileEvent := alice.sendContent(t, room, &event.MessageEventContent{
				MsgType: event.MsgFile, Body: fileName,
				File: &event.EncryptedFileInfo{EncryptedFile: *ef, URL: up.ContentURI.CUString()},
			})
			bob.waitDecrypted(t, map[id.EventID]string{fileEvent: fileName})
			bob.mu.Lock()
			got := bob.decrypted[fileEvent].Content.AsMessage().File
			bob.mu.Unlock()
			if got == nil {
				t.Fatal("the decrypted file event has no file info")
			}
			downloaded, err := bob.cli.DownloadBytes(ctx, got.URL.ParseOrIgnore())
			if err != nil {
				t.Fatalf("downloading the file: %v", err)
			}
			if err := got.DecryptInPlace(downloaded); err != nil || string(downloaded) != string(fileData) {
				t.Fatalf("the downloaded file decrypts to %d bytes (%v), want the %d sent", len(downloaded), err, len(fileData))
			}
			texts = append(texts, fileSecret, fileName)

			alice.assertAllDecryptedExcept(t, nil)
			bob.assertAllDecryptedExcept(t, nil)

			assertNoPlaintext(t, n, []string{string(room), alice.c.UserID}, texts...)
		})

		t.Run("Three clients on mautrix's sync loop all send at once and decrypt every message", func(t *testing.T) {
			n, ctx := start(t)
			all := []*megolmDevice{
				newMegolmDevice(t, ctx, register(t, n), "alice"),
				newMegolmDevice(t, ctx, register(t, n), "bob"),
				newMegolmDevice(t, ctx, register(t, n), "carol"),
			}
			room := megolmRoom(t, all[0], all[1:]...)
			for _, d := range all {
				d.startLoop(t)
			}
			// Each one's first message shares its session while the others'
			// room keys are arriving through the loops.
			sent := map[*megolmDevice]map[id.EventID]string{}
			var texts []string
			for i := 0; i < 4; i++ {
				for _, d := range all {
					if sent[d] == nil {
						sent[d] = map[id.EventID]string{}
					}
					text := secret(d.name, i)
					sent[d][d.send(t, room, text)] = text
					texts = append(texts, text)
				}
			}
			for _, d := range all {
				want := map[id.EventID]string{}
				for _, from := range all {
					if from != d {
						maps.Copy(want, sent[from])
					}
				}
				d.waitDecrypted(t, want)
			}
			for _, d := range all {
				d.assertAllDecryptedExcept(t, nil)
			}

			assertNoPlaintext(t, n, []string{string(room), all[0].c.UserID}, texts...)
		})

		t.Run("A user who joins later decrypts what is sent after", func(t *testing.T) {
			n, ctx := start(t)
			alice := newMegolmDevice(t, ctx, register(t, n), "alice")
			bob := newMegolmDevice(t, ctx, register(t, n), "bob")
			room := megolmRoom(t, alice, bob)
			texts, earlier := converse(t, room, alice, bob, 2)

			carol := newMegolmDevice(t, ctx, register(t, n), "carol")
			if _, err := alice.cli.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: carol.userID()}); err != nil {
				t.Fatalf("inviting carol: %v", err)
			}
			if _, err := carol.cli.JoinRoomByID(ctx, room); err != nil {
				t.Fatalf("carol joining: %v", err)
			}
			everyone := []id.UserID{alice.userID(), bob.userID(), carol.userID()}
			for _, d := range []*megolmDevice{carol, alice, bob} {
				d.waitJoined(t, room, everyone...)
			}

			after := map[id.EventID]string{}
			for i := 0; i < 2; i++ {
				for _, from := range []*megolmDevice{alice, bob, carol} {
					text := secret(from.name+" after", i)
					after[from.send(t, room, text)] = text
					texts = append(texts, text)
				}
			}
			for _, d := range []*megolmDevice{alice, bob, carol} {
				others := map[id.EventID]string{}
				for evID, text := range after {
					if !strings.HasPrefix(text, "megolm secret "+d.name+" ") {
						others[evID] = text
					}
				}
				d.waitDecrypted(t, others)
			}
			before := map[id.EventID]bool{}
			for _, evID := range earlier {
				before[evID] = true
			}
			carol.assertAllDecryptedExcept(t, before)
			alice.assertAllDecryptedExcept(t, nil)
			bob.assertAllDecryptedExcept(t, nil)

			assertNoPlaintext(t, n, []string{string(room), carol.c.UserID}, texts...)
		})

		t.Run("A replaced device is re-keyed and the conversation goes on", func(t *testing.T) {
			n, ctx := start(t)
			aliceC, bobC := register(t, n), register(t, n)
			alice := newMegolmDevice(t, ctx, aliceC, "alice")
			bob := newMegolmDevice(t, ctx, bobC, "bob")
			room := megolmRoom(t, alice, bob)
			texts, earlier := converse(t, room, alice, bob, 2)
			before := map[id.EventID]bool{}
			for _, evID := range earlier {
				before[evID] = true
			}

			oldSession, err := alice.mach.CryptoStore.GetOutboundGroupSession(ctx, room)
			if err != nil || oldSession == nil {
				t.Fatalf("alice has no outbound session after talking: %v", err)
			}

			// Bob logs in again: the one-device rule replaces his device,
			// removing its keys. His new device gets new keys.
			bob2 := newMegolmDevice(t, ctx, bobC.Login(t), "bob2")
			if bob2.c.DeviceID == bobC.DeviceID {
				t.Fatalf("the new login kept device %s", bobC.DeviceID)
			}
			bob2.waitJoined(t, room, alice.userID(), bob.userID())

			// Alice learns of it from device_lists in her sync and refetches
			// Bob's devices: only the new one is left.
			alice.syncUntil(t, "seeing bob's device change", func() bool {
				devs, _ := alice.mach.CryptoStore.GetDevices(ctx, bob.userID())
				_, hasNew := devs[id.DeviceID(bob2.c.DeviceID)]
				_, hasOld := devs[id.DeviceID(bobC.DeviceID)]
				return hasNew && !hasOld
			})
			// The change made her machine drop the session Bob's old device
			// had, so her next message goes out under a new one.
			if cur, _ := alice.mach.CryptoStore.GetOutboundGroupSession(ctx, room); cur != nil && cur.ID() == oldSession.ID() {
				t.Fatal("alice still uses the Megolm session shared with bob's old device")
			}
			q := aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/query",
				map[string]any{"device_keys": map[string]any{bobC.UserID: []string{}}}, http.StatusOK)
			var devices []string
			q.Get("device_keys." + gjson.Escape(bobC.UserID)).ForEach(func(k, _ gjson.Result) bool {
				devices = append(devices, k.String())
				return true
			})
			if !slices.Equal(devices, []string{bob2.c.DeviceID}) {
				t.Fatalf("bob's devices with keys = %v, want only the new %s", devices, bob2.c.DeviceID)
			}

			more, _ := converse(t, room, alice, bob2, 3)
			texts = append(texts, more...)
			bob2.assertAllDecryptedExcept(t, before)
			alice.assertAllDecryptedExcept(t, nil)

			assertNoPlaintext(t, n, []string{string(room), bobC.UserID}, texts...)
		})

		t.Run("To-device messages queued before a restart are delivered after it", func(t *testing.T) {
			n, ctx := start(t)
			alice := newMegolmDevice(t, ctx, register(t, n), "alice")
			bob := newMegolmDevice(t, ctx, register(t, n), "bob")
			room := megolmRoom(t, alice, bob)

			// Bob is offline: Alice shares a new session with him (to-device,
			// queued for his device) and sends.
			fromAlice := map[id.EventID]string{}
			var texts []string
			for i := 0; i < 3; i++ {
				text := secret("alice", i)
				fromAlice[alice.send(t, room, text)] = text
				texts = append(texts, text)
			}
			if len(bob.seen) != 0 {
				t.Fatal("bob received messages while not syncing")
			}

			n.Restart(t)
			for _, d := range []*megolmDevice{alice, bob} {
				d.cli.Client.CloseIdleConnections()
			}

			// Bob syncs on from his token: the room key and the messages
			// arrive, and decrypt.
			bob.waitDecrypted(t, fromAlice)
			more, _ := converse(t, room, bob, alice, 1)
			texts = append(texts, more...)
			alice.assertAllDecryptedExcept(t, nil)
			bob.assertAllDecryptedExcept(t, nil)

			assertNoPlaintext(t, n, []string{string(room), alice.c.UserID}, texts...)
		})

		t.Run("One-time key exhaustion falls back to the fallback key", func(t *testing.T) {
			n, ctx := start(t)
			alice := newMegolmDevice(t, ctx, register(t, n), "alice")
			bobC := register(t, n)
			bob := newMegolmDevice(t, ctx, bobC, "bob")
			fallbackID := bob.uploadFallbackKey(t)
			room := megolmRoom(t, alice, bob)
			if !slices.Contains(bob.lastSync().FallbackKeys, id.KeyAlgorithmSignedCurve25519) {
				t.Fatalf("bob's sync: device_unused_fallback_key_types = %v, want signed_curve25519", bob.lastSync().FallbackKeys)
			}

			// Someone claims every one-time key of Bob's device while he is
			// offline (so his machine cannot top them up).
			counts := bobC.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{}, http.StatusOK)
			otks := int(counts.Get("one_time_key_counts.signed_curve25519").Int())
			if otks == 0 {
				t.Fatalf("bob's device has no one-time keys: %s", counts.Raw)
			}
			drainer := register(t, n)
			claim := func() (string, gjson.Result) {
				res := drainer.MustDo(t, "POST", "/_matrix/client/v3/keys/claim", map[string]any{
					"one_time_keys": map[string]any{bobC.UserID: map[string]string{bobC.DeviceID: "signed_curve25519"}},
				}, http.StatusOK)
				var keyID string
				var key gjson.Result
				res.Get("one_time_keys." + gjson.Escape(bobC.UserID) + "." + gjson.Escape(bobC.DeviceID)).ForEach(func(k, v gjson.Result) bool {
					keyID, key = k.String(), v
					return false
				})
				return keyID, key
			}
			claimed := map[string]bool{}
			for i := 0; i < otks; i++ {
				keyID, key := claim()
				if keyID == "" || key.Get("fallback").Bool() || claimed[keyID] {
					t.Fatalf("claim %d of %d: got %q %s (fallback or repeated, while one-time keys remain)", i+1, otks, keyID, key.Raw)
				}
				claimed[keyID] = true
			}
			counts = bobC.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{}, http.StatusOK)
			if c := counts.Get("one_time_key_counts.signed_curve25519").Int(); c != 0 {
				t.Fatalf("after claiming all %d one-time keys the count is %d", otks, c)
			}
			if keyID, key := claim(); keyID != fallbackID || !key.Get("fallback").Bool() {
				t.Fatalf("claim with no one-time keys left: got %q %s, want the fallback key %s", keyID, key.Raw, fallbackID)
			}

			// Alice's machine now claims the fallback key to open its Olm
			// session to Bob's device, and shares the room key over it.
			fromAlice := map[id.EventID]string{}
			var texts []string
			for i := 0; i < 2; i++ {
				text := secret("alice", i)
				fromAlice[alice.send(t, room, text)] = text
				texts = append(texts, text)
			}
			bob.waitDecrypted(t, fromAlice)
			if slices.Contains(bob.lastSync().FallbackKeys, id.KeyAlgorithmSignedCurve25519) {
				t.Errorf("bob's sync after his fallback key was claimed: device_unused_fallback_key_types = %v, want it used", bob.lastSync().FallbackKeys)
			}
			more, _ := converse(t, room, bob, alice, 2)
			texts = append(texts, more...)
			alice.assertAllDecryptedExcept(t, nil)
			bob.assertAllDecryptedExcept(t, nil)

			assertNoPlaintext(t, n, []string{string(room), bobC.UserID}, texts...)
		})
	})
}
