-- The content repository. Bytes are blob files under data_dir/media; these
-- rows describe them. A row with uploaded_ts = 0 is a media ID handed out by
-- POST /_matrix/media/v1/create whose content has not arrived yet.
CREATE TABLE media (
    media_id     TEXT PRIMARY KEY,
    uploader     TEXT NOT NULL,
    created_ts   BIGINT NOT NULL,
    uploaded_ts  BIGINT NOT NULL,
    expires_ts   BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    filename     TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    sha256       TEXT NOT NULL
);

CREATE INDEX media_pending_by_uploader ON media (uploader, expires_ts) WHERE uploaded_ts = 0;

-- Thumbnails generated from uploaded images, cached as blobs.
CREATE TABLE media_thumbnails (
    media_id     TEXT NOT NULL REFERENCES media (media_id) ON DELETE CASCADE,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    method       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    created_ts   BIGINT NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);
