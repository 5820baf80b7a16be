// Package media is the content repository: uploaded files are opaque blobs
// under the data directory, their metadata lives in the store.
//
// Clients encrypt what they send, so the node needs no plaintext: the bytes
// are stored and served exactly as uploaded. Only images a client chose to
// upload unencrypted can be thumbnailed.
//
// Layout under Config.Dir (data_dir/media):
//
//	<id[:2]>/<id>.<sha256>                          the bytes of one upload
//	thumbnails/<id[:2]>/<id>/<w>x<h>-<crop|scale>   generated thumbnails
//	tmp/                                            uploads in flight
//
// A blob is written to tmp/, synced, then renamed into place before the store
// refers to it, so a crash never leaves a reference to half a file; at worst
// an unreferenced file, and stale tmp/ files are removed at start.
package media

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

const (
	// idLength is the length of the media IDs this node hands out: 32
	// characters of [A-Za-z0-9] carry about 190 bits of randomness.
	idLength = 32
	// maxIDLength bounds the media IDs accepted in requests.
	maxIDLength = 255
	// maxFieldBytes bounds a stored content type or file name.
	maxFieldBytes = 255
	// pendingTTL is how long a media ID made by /create waits for its upload
	// (the spec's recommended 24 hours).
	pendingTTL = 24 * time.Hour
	// maxPending bounds one user's media IDs waiting for an upload.
	maxPending = 20
	// defaultOctetStream is the content type of uploads that name none.
	defaultOctetStream = "application/octet-stream"
)

// Config is what media needs from trustcase.yaml.
type Config struct {
	ServerName string
	Dir        string // where blobs live, under data_dir
	MaxBytes   int64
	// MaxThumbnailPixels bounds the decoded size (width × height) of an
	// image the node will thumbnail; 0 means 25 megapixels.
	MaxThumbnailPixels int64
}

// Service is the media domain.
type Service struct {
	store storage.MediaStore
	cfg   Config
	log   logrus.FieldLogger
	now   func() time.Time

	// thumbSlots bounds how many images are decoded at once (memory).
	thumbSlots chan struct{}

	mu      sync.Mutex
	waiters map[string]*waiter // media ID → downloads waiting for its upload
	swept   time.Time          // when expired pending IDs were last removed
	// generating holds a channel per thumbnail being generated, closed when done.
	generating map[string]chan struct{}
}

type waiter struct {
	ch chan struct{}
	n  int
}

// New builds the media service.
func New(store storage.MediaStore, cfg Config, log logrus.FieldLogger) *Service {
	if cfg.MaxThumbnailPixels <= 0 {
		cfg.MaxThumbnailPixels = 25_000_000
	}
	s := &Service{
		store:      store,
		cfg:        cfg,
		log:        log,
		now:        time.Now,
		thumbSlots: make(chan struct{}, 2),
		waiters:    map[string]*waiter{},
		generating: map[string]chan struct{}{},
	}
	s.removeStaleTemp()
	return s
}

// MaxBytes is the largest upload accepted (m.upload.size).
func (s *Service) MaxBytes() int64 { return s.cfg.MaxBytes }

// MXC is the content URI of a media ID of this server.
func (s *Service) MXC(mediaID string) string {
	return "mxc://" + s.cfg.ServerName + "/" + mediaID
}

// Upload is one upload request: the body is read to its end (or to the
// size limit) and stored as given.
type Upload struct {
	Uploader    string
	ContentType string // the request's Content-Type; "" means application/octet-stream
	Filename    string // the filename query parameter, may be ""
	Body        io.Reader
}

// File is stored content opened for serving. The caller closes it.
type File struct {
	*os.File
	ContentType string
	Filename    string
	Size        int64
	ModTime     time.Time
}

// Upload stores new content and returns its media ID.
func (s *Service) Upload(ctx context.Context, up Upload) (string, error) {
	contentType, filename, err := checkFields(up.ContentType, up.Filename)
	if err != nil {
		return "", err
	}
	id, err := newMediaID()
	if err != nil {
		return "", err
	}
	blob, err := s.receive(up.Body)
	if err != nil {
		return "", err
	}
	path := s.blobPath(id, blob.sha256)
	if err := blob.commit(path); err != nil {
		return "", err
	}
	now := s.now().UnixMilli()
	m := storage.Media{
		MediaID: id, Uploader: up.Uploader, CreatedTS: now, UploadedTS: now,
		ContentType: contentType, Filename: filename, Size: blob.size, SHA256: blob.sha256,
	}
	if err := s.store.InsertMedia(ctx, m); err != nil {
		// Nothing refers to the blob: take it back.
		_ = os.Remove(path)
		return "", fmt.Errorf("recording media: %w", err)
	}
	s.log.WithFields(logrus.Fields{"media_id": id, "size": blob.size}).Debug("media uploaded")
	return id, nil
}

// Create hands out a media ID whose content the uploader sends later with
// UploadTo (spec: POST /_matrix/media/v1/create). It returns the ID and
// when it expires unused (ms since the epoch).
func (s *Service) Create(ctx context.Context, uploader string) (string, int64, error) {
	now := s.now()
	s.sweepExpired(ctx, now)
	n, err := s.store.CountPending(ctx, uploader, now.UnixMilli())
	if err != nil {
		return "", 0, err
	}
	if n >= maxPending {
		e := mxerr.LimitExceeded(60_000)
		e.Msg = fmt.Sprintf("too many pending uploads (%d): upload content to the media IDs already created first", n)
		return "", 0, e
	}
	id, err := newMediaID()
	if err != nil {
		return "", 0, err
	}
	expires := now.Add(pendingTTL).UnixMilli()
	if err := s.store.InsertMedia(ctx, storage.Media{
		MediaID: id, Uploader: uploader, CreatedTS: now.UnixMilli(), ExpiresTS: expires,
	}); err != nil {
		return "", 0, err
	}
	return id, expires, nil
}

// sweepExpired forgets, at most once a minute, media IDs whose upload never
// came: they hold no blob, only a row.
func (s *Service) sweepExpired(ctx context.Context, now time.Time) {
	s.mu.Lock()
	due := now.Sub(s.swept) >= time.Minute
	if due {
		s.swept = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	if n, err := s.store.DeleteExpiredPending(ctx, now.UnixMilli()); err != nil {
		s.log.WithError(err).Warn("removing expired pending media IDs")
	} else if n > 0 {
		s.log.WithField("count", n).Debug("removed expired pending media IDs")
	}
}

// UploadTo stores the content of a media ID made by Create (spec: PUT
// /_matrix/media/v3/upload/{serverName}/{mediaId}).
func (s *Service) UploadTo(ctx context.Context, serverName, mediaID string, up Upload) error {
	if err := s.checkLocal(serverName, mediaID); err != nil {
		return err
	}
	contentType, filename, err := checkFields(up.ContentType, up.Filename)
	if err != nil {
		return err
	}
	m, err := s.store.Media(ctx, mediaID)
	if errors.Is(err, storage.ErrNotFound) {
		return mxerr.NotFound("unknown media ID %s: create it with POST /_matrix/media/v1/create first", mediaID)
	}
	if err != nil {
		return err
	}
	if err := s.checkPendingFor(m, up.Uploader); err != nil {
		return err
	}
	blob, err := s.receive(up.Body)
	if err != nil {
		return err
	}
	path := s.blobPath(mediaID, blob.sha256)
	if err := blob.commit(path); err != nil {
		return err
	}
	err = s.store.CompleteUpload(ctx, up.Uploader, storage.Media{
		MediaID: mediaID, UploadedTS: s.now().UnixMilli(),
		ContentType: contentType, Filename: filename, Size: blob.size, SHA256: blob.sha256,
	})
	if err != nil {
		// Another request won (or the ID expired meanwhile). Identical
		// content has the same path and is the winner's blob: keep it.
		cur, e := s.store.Media(ctx, mediaID)
		if e != nil || !cur.Uploaded() || cur.SHA256 != blob.sha256 {
			_ = os.Remove(path)
		}
		if e == nil {
			if perr := s.checkPendingFor(cur, up.Uploader); perr != nil {
				return perr
			}
		}
		return err
	}
	s.wake(mediaID)
	return nil
}

// checkPendingFor says why m cannot take an upload from uploader, if it can't.
func (s *Service) checkPendingFor(m storage.Media, uploader string) error {
	switch {
	case m.Uploader != uploader:
		return mxerr.Forbidden("media ID %s was created by another user", m.MediaID)
	case m.Uploaded():
		return mxerr.New(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "media ID %s already has content", m.MediaID)
	case m.ExpiresTS <= s.now().UnixMilli():
		return mxerr.NotFound("media ID %s expired before its content was uploaded", m.MediaID)
	}
	return nil
}

// Download opens the content of mxc://serverName/mediaID. If its content
// is still pending, it waits up to wait for the upload.
func (s *Service) Download(ctx context.Context, serverName, mediaID string, wait time.Duration) (*File, error) {
	m, err := s.uploaded(ctx, serverName, mediaID, wait)
	if err != nil {
		return nil, err
	}
	f, err := s.open(s.blobPath(m.MediaID, m.SHA256))
	if err != nil {
		return nil, err
	}
	return &File{File: f, ContentType: m.ContentType, Filename: m.Filename, Size: m.Size,
		ModTime: time.UnixMilli(m.UploadedTS)}, nil
}

// uploaded returns the record of local, uploaded media.
func (s *Service) uploaded(ctx context.Context, serverName, mediaID string, wait time.Duration) (storage.Media, error) {
	if err := s.checkLocal(serverName, mediaID); err != nil {
		return storage.Media{}, err
	}
	m, err := s.store.Media(ctx, mediaID)
	if errors.Is(err, storage.ErrNotFound) {
		return m, mxerr.NotFound("unknown media %s", s.MXC(mediaID))
	}
	if err != nil || m.Uploaded() {
		return m, err
	}
	return s.waitUpload(ctx, m, wait)
}

// waitUpload waits for pending media's content (persist, then wake: the
// uploader wakes waiters after its commit).
func (s *Service) waitUpload(ctx context.Context, m storage.Media, wait time.Duration) (storage.Media, error) {
	notYet := mxerr.New(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "the content of %s has not been uploaded yet", s.MXC(m.MediaID))
	expires := time.UnixMilli(m.ExpiresTS)
	if !s.now().Before(expires) {
		return m, mxerr.NotFound("unknown media %s (it expired before its content was uploaded)", s.MXC(m.MediaID))
	}
	if d := expires.Sub(s.now()); d < wait {
		wait = d
	}
	ch, release := s.watch(m.MediaID)
	defer release()
	// Read again after registering, so an upload that committed in between
	// is not missed.
	m, err := s.store.Media(ctx, m.MediaID)
	if err != nil || m.Uploaded() {
		return m, err
	}
	if wait <= 0 {
		return m, notYet
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		return m, notYet
	case <-ctx.Done():
		return m, notYet
	}
	m, err = s.store.Media(ctx, m.MediaID)
	if err == nil && !m.Uploaded() {
		err = notYet
	}
	return m, err
}

func (s *Service) watch(mediaID string) (<-chan struct{}, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.waiters[mediaID]
	if w == nil {
		w = &waiter{ch: make(chan struct{})}
		s.waiters[mediaID] = w
	}
	w.n++
	return w.ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if w.n--; w.n == 0 && s.waiters[mediaID] == w {
			delete(s.waiters, mediaID)
		}
	}
}

func (s *Service) wake(mediaID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.waiters[mediaID]; w != nil {
		close(w.ch)
		delete(s.waiters, mediaID)
	}
}

// checkLocal validates an mxc:// server name and media ID (spec: "Security
// considerations": both are whitelisted before they touch a path) and says
// 404 for media of other servers, which this node cannot fetch yet.
func (s *Service) checkLocal(serverName, mediaID string) error {
	if !ValidServerName(serverName) {
		return mxerr.InvalidParam("%q is not a valid server name", serverName)
	}
	if !ValidMediaID(mediaID) {
		return mxerr.InvalidParam("a media ID is 1 to %d characters of A-Z, a-z, 0-9, _ and -", maxIDLength)
	}
	if serverName != s.cfg.ServerName {
		return mxerr.NotFound("media of other servers (%s) is not available on this node", serverName)
	}
	return nil
}

// ValidServerName reports whether name is a Matrix server name (appendix
// "Server Name").
func ValidServerName(name string) bool {
	_, _, ok := spec.ParseAndValidateServerName(spec.ServerName(name))
	return ok
}

// ValidMediaID reports whether id may be a media ID: only A-Za-z0-9, _ and -.
func ValidMediaID(id string) bool {
	if id == "" || len(id) > maxIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newMediaID returns idLength random characters of [A-Za-z0-9] from
// crypto/rand, without modulo bias.
func newMediaID() (string, error) {
	out := make([]byte, 0, idLength)
	buf := make([]byte, 2*idLength)
	for len(out) < idLength {
		if _, err := rand.Read(buf); err != nil {
			return "", err
		}
		for _, b := range buf {
			if b < 248 && len(out) < idLength { // 248 = 4 × 62
				out = append(out, idAlphabet[int(b)%len(idAlphabet)])
			}
		}
	}
	return string(out), nil
}

// checkFields validates and normalises an upload's content type and file
// name: they end up in response headers, so they are bounded and free of
// control characters.
func checkFields(contentType, filename string) (string, string, error) {
	contentType = strings.TrimSpace(contentType)
	if len(contentType) > maxFieldBytes {
		return "", "", mxerr.InvalidParam("Content-Type is longer than %d bytes", maxFieldBytes)
	}
	if contentType == "" {
		contentType = defaultOctetStream
	} else if _, _, err := mime.ParseMediaType(contentType); err != nil {
		// Not a media type at all: serve it as opaque bytes.
		contentType = defaultOctetStream
	}
	if len(filename) > maxFieldBytes {
		return "", "", mxerr.InvalidParam("filename is longer than %d bytes", maxFieldBytes)
	}
	if !utf8.ValidString(filename) || strings.ContainsFunc(filename, unicode.IsControl) {
		return "", "", mxerr.InvalidParam("filename must be UTF-8 without control characters")
	}
	return contentType, filename, nil
}

// blobPath is where the bytes of a media ID live. The hash is part of the
// name so that two racing uploads to one pending ID never overwrite each
// other's file; IDs are whitelisted, so the path stays under Dir.
func (s *Service) blobPath(mediaID, sha string) string {
	return filepath.Join(s.cfg.Dir, shard(mediaID), mediaID+"."+sha)
}

func (s *Service) thumbnailPath(mediaID string, width, height int, method string) string {
	return filepath.Join(s.cfg.Dir, "thumbnails", shard(mediaID), mediaID, fmt.Sprintf("%dx%d-%s", width, height, method))
}

func shard(mediaID string) string {
	if len(mediaID) < 2 {
		return "_" + mediaID
	}
	return mediaID[:2]
}

func (s *Service) tempDir() string { return filepath.Join(s.cfg.Dir, "tmp") }

// removeStaleTemp deletes temporary files older than an hour: uploads a
// crash interrupted. Nothing refers to them.
func (s *Service) removeStaleTemp() {
	entries, err := os.ReadDir(s.tempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Hour {
			_ = os.Remove(filepath.Join(s.tempDir(), e.Name()))
		}
	}
}

// blob is content received into a temporary file, not yet in place.
type blob struct {
	tmp    string
	size   int64
	sha256 string
}

// receive streams body into a temporary file, hashing it on the way. A body
// over the limit (whatever its declared length, chunked too) is refused with
// 413 M_TOO_LARGE and leaves nothing behind.
func (s *Service) receive(body io.Reader) (*blob, error) {
	if err := os.MkdirAll(s.tempDir(), 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(s.tempDir(), "upload-*")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(body, s.cfg.MaxBytes+1))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, s.tooLarge()
		}
		return nil, mxerr.Unknown("reading the upload failed: %v", err)
	}
	if n > s.cfg.MaxBytes {
		return nil, s.tooLarge()
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	ok = true
	return &blob{tmp: f.Name(), size: n, sha256: hex.EncodeToString(h.Sum(nil))}, nil
}

func (s *Service) tooLarge() error {
	return mxerr.TooLarge("the upload exceeds the limit of %d bytes", s.cfg.MaxBytes)
}

// commit moves the received file into place. The rename is atomic: a blob
// path only ever holds complete content, and the store refers to it only
// after this returns.
func (b *blob) commit(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		os.Remove(b.tmp)
		return err
	}
	if err := os.Rename(b.tmp, path); err != nil {
		os.Remove(b.tmp)
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// syncDir makes a rename durable (best effort: not every OS can).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// open opens a blob the store refers to. A missing file (removed by hand)
// is answered as unknown media, and logged.
func (s *Service) open(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		s.log.WithField("blob", filepath.Base(path)).Warn("media blob missing from the media directory")
		return nil, mxerr.NotFound("the content of this media is gone")
	}
	return f, err
}
