-- Accounts, their one device, profiles, registration tokens and
-- user-interactive authentication sessions. Secrets are never stored in the
-- clear: passwords as bcrypt hashes, access and registration tokens as
-- hex SHA-256.

CREATE TABLE accounts (
    user_id       TEXT PRIMARY KEY,           -- full lower-case MXID
    password_hash TEXT NOT NULL,
    created_ts    BIGINT NOT NULL,
    deactivated   BOOLEAN NOT NULL DEFAULT FALSE
);

-- One device per account (DESIGN.md): the primary key is the user. A new
-- login replaces the row, so the old token stops resolving.
CREATE TABLE devices (
    user_id      TEXT PRIMARY KEY REFERENCES accounts (user_id),
    device_id    TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    token_hash   TEXT NOT NULL UNIQUE,
    created_ts   BIGINT NOT NULL,
    last_seen_ts BIGINT NOT NULL DEFAULT 0,
    last_seen_ip TEXT NOT NULL DEFAULT ''
);

-- Profile fields (displayname, avatar_url, custom keys) as JSON values, as
-- the client sent them (TrustCase clients send encrypted values).
CREATE TABLE profile_fields (
    user_id TEXT NOT NULL REFERENCES accounts (user_id),
    field   TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
);

CREATE TABLE registration_tokens (
    token_hash   TEXT PRIMARY KEY,
    uses_allowed BIGINT,                      -- NULL: unlimited
    completed    BIGINT NOT NULL DEFAULT 0,   -- registrations it was used for
    expiry_ts    BIGINT,                      -- NULL: never
    created_ts   BIGINT NOT NULL
);

-- spec: "User-Interactive Authentication API". binding is a hash of the
-- request that started the session; completed a JSON array of stage types.
CREATE TABLE uia_sessions (
    session_id     TEXT PRIMARY KEY,
    binding        TEXT NOT NULL,
    completed      TEXT NOT NULL DEFAULT '[]',
    reg_token_hash TEXT NOT NULL DEFAULT '',
    created_ts     BIGINT NOT NULL,
    expires_ts     BIGINT NOT NULL
);
CREATE INDEX uia_sessions_expiry ON uia_sessions (expires_ts);
