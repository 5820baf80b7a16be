package federation

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trustcase/node/federation/fedtest"
)

// A peer node being restarted refuses connections; it does not call us
// when it is back (it has nothing to send), so only a short retry brings it
// what was queued while it was down.
func TestQueueRetriesSoonWhileThePeerRefusesConnections(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		a.tr.Queue.MinBackoff = time.Hour // the exponential backoff would not retry within the test
		a.tr.Queue.RefusedBackoff = 10 * time.Millisecond
		inbox := newInbox("!r:a.test")
		b.api.Rooms = inbox

		var mu sync.Mutex
		var refused, other int
		failed := make(chan struct{}, 1)
		a.tr.Queue.afterFail = func(_ string, err error) {
			mu.Lock()
			if errors.Is(err, syscall.ECONNREFUSED) {
				refused++
			} else {
				other++
			}
			mu.Unlock()
			select {
			case failed <- struct{}{}:
			default:
			}
		}
		count := func() (int, int) { mu.Lock(); defer mu.Unlock(); return refused, other }

		// b stops: nothing listens on its port.
		certs := b.srv.TLS.Certificates
		handler := b.srv.Config.Handler
		b.srv.Close()
		a.startQueue(t)
		enqueuePDUs(t, a, "b.test", 0, 1)
		waitFor(t, failed, "two refused attempts", func() bool { r, _ := count(); return r >= 2 })
		if _, o := count(); o != 0 {
			t.Fatalf("%d attempts failed otherwise than with a refused connection", o)
		}

		// b starts again on the same address.
		ln, err := net.Listen("tcp", b.addr)
		if err != nil {
			t.Fatalf("listening on b's address again: %v", err)
		}
		srv := httptest.NewUnstartedServer(handler)
		srv.Listener.Close()
		srv.Listener = ln
		srv.TLS = &tls.Config{Certificates: certs}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		waitFor(t, inbox.changed, "the PDU queued while b was down", func() bool { return len(inbox.received()) == 1 })
	})
}
