package rooms

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// CreateRequest is the body of POST /createRoom.
type CreateRequest struct {
	Visibility                string                     `json:"visibility"`
	RoomAliasName             string                     `json:"room_alias_name"`
	Name                      string                     `json:"name"`
	Topic                     string                     `json:"topic"`
	Invite                    []string                   `json:"invite"`
	RoomVersion               string                     `json:"room_version"`
	CreationContent           map[string]json.RawMessage `json:"creation_content"`
	InitialState              []InitialState             `json:"initial_state"`
	Preset                    string                     `json:"preset"`
	IsDirect                  bool                       `json:"is_direct"`
	PowerLevelContentOverride map[string]json.RawMessage `json:"power_level_content_override"`
}

// InitialState is one state event of createRoom's initial_state.
type InitialState struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

type stateTuple struct{ typ, stateKey string }

func ptr(s string) *string { return &s }

// CreateRoom creates a room for userID and returns its id. Events follow the
// order of spec client-server API "Creation": create, the creator's join,
// power levels, canonical alias, preset and initial state, name, topic,
// invites. All of them are persisted in one transaction.
func (s *Service) CreateRoom(ctx context.Context, userID string, req CreateRequest) (string, error) {
	public := false
	switch req.Visibility {
	case "", "private":
	case "public":
		public = true
	default:
		return "", mxerr.InvalidParam("visibility must be \"public\" or \"private\"")
	}
	preset := req.Preset
	switch preset {
	case "":
		preset = "private_chat"
		if public {
			preset = "public_chat"
		}
	case "private_chat", "trusted_private_chat", "public_chat":
	default:
		return "", mxerr.InvalidParam("unknown preset %q", req.Preset)
	}
	version := req.RoomVersion
	if version == "" {
		version = s.DefaultVersion()
	}
	d, err := s.newDraft(version, public)
	if err != nil {
		return "", err
	}
	alias := ""
	if req.RoomAliasName != "" {
		alias = "#" + req.RoomAliasName + ":" + string(s.key.ServerName)
		if err := s.checkAlias(alias); err != nil {
			return "", mxerr.InvalidParam("room_alias_name: %s", err.(*mxerr.Error).Msg)
		}
		if _, err := s.store.Alias(ctx, alias); err == nil {
			return "", mxerr.New(http.StatusBadRequest, "M_ROOM_IN_USE", "alias %s is already taken", alias)
		} else if !errors.Is(err, storage.ErrNotFound) {
			return "", err
		}
	}
	invites := make([]string, 0, len(req.Invite))
	var remoteInvites []string // invited over federation once the room exists
	seen := map[string]bool{userID: true}
	for _, u := range req.Invite {
		remote := s.canInviteRemote(u)
		if remote {
			if _, err := spec.NewUserID(u, true); err != nil {
				return "", mxerr.InvalidParam("%q is not a valid user id", u)
			}
		} else if err := s.checkInvitee(ctx, u); err != nil {
			return "", err
		}
		if seen[u] {
			continue
		}
		seen[u] = true
		if remote {
			remoteInvites = append(remoteInvites, u)
		} else {
			invites = append(invites, u)
		}
	}
	initial := map[stateTuple]json.RawMessage{}
	var initialOrder []stateTuple
	for i, st := range req.InitialState {
		if st.Type == "" || len(st.Type) > 255 || len(st.StateKey) > 255 {
			return "", mxerr.New(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "initial_state[%d]: type must be 1-255 bytes and state_key at most 255", i)
		}
		if st.Type == spec.MRoomCreate || st.Type == spec.MRoomMember {
			return "", mxerr.New(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "initial_state[%d]: %s cannot be set here", i, st.Type)
		}
		if len(st.Content) == 0 || st.Content[0] != '{' {
			return "", mxerr.New(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "initial_state[%d]: content must be an object", i)
		}
		t := stateTuple{st.Type, st.StateKey}
		if _, ok := initial[t]; !ok {
			initialOrder = append(initialOrder, t)
		}
		initial[t] = st.Content
	}

	// 1. m.room.create
	create := map[string]any{}
	for k, v := range req.CreationContent {
		create[k] = v
	}
	create["room_version"] = version
	switch version {
	case "10":
		create["creator"] = userID
	default:
		delete(create, "creator")
	}
	if version == "12" && preset == "trusted_private_chat" && len(invites) > 0 {
		// v12 creators are privileged: trusted invitees become additional creators.
		create["additional_creators"] = invites
	}
	if version != "12" {
		d.roomID = "!" + randomString(18) + ":" + string(s.key.ServerName)
	}
	if _, err := d.add(userID, spec.MRoomCreate, ptr(""), create, "", nil); err != nil {
		return "", invalidState(err)
	}
	// The auth rules of every later event read the create content: it must parse.
	if _, err := gomatrixserverlib.NewCreateContentFromAuthEvents(d.state, userIDForSender); err != nil {
		return "", mxerr.New(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "creation_content: %v", err)
	}
	// 2. the creator joins
	join := map[string]any{"membership": spec.Join}
	s.addProfile(ctx, userID, join)
	if _, err := d.add(userID, spec.MRoomMember, ptr(userID), join, "", nil); err != nil {
		return "", err
	}
	// 3. power levels
	if _, err := d.add(userID, spec.MRoomPowerLevels, ptr(""), s.powerLevelContent(version, userID, preset, invites, req.PowerLevelContentOverride), "", nil); err != nil {
		return "", invalidState(err)
	}
	// 4. canonical alias
	if alias != "" {
		if _, err := d.add(userID, spec.MRoomCanonicalAlias, ptr(""), map[string]any{"alias": alias}, "", nil); err != nil {
			return "", invalidState(err)
		}
	}
	// 5. preset events, each overridden by initial_state
	presetState := []struct {
		t       stateTuple
		content map[string]any
	}{
		{stateTuple{spec.MRoomJoinRules, ""}, map[string]any{"join_rule": map[bool]string{true: "public", false: "invite"}[preset == "public_chat"]}},
		{stateTuple{spec.MRoomHistoryVisibility, ""}, map[string]any{"history_visibility": "shared"}},
		{stateTuple{"m.room.guest_access", ""}, map[string]any{"guest_access": map[bool]string{true: "forbidden", false: "can_join"}[preset == "public_chat"]}},
	}
	for _, ps := range presetState {
		if _, ok := initial[ps.t]; ok {
			continue
		}
		if _, err := d.add(userID, ps.t.typ, ptr(ps.t.stateKey), ps.content, "", nil); err != nil {
			return "", invalidState(err)
		}
	}
	for _, t := range initialOrder {
		if _, err := d.add(userID, t.typ, ptr(t.stateKey), initial[t], "", nil); err != nil {
			return "", invalidState(err)
		}
	}
	// 6. name and topic
	if req.Name != "" {
		if _, err := d.add(userID, spec.MRoomName, ptr(""), map[string]any{"name": req.Name}, "", nil); err != nil {
			return "", invalidState(err)
		}
	}
	if req.Topic != "" {
		topic := map[string]any{"topic": req.Topic,
			"m.topic": map[string]any{"m.text": []map[string]string{{"body": req.Topic, "mimetype": "text/plain"}}}}
		if _, err := d.add(userID, spec.MRoomTopic, ptr(""), topic, "", nil); err != nil {
			return "", invalidState(err)
		}
	}
	// 7. invites
	for _, u := range invites {
		content := map[string]any{"membership": spec.Invite}
		if req.IsDirect {
			content["is_direct"] = true
		}
		s.addProfile(ctx, u, content)
		if _, err := d.add(userID, spec.MRoomMember, ptr(u), content, "", nil); err != nil {
			return "", err
		}
	}

	unlock := sync.OnceFunc(s.lock(d.roomID))
	defer unlock()
	if alias != "" {
		err := s.store.CreateAlias(ctx, storage.Alias{Alias: alias, RoomID: d.roomID, Creator: userID, CreatedTS: s.now().UnixMilli()})
		if errors.Is(err, storage.ErrConflict) {
			return "", mxerr.New(http.StatusBadRequest, "M_ROOM_IN_USE", "alias %s is already taken", alias)
		}
		if err != nil {
			return "", err
		}
	}
	if err := d.commit(ctx); err != nil {
		if alias != "" {
			_ = s.store.DeleteAlias(context.WithoutCancel(ctx), alias)
		}
		return "", err
	}
	s.log.WithField("room_id", d.roomID).WithField("room_version", version).Info("room created")
	unlock()
	// The room exists now, whatever other servers answer: a refused or
	// unreachable invitee is logged and the room is still the client's
	// (answering an error would leave the client a room it does not know of).
	for _, u := range remoteInvites {
		if err := s.Invite(ctx, userID, d.roomID, u, ""); err != nil {
			s.log.WithField("room_id", d.roomID).WithField("server", serverOf(u)).WithError(err).Warn("inviting a user of another server into a new room failed")
		}
	}
	return d.roomID, nil
}

// canInviteRemote tells whether userID belongs to another server that this
// node can send an invite to.
func (s *Service) canInviteRemote(userID string) bool {
	srv := serverOf(userID)
	return srv != "" && srv != string(s.key.ServerName) && s.fed != nil && s.fed.client != nil
}

// invalidState turns an auth refusal while creating a room (a bad
// initial_state or power level override) into 400 M_INVALID_ROOM_STATE.
func invalidState(err error) error {
	var mx *mxerr.Error
	if errors.As(err, &mx) && mx.Code == "M_FORBIDDEN" {
		return mxerr.New(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "%s", mx.Msg)
	}
	return err
}

// powerLevelContent is the room's first m.room.power_levels: the defaults
// for the preset, with the override's top-level keys replacing them.
func (s *Service) powerLevelContent(version, creator, preset string, invites []string, override map[string]json.RawMessage) map[string]any {
	users := map[string]any{}
	if version != "12" { // v12 creators are privileged and must not be listed
		users[creator] = 100
		if preset == "trusted_private_chat" {
			for _, u := range invites {
				users[u] = 100
			}
		}
	}
	invite := 0
	if preset == "public_chat" {
		invite = 50
	}
	pl := map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         invite,
		"events": map[string]any{
			spec.MRoomName:              50,
			spec.MRoomPowerLevels:       100,
			spec.MRoomHistoryVisibility: 100,
			spec.MRoomCanonicalAlias:    50,
			"m.room.avatar":             50,
			"m.room.tombstone":          100,
			"m.room.server_acl":         100,
			"m.room.encryption":         100,
		},
		"notifications": map[string]any{"room": 50},
	}
	for k, v := range override {
		pl[k] = v
	}
	return pl
}

// addProfile puts the user's display name and avatar into member content.
func (s *Service) addProfile(ctx context.Context, userID string, content map[string]any) {
	if s.profiles == nil {
		return
	}
	name, avatar, err := s.profiles.Profile(ctx, userID)
	if err != nil {
		return
	}
	if name != "" {
		content["displayname"] = name
	}
	if avatar != "" {
		content["avatar_url"] = avatar
	}
}

// checkInvitee validates a user id to invite: well formed, local (inviting
// users of other servers needs federation, not built yet) and known.
func (s *Service) checkInvitee(ctx context.Context, userID string) error {
	uid, err := spec.NewUserID(userID, true)
	if err != nil {
		return mxerr.InvalidParam("%q is not a valid user id", userID)
	}
	if uid.Domain() != s.key.ServerName {
		return mxerr.Forbidden("cannot invite %s: inviting users of other servers needs federation, which this node does not support yet", userID)
	}
	if s.profiles != nil {
		if _, _, err := s.profiles.Profile(ctx, userID); errors.Is(err, storage.ErrNotFound) {
			return mxerr.NotFound("user %s does not exist", userID)
		} else if err != nil {
			return err
		}
	}
	return nil
}

const idChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(idChars[int(c)%len(idChars)])
	}
	return sb.String()
}
