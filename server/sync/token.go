package sync

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/trustcase/node/server/mxerr"
)

// Token is a /sync position: one stream position per kind. It survives
// restarts because every position is a database position.
type Token struct {
	Timeline    int64 // events.event_nid
	AccountData int64
	Ephemeral   int64
	ToDevice    int64
	DeviceLists int64
}

// String encodes the token as s<timeline>_<account data>_<ephemeral>_<to-device>_<device lists>.
func (t Token) String() string {
	return fmt.Sprintf("s%d_%d_%d_%d_%d", t.Timeline, t.AccountData, t.Ephemeral, t.ToDevice, t.DeviceLists)
}

// ParseToken reads a sync token; anything malformed is 400 M_INVALID_PARAM.
func ParseToken(s string) (Token, error) {
	bad := mxerr.InvalidParam("since: %q is not a sync token from this server", s)
	rest, ok := strings.CutPrefix(s, "s")
	if !ok {
		return Token{}, bad
	}
	parts := strings.Split(rest, "_")
	if len(parts) != 5 {
		return Token{}, bad
	}
	var v [5]int64
	for i, p := range parts {
		n, err := parsePos(p)
		if err != nil {
			return Token{}, bad
		}
		v[i] = n
	}
	return Token{v[0], v[1], v[2], v[3], v[4]}, nil
}

func parsePos(p string) (int64, error) {
	if p == "" || p[0] == '+' || p[0] == '-' {
		return 0, fmt.Errorf("bad position")
	}
	return strconv.ParseInt(p, 10, 64)
}

// pageToken is a position in a room's timeline for /messages and /context:
// t<nid> stands between the event with that nid and the next one.
func pageToken(nid int64) string { return "t" + strconv.FormatInt(nid, 10) }

// parsePageToken accepts a t<nid> pagination token or a sync token (whose
// timeline position is used), as clients page from a sync's prev_batch or
// next_batch.
func parsePageToken(param, s string) (int64, error) {
	if rest, ok := strings.CutPrefix(s, "t"); ok {
		if n, err := parsePos(rest); err == nil {
			return n, nil
		}
		if n, err := parsePos(strings.TrimPrefix(rest, "-")); err == nil && rest != "" && rest[0] == '-' {
			return -n, nil // in backfilled history
		}
	}
	if tok, err := ParseToken(s); err == nil {
		return tok.Timeline, nil
	}
	return 0, mxerr.InvalidParam("%s: %q is not a pagination token from this server", param, s)
}
