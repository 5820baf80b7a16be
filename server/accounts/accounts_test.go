package accounts

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

const testServer = "a.test"

// removals records DeviceRemoved calls.
type removals struct {
	mu   sync.Mutex
	list []string
}

func (r *removals) DeviceRemoved(_ context.Context, userID, deviceID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, userID+"/"+deviceID)
	return nil
}

func (r *removals) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.list
	r.list = nil
	return out
}

func newService(t *testing.T, mode string, wrap func(storage.AccountStore) storage.AccountStore) (*Service, *removals, *time.Time) {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	var store storage.AccountStore = db.Accounts()
	if wrap != nil {
		store = wrap(store)
	}
	obs := &removals{}
	s := New(store, Config{ServerName: testServer, RegistrationMode: mode}, log, obs)
	now := time.UnixMilli(1_700_000_000_000)
	s.now = func() time.Time { return now }
	return s, obs, &now
}

func register(t *testing.T, s *Service, password string) LoginResult {
	t.Helper()
	res, err := s.Register(t.Context(), Registration{Password: password, UIA: UIARequest{Auth: &AuthDict{Type: stageDummy}, Binding: "reg"}})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	return res
}

func login(t *testing.T, s *Service, user, password, deviceID string) LoginResult {
	t.Helper()
	res, err := s.Login(t.Context(), user, password, deviceID, "")
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	return res
}

func TestDeviceObserverHearsEveryRemovedDevice(t *testing.T) {
	s, obs, _ := newService(t, "open", nil)
	ctx := t.Context()
	first := register(t, s, "pw-1")
	if got := obs.take(); len(got) != 0 {
		t.Fatalf("registration removed devices: %v", got)
	}

	second, err := s.Login(ctx, first.UserID, "pw-1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := obs.take(); !slices.Equal(got, []string{first.UserID + "/" + first.DeviceID}) {
		t.Fatalf("after a new login: %v, want the first device", got)
	}

	// Logging in again with the same device ID keeps the device (and its keys).
	if _, err := s.Login(ctx, first.UserID, "pw-1", second.DeviceID, ""); err != nil {
		t.Fatal(err)
	}
	if got := obs.take(); len(got) != 0 {
		t.Fatalf("re-login with the same device ID removed %v", got)
	}

	third := login(t, s, first.UserID, "pw-1", "THIRD")
	obs.take()
	if err := s.Logout(ctx, &Device{UserID: third.UserID, DeviceID: third.DeviceID}); err != nil {
		t.Fatal(err)
	}
	if got := obs.take(); !slices.Equal(got, []string{third.UserID + "/THIRD"}) {
		t.Fatalf("after logout: %v", got)
	}

	fourth := login(t, s, first.UserID, "pw-1", "FOURTH")
	pw := &AuthDict{Type: stagePassword, User: first.UserID, Password: "pw-1"}
	if err := s.DeleteDevices(ctx, first.UserID, []string{"FOURTH", "NOPE"}, UIARequest{Auth: pw, Binding: "del"}); err != nil {
		t.Fatal(err)
	}
	if got := obs.take(); !slices.Equal(got, []string{fourth.UserID + "/FOURTH"}) {
		t.Fatalf("after delete_devices: %v", got)
	}

	login(t, s, first.UserID, "pw-1", "FIFTH")
	if err := s.Deactivate(ctx, first.UserID, UIARequest{Auth: pw, Binding: "deact"}); err != nil {
		t.Fatal(err)
	}
	if got := obs.take(); !slices.Equal(got, []string{first.UserID + "/FIFTH"}) {
		t.Fatalf("after deactivation: %v", got)
	}
}

func TestUIASessionsExpire(t *testing.T) {
	s, _, now := newService(t, "open", nil)
	ctx := t.Context()
	_, err := s.Register(ctx, Registration{UIA: UIARequest{Binding: "reg"}})
	var ch *Challenge
	if !errors.As(err, &ch) || ch.Session == "" {
		t.Fatalf("first step: %v, want a challenge with a session", err)
	}
	*now = now.Add(uiaLifetime + time.Second)
	_, err = s.Register(ctx, Registration{Password: "pw", UIA: UIARequest{Auth: &AuthDict{Type: stageDummy, Session: ch.Session}, Binding: "reg"}})
	var mx *mxerr.Error
	if !errors.As(err, &mx) || mx.Status != http.StatusBadRequest {
		t.Fatalf("expired session: %v, want 400", err)
	}
}

func TestRegistrationTokensExpire(t *testing.T) {
	s, _, now := newService(t, "token", nil)
	ctx := t.Context()
	tok, err := s.CreateRegistrationToken(ctx, 0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s.RegistrationTokenValid(ctx, tok); err != nil || !ok {
		t.Fatalf("fresh token: %v, %v", ok, err)
	}
	*now = now.Add(2 * time.Hour)
	if ok, _ := s.RegistrationTokenValid(ctx, tok); ok {
		t.Fatal("a token is valid after it expired")
	}
	_, err = s.Register(ctx, Registration{Password: "pw", UIA: UIARequest{Auth: &AuthDict{Type: stageRegToken, Token: tok}, Binding: "reg"}})
	var ch *Challenge
	if !errors.As(err, &ch) || ch.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("register with an expired token: %v, want a challenge with M_FORBIDDEN", err)
	}
}

// conflictOnce makes the first CreateAccount find its ID taken, as a rare
// collision of random IDs would.
type conflictOnce struct {
	storage.AccountStore
	ids []string
}

func (c *conflictOnce) CreateAccount(ctx context.Context, acc storage.Account, reg string, now int64, dev *storage.Device) error {
	c.ids = append(c.ids, acc.UserID)
	if len(c.ids) == 1 {
		return storage.ErrConflict
	}
	return c.AccountStore.CreateAccount(ctx, acc, reg, now, dev)
}

func TestRegistrationRetriesATakenID(t *testing.T) {
	var wrapped *conflictOnce
	s, _, _ := newService(t, "open", func(st storage.AccountStore) storage.AccountStore {
		wrapped = &conflictOnce{AccountStore: st}
		return wrapped
	})
	res := register(t, s, "pw")
	if len(wrapped.ids) != 2 || wrapped.ids[0] == wrapped.ids[1] || res.UserID != wrapped.ids[1] {
		t.Fatalf("attempted IDs %v, registered %s: want a second, different ID", wrapped.ids, res.UserID)
	}
}

func TestProfileForOtherServices(t *testing.T) {
	s, _, _ := newService(t, "open", nil)
	ctx := t.Context()
	u := register(t, s, "pw")
	dev := &Device{UserID: u.UserID, DeviceID: u.DeviceID}
	if name, avatar, err := s.Profile(ctx, u.UserID); err != nil || name != "" || avatar != "" {
		t.Fatalf("empty profile = %q, %q, %v", name, avatar, err)
	}
	if err := s.SetProfileField(ctx, dev, u.UserID, "displayname", []byte(`"enc:Zm9v"`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetProfileField(ctx, dev, u.UserID, "avatar_url", []byte(`"mxc://a.test/x"`)); err != nil {
		t.Fatal(err)
	}
	if name, avatar, err := s.Profile(ctx, u.UserID); err != nil || name != "enc:Zm9v" || avatar != "mxc://a.test/x" {
		t.Fatalf("profile = %q, %q, %v", name, avatar, err)
	}
	for _, id := range []string{"@nobody00:a.test", "@someone:b.test"} {
		if _, _, err := s.Profile(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Profile(%s) err = %v, want storage.ErrNotFound", id, err)
		}
	}
}

func TestAuthorizeUserForOtherAreas(t *testing.T) {
	s, _, _ := newService(t, "open", nil)
	ctx := t.Context()
	u := register(t, s, "pw-1")
	req := UIARequest{Binding: Binding("POST", "/keys/device_signing/upload", u.UserID)}
	_, err := s.AuthorizeUser(ctx, u.UserID, req)
	var ch *Challenge
	if !errors.As(err, &ch) || ch.Flows[0].Stages[0] != stagePassword {
		t.Fatalf("without auth: %v, want a password challenge", err)
	}
	req.Auth = &AuthDict{Type: stagePassword, Session: ch.Session, User: u.UserID, Password: "wrong"}
	if _, err := s.AuthorizeUser(ctx, u.UserID, req); !errors.As(err, &ch) || ch.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("wrong password: %v, want a challenge with M_FORBIDDEN", err)
	}
	req.Auth.Password = "pw-1"
	done, err := s.AuthorizeUser(ctx, u.UserID, req)
	if err != nil {
		t.Fatalf("right password: %v", err)
	}
	done()
	// The session is used up once the request succeeded.
	var mx *mxerr.Error
	if _, err := s.AuthorizeUser(ctx, u.UserID, req); !errors.As(err, &mx) || mx.Status != http.StatusBadRequest {
		t.Fatalf("replayed session: %v, want 400", err)
	}
	// Another user's password does not authorize this user.
	other := register(t, s, "pw-2")
	req = UIARequest{Binding: req.Binding, Auth: &AuthDict{Type: stagePassword, User: other.UserID, Password: "pw-2"}}
	if _, err := s.AuthorizeUser(ctx, u.UserID, req); !errors.As(err, &ch) || ch.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("another user's password: %v, want a challenge with M_FORBIDDEN", err)
	}
}

func TestBcryptWaitsForASlotAndGivesUpWithTheRequest(t *testing.T) {
	s, _, _ := newService(t, "open", nil)
	u := register(t, s, "pw-1")
	s.hashSlots = make(chan struct{}, 1)
	s.hashSlots <- struct{}{} // every slot busy
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Login(ctx, u.UserID, "pw-1", "", ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("login with no free slot and a cancelled request: %v, want context.Canceled", err)
	}
	<-s.hashSlots
	if _, err := s.Login(t.Context(), u.UserID, "pw-1", "", ""); err != nil {
		t.Fatalf("login with a free slot: %v", err)
	}
	if len(s.hashSlots) != 0 {
		t.Fatal("the login did not give its slot back")
	}
}
