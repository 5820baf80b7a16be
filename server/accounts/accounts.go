// Package accounts owns users, their one device, access tokens, passwords,
// registration and profiles.
package accounts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Device is an authenticated device: what a valid access token resolves to.
type Device struct {
	UserID      string
	DeviceID    string
	DisplayName string
}

// Config is what accounts needs from trustcase.yaml.
type Config struct {
	ServerName       string
	RegistrationMode string // open | token | closed
}

// DeviceObserver hears about every device that goes (replaced by a new
// login, logged out, deleted, or its account deactivated), after the commit,
// so that its keys and queued to-device messages can go too.
type DeviceObserver interface {
	DeviceRemoved(ctx context.Context, userID, deviceID string) error
}

// bcryptCost is bcrypt's default: slow enough at rest, fast enough for
// suites that register many users.
const bcryptCost = 10

// maxPasswordBytes is bcrypt's input limit; longer passwords are refused
// rather than silently truncated.
const maxPasswordBytes = 72

// Service is the accounts domain.
type Service struct {
	store    storage.AccountStore
	cfg      Config
	log      logrus.FieldLogger
	observer DeviceObserver
	rooms    Rooms          // WithRooms (hooks.go)
	remote   RemoteProfiles // WithRemoteProfiles (remote_profile.go)
	now      func() time.Time

	dummyOnce sync.Once
	dummyHash []byte
	// hashSlots bounds concurrent bcrypt work: each hash is tens of
	// milliseconds of CPU, and a burst of logins must not starve every
	// other request of the cores.
	hashSlots chan struct{}
}

// New builds the accounts service. observer may be nil.
func New(store storage.AccountStore, cfg Config, log logrus.FieldLogger, observer DeviceObserver, opts ...Option) *Service {
	s := &Service{store: store, cfg: cfg, log: log, observer: observer, now: time.Now,
		hashSlots: make(chan struct{}, max(1, runtime.NumCPU()))}
	for _, o := range opts {
		o(s)
	}
	return s
}

// hashing waits for a bcrypt slot; release it when the hash is done.
func (s *Service) hashing(ctx context.Context) (release func(), err error) {
	select {
	case s.hashSlots <- struct{}{}:
		return func() { <-s.hashSlots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// hashPassword is bcrypt at bcryptCost, within a slot.
func (s *Service) hashPassword(ctx context.Context, password string) (string, error) {
	release, err := s.hashing(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcryptCost)
	return string(hash), err
}

// LoginResult is what a login (or a registration that logs in) hands out.
type LoginResult struct {
	UserID      string
	DeviceID    string
	AccessToken string // empty when registration inhibited the login
}

// Authenticate resolves an access token to its device: one indexed lookup
// of the token's hash. A replaced or logged-out device's token is unknown.
func (s *Service) Authenticate(ctx context.Context, token string) (*Device, error) {
	d, err := s.store.DeviceByToken(ctx, hashToken(token))
	if errors.Is(err, storage.ErrNotFound) {
		// spec: soft_logout false — the client must log in again.
		return nil, mxerr.UnknownToken("unknown or revoked access token").With("soft_logout", false)
	}
	if err != nil {
		return nil, err
	}
	return &Device{UserID: d.UserID, DeviceID: d.DeviceID, DisplayName: d.DisplayName}, nil
}

// Login checks a password and replaces the user's device with a new one.
// user is a full MXID or a localpart, in any case.
func (s *Service) Login(ctx context.Context, user, password, deviceID, displayName string) (LoginResult, error) {
	userID, err := s.checkPassword(ctx, user, password)
	if err != nil {
		return LoginResult{}, err
	}
	return s.newDevice(ctx, userID, deviceID, displayName)
}

// checkPassword returns the user's ID if password is right. Unknown users
// and wrong passwords give the same 403 after the same bcrypt work.
func (s *Service) checkPassword(ctx context.Context, user, password string) (string, error) {
	wrong := mxerr.Forbidden("invalid username or password")
	release, err := s.hashing(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	userID, ok := s.resolveUser(user)
	if !ok {
		s.burnBcrypt(password)
		return "", wrong
	}
	acc, err := s.store.Account(ctx, userID)
	if errors.Is(err, storage.ErrNotFound) {
		s.burnBcrypt(password)
		return "", wrong
	}
	if err != nil {
		return "", err
	}
	if bcrypt.CompareHashAndPassword([]byte(acc.PasswordHash), []byte(password)) != nil {
		return "", wrong
	}
	if acc.Deactivated {
		return "", mxerr.New(http.StatusForbidden, "M_USER_DEACTIVATED", "this account has been deactivated")
	}
	return userID, nil
}

// burnBcrypt spends the time a real comparison would, so response times do
// not tell which users exist.
func (s *Service) burnBcrypt(password string) {
	s.dummyOnce.Do(func() {
		s.dummyHash, _ = bcrypt.GenerateFromPassword([]byte(randomString(16, lowerAlnum)), bcryptCost)
	})
	_ = bcrypt.CompareHashAndPassword(s.dummyHash, []byte(password))
}

// resolveUser turns "@ABC123:server" or "abc123" into the stored lower-case
// MXID of a local user; false if it names another server.
func (s *Service) resolveUser(user string) (string, bool) {
	user = strings.TrimSpace(user)
	local := user
	if strings.HasPrefix(user, "@") {
		l, server, ok := strings.Cut(user[1:], ":")
		if !ok || !strings.EqualFold(server, s.cfg.ServerName) {
			return "", false
		}
		local = l
	}
	if local == "" || strings.ContainsAny(local, ":@") {
		return "", false
	}
	return "@" + strings.ToLower(local) + ":" + s.cfg.ServerName, true
}

// newDevice makes a fresh device with a fresh token the user's one device;
// the previous device goes.
func (s *Service) newDevice(ctx context.Context, userID, deviceID, displayName string) (LoginResult, error) {
	if deviceID == "" {
		deviceID = randomString(10, upperAlpha)
	} else if err := validDeviceID(deviceID); err != nil {
		return LoginResult{}, err
	}
	if err := validDeviceName(displayName, "initial_device_display_name"); err != nil {
		return LoginResult{}, err
	}
	token := newAccessToken()
	// last_seen_ts is the login time; the IP is personal data and is not kept.
	now := s.now().UnixMilli()
	previous, err := s.store.ReplaceDevice(ctx, storage.Device{
		UserID: userID, DeviceID: deviceID, DisplayName: displayName,
		TokenHash: hashToken(token), CreatedTS: now, LastSeenTS: now,
	})
	if errors.Is(err, storage.ErrNotFound) {
		return LoginResult{}, mxerr.New(http.StatusForbidden, "M_USER_DEACTIVATED", "this account has been deactivated")
	}
	if err != nil {
		return LoginResult{}, err
	}
	// A device that keeps its ID keeps its keys: only a different ID means
	// the old device is gone.
	if previous != "" && previous != deviceID {
		s.deviceRemoved(ctx, userID, previous)
	}
	s.log.WithFields(logrus.Fields{"user_id": userID, "device_id": deviceID}).Info("new device")
	return LoginResult{UserID: userID, DeviceID: deviceID, AccessToken: token}, nil
}

func validDeviceName(name, field string) error {
	if len(name) > maxDeviceName {
		return mxerr.InvalidParam("%s is longer than %d bytes", field, maxDeviceName)
	}
	return nil
}

// maxDeviceName bounds a device's display name.
const maxDeviceName = 1000

func validDeviceID(id string) error {
	if len(id) > 255 {
		return mxerr.InvalidParam("device_id is longer than 255 bytes")
	}
	for _, r := range id {
		if r < 0x21 || r == 0x7f {
			return mxerr.InvalidParam("device_id must be printable without spaces")
		}
	}
	return nil
}

func (s *Service) deviceRemoved(ctx context.Context, userID, deviceID string) {
	if s.observer == nil || deviceID == "" {
		return
	}
	if err := s.observer.DeviceRemoved(ctx, userID, deviceID); err != nil {
		s.log.WithFields(logrus.Fields{"user_id": userID, "device_id": deviceID}).WithError(err).Error("cleaning up a removed device")
	}
}

// Logout removes the device the request came from.
func (s *Service) Logout(ctx context.Context, dev *Device) error {
	err := s.store.DeleteDevice(ctx, dev.UserID, dev.DeviceID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	s.deviceRemoved(ctx, dev.UserID, dev.DeviceID)
	return nil
}

// LogoutAll removes every device of the user (there is at most one).
func (s *Service) LogoutAll(ctx context.Context, userID string) error {
	devs, err := s.store.Devices(ctx, userID)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := s.store.DeleteDevice(ctx, userID, d.DeviceID); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		s.deviceRemoved(ctx, userID, d.DeviceID)
	}
	return nil
}

// DeviceInfo is a device as GET /devices shows it.
type DeviceInfo struct {
	DeviceID    string `json:"device_id"`
	DisplayName string `json:"display_name,omitempty"`
	LastSeenIP  string `json:"last_seen_ip,omitempty"`
	LastSeenTS  int64  `json:"last_seen_ts,omitempty"`
}

// Devices lists the user's devices.
func (s *Service) Devices(ctx context.Context, userID string) ([]DeviceInfo, error) {
	devs, err := s.store.Devices(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceInfo, 0, len(devs))
	for _, d := range devs {
		out = append(out, DeviceInfo{DeviceID: d.DeviceID, DisplayName: d.DisplayName, LastSeenIP: d.LastSeenIP, LastSeenTS: d.LastSeenTS})
	}
	return out, nil
}

// Device returns one of the user's devices (storage.ErrNotFound if none).
func (s *Service) Device(ctx context.Context, userID, deviceID string) (DeviceInfo, error) {
	devs, err := s.Devices(ctx, userID)
	if err != nil {
		return DeviceInfo{}, err
	}
	for _, d := range devs {
		if d.DeviceID == deviceID {
			return d, nil
		}
	}
	return DeviceInfo{}, storage.ErrNotFound
}

// SetDeviceDisplayName renames one of the user's devices.
func (s *Service) SetDeviceDisplayName(ctx context.Context, userID, deviceID, name string) error {
	if err := validDeviceName(name, "display_name"); err != nil {
		return err
	}
	return s.store.SetDeviceDisplayName(ctx, userID, deviceID, name)
}

// DeleteDevices removes the listed devices of the user after UIA; IDs the
// user has no device for are ignored.
func (s *Service) DeleteDevices(ctx context.Context, userID string, deviceIDs []string, uia UIARequest) error {
	sess, err := s.authorize(ctx, uia, userID, passwordFlows)
	if err != nil {
		return err
	}
	// Walk the user's devices (at most one), not the client's list, so a
	// long list costs one read rather than a write per entry.
	devs, err := s.store.Devices(ctx, userID)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if !slices.Contains(deviceIDs, d.DeviceID) {
			continue
		}
		err := s.store.DeleteDevice(ctx, userID, d.DeviceID)
		if errors.Is(err, storage.ErrNotFound) {
			continue // gone meanwhile
		}
		if err != nil {
			return err
		}
		s.deviceRemoved(ctx, userID, d.DeviceID)
	}
	s.finish(ctx, sess)
	return nil
}

// ChangePassword sets a new password after UIA. With one device per account
// there are no other devices to log out.
func (s *Service) ChangePassword(ctx context.Context, userID, newPassword string, uia UIARequest) error {
	if err := checkNewPassword(newPassword, "new_password"); err != nil {
		return err
	}
	sess, err := s.authorize(ctx, uia, userID, passwordFlows)
	if err != nil {
		return err
	}
	hash, err := s.hashPassword(ctx, newPassword)
	if err != nil {
		return err
	}
	if err := s.store.SetPasswordHash(ctx, userID, hash); err != nil {
		return err
	}
	s.finish(ctx, sess)
	s.log.WithField("user_id", userID).Info("password changed")
	return nil
}

// Deactivate deactivates the user's own account after UIA.
func (s *Service) Deactivate(ctx context.Context, userID string, uia UIARequest) error {
	sess, err := s.authorize(ctx, uia, userID, passwordFlows)
	if err != nil {
		return err
	}
	if err := s.deactivate(ctx, userID); err != nil {
		return err
	}
	s.finish(ctx, sess)
	return nil
}

// DeactivateUser deactivates an account without UIA (the admin command).
func (s *Service) DeactivateUser(ctx context.Context, userID string) error {
	id, ok := s.resolveUser(userID)
	if !ok {
		return storage.ErrNotFound
	}
	return s.deactivate(ctx, id)
}

func (s *Service) deactivate(ctx context.Context, userID string) error {
	removed, err := s.store.Deactivate(ctx, userID)
	if err != nil {
		return err
	}
	s.deviceRemoved(ctx, userID, removed)
	s.leaveAllRooms(ctx, userID)
	s.log.WithField("user_id", userID).Info("account deactivated")
	return nil
}

func checkNewPassword(pw, field string) error {
	switch {
	case pw == "":
		return mxerr.MissingParam("%s is required", field)
	case len(pw) > maxPasswordBytes:
		return mxerr.New(http.StatusBadRequest, "M_WEAK_PASSWORD", "%s must be at most %d bytes", field, maxPasswordBytes)
	}
	return nil
}

// hashToken is how tokens are kept at rest: hex SHA-256. Tokens carry 256
// random bits, so an unsalted fast hash is enough.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func newAccessToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on supported platforms
	}
	return "tct_" + base64.RawURLEncoding.EncodeToString(b)
}

const (
	lowerAlnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	upperAlpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	tokenChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
)

// randomString draws n characters uniformly from alphabet with crypto/rand.
func randomString(n int, alphabet string) string {
	out := make([]byte, n)
	// Rejection sampling keeps the distribution uniform.
	limit := 256 - 256%len(alphabet)
	buf := make([]byte, 1)
	for i := 0; i < n; {
		if _, err := rand.Read(buf); err != nil {
			panic(fmt.Sprintf("crypto/rand: %v", err))
		}
		if int(buf[0]) >= limit {
			continue
		}
		out[i] = alphabet[int(buf[0])%len(alphabet)]
		i++
	}
	return string(out)
}
