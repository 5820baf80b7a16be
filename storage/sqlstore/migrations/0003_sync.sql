-- Filters uploaded with POST /user/{userId}/filter. The id is the row's nid.
CREATE TABLE sync_filters (
    filter_nid  {{serial}},
    user_id     TEXT NOT NULL,
    filter_json TEXT NOT NULL
);
CREATE INDEX sync_filters_user ON sync_filters (user_id);
