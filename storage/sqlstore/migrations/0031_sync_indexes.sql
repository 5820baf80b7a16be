-- What /sync and the read endpoints look up besides the timeline order: a
-- user's membership events across rooms, and a room's events of one type
-- (history visibility, a user's membership in one room).
CREATE INDEX events_state_key_type ON events (state_key, type, event_nid);
CREATE INDEX events_room_type_key ON events (room_id, type, state_key, event_nid);
