-- The membership changes of a room after a position: DeviceListChanges
-- (on every /sync: who changed in the rooms a user is joined to) and
-- RemoteDeviceLists (was a cached list fetched before a change in its
-- user's rooms?) look them up by room and position range. The primary key
-- (room_id, user_id, pos) would walk every change the room ever had; with
-- user_id the index covers those reads.
CREATE INDEX membership_changes_room_pos ON membership_changes (room_id, pos, user_id);
