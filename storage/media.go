package storage

import "context"

// Media is the metadata of one piece of content in the repository. The bytes
// live as a blob file under the media directory; the store keeps only what
// describes them. Clients encrypt what they upload, so the node stores and
// serves the bytes exactly as uploaded and never looks inside them (except
// to thumbnail images a client chose to upload unencrypted).
type Media struct {
	MediaID string
	// Uploader is the user ID that created (or uploaded) the media.
	Uploader string
	// CreatedTS is when the media ID was handed out (ms since the epoch).
	CreatedTS int64
	// UploadedTS is when the bytes arrived; 0 while a media ID made by
	// POST /_matrix/media/v1/create is still waiting for its upload.
	UploadedTS int64
	// ExpiresTS is, for pending media, when the unused ID expires.
	ExpiresTS int64

	ContentType string
	Filename    string
	Size        int64
	// SHA256 is the lower-case hex SHA-256 of the bytes; it names the blob.
	SHA256 string
}

// Uploaded reports whether the media's bytes are stored.
func (m Media) Uploaded() bool { return m.UploadedTS != 0 }

// Thumbnail is a cached thumbnail of an uploaded image, stored as a blob.
type Thumbnail struct {
	MediaID     string
	Width       int
	Height      int
	Method      string // crop | scale
	ContentType string
	Size        int64
	CreatedTS   int64
}

// MediaStore is what server/media keeps.
type MediaStore interface {
	// InsertMedia records uploaded (or, with UploadedTS 0, pending) media.
	// ErrConflict if the media ID is taken.
	InsertMedia(ctx context.Context, m Media) error
	// Media returns one media record, or ErrNotFound.
	Media(ctx context.Context, mediaID string) (Media, error)
	// CompleteUpload fills in the content of a pending media ID created by
	// uploader and not expired at m.UploadedTS. ErrNotFound if there is no
	// such pending ID (unknown, expired or someone else's); ErrConflict if
	// its content was already uploaded.
	CompleteUpload(ctx context.Context, uploader string, m Media) error
	// CountPending counts uploader's media IDs still waiting for content and
	// not expired at now.
	CountPending(ctx context.Context, uploader string, now int64) (int, error)
	// DeleteExpiredPending forgets media IDs whose upload never came and
	// that expired at or before now; it returns how many it removed.
	DeleteExpiredPending(ctx context.Context, now int64) (int64, error)
	// InsertThumbnail records a generated thumbnail; recording the same
	// (media, size, method) twice keeps the first and is not an error.
	InsertThumbnail(ctx context.Context, t Thumbnail) error
	// Thumbnail returns a cached thumbnail, or ErrNotFound.
	Thumbnail(ctx context.Context, mediaID string, width, height int, method string) (Thumbnail, error)
}
