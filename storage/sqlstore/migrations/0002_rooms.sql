-- Rooms, events and state. One event store: the room graph and /sync both read
-- these tables.

CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    -- published in the room directory (createRoom visibility=public)
    is_public    BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts   BIGINT NOT NULL
);

-- The skeleton of every event: ids, references, hashes and signatures. Its
-- JSON is the event's redacted form (the room version's redaction algorithm),
-- which keeps everything the graph and signature checks need. The full content
-- lives apart in event_content, so it can be purged without breaking the graph.
-- event_nid is also the timeline stream position: events are written by one
-- writer, so nids grow in commit order.
CREATE TABLE events (
    event_nid        {{serial}},
    event_id         TEXT NOT NULL UNIQUE,
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT,               -- NULL for message events
    sender           TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    depth            BIGINT NOT NULL,
    -- the state snapshot before this event (state_snapshots.snapshot_nid)
    state_before     BIGINT NOT NULL,
    -- outliers (fetched for auth, not part of the timeline) never reach /sync
    outlier          BOOLEAN NOT NULL DEFAULT FALSE,
    -- failed auth against current state (soft-fail): kept for the graph only
    rejected         BOOLEAN NOT NULL DEFAULT FALSE,
    -- the m.room.redaction event that redacted this one, if any
    redacted_by      TEXT,
    skeleton_json    TEXT NOT NULL
);
CREATE INDEX events_room_nid ON events (room_id, event_nid);
CREATE INDEX events_room_depth ON events (room_id, depth, event_nid);

-- The content of an event, canonical JSON. Deleted on redaction and when
-- retention purges delivered content; the event then reads as redacted.
CREATE TABLE event_content (
    event_nid {{nid}} PRIMARY KEY REFERENCES events (event_nid) ON DELETE CASCADE,
    content   TEXT NOT NULL
);

-- A local client's transaction id for an event it sent: makes PUT /send
-- idempotent per device, across restarts, and fills unsigned.transaction_id.
CREATE TABLE event_txns (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id    TEXT NOT NULL,
    event_nid {{nid}} NOT NULL UNIQUE REFERENCES events (event_nid) ON DELETE CASCADE,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Full state snapshots: event_nids is a JSON array of the state events' nids,
-- sorted. A new snapshot is made only when a state event changes the state;
-- message events share the snapshot they were sent in.
CREATE TABLE state_snapshots (
    snapshot_nid {{serial}},
    room_id      TEXT NOT NULL,
    event_nids   TEXT NOT NULL
);

-- The room's current state, one row per (type, state_key), with the
-- membership copied out of m.room.member events for the user-side index.
CREATE TABLE current_state (
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_nid  BIGINT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_member ON current_state (state_key, type, membership);

-- The room's forward extremities: the prev_events of its next event.
CREATE TABLE forward_extremities (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- Rooms a user has forgotten (after leaving).
CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    creator    TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);
