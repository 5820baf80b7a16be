package sytest

import (
	"bytes"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/attachment"
)

// mediaLimit is the upload limit of the scenario node.
const mediaLimit = 64 << 10

// rawRequest sends body as is with the given Content-Type ("" for none).
// A nil length hint sends the body chunked (no Content-Length).
func rawRequest(t *testing.T, c *Client, method, path, contentType string, body io.Reader) *Resp {
	t.Helper()
	req, err := http.NewRequest(method, c.Node.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return &Resp{Status: resp.StatusCode, Header: resp.Header, Body: raw}
}

// uploadMedia uploads body and returns the mxc:// URI's server name and media ID.
func uploadMedia(t *testing.T, c *Client, contentType, filename string, body []byte) (string, string) {
	t.Helper()
	path := "/_matrix/media/v3/upload"
	if filename != "" {
		path += "?filename=" + url.QueryEscape(filename)
	}
	r := rawRequest(t, c, "POST", path, contentType, bytes.NewReader(body))
	if r.Status != http.StatusOK {
		t.Fatalf("upload: HTTP %d: %s", r.Status, r.Body)
	}
	uri := r.JSON(t).Get("content_uri").String()
	m := regexp.MustCompile(`^mxc://([^/]+)/([^/]+)$`).FindStringSubmatch(uri)
	if m == nil {
		t.Fatalf("content_uri %q is not mxc://<server>/<id>", uri)
	}
	return m[1], m[2]
}

func mediaPath(prefix, server, id string, extra ...string) string {
	p := prefix + "/" + url.PathEscape(server) + "/" + url.PathEscape(id)
	for _, e := range extra {
		p += "/" + url.PathEscape(e)
	}
	return p
}

const (
	v1Download  = "/_matrix/client/v1/media/download"
	v1Thumbnail = "/_matrix/client/v1/media/thumbnail"
)

// mediaFiles lists the files under the node's media directory.
func mediaFiles(t *testing.T, n *Node) []string {
	t.Helper()
	var out []string
	root := filepath.Join(n.Dir, "data", "media")
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// chunked hides a reader's length so the request has no Content-Length.
type chunked struct{ io.Reader }

func TestMedia(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b, WithMaxUploadBytes(mediaLimit))
		alice := register(t, n) // skips while /register is not served
		bob := n.Register(t)
		// What E2EE clients upload: ciphertext, announced as opaque bytes.
		cipher := make([]byte, 40_000)
		for i := range cipher {
			cipher[i] = byte(i*31 + i>>8)
		}
		server, id := uploadMedia(t, alice, "application/octet-stream", "", cipher)

		t.Run("Can upload media", func(t *testing.T) {
			if server != n.ServerName {
				t.Fatalf("content_uri server = %q, want %q", server, n.ServerName)
			}
			if !regexp.MustCompile(`^[A-Za-z0-9]{24,}$`).MatchString(id) {
				t.Fatalf("media ID %q is not ≥ 24 characters of [A-Za-z0-9]", id)
			}
		})

		t.Run("Can download media via the authenticated endpoint", func(t *testing.T) {
			// Any local user may fetch it, not only the uploader.
			r := rawRequest(t, bob, "GET", mediaPath(v1Download, server, id), "", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("HTTP %d: %s", r.Status, r.Body)
			}
			if !bytes.Equal(r.Body, cipher) {
				t.Fatal("downloaded bytes differ from the upload")
			}
			for h, want := range map[string]string{
				"Content-Type":           "application/octet-stream",
				"Content-Disposition":    "attachment",
				"X-Content-Type-Options": "nosniff",
			} {
				if got := r.Header.Get(h); got != want {
					t.Errorf("%s = %q, want %q", h, got, want)
				}
			}
			if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "sandbox") || !strings.Contains(csp, "default-src 'none'") {
				t.Errorf("Content-Security-Policy = %q, want a sandbox with default-src 'none'", csp)
			}
		})

		t.Run("Unauthenticated v1 download gives 401", func(t *testing.T) {
			n.Anonymous().MustFail(t, "GET", mediaPath(v1Download, server, id), nil, http.StatusUnauthorized, "M_MISSING_TOKEN")
			n.Anonymous().MustFail(t, "GET", mediaPath(v1Thumbnail, server, id)+"?width=32&height=32", nil, http.StatusUnauthorized, "M_MISSING_TOKEN")
		})

		t.Run("Can download with a filename", func(t *testing.T) {
			_, txt := uploadMedia(t, alice, "text/plain", "notes.txt", []byte("meet at 10"))
			r := rawRequest(t, alice, "GET", mediaPath(v1Download, server, txt), "", nil)
			if got := r.Header.Get("Content-Disposition"); got != `inline; filename=notes.txt` {
				t.Errorf("uploaded filename: Content-Disposition = %q", got)
			}
			r = rawRequest(t, alice, "GET", mediaPath(v1Download, server, txt, "Lagebericht März.txt"), "", nil)
			if r.Status != http.StatusOK || string(r.Body) != "meet at 10" {
				t.Fatalf("HTTP %d: %s", r.Status, r.Body)
			}
			kind, params, err := mime.ParseMediaType(r.Header.Get("Content-Disposition"))
			if err != nil || kind != "inline" || params["filename"] != "Lagebericht März.txt" {
				t.Fatalf("Content-Disposition = %q (%v): want inline with the requested name", r.Header.Get("Content-Disposition"), err)
			}
		})

		t.Run("Dangerous content types are served as attachments", func(t *testing.T) {
			_, html := uploadMedia(t, alice, "text/html", "x.html", []byte("<script>alert(1)</script>"))
			r := rawRequest(t, alice, "GET", mediaPath(v1Download, server, html), "", nil)
			if d := r.Header.Get("Content-Disposition"); !strings.HasPrefix(d, "attachment") {
				t.Fatalf("text/html served with Content-Disposition %q", d)
			}
		})

		t.Run("Legacy v3 download serves the same content", func(t *testing.T) {
			r := rawRequest(t, n.Anonymous(), "GET", mediaPath("/_matrix/media/v3/download", server, id), "", nil)
			if r.Status != http.StatusOK || !bytes.Equal(r.Body, cipher) {
				t.Fatalf("HTTP %d, %d bytes", r.Status, len(r.Body))
			}
		})

		t.Run("Media config reports the upload limit", func(t *testing.T) {
			for _, p := range []string{"/_matrix/client/v1/media/config", "/_matrix/media/v3/config"} {
				if got := alice.MustDo(t, "GET", p, nil, http.StatusOK).Get(`m\.upload\.size`).Int(); got != mediaLimit {
					t.Errorf("%s: m.upload.size = %d, want %d", p, got, mediaLimit)
				}
			}
		})

		t.Run("Upload over the limit gives 413 M_TOO_LARGE", func(t *testing.T) {
			before := mediaFiles(t, n)
			big := make([]byte, mediaLimit+1)
			for name, body := range map[string]io.Reader{
				"with Content-Length": bytes.NewReader(big),
				"chunked":             chunked{bytes.NewReader(big)},
			} {
				r := rawRequest(t, alice, "POST", "/_matrix/media/v3/upload", "application/octet-stream", body)
				if r.Status != http.StatusRequestEntityTooLarge || r.JSON(t).Get("errcode").String() != "M_TOO_LARGE" {
					t.Errorf("%s: HTTP %d %s, want 413 M_TOO_LARGE", name, r.Status, r.Body)
				}
			}
			if after := mediaFiles(t, n); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Fatalf("a refused upload left files: before %v, after %v", before, after)
			}
			// Exactly the limit is fine, chunked too.
			r := rawRequest(t, alice, "POST", "/_matrix/media/v3/upload", "", chunked{bytes.NewReader(big[:mediaLimit])})
			if r.Status != http.StatusOK {
				t.Fatalf("upload of exactly the limit: HTTP %d %s", r.Status, r.Body)
			}
		})

		t.Run("Unknown media gives 404", func(t *testing.T) {
			alice.MustFail(t, "GET", mediaPath(v1Download, server, "unknownUNKNOWNunknown12345"), nil, http.StatusNotFound, "M_NOT_FOUND")
			alice.MustFail(t, "GET", mediaPath(v1Download, "other.example", id), nil, http.StatusNotFound, "M_NOT_FOUND")
			alice.MustFail(t, "GET", mediaPath("/_matrix/media/v3/download", server, "unknownUNKNOWNunknown12345"), nil, http.StatusNotFound, "M_NOT_FOUND")
			alice.MustFail(t, "GET", mediaPath(v1Thumbnail, server, "unknownUNKNOWNunknown12345")+"?width=32&height=32", nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("Media IDs and server names outside the grammar give 400", func(t *testing.T) {
			alice.MustFail(t, "GET", v1Download+"/"+server+"/..%2F..%2Fetc%2Fpasswd", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "GET", v1Download+"/"+server+"/abc.def", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "GET", v1Download+"/bad%2Fname/"+id, nil, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("Thumbnail of an encrypted blob gives a Matrix error", func(t *testing.T) {
			alice.MustFail(t, "GET", mediaPath(v1Thumbnail, server, id)+"?width=96&height=96&method=crop", nil, http.StatusBadRequest, "M_UNKNOWN")
			// The same blob claiming to be a PNG is not decodable either.
			_, fake := uploadMedia(t, alice, "image/png", "", cipher)
			alice.MustFail(t, "GET", mediaPath(v1Thumbnail, server, fake)+"?width=96&height=96&method=crop", nil, http.StatusBadRequest, "M_UNKNOWN")
		})

		t.Run("Thumbnail parameters are checked", func(t *testing.T) {
			p := mediaPath(v1Thumbnail, server, id)
			alice.MustFail(t, "GET", p+"?height=32", nil, http.StatusBadRequest, "M_MISSING_PARAM")
			alice.MustFail(t, "GET", p+"?width=abc&height=32", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "GET", p+"?width=-5&height=32", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "GET", p+"?width=99999999999&height=32", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "GET", p+"?width=32&height=32&method=stretch", nil, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		img := image.NewRGBA(image.Rect(0, 0, 320, 200))
		for y := 0; y < 200; y++ {
			for x := 0; x < 320; x++ {
				img.Set(x, y, color.RGBA{uint8(x), uint8(y), 90, 255})
			}
		}
		var pngBytes bytes.Buffer
		if err := png.Encode(&pngBytes, img); err != nil {
			t.Fatal(err)
		}
		_, pic := uploadMedia(t, alice, "image/png", "photo.png", pngBytes.Bytes())

		t.Run("Thumbnail of a PNG is a smaller PNG, served inline", func(t *testing.T) {
			for _, prefix := range []string{v1Thumbnail, "/_matrix/media/v3/thumbnail"} {
				c := alice
				if !strings.HasPrefix(prefix, "/_matrix/client") {
					c = n.Anonymous()
				}
				r := rawRequest(t, c, "GET", mediaPath(prefix, server, pic)+"?width=96&height=96&method=crop", "", nil)
				if r.Status != http.StatusOK {
					t.Fatalf("%s: HTTP %d: %s", prefix, r.Status, r.Body)
				}
				if ct := r.Header.Get("Content-Type"); ct != "image/png" {
					t.Errorf("Content-Type = %q", ct)
				}
				if d := r.Header.Get("Content-Disposition"); !strings.HasPrefix(d, "inline") {
					t.Errorf("Content-Disposition = %q, want inline", d)
				}
				cfg, err := png.DecodeConfig(bytes.NewReader(r.Body))
				if err != nil || cfg.Width != 96 || cfg.Height != 96 {
					t.Fatalf("thumbnail: %dx%d, %v; want a 96x96 PNG", cfg.Width, cfg.Height, err)
				}
			}
		})

		t.Run("Create then upload to the media ID", func(t *testing.T) {
			res := alice.MustDo(t, "POST", "/_matrix/media/v1/create", nil, http.StatusOK)
			m := regexp.MustCompile(`^mxc://([^/]+)/([A-Za-z0-9]{24,})$`).FindStringSubmatch(res.Get("content_uri").String())
			if m == nil || res.Get("unused_expires_at").Int() == 0 {
				t.Fatalf("create: %s", res.Raw)
			}
			created := m[2]
			alice.MustFail(t, "GET", mediaPath(v1Download, server, created)+"?timeout_ms=0", nil, http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED")
			put := mediaPath("/_matrix/media/v3/upload", server, created) + "?filename=later.bin"
			if r := rawRequest(t, bob, "PUT", put, "application/octet-stream", strings.NewReader("bob")); r.Status != http.StatusForbidden {
				t.Fatalf("PUT by another user: HTTP %d %s, want 403", r.Status, r.Body)
			}
			if r := rawRequest(t, alice, "PUT", put, "application/octet-stream", strings.NewReader("later")); r.Status != http.StatusOK {
				t.Fatalf("PUT: HTTP %d %s", r.Status, r.Body)
			}
			r := rawRequest(t, alice, "PUT", put, "application/octet-stream", strings.NewReader("again"))
			if r.Status != http.StatusConflict || r.JSON(t).Get("errcode").String() != "M_CANNOT_OVERWRITE_MEDIA" {
				t.Fatalf("second PUT: HTTP %d %s, want 409 M_CANNOT_OVERWRITE_MEDIA", r.Status, r.Body)
			}
			r = rawRequest(t, bob, "GET", mediaPath(v1Download, server, created), "", nil)
			if r.Status != http.StatusOK || string(r.Body) != "later" {
				t.Fatalf("download: HTTP %d %q", r.Status, r.Body)
			}
		})

		t.Run("Media survives a restart", func(t *testing.T) {
			n.Restart(t)
			r := rawRequest(t, alice, "GET", mediaPath(v1Download, server, id), "", nil)
			if r.Status != http.StatusOK || !bytes.Equal(r.Body, cipher) {
				t.Fatalf("after restart: HTTP %d, %d bytes", r.Status, len(r.Body))
			}
			r = rawRequest(t, alice, "GET", mediaPath(v1Thumbnail, server, pic)+"?width=96&height=96&method=crop", "", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("thumbnail after restart: HTTP %d %s", r.Status, r.Body)
			}
			if _, err := os.Stat(filepath.Join(n.Dir, "data", "media")); err != nil {
				t.Fatalf("media directory: %v", err)
			}
		})
	})
}

// The content repository as mautrix-go (what our users' clients are built
// on) drives it, with an attachment encrypted the way E2EE clients do.
func TestMediaWithMautrix(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b, WithMaxUploadBytes(mediaLimit))
		mc := register(t, n).Mautrix(t)
		ctx := t.Context()

		t.Run("An encrypted attachment uploaded with mautrix downloads and decrypts", func(t *testing.T) {
			plaintext := []byte("situation report 14:00: evacuate sector B")
			file := attachment.NewEncryptedFile()
			ciphertext := file.Encrypt(plaintext)
			up, err := mc.UploadBytes(ctx, ciphertext, "application/octet-stream")
			if err != nil {
				t.Fatalf("upload: %v", err)
			}
			if up.ContentURI.Homeserver != n.ServerName {
				t.Fatalf("content URI %s is not on %s", up.ContentURI, n.ServerName)
			}
			got, err := mc.DownloadBytes(ctx, up.ContentURI)
			if err != nil {
				t.Fatalf("download: %v", err)
			}
			// Stored exactly as uploaded: the ciphertext, which decrypts (hash checked).
			if !bytes.Equal(got, ciphertext) {
				t.Fatal("downloaded bytes differ from the uploaded ciphertext")
			}
			// The recipient knows the key from the event's "file" object.
			asSent, err := json.Marshal(file)
			if err != nil {
				t.Fatal(err)
			}
			var received attachment.EncryptedFile
			if err := json.Unmarshal(asSent, &received); err != nil {
				t.Fatal(err)
			}
			decrypted, err := received.Decrypt(got)
			if err != nil || !bytes.Equal(decrypted, plaintext) {
				t.Fatalf("decrypt: %q, %v", decrypted, err)
			}
		})

		t.Run("mautrix's asynchronous upload (create, then PUT) downloads", func(t *testing.T) {
			data := bytes.Repeat([]byte("chunk"), 1000)
			done := make(chan struct{})
			created, err := mc.UploadAsync(ctx, mautrix.ReqUploadMedia{
				ContentBytes: data, ContentType: "application/octet-stream",
				DoneCallback: func() { close(done) },
			})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			// The download waits for the upload if it has not arrived yet.
			got, err := mc.DownloadBytes(ctx, created.ContentURI)
			<-done
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("download: %d bytes, %v", len(got), err)
			}
		})

		t.Run("mautrix reads the upload limit", func(t *testing.T) {
			cfg, err := mc.GetMediaConfig(ctx)
			if err != nil || cfg.UploadSize != mediaLimit {
				t.Fatalf("media config = %+v, %v; want m.upload.size %d", cfg, err, mediaLimit)
			}
		})
	})
}
