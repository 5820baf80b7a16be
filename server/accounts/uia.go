package accounts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// spec: client-server API, "User-Interactive Authentication API".

// uiaLifetime is how long a UIA session may take to complete.
const uiaLifetime = 30 * time.Minute

// AuthDict is the "auth" object of a request that needs UIA.
type AuthDict struct {
	Type    string `json:"type"`
	Session string `json:"session"`
	// m.login.password
	Identifier *Identifier `json:"identifier"`
	User       string      `json:"user"` // deprecated form of identifier
	Password   string      `json:"password"`
	// m.login.registration_token
	Token string `json:"token"`
}

// Identifier is a login identifier; only m.id.user is supported.
type Identifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

// UIARequest is the UIA part of a request: its auth object and Binding, an
// opaque identity of the request (see Binding) that ties a session to the
// request that started it.
type UIARequest struct {
	Auth    *AuthDict
	Binding string
}

// Binding identifies a request for UIA: the method, the path, the user and
// whatever parameters must not change between stages.
func Binding(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Flow is one way through UIA.
type Flow struct {
	Stages []string `json:"stages"`
}

// Challenge is the 401 answer of a request whose UIA is not complete yet:
// the flows, the session and what is done. ErrCode and Err are set when the
// last stage attempted failed.
type Challenge struct {
	Flows     []Flow         `json:"flows"`
	Params    map[string]any `json:"params"`
	Session   string         `json:"session,omitempty"`
	Completed []string       `json:"completed"`
	ErrCode   string         `json:"errcode,omitempty"`
	Err       string         `json:"error,omitempty"`
}

func (c *Challenge) Error() string {
	if c.ErrCode != "" {
		return "user-interactive authentication: " + c.ErrCode + ": " + c.Err
	}
	return "user-interactive authentication required"
}

const (
	stagePassword = "m.login.password"
	stageDummy    = "m.login.dummy"
	stageRegToken = "m.login.registration_token"
)

var passwordFlows = []Flow{{Stages: []string{stagePassword}}}

// authorize runs one step of UIA. It returns the session when a flow is
// complete (its ID is empty if it completed in one request without a
// session), a *Challenge while it is not, or another error. userID is the
// authenticated user (empty for registration).
func (s *Service) authorize(ctx context.Context, req UIARequest, userID string, flows []Flow) (*storage.UIASession, error) {
	now := s.now()
	auth := req.Auth
	if auth == nil {
		auth = &AuthDict{}
	}
	sess := &storage.UIASession{Binding: req.Binding, CreatedTS: now.UnixMilli(), ExpiresTS: now.Add(uiaLifetime).UnixMilli()}
	if auth.Session != "" {
		got, err := s.store.UIASession(ctx, auth.Session, now.UnixMilli())
		if errors.Is(err, storage.ErrNotFound) {
			return nil, mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "unknown or expired authentication session; start again without a session")
		}
		if err != nil {
			return nil, err
		}
		if got.Binding != req.Binding {
			return nil, mxerr.Forbidden("this authentication session belongs to another request")
		}
		sess = &got
	}
	if auth.Type == "" {
		return nil, s.challenge(ctx, sess, flows, "", "")
	}
	if !offered(flows, auth.Type) {
		return nil, s.challenge(ctx, sess, flows, "M_UNRECOGNIZED", "authentication stage "+auth.Type+" is not offered here")
	}
	switch auth.Type {
	case stageDummy:
	case stagePassword:
		user := auth.User
		if auth.Identifier != nil {
			if auth.Identifier.Type != "m.id.user" {
				return nil, s.challenge(ctx, sess, flows, "M_UNRECOGNIZED", "only m.id.user identifiers are supported")
			}
			user = auth.Identifier.User
		}
		if id, ok := s.resolveUser(user); !ok || id != userID {
			return nil, s.challenge(ctx, sess, flows, "M_FORBIDDEN", "the identifier does not name the authenticated user")
		}
		if _, err := s.checkPassword(ctx, user, auth.Password); err != nil {
			var mx *mxerr.Error
			if errors.As(err, &mx) {
				return nil, s.challenge(ctx, sess, flows, mx.Code, mx.Msg)
			}
			return nil, err
		}
	case stageRegToken:
		h := hashToken(auth.Token)
		ok, err := s.store.RegistrationTokenValid(ctx, h, now.UnixMilli())
		if err != nil {
			return nil, err
		}
		if auth.Token == "" || !ok {
			return nil, s.challenge(ctx, sess, flows, "M_FORBIDDEN", "invalid registration token")
		}
		sess.RegTokenHash = h
	}
	if !slices.Contains(sess.Completed, auth.Type) {
		sess.Completed = append(sess.Completed, auth.Type)
	}
	for _, f := range flows {
		if containsAll(sess.Completed, f.Stages) {
			return sess, nil
		}
	}
	return nil, s.challenge(ctx, sess, flows, "", "")
}

// AuthorizeUser is UIA with m.login.password for other areas' requests (for
// example replacing cross-signing keys). It returns nil once the flow is
// complete — call done after the request succeeded, so the session cannot be
// replayed — or a *Challenge while it is not.
func (s *Service) AuthorizeUser(ctx context.Context, userID string, req UIARequest) (done func(), err error) {
	sess, err := s.authorize(ctx, req, userID, passwordFlows)
	if err != nil {
		return nil, err
	}
	return func() { s.finish(context.WithoutCancel(ctx), sess) }, nil
}

// challenge saves the session (creating it if it is new) and builds the 401.
func (s *Service) challenge(ctx context.Context, sess *storage.UIASession, flows []Flow, code, msg string) error {
	if sess.ID == "" {
		sess.ID = randomString(24, tokenChars)
		if err := s.store.CreateUIASession(ctx, *sess, s.now().UnixMilli()); err != nil {
			return err
		}
	} else if err := s.store.UpdateUIASession(ctx, *sess); err != nil {
		return err
	}
	completed := sess.Completed
	if completed == nil {
		completed = []string{}
	}
	return &Challenge{Flows: flows, Params: map[string]any{}, Session: sess.ID, Completed: completed, ErrCode: code, Err: msg}
}

// finish ends a session whose request succeeded: it cannot be replayed.
func (s *Service) finish(ctx context.Context, sess *storage.UIASession) {
	if sess == nil || sess.ID == "" {
		return
	}
	if err := s.store.DeleteUIASession(ctx, sess.ID); err != nil {
		s.log.WithError(err).Warn("deleting a completed UIA session")
	}
}

func offered(flows []Flow, stage string) bool {
	for _, f := range flows {
		if slices.Contains(f.Stages, stage) {
			return true
		}
	}
	return false
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// validRegistrationToken: spec, tokens are 1-64 characters of [A-Za-z0-9._~-].
func validRegistrationToken(tok string) bool {
	if tok == "" || len(tok) > 64 {
		return false
	}
	return strings.Trim(tok, tokenChars+"._~-") == ""
}
