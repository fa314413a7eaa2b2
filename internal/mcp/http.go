package mcp

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

// HandlerConfig configures Handler.
type HandlerConfig struct {
	// Base is the URL of the daemon's API that the tools call, with the caller's own key.
	Base    string
	Version string
	Logger  *slog.Logger
	// HTTPClient carries the tools' API calls; nil means http.DefaultClient's transport.
	HTTPClient *http.Client
}

// Handler serves MCP over streamable HTTP. Each request's bearer key is checked against the
// daemon (GET /v1/info) before any MCP message is read, and the tools then act with that key,
// so a caller sees only its own sandboxes and sessions and a wrong key gets a 401.
//
// It runs stateless, answering each POST with JSON: the tools' state (sessions, sandboxes)
// lives in the daemon, named by tags, so no MCP session has to outlive its request, and no
// event stream stays open to hold up a daemon's graceful shutdown.
func Handler(cfg HandlerConfig) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	client := func(r *http.Request) (*airlock.Client, string) {
		key, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		key = strings.TrimSpace(key)
		c := airlock.New(cfg.Base, key)
		if cfg.HTTPClient != nil {
			c = c.WithHTTPClient(cfg.HTTPClient)
		}
		return c, key
	}
	// Stateless, the handler builds a server per request: the cache spares each one inferring
	// and resolving the tools' schemas again.
	cache, locks := mcp.NewSchemaCache(), new(nameLocks)
	h := mcp.NewStreamableHTTPHandler(func(r *http.Request) *mcp.Server {
		c, key := client(r)
		return newServer(c, key, cfg.Version, cache, locks)
	}, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true, Logger: cfg.Logger})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The daemon's http.Server has no read timeout (it would cut the API's streams): the
		// body of an MCP message, small and sent at once, must arrive within a minute. The
		// answer has no such bound, as a tool call lasts as long as its program.
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Minute))
		c, _ := client(r)
		if _, err := c.Info(r.Context()); err != nil {
			status, code, msg := http.StatusBadGateway, api.CodeUnavailable, "the daemon's API is unavailable"
			if airlock.IsAuth(err) {
				status, code, msg = http.StatusUnauthorized, api.CodeUnauthenticated, "a valid API key is required (Authorization: Bearer KEY)"
				w.Header().Set("WWW-Authenticate", `Bearer realm="airlock"`)
			} else {
				cfg.Logger.WarnContext(r.Context(), "mcp: the daemon's API did not answer", "err", err)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
			return
		}
		h.ServeHTTP(w, r)
	})
}
