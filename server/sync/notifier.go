package sync

import stdsync "sync"

// Notifier wakes long-polling /sync requests when something they care about
// commits. It is in memory only: the database is the source of truth, so a
// request takes its channel (Listen) BEFORE it reads the database; a Wake
// that lands between the read and the wait has already closed the channel.
//
// Services call Wake AFTER their commit, with every local user whose /sync
// changes: rooms wakes the room's joined members and the target of a
// membership change (the invitee, the kicked or banned user, the leaver);
// keys wakes the recipients of to-device messages and the users who share a
// room with a user whose devices changed; account data wakes its owner and,
// for receipts and typing, the room's members.
type Notifier struct {
	mu      stdsync.Mutex
	waiters map[string]*waiter
	// wakes counts the Wakes of each user (whether anyone listened).
	wakes map[string]uint64
}

// waiter is the channel all current listeners of one user share; Wake
// closes it and the next Listen makes a fresh one.
type waiter struct {
	ch chan struct{}
	n  int // listeners holding ch
}

// NewNotifier builds an idle notifier.
func NewNotifier() *Notifier {
	return &Notifier{waiters: map[string]*waiter{}, wakes: map[string]uint64{}}
}

// Wake tells the notifier that these users have something new: every
// channel Listen gave out for them is closed.
func (n *Notifier) Wake(userIDs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, u := range userIDs {
		n.wakes[u]++
		if w, ok := n.waiters[u]; ok {
			close(w.ch)
			delete(n.waiters, u)
		}
	}
}

// Listen returns a channel closed at the next Wake of userID, and a release
// function the caller must call when it stops waiting (it frees the entry
// once nobody listens, so cancelled requests leak nothing).
func (n *Notifier) Listen(userID string) (<-chan struct{}, func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w, ok := n.waiters[userID]
	if !ok {
		w = &waiter{ch: make(chan struct{})}
		n.waiters[userID] = w
	}
	w.n++
	var once stdsync.Once
	return w.ch, func() {
		once.Do(func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			w.n--
			if w.n == 0 && n.waiters[userID] == w {
				delete(n.waiters, userID)
			}
		})
	}
}

// wakeCount is how many times userID was woken so far.
func (n *Notifier) wakeCount(userID string) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.wakes[userID]
}

// listeners counts the users with someone waiting (for tests).
func (n *Notifier) listeners() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.waiters)
}
