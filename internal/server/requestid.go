package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// maxRequestID bounds a client's request id.
const maxRequestID = 128

// validRequestID reports whether a client's id can be kept as it is: short and made of
// characters that need no escaping in a log line, a header or JSON.
func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestID {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// newRequestID makes an id: "req-" and 24 hex digits (96 random bits).
func newRequestID() string {
	var b [12]byte
	rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

// withRequestID gives every request an id, in its context and in the answer's header, before
// any other handler runs.
func withRequestID(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(api.RequestIDHeader)
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set(api.RequestIDHeader, id)
		h.ServeHTTP(w, r.WithContext(audit.WithRequestID(r.Context(), id)))
	})
}

// publicDetail is api.PublicDetail with the request id of ctx, for the error events of
// streamed answers (their status line was sent before the error came).
func publicDetail(ctx context.Context, err error) api.ErrorDetail {
	d := api.PublicDetail(err)
	d.RequestID = audit.RequestID(ctx)
	return d
}
