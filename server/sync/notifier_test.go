package sync

import (
	"context"
	"testing"
	"time"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestNotifier(t *testing.T) {
	t.Run("Wake closes exactly the woken users' channels", func(t *testing.T) {
		n := NewNotifier()
		a, relA := n.Listen("@a:x")
		a2, relA2 := n.Listen("@a:x")
		b, relB := n.Listen("@b:x")
		defer relA()
		defer relA2()
		defer relB()
		n.Wake("@a:x", "@nobody:x")
		if !closed(a) || !closed(a2) {
			t.Fatal("@a's listeners were not woken")
		}
		if closed(b) {
			t.Fatal("@b was woken by a wake for @a")
		}
	})

	t.Run("a wake between the read and the wait is not lost", func(t *testing.T) {
		n := NewNotifier()
		ch, release := n.Listen("@a:x") // taken before "reading the database"
		defer release()
		n.Wake("@a:x") // lands while the request reads
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("the wake was lost")
		}
		// The next Listen waits for the next wake.
		ch2, release2 := n.Listen("@a:x")
		defer release2()
		if closed(ch2) {
			t.Fatal("a new listener saw an old wake")
		}
	})

	t.Run("a blocked waiter is woken", func(t *testing.T) {
		n := NewNotifier()
		done := make(chan struct{})
		ready := make(chan struct{})
		go func() {
			ch, release := n.Listen("@a:x")
			defer release()
			close(ready)
			<-ch
			close(done)
		}()
		<-ready
		n.Wake("@a:x")
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the waiter was not woken")
		}
	})

	t.Run("released listeners leave nothing behind", func(t *testing.T) {
		n := NewNotifier()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			ch, release := n.Listen("@a:x")
			defer release()
			select {
			case <-ch:
			case <-ctx.Done():
			}
			close(done)
		}()
		cancel()
		<-done
		_, r1 := n.Listen("@b:x")
		_, r2 := n.Listen("@b:x")
		r1()
		r1() // releasing twice is harmless
		if n.listeners() != 1 {
			t.Fatalf("listeners = %d, want 1 (@b still held)", n.listeners())
		}
		r2()
		if n.listeners() != 0 {
			t.Fatalf("listeners = %d after every release, want 0", n.listeners())
		}
		// Wake of a woken-then-released user leaves nothing either.
		_, r3 := n.Listen("@c:x")
		n.Wake("@c:x")
		r3()
		if n.listeners() != 0 {
			t.Fatalf("listeners = %d, want 0", n.listeners())
		}
	})
}
