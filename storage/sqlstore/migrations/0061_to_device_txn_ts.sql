-- When a to-device txn id was used, so old ones can be forgotten: a client
-- retries a send within minutes, and without pruning the table grows with
-- every send for as long as the device lives.
ALTER TABLE to_device_txns ADD COLUMN created_ts BIGINT NOT NULL DEFAULT 0;
