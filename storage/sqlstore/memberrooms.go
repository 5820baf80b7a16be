package sqlstore

import (
	"context"
	"fmt"
	"strings"
)

// MemberRooms reads the user-side index of current_state
// (state_key, type, membership).
func (s *roomStore) MemberRooms(ctx context.Context, userID string, memberships []string) ([]string, error) {
	if len(memberships) == 0 {
		return nil, nil
	}
	args := []any{userID}
	marks := make([]string, len(memberships))
	for i, m := range memberships {
		args = append(args, m)
		marks[i] = fmt.Sprintf("$%d", i+2)
	}
	rows, err := s.db.R.QueryContext(ctx, `SELECT room_id FROM current_state
		WHERE state_key = $1 AND type = 'm.room.member' AND membership IN (`+strings.Join(marks, ", ")+`)
		ORDER BY room_id`, args...)
	if err != nil {
		return nil, err
	}
	return scanStrings(rows)
}
