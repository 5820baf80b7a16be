package sqlstore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/trustcase/node/storage"
)

type mediaStore struct{ db *DB }

var _ storage.MediaStore = (*mediaStore)(nil)

const mediaColumns = `media_id, uploader, created_ts, uploaded_ts, expires_ts, content_type, filename, size_bytes, sha256`

func (s *mediaStore) InsertMedia(ctx context.Context, m storage.Media) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO media (`+mediaColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			m.MediaID, m.Uploader, m.CreatedTS, m.UploadedTS, m.ExpiresTS,
			m.ContentType, m.Filename, m.Size, m.SHA256)
		return err
	})
}

func (s *mediaStore) Media(ctx context.Context, mediaID string) (storage.Media, error) {
	var m storage.Media
	err := s.db.R.QueryRowContext(ctx, `SELECT `+mediaColumns+` FROM media WHERE media_id = $1`, mediaID).Scan(
		&m.MediaID, &m.Uploader, &m.CreatedTS, &m.UploadedTS, &m.ExpiresTS,
		&m.ContentType, &m.Filename, &m.Size, &m.SHA256)
	return m, s.db.mapErr(err)
}

func (s *mediaStore) CompleteUpload(ctx context.Context, uploader string, m storage.Media) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE media SET uploaded_ts = $1, content_type = $2,
				filename = $3, size_bytes = $4, sha256 = $5, expires_ts = 0
			WHERE media_id = $6 AND uploader = $7 AND uploaded_ts = 0 AND expires_ts > $1`,
			m.UploadedTS, m.ContentType, m.Filename, m.Size, m.SHA256, m.MediaID, uploader)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		// Nothing changed: say why, so the caller can answer 404 or 409.
		var uploadedTS int64
		var owner string
		err = tx.QueryRowContext(ctx, `SELECT uploaded_ts, uploader FROM media WHERE media_id = $1`, m.MediaID).Scan(&uploadedTS, &owner)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return storage.ErrNotFound
		case err != nil:
			return err
		case uploadedTS != 0 && owner == uploader:
			return storage.ErrConflict
		}
		return storage.ErrNotFound
	})
}

func (s *mediaStore) CountPending(ctx context.Context, uploader string, now int64) (int, error) {
	var n int
	err := s.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM media
		WHERE uploader = $1 AND uploaded_ts = 0 AND expires_ts > $2`, uploader, now).Scan(&n)
	return n, err
}

func (s *mediaStore) DeleteExpiredPending(ctx context.Context, now int64) (int64, error) {
	var n int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM media WHERE uploaded_ts = 0 AND expires_ts <= $1`, now)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

func (s *mediaStore) InsertThumbnail(ctx context.Context, t storage.Thumbnail) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO media_thumbnails
			(media_id, width, height, method, content_type, size_bytes, created_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (media_id, width, height, method) DO NOTHING`,
			t.MediaID, t.Width, t.Height, t.Method, t.ContentType, t.Size, t.CreatedTS)
		return err
	})
}

func (s *mediaStore) Thumbnail(ctx context.Context, mediaID string, width, height int, method string) (storage.Thumbnail, error) {
	t := storage.Thumbnail{MediaID: mediaID, Width: width, Height: height, Method: method}
	err := s.db.R.QueryRowContext(ctx, `SELECT content_type, size_bytes, created_ts FROM media_thumbnails
		WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4`,
		mediaID, width, height, method).Scan(&t.ContentType, &t.Size, &t.CreatedTS)
	return t, s.db.mapErr(err)
}
