// Package mxerr is the Matrix error every layer returns: an errcode, a message
// for people and the HTTP status the spec gives it. The HTTP adapters encode it
// as {"errcode": …, "error": …}.
package mxerr

import (
	"fmt"
	"net/http"
)

// Error is a Matrix error. Extra fields (retry_after_ms, UIA flows, …) are
// merged into the JSON body.
type Error struct {
	Status int
	Code   string
	Msg    string
	Extra  map[string]any
}

func (e *Error) Error() string { return e.Code + ": " + e.Msg }

// New builds an error with any status and code.
func New(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// With returns a copy carrying an extra JSON field.
func (e *Error) With(key string, value any) *Error {
	c := *e
	c.Extra = make(map[string]any, len(e.Extra)+1)
	for k, v := range e.Extra {
		c.Extra[k] = v
	}
	c.Extra[key] = value
	return &c
}

func BadJSON(format string, args ...any) *Error {
	return New(http.StatusBadRequest, "M_BAD_JSON", format, args...)
}
func NotJSON(format string, args ...any) *Error {
	return New(http.StatusBadRequest, "M_NOT_JSON", format, args...)
}
func InvalidParam(format string, args ...any) *Error {
	return New(http.StatusBadRequest, "M_INVALID_PARAM", format, args...)
}
func MissingParam(format string, args ...any) *Error {
	return New(http.StatusBadRequest, "M_MISSING_PARAM", format, args...)
}
func Forbidden(format string, args ...any) *Error {
	return New(http.StatusForbidden, "M_FORBIDDEN", format, args...)
}
func NotFound(format string, args ...any) *Error {
	return New(http.StatusNotFound, "M_NOT_FOUND", format, args...)
}
func Unrecognized(format string, args ...any) *Error {
	return New(http.StatusNotFound, "M_UNRECOGNIZED", format, args...)
}
func MethodNotAllowed() *Error {
	return New(http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "method not allowed on this endpoint")
}
func MissingToken() *Error {
	return New(http.StatusUnauthorized, "M_MISSING_TOKEN", "missing access token")
}
func UnknownToken(format string, args ...any) *Error {
	return New(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", format, args...)
}
func TooLarge(format string, args ...any) *Error {
	return New(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", format, args...)
}
func LimitExceeded(retryAfterMS int64) *Error {
	return New(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "too many requests").With("retry_after_ms", retryAfterMS)
}
func Unknown(format string, args ...any) *Error {
	return New(http.StatusBadRequest, "M_UNKNOWN", format, args...)
}
func Internal() *Error {
	return New(http.StatusInternalServerError, "M_UNKNOWN", "internal server error")
}
