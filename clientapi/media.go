package clientapi

import (
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/media"
	"github.com/trustcase/node/server/mxerr"
)

const (
	// defaultMediaWait is how long a download waits for pending content
	// when the client names no timeout_ms (the spec's default).
	defaultMediaWait = 20 * time.Second
	// maxMediaWait caps timeout_ms (the spec asks servers to cap it).
	maxMediaWait = 60 * time.Second
	// mediaCSP is the Content-Security-Policy the spec recommends for content.
	mediaCSP = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';"
)

// registerMedia serves the content repository: upload and create under
// /_matrix/media, downloads and thumbnails under /_matrix/client/v1/media
// (authenticated) and, deprecated but still used by older clients, under
// /_matrix/media/v3 (unauthenticated, as the spec defines them).
func (a *API) registerMedia(root, v1 *mux.Router) {
	legacy := root.PathPrefix("/_matrix/media/{version:(?:r0|v3)}").Subrouter()
	legacy.Handle("/upload", a.authed(a.upload)).Methods(http.MethodPost)
	legacy.Handle("/upload/{serverName}/{mediaId}", a.authed(a.uploadTo)).Methods(http.MethodPut)
	legacy.Handle("/config", a.authed(a.mediaConfig)).Methods(http.MethodGet)
	legacy.Handle("/download/{serverName}/{mediaId}", a.rawPublic(a.download)).Methods(http.MethodGet, http.MethodHead)
	legacy.Handle("/download/{serverName}/{mediaId}/{fileName}", a.rawPublic(a.download)).Methods(http.MethodGet, http.MethodHead)
	legacy.Handle("/thumbnail/{serverName}/{mediaId}", a.rawPublic(a.thumbnail)).Methods(http.MethodGet, http.MethodHead)
	root.Handle("/_matrix/media/v1/create", a.authed(a.createMedia)).Methods(http.MethodPost)

	v1.Handle("/media/config", a.authed(a.mediaConfig)).Methods(http.MethodGet)
	v1.Handle("/media/download/{serverName}/{mediaId}", a.rawAuthed(a.download)).Methods(http.MethodGet, http.MethodHead)
	v1.Handle("/media/download/{serverName}/{mediaId}/{fileName}", a.rawAuthed(a.download)).Methods(http.MethodGet, http.MethodHead)
	v1.Handle("/media/thumbnail/{serverName}/{mediaId}", a.rawAuthed(a.thumbnail)).Methods(http.MethodGet, http.MethodHead)
}

// rawHandler writes its own (non-JSON) response; an error it returns is
// written as a Matrix error (it must not have written anything then).
type rawHandler func(w http.ResponseWriter, r *http.Request) error

func (a *API) rawPublic(h rawHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			writeError(w, r, a.Log, err)
		}
	})
}

func (a *API) rawAuthed(h rawHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dev, err := a.authenticate(r)
		if err == nil {
			err = a.limitUser(dev.UserID)
		}
		if err == nil {
			err = h(w, r)
		}
		if err != nil {
			writeError(w, r, a.Log, err)
		}
	})
}

func (a *API) upload(r *http.Request, dev *accounts.Device) (any, error) {
	id, err := a.Media.Upload(r.Context(), media.Upload{
		Uploader:    dev.UserID,
		ContentType: r.Header.Get("Content-Type"),
		Filename:    r.URL.Query().Get("filename"),
		Body:        r.Body,
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"content_uri": a.Media.MXC(id)}, nil
}

func (a *API) createMedia(r *http.Request, dev *accounts.Device) (any, error) {
	id, expires, err := a.Media.Create(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"content_uri": a.Media.MXC(id), "unused_expires_at": expires}, nil
}

func (a *API) uploadTo(r *http.Request, dev *accounts.Device) (any, error) {
	serverName, mediaID, err := mediaVars(r)
	if err != nil {
		return nil, err
	}
	err = a.Media.UploadTo(r.Context(), serverName, mediaID, media.Upload{
		Uploader:    dev.UserID,
		ContentType: r.Header.Get("Content-Type"),
		Filename:    r.URL.Query().Get("filename"),
		Body:        r.Body,
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) mediaConfig(*http.Request, *accounts.Device) (any, error) {
	return map[string]int64{"m.upload.size": a.Media.MaxBytes()}, nil
}

func (a *API) download(w http.ResponseWriter, r *http.Request) error {
	serverName, mediaID, err := mediaVars(r)
	if err != nil {
		return err
	}
	wait, err := mediaWait(r)
	if err != nil {
		return err
	}
	file, err := a.Media.Download(r.Context(), serverName, mediaID, wait)
	if err != nil {
		return err
	}
	filename := file.Filename
	if _, ok := mux.Vars(r)["fileName"]; ok {
		if filename, err = pathVar(r, "fileName"); err != nil {
			file.Close()
			return err
		}
	}
	serveMedia(w, r, file, contentDisposition(file.ContentType, filename))
	return nil
}

func (a *API) thumbnail(w http.ResponseWriter, r *http.Request) error {
	serverName, mediaID, err := mediaVars(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	width, err := thumbDim(q.Get("width"), "width")
	if err != nil {
		return err
	}
	height, err := thumbDim(q.Get("height"), "height")
	if err != nil {
		return err
	}
	wait, err := mediaWait(r)
	if err != nil {
		return err
	}
	file, err := a.Media.Thumbnail(r.Context(), serverName, mediaID, width, height, q.Get("method"), wait)
	if err != nil {
		return err
	}
	// spec: a thumbnail's disposition MUST be inline.
	serveMedia(w, r, file, mime.FormatMediaType("inline", map[string]string{"filename": file.Filename}))
	return nil
}

// serveMedia streams stored content (ranges and conditional requests
// included) with headers that keep a browser from running it.
func serveMedia(w http.ResponseWriter, r *http.Request, file *media.File, disposition string) {
	defer file.Close()
	h := w.Header()
	h.Set("Content-Type", file.ContentType)
	h.Set("Content-Disposition", disposition)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", mediaCSP)
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	http.ServeContent(w, r, "", file.ModTime, file.File)
}

// inlineTypes may be shown inline (spec: "Serving inline content"); any
// other type is served as an attachment.
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true,
	"image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true,
	"audio/ogg": true, "audio/wave": true, "audio/wav": true, "audio/x-wav": true,
	"audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// contentDisposition is inline for safe types, attachment otherwise, with
// the file name quoted (or RFC 2231-encoded when it is not plain ASCII).
func contentDisposition(contentType, filename string) string {
	kind := "attachment"
	if base, _, err := mime.ParseMediaType(contentType); err == nil && inlineTypes[base] {
		kind = "inline"
	}
	if filename == "" {
		return kind
	}
	if v := mime.FormatMediaType(kind, map[string]string{"filename": filename}); v != "" {
		return v
	}
	return kind
}

func mediaVars(r *http.Request) (serverName, mediaID string, err error) {
	if serverName, err = pathVar(r, "serverName"); err != nil {
		return "", "", err
	}
	if mediaID, err = pathVar(r, "mediaId"); err != nil {
		return "", "", err
	}
	return serverName, mediaID, nil
}

// mediaWait reads timeout_ms: how long to wait for content not yet uploaded.
func mediaWait(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("timeout_ms")
	if v == "" {
		return defaultMediaWait, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, mxerr.InvalidParam("timeout_ms must be a non-negative integer")
	}
	return time.Duration(min(ms, maxMediaWait.Milliseconds())) * time.Millisecond, nil
}

// thumbDim reads a required integer thumbnail dimension.
func thumbDim(v, name string) (int, error) {
	if v == "" {
		return 0, mxerr.MissingParam("the %s query parameter is required", name)
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, mxerr.InvalidParam("%s must be an integer", name)
	}
	return int(n), nil
}
