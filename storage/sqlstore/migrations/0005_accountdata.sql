-- Account data of local users: global (room_id = '') and per room. Each
-- write takes the next position of the account-data stream.
CREATE TABLE account_data (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    type      TEXT NOT NULL,
    content   TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_user_pos ON account_data (user_id, stream_pos);

-- The latest receipt per (room, type, user, thread); thread_id '' is
-- unthreaded. Each write takes the next position of the ephemeral stream.
CREATE TABLE receipts (
    room_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    stream_pos   BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_pos ON receipts (room_id, stream_pos);

-- Last handed-out position of the 'account_data' and 'ephemeral' streams
-- (typing lives in memory but its changes take positions here, so a
-- restart never moves a stream backwards).
CREATE TABLE accountdata_streams (
    name TEXT PRIMARY KEY,
    pos  BIGINT NOT NULL
);
INSERT INTO accountdata_streams (name, pos) VALUES ('account_data', 0), ('ephemeral', 0);
