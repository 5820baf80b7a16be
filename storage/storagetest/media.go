package storagetest

import (
	"errors"
	"testing"

	"github.com/trustcase/node/storage"
)

func testMedia(t *testing.T, open Opener) {
	uploaded := storage.Media{
		MediaID: "AAAAbbbbCCCCddddEEEEffff", Uploader: "@alice:a.test",
		CreatedTS: 1000, UploadedTS: 1000,
		ContentType: "image/png", Filename: "Crisis plan ✓.png", Size: 42,
		SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	}

	t.Run("uploaded media round-trips and its ID is unique", func(t *testing.T) {
		ms := open(t).Media()
		ctx := t.Context()
		if _, err := ms.Media(ctx, uploaded.MediaID); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown media: err = %v, want ErrNotFound", err)
		}
		if err := ms.InsertMedia(ctx, uploaded); err != nil {
			t.Fatalf("insert: %v", err)
		}
		got, err := ms.Media(ctx, uploaded.MediaID)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if got != uploaded {
			t.Errorf("got  %+v\nwant %+v", got, uploaded)
		}
		if !got.Uploaded() {
			t.Error("Uploaded() = false for uploaded media")
		}
		dup := uploaded
		dup.Uploader = "@mallory:a.test"
		if err := ms.InsertMedia(ctx, dup); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("second insert with the same ID: err = %v, want ErrConflict", err)
		}
		if got, _ := ms.Media(ctx, uploaded.MediaID); got.Uploader != uploaded.Uploader {
			t.Errorf("the conflicting insert changed the row: %+v", got)
		}
	})

	t.Run("pending media is completed once, by its creator, before it expires", func(t *testing.T) {
		ms := open(t).Media()
		ctx := t.Context()
		pending := storage.Media{MediaID: "pendingPENDINGpending0001", Uploader: "@alice:a.test", CreatedTS: 1000, ExpiresTS: 5000}
		expired := storage.Media{MediaID: "pendingPENDINGpending0002", Uploader: "@alice:a.test", CreatedTS: 1000, ExpiresTS: 1500}
		other := storage.Media{MediaID: "pendingPENDINGpending0003", Uploader: "@bob:a.test", CreatedTS: 1000, ExpiresTS: 5000}
		for _, m := range []storage.Media{pending, expired, other} {
			if err := ms.InsertMedia(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := ms.CountPending(ctx, "@alice:a.test", 2000); err != nil || n != 1 {
			t.Fatalf("alice's pending at 2000 = %d, %v; want 1 (one expired)", n, err)
		}
		if n, _ := ms.CountPending(ctx, "@alice:a.test", 1200); n != 2 {
			t.Fatalf("alice's pending at 1200 = %d, want 2", n)
		}
		got, err := ms.Media(ctx, pending.MediaID)
		if err != nil || got.Uploaded() {
			t.Fatalf("pending media: %+v, %v", got, err)
		}
		content := storage.Media{MediaID: pending.MediaID, UploadedTS: 2000, ContentType: "application/octet-stream", Filename: "x.bin", Size: 7, SHA256: "ab"}
		if err := ms.CompleteUpload(ctx, "@bob:a.test", content); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("completion by another user: err = %v, want ErrNotFound", err)
		}
		if err := ms.CompleteUpload(ctx, "@alice:a.test", content); err != nil {
			t.Fatalf("completion: %v", err)
		}
		if err := ms.CompleteUpload(ctx, "@alice:a.test", content); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("second completion: err = %v, want ErrConflict", err)
		}
		got, _ = ms.Media(ctx, pending.MediaID)
		want := storage.Media{MediaID: pending.MediaID, Uploader: "@alice:a.test", CreatedTS: 1000, UploadedTS: 2000,
			ContentType: "application/octet-stream", Filename: "x.bin", Size: 7, SHA256: "ab"}
		if got != want {
			t.Errorf("completed media\n got %+v\nwant %+v", got, want)
		}
		late := content
		late.MediaID = expired.MediaID
		if err := ms.CompleteUpload(ctx, "@alice:a.test", late); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("completion after expiry: err = %v, want ErrNotFound", err)
		}
		unknown := content
		unknown.MediaID = "nopeNOPEnopeNOPEnopeNOPE"
		if err := ms.CompleteUpload(ctx, "@alice:a.test", unknown); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("completion of an unknown ID: err = %v, want ErrNotFound", err)
		}
		if n, _ := ms.CountPending(ctx, "@alice:a.test", 1200); n != 1 {
			t.Fatalf("alice's pending after completion = %d, want 1", n)
		}
		// At 1500 only the expired ID goes; uploaded media is never touched.
		if n, err := ms.DeleteExpiredPending(ctx, 1500); err != nil || n != 1 {
			t.Fatalf("delete expired at 1500 = %d, %v; want 1", n, err)
		}
		if _, err := ms.Media(ctx, expired.MediaID); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("expired pending ID still there: %v", err)
		}
		if n, _ := ms.DeleteExpiredPending(ctx, 1<<40); n != 1 {
			t.Fatalf("delete expired far in the future = %d, want 1 (bob's pending ID only)", n)
		}
		if got, err := ms.Media(ctx, pending.MediaID); err != nil || !got.Uploaded() {
			t.Fatalf("uploaded media after clean-up: %+v, %v", got, err)
		}
	})

	t.Run("thumbnails are cached per size and method, first write wins", func(t *testing.T) {
		ms := open(t).Media()
		ctx := t.Context()
		if err := ms.InsertMedia(ctx, uploaded); err != nil {
			t.Fatal(err)
		}
		if _, err := ms.Thumbnail(ctx, uploaded.MediaID, 32, 32, "crop"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("uncached thumbnail: err = %v, want ErrNotFound", err)
		}
		crop := storage.Thumbnail{MediaID: uploaded.MediaID, Width: 32, Height: 32, Method: "crop", ContentType: "image/png", Size: 100, CreatedTS: 3}
		scale := storage.Thumbnail{MediaID: uploaded.MediaID, Width: 32, Height: 32, Method: "scale", ContentType: "image/jpeg", Size: 200, CreatedTS: 4}
		for _, th := range []storage.Thumbnail{crop, scale} {
			if err := ms.InsertThumbnail(ctx, th); err != nil {
				t.Fatal(err)
			}
		}
		again := crop
		again.Size = 999
		if err := ms.InsertThumbnail(ctx, again); err != nil {
			t.Fatalf("recording the same thumbnail twice: %v", err)
		}
		for _, want := range []storage.Thumbnail{crop, scale} {
			got, err := ms.Thumbnail(ctx, want.MediaID, want.Width, want.Height, want.Method)
			if err != nil || got != want {
				t.Errorf("thumbnail %s: got %+v, %v; want %+v", want.Method, got, err, want)
			}
		}
		if _, err := ms.Thumbnail(ctx, uploaded.MediaID, 96, 96, "crop"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("other size: err = %v, want ErrNotFound", err)
		}
	})
}
