package media

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

const testServer = "media.test"

type fixture struct {
	svc   *Service
	store storage.MediaStore
	dir   string
}

func newFixture(t *testing.T, maxBytes int64) *fixture {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	dir := filepath.Join(t.TempDir(), "media")
	log := logrus.New()
	log.SetOutput(io.Discard)
	return &fixture{
		svc:   New(db.Media(), Config{ServerName: testServer, Dir: dir, MaxBytes: maxBytes}, log),
		store: db.Media(),
		dir:   dir,
	}
}

func (f *fixture) waiting(mediaID string) bool {
	f.svc.mu.Lock()
	defer f.svc.mu.Unlock()
	return f.svc.waiters[mediaID] != nil
}

func (f *fixture) upload(t *testing.T, contentType, filename string, body []byte) string {
	t.Helper()
	id, err := f.svc.Upload(t.Context(), Upload{Uploader: "@alice:" + testServer, ContentType: contentType, Filename: filename, Body: bytes.NewReader(body)})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return id
}

// wantErr fails unless err is a Matrix error with this status and code.
func wantErr(t *testing.T, err error, status int, code string) {
	t.Helper()
	var mx *mxerr.Error
	if !errors.As(err, &mx) {
		t.Fatalf("err = %v, want a Matrix error %d %s", err, status, code)
	}
	if mx.Status != status || mx.Code != code {
		t.Fatalf("err = %d %s (%s), want %d %s", mx.Status, mx.Code, mx.Msg, status, code)
	}
}

func readAll(t *testing.T, f *File) []byte {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// files lists the regular files under dir, relative to it.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func TestUploadStoresBytesExactlyAndDownloadReturnsThem(t *testing.T) {
	f := newFixture(t, 1<<20)
	// What an E2EE client uploads: opaque ciphertext.
	body := make([]byte, 70_000)
	for i := range body {
		body[i] = byte(i * 7)
	}
	id := f.upload(t, "application/octet-stream", "report ✓.pdf", body)
	if !regexp.MustCompile(`^[A-Za-z0-9]{24,}$`).MatchString(id) {
		t.Fatalf("media ID %q is not ≥ 24 characters of [A-Za-z0-9]", id)
	}
	if other := f.upload(t, "", "", []byte("x")); other == id {
		t.Fatal("two uploads got the same media ID")
	}
	file, err := f.svc.Download(t.Context(), testServer, id, 0)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	if file.ContentType != "application/octet-stream" || file.Filename != "report ✓.pdf" || file.Size != int64(len(body)) {
		t.Errorf("metadata = %q %q %d", file.ContentType, file.Filename, file.Size)
	}
	if got := readAll(t, file); !bytes.Equal(got, body) {
		t.Fatal("downloaded bytes differ from the upload")
	}
	m, err := f.store.Media(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Uploader != "@alice:"+testServer || len(m.SHA256) != 64 || m.CreatedTS == 0 {
		t.Errorf("stored metadata = %+v", m)
	}
	// The blob on disk is the upload, byte for byte; no temporary file is left.
	onDisk, err := os.ReadFile(f.svc.blobPath(id, m.SHA256))
	if err != nil || !bytes.Equal(onDisk, body) {
		t.Fatalf("blob on disk differs from the upload (%v)", err)
	}
	if tmp := files(t, f.svc.tempDir()); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
	// No content type stored as application/octet-stream.
	noType := f.upload(t, "", "", []byte("x"))
	if m, _ := f.store.Media(t.Context(), noType); m.ContentType != "application/octet-stream" {
		t.Errorf("upload without Content-Type stored as %q", m.ContentType)
	}
}

func TestUploadOverTheLimitIsRefusedAndLeavesNothing(t *testing.T) {
	f := newFixture(t, 1000)
	f.upload(t, "text/plain", "", bytes.Repeat([]byte("a"), 1000)) // exactly the limit is fine
	before := files(t, f.dir)
	_, err := f.svc.Upload(t.Context(), Upload{Uploader: "@a:" + testServer, Body: bytes.NewReader(make([]byte, 1001))})
	wantErr(t, err, 413, "M_TOO_LARGE")
	if after := files(t, f.dir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("a refused upload left files: before %v, after %v", before, after)
	}
}

func TestUploadRejectsBadFields(t *testing.T) {
	f := newFixture(t, 1000)
	for name, up := range map[string]Upload{
		"control character in filename": {Filename: "a\nb"},
		"invalid UTF-8 filename":        {Filename: "a\xffb"},
		"filename too long":             {Filename: strings.Repeat("a", 256)},
		"content type too long":         {ContentType: "text/" + strings.Repeat("a", 300)},
	} {
		t.Run(name, func(t *testing.T) {
			up.Body = strings.NewReader("x")
			_, err := f.svc.Upload(t.Context(), up)
			wantErr(t, err, 400, "M_INVALID_PARAM")
		})
	}
}

func TestDownloadErrors(t *testing.T) {
	f := newFixture(t, 1000)
	id := f.upload(t, "text/plain", "", []byte("hello"))
	for _, tc := range []struct {
		name, server, id string
		status           int
		code             string
	}{
		{"unknown media", testServer, "nosuchmediaNOSUCHMEDIA1234", 404, "M_NOT_FOUND"},
		{"media of another server", "other.test", id, 404, "M_NOT_FOUND"},
		{"path traversal in the media ID", testServer, "../../etc/passwd", 400, "M_INVALID_PARAM"},
		{"dot in the media ID", testServer, id + ".x", 400, "M_INVALID_PARAM"},
		{"empty media ID", testServer, "", 400, "M_INVALID_PARAM"},
		{"invalid server name", "bad/server", id, 400, "M_INVALID_PARAM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.Download(t.Context(), tc.server, tc.id, 0)
			wantErr(t, err, tc.status, tc.code)
		})
	}
}

func TestCreateThenUploadAndWaitingDownload(t *testing.T) {
	f := newFixture(t, 1000)
	ctx := t.Context()
	alice, bob := "@alice:"+testServer, "@bob:"+testServer
	id, expires, err := f.svc.Create(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(time.UnixMilli(expires)); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("unused_expires_at is %v away, want about 24h", d)
	}
	_, err = f.svc.Download(ctx, testServer, id, 0)
	wantErr(t, err, 504, "M_NOT_YET_UPLOADED")

	// A download waiting for the content gets it once it is uploaded.
	type result struct {
		body []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		file, err := f.svc.Download(ctx, testServer, id, 20*time.Second)
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(file)
		file.Close()
		got <- result{b, err}
	}()
	// Upload only once the download is waiting, so the test proves the wake-up.
	for deadline := time.Now().Add(10 * time.Second); !f.waiting(id); {
		if time.Now().After(deadline) {
			t.Fatal("the download never started waiting")
		}
		runtime.Gosched()
	}
	err = f.svc.UploadTo(ctx, testServer, id, Upload{Uploader: bob, Body: strings.NewReader("bob's")})
	wantErr(t, err, 403, "M_FORBIDDEN")
	if err := f.svc.UploadTo(ctx, testServer, id, Upload{Uploader: alice, ContentType: "text/plain", Body: strings.NewReader("late content")}); err != nil {
		t.Fatalf("upload to created ID: %v", err)
	}
	r := <-got
	if r.err != nil || string(r.body) != "late content" {
		t.Fatalf("waiting download = %q, %v", r.body, r.err)
	}
	err = f.svc.UploadTo(ctx, testServer, id, Upload{Uploader: alice, Body: strings.NewReader("again")})
	wantErr(t, err, 409, "M_CANNOT_OVERWRITE_MEDIA")
	err = f.svc.UploadTo(ctx, testServer, "neverCreatedNEVERcreated1", Upload{Uploader: alice, Body: strings.NewReader("x")})
	wantErr(t, err, 404, "M_NOT_FOUND")
	// The refused uploads left no blob behind: only the one upload is stored.
	if got := files(t, f.dir); len(got) != 1 {
		t.Errorf("files after one successful upload: %v", got)
	}
}

func TestCreateLimitsPendingUploads(t *testing.T) {
	f := newFixture(t, 1000)
	for i := 0; i < maxPending; i++ {
		if _, _, err := f.svc.Create(t.Context(), "@alice:"+testServer); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := f.svc.Create(t.Context(), "@alice:"+testServer)
	wantErr(t, err, 429, "M_LIMIT_EXCEEDED")
	if _, _, err := f.svc.Create(t.Context(), "@bob:"+testServer); err != nil {
		t.Fatalf("another user's create: %v", err)
	}
}

// gradient is a real picture: colours vary over the image.
func gradient(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.NRGBA{uint8(x * 255 / w), uint8(y * 255 / h), 128, 255})
		}
	}
	return img
}

func encodePNG(t *testing.T, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func decodeThumb(t *testing.T, f *File) (image.Image, string) {
	t.Helper()
	img, format, err := image.Decode(bytes.NewReader(readAll(t, f)))
	if err != nil {
		t.Fatalf("thumbnail does not decode: %v", err)
	}
	return img, format
}

func TestThumbnailOfPNGAndJPEG(t *testing.T) {
	f := newFixture(t, 10<<20)
	ctx := t.Context()
	pngID := f.upload(t, "image/png", "wide.png", encodePNG(t, gradient(1000, 500)))
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, gradient(600, 900), nil); err != nil {
		t.Fatal(err)
	}
	jpegID := f.upload(t, "image/jpeg", "tall.jpg", jb.Bytes())

	for _, tc := range []struct {
		name          string
		id            string
		w, h          int
		method        string
		wantW, wantH  int
		wantType, fmt string
	}{
		{"PNG crop 96x96", pngID, 96, 96, "crop", 96, 96, "image/png", "png"},
		{"PNG crop rounds up to a standard size", pngID, 50, 40, "crop", 96, 96, "image/png", "png"},
		{"PNG scale keeps the aspect ratio and covers the box", pngID, 320, 240, "scale", 480, 240, "image/png", "png"},
		{"JPEG scale", jpegID, 300, 200, "scale", 320, 480, "image/jpeg", "jpeg"},
		{"JPEG crop 32x32", jpegID, 32, 32, "crop", 32, 32, "image/jpeg", "jpeg"},
		{"no method means scale", pngID, 640, 480, "", 960, 480, "image/png", "png"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file, err := f.svc.Thumbnail(ctx, testServer, tc.id, tc.w, tc.h, tc.method, 0)
			if err != nil {
				t.Fatalf("thumbnail: %v", err)
			}
			if file.ContentType != tc.wantType {
				t.Errorf("content type = %s, want %s", file.ContentType, tc.wantType)
			}
			img, format := decodeThumb(t, file)
			if format != tc.fmt || img.Bounds().Dx() != tc.wantW || img.Bounds().Dy() != tc.wantH {
				t.Fatalf("thumbnail is %s %dx%d, want %s %dx%d", format, img.Bounds().Dx(), img.Bounds().Dy(), tc.fmt, tc.wantW, tc.wantH)
			}
		})
	}

	t.Run("generated thumbnails are cached as blobs", func(t *testing.T) {
		th, err := f.store.Thumbnail(ctx, pngID, 96, 96, "crop")
		if err != nil {
			t.Fatalf("no cached 96x96 crop: %v", err)
		}
		path := f.svc.thumbnailPath(pngID, 96, 96, "crop")
		info, err := os.Stat(path)
		if err != nil || info.Size() != th.Size {
			t.Fatalf("cached blob: %v (size %v, recorded %d)", err, info, th.Size)
		}
		// Served from the cache: replace the blob and see it come back.
		marker := encodePNG(t, gradient(96, 96))
		if err := os.WriteFile(path, marker, 0o600); err != nil {
			t.Fatal(err)
		}
		file, err := f.svc.Thumbnail(ctx, testServer, pngID, 90, 90, "crop", 0)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readAll(t, file), marker) {
			t.Fatal("second request did not use the cached thumbnail")
		}
	})

	t.Run("the crop shows the middle of the image", func(t *testing.T) {
		// Left third red, middle third green, right third blue.
		img := image.NewRGBA(image.Rect(0, 0, 300, 100))
		for x := 0; x < 300; x++ {
			c := []color.RGBA{{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 255}}[x/100]
			for y := 0; y < 100; y++ {
				img.Set(x, y, c)
			}
		}
		id := f.upload(t, "image/png", "", encodePNG(t, img))
		file, err := f.svc.Thumbnail(ctx, testServer, id, 32, 32, "crop", 0)
		if err != nil {
			t.Fatal(err)
		}
		thumb, _ := decodeThumb(t, file)
		for _, p := range []image.Point{{0, 0}, {16, 16}, {31, 31}} {
			if r, g, b, _ := thumb.At(p.X, p.Y).RGBA(); r>>8 > 10 || g>>8 < 245 || b>>8 > 10 {
				t.Fatalf("pixel %v = %v, want the green middle", p, thumb.At(p.X, p.Y))
			}
		}
	})

	t.Run("an image smaller than asked is returned as it is", func(t *testing.T) {
		small := encodePNG(t, gradient(20, 10))
		id := f.upload(t, "image/png", "", small)
		file, err := f.svc.Thumbnail(ctx, testServer, id, 96, 96, "crop", 0)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readAll(t, file), small) {
			t.Fatal("small image was re-encoded instead of returned")
		}
	})

	t.Run("a request larger than every thumbnail gets the original", func(t *testing.T) {
		file, err := f.svc.Thumbnail(ctx, testServer, pngID, 2000, 2000, "scale", 0)
		if err != nil {
			t.Fatal(err)
		}
		img, _ := decodeThumb(t, file)
		if img.Bounds().Dx() != 1000 {
			t.Fatalf("width = %d, want the original 1000", img.Bounds().Dx())
		}
	})
}

// pngClaiming returns a PNG whose header says w×h but which holds one pixel.
func pngClaiming(t *testing.T, w, h uint32) []byte {
	t.Helper()
	b := encodePNG(t, image.NewGray(image.Rect(0, 0, 1, 1)))
	// IHDR data starts at 16 (8 signature + 4 length + 4 type); CRC after 13 bytes.
	binary.BigEndian.PutUint32(b[16:], w)
	binary.BigEndian.PutUint32(b[20:], h)
	binary.BigEndian.PutUint32(b[29:], crc32.ChecksumIEEE(b[12:29]))
	return b
}

func TestThumbnailRefusals(t *testing.T) {
	f := newFixture(t, 10<<20)
	ctx := t.Context()
	encrypted := f.upload(t, "application/octet-stream", "", bytes.Repeat([]byte{0x8f, 0x13}, 5000))
	garbage := f.upload(t, "image/png", "", bytes.Repeat([]byte{0x8f, 0x13}, 5000))
	whole := encodePNG(t, gradient(400, 400))
	truncated := f.upload(t, "image/png", "", whole[:len(whole)/2])
	huge := f.upload(t, "image/png", "", pngClaiming(t, 100_000, 100_000))
	valid := f.upload(t, "image/png", "", whole)

	for _, tc := range []struct {
		name   string
		id     string
		w, h   int
		method string
		status int
		code   string
	}{
		{"encrypted blob", encrypted, 96, 96, "crop", 400, "M_UNKNOWN"},
		{"garbage claiming to be PNG", garbage, 96, 96, "crop", 400, "M_UNKNOWN"},
		{"truncated PNG", truncated, 96, 96, "crop", 400, "M_UNKNOWN"},
		{"image too large to decode", huge, 96, 96, "crop", 413, "M_TOO_LARGE"},
		{"zero width", valid, 0, 96, "crop", 400, "M_INVALID_PARAM"},
		{"negative height", valid, 96, -1, "crop", 400, "M_INVALID_PARAM"},
		{"absurd width", valid, 1 << 30, 96, "scale", 400, "M_INVALID_PARAM"},
		{"unknown method", valid, 96, 96, "zoom", 400, "M_INVALID_PARAM"},
		{"unknown media", "nosuchmediaNOSUCHMEDIA1234", 96, 96, "crop", 404, "M_NOT_FOUND"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.Thumbnail(ctx, testServer, tc.id, tc.w, tc.h, tc.method, 0)
			wantErr(t, err, tc.status, tc.code)
		})
	}
	if th := files(t, filepath.Join(f.dir, "thumbnails")); len(th) != 0 {
		t.Errorf("refused thumbnails left files: %v", th)
	}
}

func TestResampleAverages(t *testing.T) {
	// 4x2: left half black, right half white → 2x1: black, white; 1x1: grey.
	img := image.NewGray(image.Rect(0, 0, 4, 2))
	for y := 0; y < 2; y++ {
		for x := 2; x < 4; x++ {
			img.SetGray(x, y, color.Gray{255})
		}
	}
	out, err := resample(context.Background(), img, img.Bounds(), 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if out.RGBAAt(0, 0) != (color.RGBA{0, 0, 0, 255}) || out.RGBAAt(1, 0) != (color.RGBA{255, 255, 255, 255}) {
		t.Fatalf("2x1 = %v %v", out.RGBAAt(0, 0), out.RGBAAt(1, 0))
	}
	out, _ = resample(context.Background(), img, img.Bounds(), 1, 1)
	if c := out.RGBAAt(0, 0); c.R < 126 || c.R > 128 || c.A != 255 {
		t.Fatalf("1x1 = %v, want mid grey", c)
	}
}

func TestCreateForgetsExpiredPendingIDs(t *testing.T) {
	f := newFixture(t, 1000)
	ctx := t.Context()
	old, _, err := f.svc.Create(ctx, "@alice:"+testServer)
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(pendingTTL + time.Hour)
	f.svc.now = func() time.Time { return later }
	if _, _, err := f.svc.Create(ctx, "@bob:"+testServer); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Media(ctx, old); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("expired pending ID still stored: %v", err)
	}
	err = f.svc.UploadTo(ctx, testServer, old, Upload{Uploader: "@alice:" + testServer, Body: strings.NewReader("x")})
	wantErr(t, err, 404, "M_NOT_FOUND")
}

func TestConcurrentThumbnailRequestsShareOneGeneration(t *testing.T) {
	f := newFixture(t, 10<<20)
	id := f.upload(t, "image/png", "", encodePNG(t, gradient(900, 700)))
	const n = 8
	results := make(chan []byte, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			file, err := f.svc.Thumbnail(t.Context(), testServer, id, 96, 96, "crop", 0)
			if err != nil {
				errs <- err
				return
			}
			b, err := io.ReadAll(file)
			file.Close()
			if err != nil {
				errs <- err
				return
			}
			results <- b
		}()
	}
	var first []byte
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			t.Fatalf("concurrent thumbnail: %v", err)
		case b := <-results:
			if first == nil {
				first = b
			} else if !bytes.Equal(b, first) {
				t.Fatal("concurrent requests got different thumbnails")
			}
		}
	}
	if th := files(t, filepath.Join(f.dir, "thumbnails")); len(th) != 1 {
		t.Fatalf("thumbnail files: %v, want one", th)
	}
	f.svc.mu.Lock()
	left := len(f.svc.generating)
	f.svc.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d generations still marked in flight", left)
	}
}
