package rooms

import (
	"context"
	"errors"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// checkRoomID validates room id grammar (400 M_INVALID_PARAM).
func checkRoomID(roomID string) error {
	if _, err := spec.NewRoomID(roomID); err != nil || len(roomID) > 255 {
		return mxerr.InvalidParam("%q is not a valid room id", roomID)
	}
	return nil
}

func checkUserID(userID string) error {
	if _, err := spec.NewUserID(userID, true); err != nil {
		return mxerr.InvalidParam("%q is not a valid user id", userID)
	}
	return nil
}

// Join joins userID to a room by id or by (local) alias and returns the
// room id. Joining a room this node is not in needs federation.
func (s *Service) Join(ctx context.Context, userID, roomIDOrAlias, reason string) (string, error) {
	return s.JoinVia(ctx, userID, roomIDOrAlias, reason, nil)
}

// JoinVia is Join where a room this node is not in is joined through the
// servers via (the client's server_name/via), then the inviter's server
// and the server in the room id, first success wins.
func (s *Service) JoinVia(ctx context.Context, userID, roomIDOrAlias, reason string, via []string) (string, error) {
	roomID := roomIDOrAlias
	if len(roomIDOrAlias) > 0 && roomIDOrAlias[0] == '#' {
		a, servers, err := s.ResolveAlias(ctx, roomIDOrAlias) // aliases.go: a remote alias asks its server
		if err != nil {
			return "", err
		}
		roomID, via = a, append(append([]string(nil), via...), servers...)
	} else if err := checkRoomID(roomID); err != nil {
		return "", mxerr.InvalidParam("%q is neither a room id nor a room alias", roomIDOrAlias)
	}
	unlock := s.lock(roomID)
	defer unlock()
	d, err := s.loadDraft(ctx, roomID, []string{userID})
	if err != nil {
		var mx *mxerr.Error
		if errors.As(err, &mx) && mx.Code == "M_NOT_FOUND" {
			if err := s.joinRemote(ctx, userID, roomID, reason, via); err != nil { // federation_joining.go
				return "", err
			}
			return roomID, nil
		}
		return "", err
	}
	if d.members[userID] == spec.Join {
		return roomID, nil // already joined: nothing changes
	}
	content := map[string]any{"membership": spec.Join}
	s.addProfile(ctx, userID, content)
	if reason != "" {
		content["reason"] = reason
	}
	if via, err := s.restrictedJoin(ctx, d, userID); err != nil {
		return "", err
	} else if via != "" {
		// The auth rules read the authoriser's membership: load it too.
		if d, err = s.loadDraft(ctx, roomID, []string{userID, via}); err != nil {
			return "", err
		}
		content["join_authorised_via_users_server"] = via
	}
	if _, err := d.add(userID, spec.MRoomMember, ptr(userID), content, "", nil); err != nil {
		return "", err
	}
	return roomID, d.commit(ctx)
}

// Knock asks to join a room whose join rule allows knocking, and returns
// the room id.
func (s *Service) Knock(ctx context.Context, userID, roomIDOrAlias, reason string) (string, error) {
	roomID := roomIDOrAlias
	if len(roomIDOrAlias) > 0 && roomIDOrAlias[0] == '#' {
		a, err := s.resolve(ctx, roomIDOrAlias)
		if err != nil {
			return "", err
		}
		roomID = a
	} else if err := checkRoomID(roomID); err != nil {
		return "", mxerr.InvalidParam("%q is neither a room id nor a room alias", roomIDOrAlias)
	}
	err := s.changeMembership(ctx, userID, roomID, userID, spec.Knock, reason, func(d *draft, content map[string]any) error {
		switch d.members[userID] {
		case spec.Join, spec.Invite:
			return mxerr.Forbidden("you are already %s in room %s", map[string]string{spec.Join: "joined", spec.Invite: "invited"}[d.members[userID]], roomID)
		case spec.Knock:
			return errNoChange
		}
		s.addProfile(ctx, userID, content)
		return nil
	})
	return roomID, err
}

// Invite invites a user, of this server or (over federation) of another.
func (s *Service) Invite(ctx context.Context, sender, roomID, target, reason string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if s.canInviteRemote(target) {
		return s.inviteRemote(ctx, sender, roomID, target, reason) // federation_invite.go
	}
	if err := s.checkInvitee(ctx, target); err != nil {
		return err
	}
	return s.changeMembership(ctx, sender, roomID, target, spec.Invite, reason, func(d *draft, content map[string]any) error {
		switch d.members[target] {
		case spec.Join:
			return mxerr.Forbidden("%s is already in the room", target)
		case spec.Ban:
			return mxerr.Forbidden("%s is banned from the room", target)
		case spec.Invite:
			return errNoChange
		}
		s.addProfile(ctx, target, content)
		return nil
	})
}

// Leave makes userID leave the room (or reject an invite).
func (s *Service) Leave(ctx context.Context, userID, roomID, reason string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if _, err := s.store.RoomVersion(ctx, roomID); errors.Is(err, storage.ErrNotFound) {
		if done, err := s.rejectRemoteInvite(ctx, userID, roomID, reason); done { // federation_leave.go
			return err
		}
	}
	return s.changeMembership(ctx, userID, roomID, userID, spec.Leave, reason, func(d *draft, _ map[string]any) error {
		switch d.members[userID] {
		case spec.Join, spec.Invite, spec.Knock:
			return nil
		case spec.Leave, spec.Ban:
			return errNoChange
		}
		return mxerr.Forbidden("you are not in room %s", roomID)
	})
}

// Kick removes another member.
func (s *Service) Kick(ctx context.Context, sender, roomID, target, reason string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if err := checkUserID(target); err != nil {
		return err
	}
	return s.changeMembership(ctx, sender, roomID, target, spec.Leave, reason, func(d *draft, _ map[string]any) error {
		switch d.members[target] {
		case spec.Join, spec.Invite, spec.Knock:
			return nil
		}
		return mxerr.Forbidden("%s is not in the room", target)
	})
}

// Ban bans a user.
func (s *Service) Ban(ctx context.Context, sender, roomID, target, reason string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if err := checkUserID(target); err != nil {
		return err
	}
	return s.changeMembership(ctx, sender, roomID, target, spec.Ban, reason, nil)
}

// Unban lifts a ban (the user's membership becomes leave).
func (s *Service) Unban(ctx context.Context, sender, roomID, target, reason string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if err := checkUserID(target); err != nil {
		return err
	}
	return s.changeMembership(ctx, sender, roomID, target, spec.Leave, reason, func(d *draft, _ map[string]any) error {
		if d.members[target] != spec.Ban {
			return mxerr.Forbidden("%s is not banned", target)
		}
		return nil
	})
}

// Forget hides a room the user has left from them.
func (s *Service) Forget(ctx context.Context, userID, roomID string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if _, err := s.store.RoomVersion(ctx, roomID); errors.Is(err, storage.ErrNotFound) {
		// A rejected invite over federation may be forgotten too.
		if ev, err := s.store.OutlierMembership(ctx, roomID, userID); err != nil || gjson.GetBytes(ev.JSON, "content.membership").String() != spec.Leave {
			return mxerr.NotFound("room %s is not known to this server", roomID)
		}
	} else if err != nil {
		return err
	}
	m, err := s.store.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	switch m {
	case spec.Join, spec.Invite, spec.Knock:
		return mxerr.Unknown("you must leave room %s before forgetting it", roomID)
	}
	if err := s.store.Forget(ctx, userID, roomID); err != nil {
		return err
	}
	if s.waker != nil {
		s.waker.Wake(userID)
	}
	return nil
}

var errNoChange = errors.New("no change")

// changeMembership sends one m.room.member event for target. check (if
// any) sees the room first and may refuse, fill the content, or say that
// nothing needs to change (errNoChange).
func (s *Service) changeMembership(ctx context.Context, sender, roomID, target, membership, reason string,
	check func(d *draft, content map[string]any) error) error {
	unlock := s.lock(roomID)
	defer unlock()
	d, err := s.loadDraft(ctx, roomID, []string{sender, target})
	if err != nil {
		return err
	}
	content := map[string]any{"membership": membership}
	if reason != "" {
		content["reason"] = reason
	}
	if check != nil {
		if err := check(d, content); errors.Is(err, errNoChange) {
			return nil
		} else if err != nil {
			return err
		}
	}
	if _, err := d.add(sender, spec.MRoomMember, ptr(target), content, "", nil); err != nil {
		return err
	}
	return d.commit(ctx)
}

// restrictedJoin handles joins to rooms with a restricted (or
// knock_restricted) join rule by a user who is not invited (spec: room
// versions 8+, "Restricted rooms"): if the user is joined to a room the
// rule allows, it returns a local member with the power to invite, whom
// the join names as its authoriser. "" when the rule does not apply.
func (s *Service) restrictedJoin(ctx context.Context, d *draft, userID string) (string, error) {
	jr := d.current[stateTuple{spec.MRoomJoinRules, ""}]
	if jr == nil || d.members[userID] == spec.Invite {
		return "", nil
	}
	content := gjson.ParseBytes(jr.Content())
	rule := content.Get("join_rule").String()
	if rule != "restricted" && rule != "knock_restricted" {
		return "", nil
	}
	allowed := false
	for _, a := range content.Get("allow").Array() {
		if a.Get("type").String() != "m.room_membership" {
			continue
		}
		m, err := s.store.Membership(ctx, a.Get("room_id").String(), userID)
		if err != nil {
			return "", err
		}
		if m == spec.Join {
			allowed = true
			break
		}
	}
	if !allowed {
		if rule == "knock_restricted" {
			return "", nil // the auth rules refuse with their reason; knocking stays open
		}
		return "", mxerr.Forbidden("you are not invited and not a member of a room whose members may join")
	}
	// Candidates: creators (privileged in v12) and users with invite power.
	pl := d.powerLevels()
	var candidates []string
	if c := d.current[stateTuple{spec.MRoomCreate, ""}]; c != nil {
		candidates = append(candidates, gomatrixserverlib.CreatorsFromCreateEvent(c)...)
	}
	for u, level := range pl.Users {
		if level >= pl.Invite {
			candidates = append(candidates, u)
		}
	}
	sort.Strings(candidates[min(1, len(candidates)):])
	for _, u := range candidates {
		uid, err := spec.NewUserID(u, true)
		if err != nil || uid.Domain() != s.key.ServerName {
			continue
		}
		m, err := s.store.Membership(ctx, d.roomID, u)
		if err != nil {
			return "", err
		}
		if m == spec.Join && d.userLevelLoaded(u, pl) >= pl.Invite {
			return u, nil
		}
	}
	return "", mxerr.Forbidden("no member of this server can authorise the join")
}
