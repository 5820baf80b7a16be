-- Federation transport: the key cache, inbound transaction results and the
-- per-destination outgoing queue.

-- Verify keys of other servers, as fetched (directly or via a notary). A key
-- that is current has expired_ts = 0 and a valid_until_ts; an old key (from
-- old_verify_keys) has expired_ts > 0 and valid_until_ts = 0.
CREATE TABLE server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    verify_key     TEXT NOT NULL,   -- unpadded base64 ed25519 public key
    valid_until_ts BIGINT NOT NULL,
    expired_ts     BIGINT NOT NULL,
    fetched_ts     BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The answer we gave to PUT /send/{txnId}, so a replay gets the same answer.
CREATE TABLE federation_inbound_txns (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    response    TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- What we still have to send to each destination, in order. A row is deleted
-- once the destination acknowledged the transaction carrying it.
CREATE TABLE federation_queue (
    position    {{serial}},
    destination TEXT NOT NULL,
    kind        TEXT NOT NULL,      -- 'pdu' or 'edu'
    event_id    TEXT NOT NULL DEFAULT '', -- for PDUs: the event it carries
    payload     TEXT NOT NULL,      -- the PDU or EDU JSON as sent
    created_ts  BIGINT NOT NULL
);
CREATE INDEX federation_queue_dest ON federation_queue (destination, kind, position);
