package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/accountdata"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// The services implement the hooks the others declare.
var (
	_ accounts.Rooms      = (*rooms.Service)(nil)
	_ accounts.Rooms      = lateRooms{}
	_ rooms.LeaveObserver = (*accountdata.Service)(nil)
)

// lateRooms is accounts' view of the rooms service (accounts.Rooms).
// Rooms is built after accounts, whose profiles its member events carry,
// so the adapter reaches the service when it is called, not when it is
// made.
type lateRooms struct {
	rooms func() *rooms.Service
	// memberships finds a deactivated user's pending invites to rooms this
	// server is not in (storage.SyncStore implements it): those invites
	// are outliers, in no room's current state, so the rooms service's
	// LeaveAllRooms does not see them.
	memberships userMemberships
}

type userMemberships interface {
	UserMemberships(ctx context.Context, userID string, upTo int64) ([]storage.Membership, error)
}

var errNoRooms = errors.New("the rooms service is not running in this process")

func (f lateRooms) LeaveAllRooms(ctx context.Context, userID string) error {
	r := f.rooms()
	if r == nil {
		return errNoRooms
	}
	return errors.Join(r.LeaveAllRooms(ctx, userID), f.rejectRemoteInvites(ctx, r, userID))
}

// rejectRemoteInvites rejects the user's pending invites over federation
// (rooms.Leave rejects them through the inviter's server), so the inviting
// servers do not keep inviting an account that is gone.
func (f lateRooms) rejectRemoteInvites(ctx context.Context, r *rooms.Service, userID string) error {
	if f.memberships == nil {
		return nil
	}
	mems, err := f.memberships.UserMemberships(ctx, userID, math.MaxInt64)
	if err != nil {
		return fmt.Errorf("listing the invites of %s: %w", userID, err)
	}
	latest := map[string]string{} // in nid order: the last one wins
	for _, m := range mems {
		latest[m.RoomID] = m.Membership
	}
	var errs []error
	for _, roomID := range slices.Sorted(maps.Keys(latest)) {
		if latest[roomID] != spec.Invite {
			continue
		}
		if err := r.Leave(ctx, userID, roomID, ""); err != nil {
			errs = append(errs, fmt.Errorf("rejecting the invite to %s: %w", roomID, err))
		}
	}
	return errors.Join(errs...)
}

func (f lateRooms) ProfileChanged(ctx context.Context, userID string) error {
	r := f.rooms()
	if r == nil {
		return errNoRooms
	}
	return r.ProfileChanged(ctx, userID)
}

// queuedOnly is the federation queue of a process that sends nothing (the
// admin command): events for other servers are still queued in the
// database with the event, and the node sends them with the next event
// for the same destination, or when it starts.
type queuedOnly struct{}

func (queuedOnly) Notify(...string) {}

// adminRooms is the rooms service of the admin command, for the leave
// events of a deactivation: signed with the node's key, queued for the
// rooms' other servers (queuedOnly). This process cannot wake the running
// node's long-polls: the leaves are committed and show on the members'
// next sync.
func adminRooms(cfg config.Config, store storage.Store, profiles rooms.Profiles, log logrus.FieldLogger) (*rooms.Service, error) {
	key, err := signing.LoadOrCreate(spec.ServerName(cfg.ServerName), cfg.DataDir)
	if err != nil {
		return nil, err
	}
	r := rooms.New(store.Rooms(), key, nil, profiles, log, rooms.WithFederation(queuedOnly{}, nil, nil))
	return r, nil
}
