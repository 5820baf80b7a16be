-- federation_queue rows of PDUs refer to their event (event_id) instead of
-- carrying a copy: the sender loads the event from the event store when it
-- sends, in its current form (redacted if it was redacted meanwhile), so the
-- ciphertext is stored once and a redaction reaches a peer that was down.
-- From now on payload = '' for a PDU whose event is stored; only EDUs (not
-- stored elsewhere) and PDUs of events this store does not hold keep one.
--
-- Rows queued by an older version: those whose event is stored drop their
-- copy (the sender loads the event, as for new rows); the others keep their
-- payload and are sent from it.
UPDATE federation_queue SET payload = ''
    WHERE kind = 'pdu' AND event_id IN (SELECT event_id FROM events);
