package accountdata

import (
	"context"
	"time"
)

// MemberLeft stops the user typing in a room they are no longer joined to
// (rooms.LeaveObserver, told after the leave, kick or ban is committed):
// the room's members see the change on the ephemeral stream, as if the
// user had stopped typing.
func (s *Service) MemberLeft(ctx context.Context, roomID, userID string) error {
	s.ephMu.Lock()
	typing := false
	if rt := s.typing[roomID]; rt != nil {
		_, typing = rt.until[userID]
	}
	s.ephMu.Unlock()
	if !typing {
		return nil // the common case: no stream position spent
	}
	changed, err := s.setTyping(ctx, roomID, userID, false, time.Time{})
	if err != nil || !changed {
		return err
	}
	return s.wakeRoom(ctx, roomID)
}
