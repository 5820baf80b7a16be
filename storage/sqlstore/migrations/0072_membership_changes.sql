-- The memberships /sync reads (UserMemberships, VisibilityChanges): one row
-- each time a user's m.room.member entry in a room's current_state changes,
-- written in the transaction that changes it, at the timeline position from
-- which it holds (an events.event_nid: the member event itself, the event
-- whose arrival made a state resolution change it, or the synthetic
-- org.trustcase.state_resolved row that marks a resolution). A resolution
-- that keeps an older member event over a newer one is a change here too,
-- so /sync follows the resolved state and not the newest member event.
--
-- event_id is the member event now in the current state ('' when the
-- resolution removed the entry: membership is then 'leave').
--
-- The state a join over federation brought and outlier invites (and their
-- rejection) are not current_state changes with a timeline position: /sync
-- reads those from events, as before.
CREATE TABLE membership_changes (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    pos        BIGINT NOT NULL,
    membership TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id, pos)
);
CREATE INDEX membership_changes_user ON membership_changes (user_id, pos);

-- A user's outlier member events (invites over federation and their
-- rejection), which UserMemberships reads besides the table above, without
-- walking every member event of the user. (The columns of
-- events_state_key_type: with fewer, SQLite's planner preferred that one.)
CREATE INDEX events_outlier_member ON events (state_key, type, event_nid) WHERE outlier;

-- The existing rows are filled by fillMembershipChanges (Go: the membership
-- is in each event's skeleton JSON, which the two dialects read with
-- different functions) the first time the store is migrated; this row says
-- it is still to do.
CREATE TABLE membership_changes_fill (pending BOOLEAN NOT NULL);
INSERT INTO membership_changes_fill (pending) VALUES (TRUE);
