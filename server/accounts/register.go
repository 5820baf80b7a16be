package accounts

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Registration is a POST /register request. A requested username is not
// part of it: the server assigns every user ID.
type Registration struct {
	Kind                     string // "" or "user"; "guest" is refused
	Password                 string
	DeviceID                 string
	InitialDeviceDisplayName string
	InhibitLogin             bool
	UIA                      UIARequest
}

// RegistrationFlows are the UIA flows registration offers in this mode.
func (s *Service) RegistrationFlows() []Flow {
	if s.cfg.RegistrationMode == "token" {
		return []Flow{{Stages: []string{stageRegToken}}}
	}
	return []Flow{{Stages: []string{stageDummy}}}
}

// Register creates an account with a server-assigned ID once UIA is done
// (m.login.dummy in open mode, m.login.registration_token in token mode) and,
// unless InhibitLogin, its first device.
func (s *Service) Register(ctx context.Context, r Registration) (LoginResult, error) {
	if s.cfg.RegistrationMode != "open" && s.cfg.RegistrationMode != "token" {
		return LoginResult{}, mxerr.Forbidden("registration is closed on this server")
	}
	switch r.Kind {
	case "", "user":
	case "guest":
		return LoginResult{}, mxerr.New(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "guest access is not allowed on this server")
	default:
		return LoginResult{}, mxerr.InvalidParam("kind must be user or guest")
	}
	// A request without auth only asks for the flows: answer them before
	// checking the body, as clients probe with partial bodies.
	if r.UIA.Auth != nil {
		if err := checkNewPassword(r.Password, "password"); err != nil {
			return LoginResult{}, err
		}
		if r.DeviceID != "" {
			if err := validDeviceID(r.DeviceID); err != nil {
				return LoginResult{}, err
			}
		}
		if err := validDeviceName(r.InitialDeviceDisplayName, "initial_device_display_name"); err != nil {
			return LoginResult{}, err
		}
	}
	sess, err := s.authorize(ctx, r.UIA, "", s.RegistrationFlows())
	if err != nil {
		return LoginResult{}, err
	}
	res, err := s.createAccount(ctx, r.Password, sess.RegTokenHash, !r.InhibitLogin, r.DeviceID, r.InitialDeviceDisplayName)
	if err != nil {
		return LoginResult{}, err
	}
	s.finish(ctx, sess)
	return res, nil
}

// createAccount inserts an account with a fresh ID, retrying on the rare
// collision, and its first device when withDevice.
func (s *Service) createAccount(ctx context.Context, password, regTokenHash string, withDevice bool, deviceID, deviceName string) (LoginResult, error) {
	hash, err := s.hashPassword(ctx, password)
	if err != nil {
		return LoginResult{}, err
	}
	if withDevice && deviceID == "" {
		deviceID = randomString(10, upperAlpha)
	}
	for attempt := 0; attempt < 10; attempt++ {
		now := s.now().UnixMilli()
		res := LoginResult{UserID: "@" + randomString(8, lowerAlnum) + ":" + s.cfg.ServerName}
		var dev *storage.Device
		if withDevice {
			res.DeviceID, res.AccessToken = deviceID, newAccessToken()
			dev = &storage.Device{UserID: res.UserID, DeviceID: deviceID, DisplayName: deviceName, TokenHash: hashToken(res.AccessToken), CreatedTS: now, LastSeenTS: now}
		}
		err := s.store.CreateAccount(ctx, storage.Account{UserID: res.UserID, PasswordHash: hash, CreatedTS: now}, regTokenHash, now, dev)
		switch {
		case err == nil:
			s.log.WithField("user_id", res.UserID).Info("account registered")
			return res, nil
		case errors.Is(err, storage.ErrConflict):
			continue // the ID is taken: draw another
		case errors.Is(err, storage.ErrNotFound):
			return LoginResult{}, mxerr.Forbidden("the registration token is no longer valid")
		default:
			return LoginResult{}, err
		}
	}
	return LoginResult{}, fmt.Errorf("no free user ID after 10 attempts")
}

// RegistrationTokenValid answers GET …/m.login.registration_token/validity.
func (s *Service) RegistrationTokenValid(ctx context.Context, token string) (bool, error) {
	if s.cfg.RegistrationMode == "closed" {
		return false, mxerr.Forbidden("registration is closed on this server")
	}
	if !validRegistrationToken(token) {
		return false, mxerr.InvalidParam("token must be 1-64 characters of [A-Za-z0-9._~-]")
	}
	return s.store.RegistrationTokenValid(ctx, hashToken(token), s.now().UnixMilli())
}

// CreateUser creates an account for the admin command and returns its ID and
// a random initial password, shown once to be handed to the user.
func (s *Service) CreateUser(ctx context.Context) (userID, password string, err error) {
	password = randomString(20, tokenChars)
	res, err := s.createAccount(ctx, password, "", false, "", "")
	return res.UserID, password, err
}

// CreateRegistrationToken makes a registration token usable uses times (0:
// unlimited) until validFor has passed (0: forever).
func (s *Service) CreateRegistrationToken(ctx context.Context, uses int64, validFor time.Duration) (string, error) {
	if uses < 0 || validFor < 0 {
		return "", fmt.Errorf("uses and expiry must not be negative")
	}
	tok := randomString(24, tokenChars)
	now := s.now()
	rt := storage.RegistrationToken{Hash: hashToken(tok), UsesAllowed: uses, CreatedTS: now.UnixMilli()}
	if validFor > 0 {
		rt.ExpiryTS = now.Add(validFor).UnixMilli()
	}
	if err := s.store.CreateRegistrationToken(ctx, rt); err != nil {
		return "", err
	}
	return tok, nil
}

// UserInfo is a user as the admin list shows it.
type UserInfo struct {
	UserID      string
	CreatedTS   int64
	Deactivated bool
}

// Users lists every account.
func (s *Service) Users(ctx context.Context) ([]UserInfo, error) {
	accs, err := s.store.Accounts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]UserInfo, 0, len(accs))
	for _, a := range accs {
		out = append(out, UserInfo{UserID: a.UserID, CreatedTS: a.CreatedTS, Deactivated: a.Deactivated})
	}
	return out, nil
}
