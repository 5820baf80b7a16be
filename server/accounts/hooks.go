package accounts

import (
	"context"

	"github.com/sirupsen/logrus"
)

// Rooms reflects account changes in the user's rooms, told after the
// account's commit (*rooms.Service implements it).
type Rooms interface {
	// LeaveAllRooms makes the user leave every room they are in or
	// invited to (on deactivation).
	LeaveAllRooms(ctx context.Context, userID string) error
	// ProfileChanged sends the user's new display name and avatar to
	// every room they are joined to.
	ProfileChanged(ctx context.Context, userID string) error
}

// Option adjusts the service New builds.
type Option func(*Service)

// WithRooms makes deactivation and profile changes reach the user's rooms.
func WithRooms(r Rooms) Option {
	return func(s *Service) { s.rooms = r }
}

// The account change is committed when these run: a client that hangs up
// must not leave its rooms half updated, so they do not stop with the
// request's context. Failures are logged, not returned: the change the
// client asked for is done.

func (s *Service) leaveAllRooms(ctx context.Context, userID string) {
	if s.rooms == nil {
		return
	}
	if err := s.rooms.LeaveAllRooms(context.WithoutCancel(ctx), userID); err != nil {
		s.log.WithField("user_id", userID).WithError(err).Error("leaving the rooms of a deactivated account")
	}
}

// profileChanged tells rooms of a change to a field member events carry.
func (s *Service) profileChanged(ctx context.Context, userID, field string) {
	if s.rooms == nil || (field != "displayname" && field != "avatar_url") {
		return
	}
	if err := s.rooms.ProfileChanged(context.WithoutCancel(ctx), userID); err != nil {
		s.log.WithFields(logrus.Fields{"user_id": userID, "field": field}).WithError(err).Error("sending a profile change to the user's rooms")
	}
}
