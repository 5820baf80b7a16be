-- Events received over federation on a fork of the room graph.
--
-- events.state_before stays what /sync reads: the room's current state as of
-- the event's timeline position (StateAt). The state before the event in the
-- room graph (what auth and state resolution use, and what /state_ids
-- serves) differs from it when the event is on a fork: graph_state is then
-- that snapshot (NULL: same as state_before).
ALTER TABLE events ADD COLUMN graph_state BIGINT;
-- A soft-failed event (spec "Soft failure": allowed by the state before it,
-- not by the room's current state) is stored with rejected = TRUE so that
-- nothing shows it to clients or builds on it, and soft_failed = TRUE so that
-- the room graph still counts its state when later events reference it.
ALTER TABLE events ADD COLUMN soft_failed BOOLEAN NOT NULL DEFAULT FALSE;
