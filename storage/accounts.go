package storage

import "context"

// Account is one local user.
type Account struct {
	UserID       string // full lower-case MXID
	PasswordHash string // bcrypt
	CreatedTS    int64
	Deactivated  bool
}

// Device is an account's one device. TokenHash is the hex SHA-256 of its
// access token; the token itself is never stored.
type Device struct {
	UserID      string
	DeviceID    string
	DisplayName string
	TokenHash   string
	CreatedTS   int64
	LastSeenTS  int64
	LastSeenIP  string
}

// RegistrationToken gates registration in token mode. Hash is the hex
// SHA-256 of the token. UsesAllowed 0 means unlimited, ExpiryTS 0 never.
type RegistrationToken struct {
	Hash        string
	UsesAllowed int64
	Completed   int64
	ExpiryTS    int64
	CreatedTS   int64
}

// UIASession is a user-interactive authentication session. Binding
// identifies the request that started it; Completed lists the stages done.
// RegTokenHash is the registration token a completed
// m.login.registration_token stage validated.
type UIASession struct {
	ID           string
	Binding      string
	Completed    []string
	RegTokenHash string
	CreatedTS    int64
	ExpiresTS    int64
}

// AccountStore is what server/accounts keeps.
type AccountStore interface {
	// CreateAccount inserts acc (ErrConflict if its ID is taken). If
	// regTokenHash is set, one use of that token is consumed in the same
	// transaction (ErrNotFound if it is unknown, expired at now or used up).
	// If dev is not nil it becomes the account's device.
	CreateAccount(ctx context.Context, acc Account, regTokenHash string, now int64, dev *Device) error
	// Account returns an account, deactivated or not (ErrNotFound if unknown).
	Account(ctx context.Context, userID string) (Account, error)
	// Accounts lists every account, ordered by user ID.
	Accounts(ctx context.Context) ([]Account, error)
	SetPasswordHash(ctx context.Context, userID, hash string) error
	// Deactivate marks the account deactivated and removes its device and
	// profile. It returns the removed device's ID ("" if it had none).
	Deactivate(ctx context.Context, userID string) (removedDeviceID string, err error)

	// ReplaceDevice makes dev its user's one device and returns the
	// previous device's ID ("" if there was none). ErrNotFound if the account
	// is unknown or deactivated.
	ReplaceDevice(ctx context.Context, dev Device) (previousDeviceID string, err error)
	// DeviceByToken resolves an access token's hash (ErrNotFound if none).
	DeviceByToken(ctx context.Context, tokenHash string) (Device, error)
	// Devices lists a user's devices (at most one).
	Devices(ctx context.Context, userID string) ([]Device, error)
	SetDeviceDisplayName(ctx context.Context, userID, deviceID, name string) error
	// DeleteDevice removes a device (ErrNotFound if the user has no such device).
	DeleteDevice(ctx context.Context, userID, deviceID string) error

	// ProfileFields returns a user's profile fields as raw JSON values.
	ProfileFields(ctx context.Context, userID string) (map[string][]byte, error)
	// SetProfileField stores a raw JSON value; maxTotal bounds the size of
	// the whole profile (ErrConflict when it would be exceeded).
	SetProfileField(ctx context.Context, userID, field string, value []byte, maxTotal int) error
	DeleteProfileField(ctx context.Context, userID, field string) error

	CreateRegistrationToken(ctx context.Context, tok RegistrationToken) error
	// RegistrationTokenValid tells whether a token can still be used at now.
	RegistrationTokenValid(ctx context.Context, hash string, now int64) (bool, error)

	// CreateUIASession stores a new session and deletes the expired ones.
	CreateUIASession(ctx context.Context, s UIASession, now int64) error
	// UIASession returns a session unexpired at now (ErrNotFound otherwise).
	UIASession(ctx context.Context, id string, now int64) (UIASession, error)
	// UpdateUIASession saves a session's completed stages and token.
	UpdateUIASession(ctx context.Context, s UIASession) error
	DeleteUIASession(ctx context.Context, id string) error
}
