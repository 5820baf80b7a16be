package rooms

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// checkAlias validates alias grammar: #localpart:server, at most 255 bytes.
func (s *Service) checkAlias(alias string) error {
	if len(alias) > 255 || len(alias) < 4 || alias[0] != '#' {
		return mxerr.InvalidParam("%q is not a room alias (#localpart:server, at most 255 bytes)", alias)
	}
	local, server, ok := strings.Cut(alias[1:], ":")
	if !ok || local == "" || server == "" {
		return mxerr.InvalidParam("%q is not a room alias (#localpart:server)", alias)
	}
	for _, r := range local {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '#' {
			return mxerr.InvalidParam("alias localpart %q must not contain whitespace, control characters or #", local)
		}
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok {
		return mxerr.InvalidParam("alias %q has an invalid server name", alias)
	}
	return nil
}

// resolve returns the room of an alias (404 M_NOT_FOUND if unknown); an
// alias of another server is asked of that server.
func (s *Service) resolve(ctx context.Context, alias string) (string, error) {
	if err := s.checkAlias(alias); err != nil {
		return "", err
	}
	if !s.isLocalAlias(alias) {
		roomID, _, err := s.resolveRemote(ctx, alias) // alias_remote.go
		return roomID, err
	}
	a, err := s.store.Alias(ctx, alias)
	if errors.Is(err, storage.ErrNotFound) {
		return "", mxerr.NotFound("room alias %s not found", alias)
	}
	return a.RoomID, err
}

// ResolveAlias returns the room an alias points to and the servers that
// can join it: from the store for our aliases, from the alias's server
// (federation query) for others.
func (s *Service) ResolveAlias(ctx context.Context, alias string) (roomID string, servers []string, err error) {
	if err := s.checkAlias(alias); err != nil {
		return "", nil, err
	}
	if !s.isLocalAlias(alias) {
		return s.resolveRemote(ctx, alias) // alias_remote.go
	}
	return s.ResolveLocalAlias(ctx, alias)
}

// ResolveLocalAlias answers for an alias of this server only (the
// federation directory query): the room and the servers with joined
// members, this one first. Other servers' aliases are 404 M_NOT_FOUND.
func (s *Service) ResolveLocalAlias(ctx context.Context, alias string) (roomID string, servers []string, err error) {
	if err := s.checkAlias(alias); err != nil {
		return "", nil, err
	}
	if !s.isLocalAlias(alias) {
		return "", nil, mxerr.NotFound("room alias %s is not on this server", alias)
	}
	roomID, err = s.resolve(ctx, alias)
	if err != nil {
		return "", nil, err
	}
	own := string(s.key.ServerName)
	servers = []string{own}
	joined, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return "", nil, err
	}
	seen := map[string]bool{own: true}
	var others []string
	for _, u := range joined {
		if srv := serverOf(u); srv != "" && !seen[srv] {
			seen[srv] = true
			others = append(others, srv)
		}
	}
	sort.Strings(others)
	return roomID, append(servers, others...), nil
}

// isLocalAlias tells whether a (checked) alias names this server.
func (s *Service) isLocalAlias(alias string) bool {
	_, server, _ := strings.Cut(alias[1:], ":")
	return server == string(s.key.ServerName)
}

// CreateAlias points a new local alias at a room the user is joined to.
func (s *Service) CreateAlias(ctx context.Context, userID, alias, roomID string) error {
	if err := s.checkAlias(alias); err != nil {
		return err
	}
	if !strings.HasSuffix(alias, ":"+string(s.key.ServerName)) {
		return mxerr.InvalidParam("alias %s is not on this server (%s)", alias, s.key.ServerName)
	}
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	m, err := s.membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if m != spec.Join {
		return mxerr.Forbidden("you are not joined to room %s", roomID)
	}
	err = s.store.CreateAlias(ctx, storage.Alias{Alias: alias, RoomID: roomID, Creator: userID, CreatedTS: s.now().UnixMilli()})
	if errors.Is(err, storage.ErrConflict) {
		return mxerr.New(http.StatusConflict, "M_UNKNOWN", "room alias %s already exists", alias)
	}
	return err
}

// DeleteAlias removes an alias: its creator may, and so may a member whose
// power level allows setting the room's canonical alias.
func (s *Service) DeleteAlias(ctx context.Context, userID, alias string) error {
	if err := s.checkAlias(alias); err != nil {
		return err
	}
	a, err := s.store.Alias(ctx, alias)
	if errors.Is(err, storage.ErrNotFound) {
		return mxerr.NotFound("room alias %s not found", alias)
	}
	if err != nil {
		return err
	}
	if a.Creator != userID {
		allowed, err := s.mayAdminister(ctx, a.RoomID, userID)
		if err != nil {
			return err
		}
		if !allowed {
			return mxerr.Forbidden("only the alias's creator or a room moderator may delete it")
		}
	}
	err = s.store.DeleteAlias(ctx, alias)
	if errors.Is(err, storage.ErrNotFound) {
		return mxerr.NotFound("room alias %s not found", alias)
	}
	return err
}

// RoomAliases lists a room's local aliases for a member.
func (s *Service) RoomAliases(ctx context.Context, userID, roomID string) ([]string, error) {
	if err := checkRoomID(roomID); err != nil {
		return nil, err
	}
	m, err := s.membership(ctx, roomID, userID)
	if err != nil {
		return nil, err
	}
	if m != spec.Join {
		return nil, mxerr.Forbidden("you are not joined to room %s", roomID)
	}
	aliases, err := s.store.RoomAliases(ctx, roomID)
	if aliases == nil {
		aliases = []string{}
	}
	return aliases, err
}

// membership returns the user's membership of a known room (404 otherwise).
func (s *Service) membership(ctx context.Context, roomID, userID string) (string, error) {
	if _, err := s.store.RoomVersion(ctx, roomID); errors.Is(err, storage.ErrNotFound) {
		return "", mxerr.NotFound("room %s is not known to this server", roomID)
	} else if err != nil {
		return "", err
	}
	return s.store.Membership(ctx, roomID, userID)
}

// mayAdminister tells whether a joined member's power level allows setting
// the room's canonical alias (the level used for directory changes).
func (s *Service) mayAdminister(ctx context.Context, roomID, userID string) (bool, error) {
	d, err := s.loadDraft(ctx, roomID, []string{userID})
	if err != nil {
		return false, err
	}
	if d.members[userID] != spec.Join {
		return false, nil
	}
	pl := d.powerLevels()
	return d.userLevel(userID) >= pl.EventLevel(spec.MRoomCanonicalAlias, true), nil
}

// Visibility tells whether the room is published in the room directory.
func (s *Service) Visibility(ctx context.Context, roomID string) (string, error) {
	if err := checkRoomID(roomID); err != nil {
		return "", err
	}
	public, err := s.store.IsPublic(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return "", mxerr.NotFound("room %s is not known to this server", roomID)
	}
	if err != nil {
		return "", err
	}
	if public {
		return "public", nil
	}
	return "private", nil
}

// SetVisibility publishes or withdraws a room (moderators only).
func (s *Service) SetVisibility(ctx context.Context, userID, roomID, visibility string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if visibility != "public" && visibility != "private" {
		return mxerr.InvalidParam("visibility must be \"public\" or \"private\"")
	}
	if _, err := s.membership(ctx, roomID, userID); err != nil {
		return err
	}
	allowed, err := s.mayAdminister(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if !allowed {
		return mxerr.Forbidden("changing the directory visibility needs the power to set the canonical alias")
	}
	return s.store.SetPublic(ctx, roomID, visibility == "public")
}

// PublicRoom is one entry of GET /publicRooms.
type PublicRoom struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"`
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	NumJoinedMembers int    `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
	JoinRule         string `json:"join_rule,omitempty"`
	RoomType         string `json:"room_type,omitempty"`
}

// PublicRoomsQuery is a page request of the room directory.
type PublicRoomsQuery struct {
	Limit int
	// Since is a next_batch or prev_batch token from an earlier page.
	Since string
	// Search keeps rooms whose name, topic or canonical alias contains it
	// (case-insensitive).
	Search string
}

// PublicRoomsPage is one page of the room directory.
type PublicRoomsPage struct {
	Chunk     []PublicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	Total     int          `json:"total_room_count_estimate"`
}

// PublicRoomsPage answers a page of the room directory, largest rooms
// first. Tokens are offsets into that order.
func (s *Service) PublicRoomsPage(ctx context.Context, q PublicRoomsQuery) (PublicRoomsPage, error) {
	offset := 0
	if q.Since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(q.Since, "o"))
		if err != nil || n < 0 || !strings.HasPrefix(q.Since, "o") {
			return PublicRoomsPage{}, mxerr.InvalidParam("since: not a token this server issued")
		}
		offset = n
	}
	if q.Limit < 0 {
		return PublicRoomsPage{}, mxerr.InvalidParam("limit must not be negative")
	}
	all, err := s.PublicRooms(ctx)
	if err != nil {
		return PublicRoomsPage{}, err
	}
	term := strings.ToLower(q.Search)
	list := all[:0]
	for _, pr := range all {
		if term == "" || strings.Contains(strings.ToLower(pr.Name+"\n"+pr.Topic+"\n"+pr.CanonicalAlias), term) {
			list = append(list, pr)
		}
	}
	sort.SliceStable(list, func(i, j int) bool { return list[i].NumJoinedMembers > list[j].NumJoinedMembers })
	page := PublicRoomsPage{Total: len(list), Chunk: []PublicRoom{}}
	offset = min(offset, len(list))
	end := len(list)
	if q.Limit > 0 {
		end = min(len(list), offset+q.Limit)
		if offset > 0 {
			page.PrevBatch = "o" + strconv.Itoa(max(0, offset-q.Limit))
		}
	}
	if end < len(list) {
		page.NextBatch = "o" + strconv.Itoa(end)
	}
	page.Chunk = append(page.Chunk, list[offset:end]...)
	return page, nil
}

// PublicRooms lists the published rooms with their summary.
func (s *Service) PublicRooms(ctx context.Context) ([]PublicRoom, error) {
	ids, err := s.store.PublicRooms(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]PublicRoom, 0, len(ids))
	for _, id := range ids {
		evs, err := s.store.CurrentState(ctx, id)
		if err != nil {
			return nil, err
		}
		pr := PublicRoom{RoomID: id}
		for _, ev := range evs {
			if ev.StateKey == nil {
				continue
			}
			c := contentOf(ev)
			switch {
			case ev.Type == spec.MRoomMember && c.Get("membership").String() == spec.Join:
				pr.NumJoinedMembers++
			case *ev.StateKey != "":
			case ev.Type == spec.MRoomName:
				pr.Name = c.Get("name").String()
			case ev.Type == spec.MRoomTopic:
				pr.Topic = c.Get("topic").String()
			case ev.Type == spec.MRoomCanonicalAlias:
				pr.CanonicalAlias = c.Get("alias").String()
			case ev.Type == "m.room.avatar":
				pr.AvatarURL = c.Get("url").String()
			case ev.Type == spec.MRoomHistoryVisibility:
				pr.WorldReadable = c.Get("history_visibility").String() == "world_readable"
			case ev.Type == "m.room.guest_access":
				pr.GuestCanJoin = c.Get("guest_access").String() == "can_join"
			case ev.Type == spec.MRoomJoinRules:
				pr.JoinRule = c.Get("join_rule").String()
			case ev.Type == spec.MRoomCreate:
				pr.RoomType = c.Get("type").String()
			}
		}
		out = append(out, pr)
	}
	return out, nil
}

// aliasClient is the part of the federation client that asks another
// server for its aliases (*federation.Client has it through GMSL).
type aliasClient interface {
	LookupRoomAlias(ctx context.Context, origin, s spec.ServerName, roomAlias string) (fclient.RespDirectory, error)
}

// resolveRemote asks the alias's server for the room and the servers to
// join it through (spec: server-server API, "Querying for information").
// The alias's server comes first in the list when the answer omits it.
func (s *Service) resolveRemote(ctx context.Context, alias string) (string, []string, error) {
	_, server, _ := strings.Cut(alias[1:], ":")
	var client aliasClient
	if s.fed != nil {
		client, _ = s.fed.client.(aliasClient)
	}
	if client == nil {
		return "", nil, mxerr.NotFound("room alias %s is on another server and this server does not federate", alias)
	}
	dest := spec.ServerName(server)
	res, err := client.LookupRoomAlias(ctx, s.key.ServerName, dest, alias)
	if err != nil {
		s.log.WithField("server", server).WithError(err).Info("remote alias lookup failed")
		return "", nil, remoteErr(dest, "the alias query", err)
	}
	if checkRoomID(res.RoomID) != nil {
		return "", nil, mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered the alias query with an invalid room id", server)
	}
	servers := make([]string, 0, len(res.Servers)+1)
	seen := map[string]bool{}
	for _, srv := range res.Servers {
		if _, _, ok := spec.ParseAndValidateServerName(srv); ok && !seen[string(srv)] {
			seen[string(srv)] = true
			servers = append(servers, string(srv))
		}
	}
	if !seen[server] {
		servers = append([]string{server}, servers...)
	}
	return res.RoomID, servers, nil
}
