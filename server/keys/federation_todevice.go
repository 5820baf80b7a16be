package keys

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sort"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// toDeviceMessageID is the message_id of the m.direct_to_device EDUs of one
// PUT /sendToDevice: unique per sending device and txn id, and the same when
// the client retries, so the receiving server queues the messages once.
func toDeviceMessageID(senderUserID, senderDeviceID, txnID string) string {
	h := sha256.Sum256([]byte(senderUserID + "\x00" + senderDeviceID + "\x00" + txnID))
	return base64.RawURLEncoding.EncodeToString(h[:18])
}

// sendRemoteToDevice queues the messages for remote users as one
// m.direct_to_device EDU per destination server, persisted before it
// returns. Without federation they are skipped (logged).
func (s *Service) sendRemoteToDevice(ctx context.Context, senderUserID, senderDeviceID, eventType, txnID string, messages map[string]map[string]json.RawMessage) error {
	byServer := map[string]map[string]map[string]json.RawMessage{}
	for u, devs := range messages {
		if s.localUser(u) || len(devs) == 0 {
			continue
		}
		server := serverOf(u)
		if server == "" {
			continue // not a user ID: nobody to deliver to
		}
		if byServer[server] == nil {
			byServer[server] = map[string]map[string]json.RawMessage{}
		}
		byServer[server][u] = devs
	}
	if len(byServer) == 0 {
		return nil
	}
	if s.fed == nil || s.fed.queue == nil {
		s.log.WithField("sender", senderUserID).Info("keys: to-device messages for remote users skipped: no federation")
		return nil
	}
	servers := make([]string, 0, len(byServer))
	for server := range byServer {
		servers = append(servers, server)
	}
	sort.Strings(servers)
	msgID := toDeviceMessageID(senderUserID, senderDeviceID, txnID)
	for _, server := range servers {
		content := map[string]any{
			"sender":     senderUserID,
			"type":       eventType,
			"message_id": msgID,
			"messages":   byServer[server],
		}
		if err := s.fed.queue.EnqueueEDU(ctx, []string{server}, "m.direct_to_device", content); err != nil {
			return err
		}
	}
	return nil
}

// ReceiveToDevice takes an inbound m.direct_to_device EDU into the local
// to-device queues (federation.ToDeviceReceiver). The EDU's message_id is
// the txn id of the remote sender (whose device the EDU does not name), so
// a repeated EDU is queued once. Users of other servers are skipped: an
// EDU is never relayed.
func (s *Service) ReceiveToDevice(ctx context.Context, origin spec.ServerName, sender, eventType, messageID string, messages map[string]map[string]json.RawMessage) error {
	if messageID == "" {
		return errors.New("m.direct_to_device without message_id")
	}
	if serverOf(sender) != string(origin) {
		return errors.New("m.direct_to_device sender is not a user of the origin")
	}
	local := make(map[string]map[string]json.RawMessage, len(messages))
	for u, devs := range messages {
		if s.localUser(u) {
			local[u] = devs
		}
	}
	return s.sendToDevice(ctx, sender, "", eventType, messageID, local, false)
}
