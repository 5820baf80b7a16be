package media

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"mime"
	"os"
	"strings"
	"time"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// maxThumbnailParam bounds the width and height a client may ask for. Any
// request above the largest standard size is answered with the original
// image, so this only keeps the numbers sane.
const maxThumbnailParam = 1 << 16

// thumbSize is one size the node generates and caches. Generating only
// these (spec: "Thumbnails", the sizes servers SHOULD produce) bounds what
// one image can cost in CPU and disk, whatever sizes clients ask for.
type thumbSize struct {
	w, h   int
	method string
}

var standardSizes = []thumbSize{
	{32, 32, "crop"},
	{96, 96, "crop"},
	{320, 240, "scale"},
	{640, 480, "scale"},
	{800, 600, "scale"},
}

// pickSize returns the smallest standard size of method that is at least
// width × height, or false when none is that large.
func pickSize(width, height int, method string) (thumbSize, bool) {
	for _, s := range standardSizes {
		if s.method == method && s.w >= width && s.h >= height {
			return s, true
		}
	}
	return thumbSize{}, false
}

// thumbnailable lists the content types the node decodes.
var thumbnailable = map[string]bool{"image/png": true, "image/jpeg": true, "image/gif": true}

// Thumbnail returns a thumbnail of local media of at least width × height
// (spec: the dimensions are the minimum the client wants; never upscale).
// Content that is not a PNG, JPEG or GIF image — like the encrypted
// application/octet-stream blobs E2EE clients upload — gives 400 M_UNKNOWN.
func (s *Service) Thumbnail(ctx context.Context, serverName, mediaID string, width, height int, method string, wait time.Duration) (*File, error) {
	if width < 1 || height < 1 || width > maxThumbnailParam || height > maxThumbnailParam {
		return nil, mxerr.InvalidParam("width and height must be integers from 1 to %d", maxThumbnailParam)
	}
	if method == "" {
		method = "scale"
	}
	if method != "crop" && method != "scale" {
		return nil, mxerr.InvalidParam("method must be crop or scale")
	}
	m, err := s.uploaded(ctx, serverName, mediaID, wait)
	if err != nil {
		return nil, err
	}
	base, _, _ := mime.ParseMediaType(m.ContentType)
	if !thumbnailable[base] {
		return nil, cannotThumbnail("content of type %s", m.ContentType)
	}
	size, standard := pickSize(width, height, method)
	if standard {
		if f, err := s.cachedThumbnail(ctx, m.MediaID, size); err == nil || !errors.Is(err, storage.ErrNotFound) {
			return f, err
		}
	}
	src, err := s.open(s.blobPath(m.MediaID, m.SHA256))
	if err != nil {
		return nil, err
	}
	keepSrc := false
	defer func() {
		if !keepSrc {
			src.Close()
		}
	}()
	cfg, format, err := image.DecodeConfig(bufio.NewReader(src))
	if err != nil {
		return nil, cannotThumbnail("content that is not a valid PNG, JPEG or GIF image")
	}
	if int64(cfg.Width)*int64(cfg.Height) > s.cfg.MaxThumbnailPixels {
		return nil, mxerr.TooLarge("the image (%d×%d) is too large to thumbnail", cfg.Width, cfg.Height)
	}
	// The image already fits (or the client wants more than any thumbnail):
	// the original is the answer, never an upscaled copy.
	if !standard || fits(cfg.Width, cfg.Height, size) {
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		keepSrc = true
		return &File{File: src, ContentType: "image/" + format, Filename: "thumbnail." + extension(format),
			Size: m.Size, ModTime: time.UnixMilli(m.UploadedTS)}, nil
	}
	// One request generates a given thumbnail; others asking meanwhile wait
	// for it and read the cache, instead of decoding the same image again.
	for {
		done, err := s.claimGeneration(ctx, m.MediaID, size)
		if err != nil {
			return nil, err
		}
		if done != nil {
			defer done()
			break
		}
		if f, err := s.cachedThumbnail(ctx, m.MediaID, size); err == nil || !errors.Is(err, storage.ErrNotFound) {
			return f, err
		}
		// The other request failed: try ourselves (and meet its error).
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return s.generate(ctx, m, src, format, size)
}

// claimGeneration returns a release function if the caller is to generate
// the thumbnail, or nil after another request generating it has finished.
func (s *Service) claimGeneration(ctx context.Context, mediaID string, size thumbSize) (func(), error) {
	key := s.thumbnailPath(mediaID, size.w, size.h, size.method)
	s.mu.Lock()
	ch, busy := s.generating[key]
	if !busy {
		ch = make(chan struct{})
		s.generating[key] = ch
	}
	s.mu.Unlock()
	if !busy {
		return func() {
			s.mu.Lock()
			delete(s.generating, key)
			s.mu.Unlock()
			close(ch)
		}, nil
	}
	select {
	case <-ch:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fits reports whether a w×h image needs no shrinking for size.
func fits(w, h int, size thumbSize) bool {
	if size.method == "crop" {
		return w <= size.w && h <= size.h
	}
	// scale keeps the aspect ratio and covers the box: it shrinks only if
	// both sides are larger than the box's.
	return w <= size.w || h <= size.h
}

func cannotThumbnail(format string, args ...any) error {
	return mxerr.Unknown("cannot generate a thumbnail of %s", fmt.Sprintf(format, args...))
}

func extension(format string) string {
	if format == "jpeg" {
		return "jpg"
	}
	return format
}

func (s *Service) cachedThumbnail(ctx context.Context, mediaID string, size thumbSize) (*File, error) {
	t, err := s.store.Thumbnail(ctx, mediaID, size.w, size.h, size.method)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(s.thumbnailPath(mediaID, size.w, size.h, size.method))
	if errors.Is(err, os.ErrNotExist) {
		return nil, storage.ErrNotFound // regenerate it
	}
	if err != nil {
		return nil, err
	}
	return &File{File: f, ContentType: t.ContentType, Filename: thumbFilename(t.ContentType),
		Size: t.Size, ModTime: time.UnixMilli(t.CreatedTS)}, nil
}

func thumbFilename(contentType string) string {
	if contentType == "image/jpeg" {
		return "thumbnail.jpg"
	}
	return "thumbnail.png"
}

// generate decodes src, shrinks it to size, caches the result as a blob and
// returns it opened. At most cap(thumbSlots) images are decoded at once.
func (s *Service) generate(ctx context.Context, m storage.Media, src io.Reader, format string, size thumbSize) (*File, error) {
	select {
	case s.thumbSlots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	img, err := decode(src, format)
	if err != nil {
		<-s.thumbSlots
		return nil, cannotThumbnail("a corrupt %s image", strings.ToUpper(format))
	}
	thumb, err := shrink(ctx, img, size)
	<-s.thumbSlots
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.tempDir(), 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(s.tempDir(), "thumb-*")
	if err != nil {
		return nil, err
	}
	contentType := "image/png"
	w := bufio.NewWriter(tmp)
	if format == "jpeg" {
		contentType = "image/jpeg"
		err = jpeg.Encode(w, thumb, &jpeg.Options{Quality: 85})
	} else {
		err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(w, thumb)
	}
	if err == nil {
		err = w.Flush()
	}
	var n int64
	if err == nil {
		n, err = tmp.Seek(0, io.SeekCurrent)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return nil, err
	}
	path := s.thumbnailPath(m.MediaID, size.w, size.h, size.method)
	if err := (&blob{tmp: tmp.Name()}).commit(path); err != nil {
		return nil, err
	}
	now := s.now().UnixMilli()
	// A racing request may have recorded the same thumbnail first; its file
	// has the same bytes, so either row describes this blob.
	if err := s.store.InsertThumbnail(ctx, storage.Thumbnail{MediaID: m.MediaID, Width: size.w, Height: size.h,
		Method: size.method, ContentType: contentType, Size: n, CreatedTS: now}); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &File{File: f, ContentType: contentType, Filename: thumbFilename(contentType), Size: n, ModTime: time.UnixMilli(now)}, nil
}

// decode decodes an image of a known format; a decoder panic (a bug in the
// decoder meeting a hostile file) is an error, not a crash.
func decode(r io.Reader, format string) (img image.Image, err error) {
	defer func() {
		if p := recover(); p != nil {
			img, err = nil, fmt.Errorf("decoder panic: %v", p)
		}
	}()
	br := bufio.NewReader(r)
	switch format {
	case "png":
		return png.Decode(br)
	case "jpeg":
		return jpeg.Decode(br)
	case "gif":
		return gif.Decode(br) // the first frame
	}
	return nil, fmt.Errorf("unsupported format %s", format)
}

// shrink makes the thumbnail of img for size: "scale" keeps the aspect
// ratio and shrinks until one side meets the box (the other stays at least
// as large: never smaller than asked); "crop" shrinks the same way, then
// cuts the box out of the middle. Nothing is ever enlarged.
func shrink(ctx context.Context, img image.Image, size thumbSize) (*image.RGBA, error) {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w == 0 || h == 0 {
		return nil, cannotThumbnail("an empty image")
	}
	f := math.Max(float64(size.w)/float64(w), float64(size.h)/float64(h))
	if size.method == "scale" {
		f = math.Min(f, 1)
		dw := min(w, max(1, int(math.Round(float64(w)*f))))
		dh := min(h, max(1, int(math.Round(float64(h)*f))))
		return resample(ctx, img, b, dw, dh)
	}
	// crop: the source region that maps onto the box.
	dw, dh := min(size.w, w), min(size.h, h)
	rw, rh := dw, dh
	if f < 1 {
		rw = min(w, int(math.Round(float64(size.w)/f)))
		rh = min(h, int(math.Round(float64(size.h)/f)))
	}
	x0 := b.Min.X + (w-rw)/2
	y0 := b.Min.Y + (h-rh)/2
	return resample(ctx, img, image.Rect(x0, y0, x0+rw, y0+rh), dw, dh)
}

// resample maps the region r of src onto a dw×dh image (dw ≤ r.Dx(),
// dh ≤ r.Dy()) by averaging, in premultiplied colour, the source pixels that
// fall in each destination pixel: a box filter, which reads each source
// pixel once and is what shrinking wants.
func resample(ctx context.Context, src image.Image, r image.Rectangle, dw, dh int) (*image.RGBA, error) {
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	sw, sh := r.Dx(), r.Dy()
	xs := make([]int, dw+1)
	for i := range xs {
		xs[i] = r.Min.X + i*sw/dw
	}
	at := func(x, y int) color.RGBA64 {
		return color.RGBA64Model.Convert(src.At(x, y)).(color.RGBA64)
	}
	if px, ok := src.(image.RGBA64Image); ok {
		at = px.RGBA64At // every standard image type: no allocation per pixel
	}
	sums := make([]uint64, 4*dw)
	for dy := 0; dy < dh; dy++ {
		if dy%16 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		y0 := r.Min.Y + dy*sh/dh
		y1 := max(y0+1, r.Min.Y+(dy+1)*sh/dh)
		clear(sums)
		for y := y0; y < y1; y++ {
			for dx := 0; dx < dw; dx++ {
				x1 := max(xs[dx]+1, xs[dx+1])
				s := sums[4*dx : 4*dx+4 : 4*dx+4]
				for x := xs[dx]; x < x1; x++ {
					c := at(x, y)
					s[0] += uint64(c.R)
					s[1] += uint64(c.G)
					s[2] += uint64(c.B)
					s[3] += uint64(c.A)
				}
			}
		}
		row := dst.Pix[dy*dst.Stride:]
		for dx := 0; dx < dw; dx++ {
			n := uint64(max(xs[dx]+1, xs[dx+1])-xs[dx]) * uint64(y1-y0)
			for k := 0; k < 4; k++ {
				row[4*dx+k] = uint8((sums[4*dx+k] / n) >> 8)
			}
		}
	}
	return dst, nil
}
