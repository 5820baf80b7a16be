package sync

import (
	"context"
	stdsync "sync"
)

// maxUnreadEntries bounds each generation of the unread cache: two
// generations of at most this many (user, room) counts, about 150 bytes
// each.
const maxUnreadEntries = 1 << 15

// unreadCount is the room's notification count for userID at stream
// position to (storage.SyncStore.UnreadCount), without reading the room's
// whole unread backlog on every sync. The cache keeps, per user and room,
// the count at the last position counted and the lower bound it counted
// from; the next sync reads, in one query, the lower bound again and the
// events after the cached position, and adds them. It counts from scratch
// when something could have changed an event it counted: a different
// lower bound (a receipt or the first membership moved), a redaction after
// the cached position, or a position older than the cached one.
//
// This is exact as long as the events at or below a position stay as they
// were, but for redactions: the timeline's nids are handed out and
// committed in order by the one writer, and an event's outlier and
// rejected flags never change in place (an outlier that joins the timeline
// is stored again at a new nid).
func (s *Service) unreadCount(ctx context.Context, roomID, userID string, to int64) (int, error) {
	key := [2]string{userID, roomID}
	if c, ok := s.unread.get(key); ok && c.upTo <= to {
		r, err := s.store.UnreadSince(ctx, roomID, userID, c.upTo, to)
		if err != nil {
			return 0, err
		}
		switch {
		case r.LowerBound == c.lower && !r.Redactions:
			n := c.count + r.Count
			s.unread.put(key, unreadEntry{lower: r.LowerBound, upTo: to, count: n})
			return n, nil
		case r.LowerBound >= c.upTo:
			// The lower bound moved past the cached position (the user
			// read up to a newer event): the slice's count is the whole
			// count, read now.
			s.unread.put(key, unreadEntry{lower: r.LowerBound, upTo: to, count: r.Count})
			return r.Count, nil
		}
	}
	r, err := s.store.UnreadSince(ctx, roomID, userID, 0, to)
	if err != nil {
		return 0, err
	}
	s.unread.put(key, unreadEntry{lower: r.LowerBound, upTo: to, count: r.Count})
	return r.Count, nil
}

// unreadEntry is a count of the events in (lower, upTo].
type unreadEntry struct {
	lower, upTo int64
	count       int
}

// unreadCache is a bounded map in two generations: when the current one
// is full it becomes the previous one (the older previous one is dropped),
// and a hit in the previous generation moves back to the current one. The
// zero value is ready to use.
type unreadCache struct {
	mu        stdsync.Mutex
	cur, prev map[[2]string]unreadEntry
	limit     int // per generation; 0: maxUnreadEntries
}

func (c *unreadCache) get(key [2]string) (unreadEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cur[key]; ok {
		return e, true
	}
	e, ok := c.prev[key]
	return e, ok
}

func (c *unreadCache) put(key [2]string, e unreadEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := c.limit
	if limit <= 0 {
		limit = maxUnreadEntries
	}
	if _, ok := c.cur[key]; !ok && len(c.cur) >= limit {
		c.prev, c.cur = c.cur, nil
	}
	if c.cur == nil {
		c.cur = make(map[[2]string]unreadEntry)
	}
	c.cur[key] = e
	delete(c.prev, key)
}

// len is how many entries the cache holds (for tests).
func (c *unreadCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.prev)
}
