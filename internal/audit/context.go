package audit

import (
	"context"
	"log/slog"
)

// The context keys of the ids one request carries.
type (
	requestIDKey struct{}
	keyIDKey     struct{}
)

// WithRequestID returns ctx carrying the request id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID is the request id in ctx; "" outside a request (the reaper, start-up).
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// WithKeyID returns ctx carrying the caller's API key id (the operator's name for the key,
// never the key).
func WithKeyID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, keyIDKey{}, id)
}

// KeyID is the API key id in ctx; "" without keys.
func KeyID(ctx context.Context) string {
	id, _ := ctx.Value(keyIDKey{}).(string)
	return id
}

// LogHandler adds request_id and key_id, from the record's context, to every log line.
type LogHandler struct{ slog.Handler }

// NewLogHandler wraps h; a handler that is already a LogHandler is returned as it is, so the
// ids are never added twice.
func NewLogHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(*LogHandler); ok {
		return h
	}
	return &LogHandler{h}
}

// Handle adds the ids of ctx to r.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := RequestID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	if id := KeyID(ctx); id != "" {
		r.AddAttrs(slog.String("key_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps the wrapper around the derived handler.
func (h *LogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &LogHandler{h.Handler.WithAttrs(as)}
}

// WithGroup keeps the wrapper around the derived handler.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	return &LogHandler{h.Handler.WithGroup(name)}
}
