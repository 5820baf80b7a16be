package keys

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// toDeviceTxnLifetime is how long a to-device txn id is remembered: clients
// retry a failed send within minutes; older ids are forgotten so the table
// does not grow with every send.
const toDeviceTxnLifetime = 24 * time.Hour

// SendToDevice queues a message for each addressed device
// (PUT /sendToDevice/{eventType}/{txnId}); device "*" means every device of
// the user. The txn id makes it idempotent per sending device. Unknown
// local users and devices are skipped; messages for remote users are queued
// as m.direct_to_device EDUs for their servers (sendRemoteToDevice). If a
// target device's queue is full, nothing is queued locally: 429
// M_LIMIT_EXCEEDED (see DefaultMaxQueuedToDevice).
func (s *Service) SendToDevice(ctx context.Context, senderUserID, senderDeviceID, eventType, txnID string, messages map[string]map[string]json.RawMessage) error {
	return s.sendToDevice(ctx, senderUserID, senderDeviceID, eventType, txnID, messages, true)
}

// sendToDevice queues messages for local devices and, when toRemote, for
// remote users' servers; otherwise remote users are skipped (an inbound
// EDU is never relayed).
func (s *Service) sendToDevice(ctx context.Context, senderUserID, senderDeviceID, eventType, txnID string, messages map[string]map[string]json.RawMessage, toRemote bool) error {
	if eventType == "" {
		return mxerr.InvalidParam("eventType must not be empty")
	}
	var local []string
	total := 0
	for u, devs := range messages {
		total += len(devs)
		if s.localUser(u) {
			local = append(local, u)
		}
		for d, content := range devs {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(content, &obj); err != nil || obj == nil {
				return mxerr.BadJSON("messages.%s.%s must be a JSON object", u, d)
			}
		}
	}
	if total > maxToDeviceTarget {
		return mxerr.InvalidParam("messages: at most %d devices per request", maxToDeviceTarget)
	}
	if toRemote {
		// Queued before the txn id is recorded: a client retrying after a
		// failure below queues them again, with the same message_id, which
		// the receiving server deduplicates.
		if err := s.sendRemoteToDevice(ctx, senderUserID, senderDeviceID, eventType, txnID, messages); err != nil {
			return err
		}
	}
	sort.Strings(local)
	devices, err := s.store.LocalDevices(ctx, local)
	if err != nil {
		return err
	}
	var msgs []storage.ToDeviceMessage
	var woken []string
	for _, u := range local {
		targets := map[string]json.RawMessage{}
		for d, content := range messages[u] {
			if d == "*" {
				for dev := range devices[u] {
					if _, explicit := messages[u][dev]; !explicit {
						targets[dev] = content
					}
				}
				continue
			}
			if _, ok := devices[u][d]; ok {
				targets[d] = content
			}
		}
		devs := make([]string, 0, len(targets))
		for d := range targets {
			devs = append(devs, d)
		}
		sort.Strings(devs)
		for _, d := range devs {
			ev, err := json.Marshal(map[string]any{"type": eventType, "sender": senderUserID, "content": targets[d]})
			if err != nil {
				return mxerr.BadJSON("messages.%s.%s: %v", u, d, err)
			}
			msgs = append(msgs, storage.ToDeviceMessage{UserID: u, DeviceID: d, Event: ev})
		}
		if len(devs) > 0 {
			woken = append(woken, u)
		}
	}
	now := time.Now().UnixMilli()
	dup, err := s.store.QueueToDevice(ctx, storage.ToDeviceSend{
		SenderUserID: senderUserID, SenderDeviceID: senderDeviceID, TxnID: txnID,
		NowMS: now, ForgetTxnsBeforeMS: now - toDeviceTxnLifetime.Milliseconds(),
		MaxQueued: s.cfg.MaxQueuedToDevice,
	}, msgs)
	if errors.Is(err, storage.ErrQueueFull) {
		s.log.WithField("sender", senderUserID).WithField("targets", woken).Warn("keys: to-device send refused: a target device's queue is full")
		e := mxerr.LimitExceeded(30000)
		e.Msg = "a target device has too many undelivered to-device messages; retry later"
		return e
	}
	if err != nil {
		return err
	}
	if !dup {
		s.wake(woken...)
	}
	return nil
}
