-- Cached device lists of remote users who share a room with a local user:
-- filled from the user's server (GET /user/devices), kept current by its
-- m.device_list_update / m.signing_key_update EDUs, dropped (and fetched
-- again when next needed) when an update shows a gap.
-- stream_id is the last update applied; master_key and self_signing_key
-- are '' when the user has none. cached_nid is the timeline position when
-- the list was fetched: a membership change after it, in a room the user
-- is in, may have cut the server off the user's updates for a while, so
-- the list is not used any more (it is fetched again).
CREATE TABLE remote_device_lists (
    user_id          TEXT PRIMARY KEY,
    stream_id        BIGINT NOT NULL,
    cached_nid       BIGINT NOT NULL,
    master_key       TEXT NOT NULL DEFAULT '',
    self_signing_key TEXT NOT NULL DEFAULT ''
);

-- The devices of a cached list: the signed device_keys object as the
-- user's server served it, and the display name it gave ('' when none).
CREATE TABLE remote_device_keys (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    key_json     TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, device_id)
);
