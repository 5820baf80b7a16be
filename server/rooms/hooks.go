package rooms

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// Hooks between rooms and the other areas: account changes reach the
// user's rooms (accounts calls LeaveAllRooms and ProfileChanged after its
// commit), and members who leave a room are announced (LeaveObserver).

// LeaveObserver hears, after the commit, of each user whose membership of
// a room became leave or ban (they left, were kicked or banned), so that
// state kept outside the room graph follows: accountdata stops their
// typing there.
type LeaveObserver interface {
	MemberLeft(ctx context.Context, roomID, userID string) error
}

// Option adjusts the service New builds.
type Option func(*Service)

// WithLeaveObserver announces members who leave rooms to o.
func WithLeaveObserver(o LeaveObserver) Option {
	return func(s *Service) { s.leaves = o }
}

// LeaveAllRooms makes the user leave every room they are joined to,
// invited to or knocking on, one leave event each (spec: on deactivation
// the server SHOULD make the user leave all rooms). A room that fails does
// not stop the others; the failures come back joined.
func (s *Service) LeaveAllRooms(ctx context.Context, userID string) error {
	roomIDs, err := s.store.MemberRooms(ctx, userID, []string{spec.Join, spec.Invite, spec.Knock})
	if err != nil {
		return fmt.Errorf("listing the rooms of %s: %w", userID, err)
	}
	var errs []error
	for _, roomID := range roomIDs {
		if err := s.Leave(ctx, userID, roomID, ""); err != nil {
			errs = append(errs, fmt.Errorf("leaving %s: %w", roomID, err))
		}
	}
	return errors.Join(errs...)
}

// ProfileChanged sends, in every room the user is joined to, a new join
// event carrying their current display name and avatar (spec: "Events on
// Change of Profile Information"); rooms whose join already carries them
// get none. The profile is read in each room under its lock, so when two
// changes race every room ends with the later one.
func (s *Service) ProfileChanged(ctx context.Context, userID string) error {
	if s.profiles == nil {
		return nil
	}
	roomIDs, err := s.store.MemberRooms(ctx, userID, []string{spec.Join})
	if err != nil {
		return fmt.Errorf("listing the rooms of %s: %w", userID, err)
	}
	var errs []error
	for _, roomID := range roomIDs {
		if err := s.refreshJoin(ctx, userID, roomID); err != nil {
			errs = append(errs, fmt.Errorf("updating the profile in %s: %w", roomID, err))
		}
	}
	return errors.Join(errs...)
}

// refreshJoin re-sends the user's join in one room if their profile
// differs from the one it carries.
func (s *Service) refreshJoin(ctx context.Context, userID, roomID string) error {
	unlock := s.lock(roomID)
	defer unlock()
	d, err := s.loadDraft(ctx, roomID, []string{userID})
	if err != nil {
		return err
	}
	cur := d.current[stateTuple{spec.MRoomMember, userID}]
	if cur == nil || d.members[userID] != spec.Join {
		return nil // left meanwhile
	}
	name, avatar, err := s.profiles.Profile(ctx, userID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil // deactivated meanwhile: its leave is on the way
	}
	if err != nil {
		return err
	}
	old := gjson.ParseBytes(cur.Content())
	if old.Get("displayname").String() == name && old.Get("avatar_url").String() == avatar {
		return nil
	}
	content := map[string]any{"membership": spec.Join}
	if name != "" {
		content["displayname"] = name
	}
	if avatar != "" {
		content["avatar_url"] = avatar
	}
	if _, err := d.add(userID, spec.MRoomMember, ptr(userID), content, "", nil); err != nil {
		return err
	}
	return d.commit(ctx)
}

// membersLeft tells the LeaveObserver of the committed events' members
// who left; a failure is logged (the events are committed).
func (s *Service) membersLeft(ctx context.Context, evs []storage.NewEvent) {
	if s.leaves == nil {
		return
	}
	for _, ev := range evs {
		if ev.Type != spec.MRoomMember || ev.StateKey == nil || (ev.Membership != spec.Leave && ev.Membership != spec.Ban) {
			continue
		}
		if err := s.leaves.MemberLeft(ctx, ev.RoomID, *ev.StateKey); err != nil {
			s.log.WithError(err).WithField("room_id", ev.RoomID).WithField("user_id", *ev.StateKey).Warn("announcing a member who left")
		}
	}
}
