-- End-to-end encryption: the node keeps only public keys, signatures and
-- opaque ciphertext. The same DDL serves SQLite and PostgreSQL.

-- Stream counters owned by the keys area. Positions are handed out inside
-- the write transaction (one writer), so they grow in commit order, and
-- they never go down when queued rows are deleted.
CREATE TABLE key_streams (
    name TEXT PRIMARY KEY,
    pos  BIGINT NOT NULL
);
INSERT INTO key_streams (name, pos) VALUES ('to_device', 0), ('device_lists', 0), ('backup_versions', 0);

-- A device's identity keys: the signed device_keys object as uploaded
-- (without the signatures others added later; those live in key_signatures).
CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys; a claim deletes the row it hands out.
CREATE TABLE one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- One fallback key per device and algorithm; used once a claim handed it out
-- because no one-time key was left.
CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    used      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: key_type is master, self_signing or user_signing.
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with POST /keys/signatures/upload: signer's key
-- signer_key_id signed target_user_id's key target_key_id (a device ID or a
-- cross-signing public key).
CREATE TABLE key_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- Queued to-device messages, per target device, in stream order. Deleted
-- once the device synced past them.
CREATE TABLE to_device_messages (
    pos        BIGINT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    event_json TEXT NOT NULL
);
CREATE INDEX to_device_messages_target ON to_device_messages (user_id, device_id, pos);

-- Transaction ids of PUT /sendToDevice, per sending device.
CREATE TABLE to_device_txns (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id    TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- The device-list stream: a row each time a user's devices or keys changed.
CREATE TABLE device_list_changes (
    pos     BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, pos);

-- Server-side key backup (room_keys). version is a number from the
-- backup_versions counter; etag grows each time the version's keys change.
CREATE TABLE backup_versions (
    version   BIGINT PRIMARY KEY,
    user_id   TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag      BIGINT NOT NULL DEFAULT 0,
    deleted   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX backup_versions_user ON backup_versions (user_id, version);

-- Backed-up session keys: session_data is opaque (encrypted by the client).
CREATE TABLE backup_keys (
    user_id             TEXT NOT NULL,
    version             BIGINT NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count     BIGINT NOT NULL,
    is_verified         BOOLEAN NOT NULL,
    session_data        TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
