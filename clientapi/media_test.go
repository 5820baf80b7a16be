package clientapi

import (
	"bytes"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/media"
	"github.com/trustcase/node/storage/sqlite"
)

const mediaTestServer = "hs.test"

type mediaFixture struct {
	api   *API
	svc   *media.Service
	dir   string
	all   *httptest.Server // the whole client API
	alice *httptest.Server // the upload handlers, as if alice's token were valid
}

// newMediaFixture serves the client API in-process on a real SQLite store.
// Account handling is another area's: uploads are driven through the real
// middleware and adapter with a fixed device instead of a token.
func newMediaFixture(t *testing.T, limit int64) *mediaFixture {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetOutput(io.Discard)
	cfg := config.Defaults()
	cfg.ServerName = mediaTestServer
	cfg.Media.MaxUploadBytes = limit
	cfg.RateLimit.Enabled = false
	dir := filepath.Join(t.TempDir(), "media")
	svc := media.New(db.Media(), media.Config{ServerName: mediaTestServer, Dir: dir, MaxBytes: limit}, log)
	a := &API{Config: cfg, Log: log, Media: svc,
		Accounts: accounts.New(db.Accounts(), accounts.Config{ServerName: mediaTestServer}, log, nil)}
	f := &mediaFixture{api: a, svc: svc, dir: dir, all: httptest.NewServer(a.Handler())}
	t.Cleanup(f.all.Close)
	dev := &accounts.Device{UserID: "@alice:" + mediaTestServer, DeviceID: "ALICE"}
	f.alice = httptest.NewServer(a.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.serve(w, r, a.upload, dev)
	})))
	t.Cleanup(f.alice.Close)
	return f
}

func (f *mediaFixture) files(t *testing.T) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(f.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(f.dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

type hiddenLength struct{ io.Reader }

func do(t *testing.T, method, url string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, raw
}

func errcode(t *testing.T, raw []byte) string {
	t.Helper()
	var e struct {
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if err := json.Unmarshal(raw, &e); err != nil || e.Error == "" {
		t.Fatalf("not a Matrix error: %q", raw)
	}
	return e.Errcode
}

func TestMediaUploadOverTheLimitIsRefusedChunkedToo(t *testing.T) {
	const limit = 64 << 10
	f := newMediaFixture(t, limit)
	big := bytes.Repeat([]byte{0xa5}, limit+1)
	for name, body := range map[string]io.Reader{
		"with Content-Length": bytes.NewReader(big),
		"chunked":             hiddenLength{bytes.NewReader(big)},
		"chunked, far over":   hiddenLength{io.LimitReader(zeros{}, 10*limit)},
	} {
		t.Run(name, func(t *testing.T) {
			resp, raw := do(t, "POST", f.alice.URL+"/_matrix/media/v3/upload", body, map[string]string{"Content-Type": "application/octet-stream"})
			if resp.StatusCode != http.StatusRequestEntityTooLarge || errcode(t, raw) != "M_TOO_LARGE" {
				t.Fatalf("HTTP %d %s, want 413 M_TOO_LARGE", resp.StatusCode, raw)
			}
			if left := f.files(t); len(left) != 0 {
				t.Fatalf("a refused upload left files: %v", left)
			}
		})
	}
	resp, raw := do(t, "POST", f.alice.URL+"/_matrix/media/v3/upload?filename=ok.bin", hiddenLength{bytes.NewReader(big[:limit])}, nil)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(raw), `{"content_uri":"mxc://`+mediaTestServer+`/`) {
		t.Fatalf("upload of exactly the limit: HTTP %d %s", resp.StatusCode, raw)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestMediaDownloadHeadersAndErrors(t *testing.T) {
	f := newMediaFixture(t, 1<<20)
	ctx := t.Context()
	upload := func(contentType, filename, body string) string {
		id, err := f.svc.Upload(ctx, media.Upload{Uploader: "@alice:" + mediaTestServer, ContentType: contentType, Filename: filename, Body: strings.NewReader(body)})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	legacy := f.all.URL + "/_matrix/media/v3/download/" + mediaTestServer + "/"
	txt := upload("text/plain", "a \"quoted\" name.txt", "hello world")
	html := upload("text/html; charset=utf-8", "", "<script>alert(1)</script>")

	t.Run("content and headers", func(t *testing.T) {
		resp, raw := do(t, "GET", legacy+txt, nil, nil)
		if resp.StatusCode != 200 || string(raw) != "hello world" {
			t.Fatalf("HTTP %d %q", resp.StatusCode, raw)
		}
		for h, want := range map[string]string{
			"Content-Type":                 "text/plain",
			"Content-Disposition":          `inline; filename="a \"quoted\" name.txt"`,
			"X-Content-Type-Options":       "nosniff",
			"Content-Security-Policy":      mediaCSP,
			"Cross-Origin-Resource-Policy": "cross-origin",
			"Access-Control-Allow-Origin":  "*",
		} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s = %q, want %q", h, got, want)
			}
		}
	})
	t.Run("HTML is an attachment without a filename", func(t *testing.T) {
		resp, _ := do(t, "GET", legacy+html, nil, nil)
		if d := resp.Header.Get("Content-Disposition"); d != "attachment" {
			t.Errorf("Content-Disposition = %q, want attachment", d)
		}
	})
	t.Run("filename in the path overrides, escaped", func(t *testing.T) {
		resp, _ := do(t, "GET", legacy+txt+"/evil%22%0d%0aX-Injected:%201.txt", nil, nil)
		if resp.StatusCode != 200 || resp.Header.Get("X-Injected") != "" {
			t.Fatalf("HTTP %d, headers %v", resp.StatusCode, resp.Header)
		}
		if d := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(d, "inline; filename*=utf-8''evil%22%0D%0AX-Injected") {
			t.Errorf("Content-Disposition = %q", d)
		}
	})
	t.Run("ranges are served", func(t *testing.T) {
		resp, raw := do(t, "GET", legacy+txt, nil, map[string]string{"Range": "bytes=6-"})
		if resp.StatusCode != http.StatusPartialContent || string(raw) != "world" {
			t.Fatalf("HTTP %d %q", resp.StatusCode, raw)
		}
	})
	for _, tc := range []struct {
		name, path string
		status     int
		code       string
	}{
		{"v1 download without a token", "/_matrix/client/v1/media/download/" + mediaTestServer + "/" + txt, 401, "M_MISSING_TOKEN"},
		{"v1 thumbnail without a token", "/_matrix/client/v1/media/thumbnail/" + mediaTestServer + "/" + txt + "?width=32&height=32", 401, "M_MISSING_TOKEN"},
		{"v1 config without a token", "/_matrix/client/v1/media/config", 401, "M_MISSING_TOKEN"},
		{"upload without a token", "/_matrix/media/v3/upload", 401, "M_MISSING_TOKEN"},
		{"unknown media", "/_matrix/media/v3/download/" + mediaTestServer + "/unknownUNKNOWNunknown1234", 404, "M_NOT_FOUND"},
		{"other server", "/_matrix/media/v3/download/other.test/" + txt, 404, "M_NOT_FOUND"},
		{"encoded traversal", "/_matrix/media/v3/download/" + mediaTestServer + "/..%2F..%2Fetc%2Fpasswd", 400, "M_INVALID_PARAM"},
		{"bad server name", "/_matrix/media/v3/download/bad_server!/" + txt, 400, "M_INVALID_PARAM"},
		{"bad timeout_ms", "/_matrix/media/v3/download/" + mediaTestServer + "/" + txt + "?timeout_ms=soon", 400, "M_INVALID_PARAM"},
		{"thumbnail of text", "/_matrix/media/v3/thumbnail/" + mediaTestServer + "/" + txt + "?width=32&height=32", 400, "M_UNKNOWN"},
		{"thumbnail without width", "/_matrix/media/v3/thumbnail/" + mediaTestServer + "/" + txt + "?height=32", 400, "M_MISSING_PARAM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := "GET"
			if strings.HasSuffix(tc.path, "/upload") {
				method = "POST"
			}
			resp, raw := do(t, method, f.all.URL+tc.path, nil, nil)
			if resp.StatusCode != tc.status || errcode(t, raw) != tc.code {
				t.Fatalf("HTTP %d %s, want %d %s", resp.StatusCode, raw, tc.status, tc.code)
			}
		})
	}
	t.Run("thumbnail of a PNG", func(t *testing.T) {
		var b bytes.Buffer
		_ = png.Encode(&b, image.NewGray(image.Rect(0, 0, 300, 200)))
		id := upload("image/png", "", b.String())
		resp, raw := do(t, "GET", f.all.URL+"/_matrix/media/v3/thumbnail/"+mediaTestServer+"/"+id+"?width=32&height=32&method=crop", nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("HTTP %d %s", resp.StatusCode, raw)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(raw))
		if err != nil || cfg.Width != 32 || cfg.Height != 32 {
			t.Fatalf("thumbnail %dx%d, %v", cfg.Width, cfg.Height, err)
		}
		if d := resp.Header.Get("Content-Disposition"); d != "inline; filename=thumbnail.png" {
			t.Errorf("Content-Disposition = %q", d)
		}
	})
}

func TestContentDisposition(t *testing.T) {
	for _, tc := range []struct{ contentType, filename, want string }{
		{"image/png", "", "inline"},
		{"IMAGE/PNG", "a.png", "inline; filename=a.png"},
		{"text/plain; charset=utf-8", "a b.txt", `inline; filename="a b.txt"`},
		{"text/html", "x.html", "attachment; filename=x.html"},
		{"image/svg+xml", "x.svg", "attachment; filename=x.svg"},
		{"application/octet-stream", "Bericht ä.pdf", "attachment; filename*=utf-8''Bericht%20%C3%A4.pdf"},
		{"not a type", "", "attachment"},
	} {
		if got := contentDisposition(tc.contentType, tc.filename); got != tc.want {
			t.Errorf("contentDisposition(%q, %q) = %q, want %q", tc.contentType, tc.filename, got, tc.want)
		}
	}
}
