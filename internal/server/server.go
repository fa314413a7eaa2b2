// Package server is Airlock's HTTP API: routes, authentication, request limits, and the single
// mapping from error codes to HTTP statuses.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/judge"
	"github.com/airlockhq/airlock/internal/secrets"
)

// Config configures the server. Zero values mean defaults.
type Config struct {
	Logger        *slog.Logger
	Engine        *engine.Engine
	APIKeys       []string // bearer keys; empty means no authentication (loopback only)
	MaxBodyBytes  int64    // default 10 MiB
	Version       string
	CgroupVersion int
	Runtimes      []string

	// ReadTimeout bounds how long a request body may take to arrive, and WriteTimeout how long
	// a response may take to be written once the handler starts answering (so a long exec is
	// not cut, only a client that stops reading). Both default to 60 s. Streamed bodies and
	// answers (uploads, downloads, stdin, NDJSON, WebSocket; see routeDocs) have neither:
	// their clients read and write at their own pace, bounded by the sandbox's life.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// MaxRequestsPerKey bounds the requests one API key has in flight at once (streams and
	// WebSockets included), so that one tenant cannot hold every connection the daemon accepts
	// (see --max-connections); past it, 429. Default 256; it applies only with API keys.
	MaxRequestsPerKey int
	// Images is the daemon's image store, behind /v1/images; nil answers those routes 501.
	Images *image.Store
	// BuildRunner runs the steps of POST /v1/images builds in sandboxes; nil answers 501.
	BuildRunner image.StepRunner
	// Keys are API keys with ids and per-key limits (ParseKeyFile), in addition to APIKeys.
	Keys []Key
	// Audit receives the server's own audit records (secrets created and deleted); the
	// engine's come through engine.Config.Audit. Nil audits nothing.
	Audit audit.Sink
	// Secrets stores named secrets, behind /v1/secrets; nil answers those routes 501. The
	// engine resolves them through engine.Config.Secrets, normally the same store.
	Secrets *secrets.Store
	// Agent runs POST /v1/agent/runs (the LLM code agent); nil answers 501.
	Agent AgentRunner
	// Cluster routes requests across nodes (cluster.go); nil is single-node mode.
	Cluster Cluster
	// Batches is the async batch queue behind /v1/batches (batches.go); nil answers 501.
	Batches BatchQueue
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	if c.Engine == nil {
		return errors.New("server: no engine")
	}
	for _, k := range c.APIKeys {
		if len(k) < 16 {
			return errors.New("server: API keys must be at least 16 characters")
		}
	}
	return nil
}

// Server serves the API.
type Server struct {
	cfg      Config
	keys     []*keyState          // every key: its SHA-256, compared in constant time, and limits
	byOwner  map[string]*keyState // the same keys by engine owner (keySink)
	mux      *http.ServeMux
	paths    map[string]bool // route paths, for JSON 405s
	patterns []string        // every registered "METHOD /path", for the OpenAPI check
	metrics  *metrics
	// portTransport carries proxied requests to sandboxes' ports (see portRoutes).
	portTransport *http.Transport

	inflightMu sync.Mutex     // guards inflight
	inflight   map[string]int // requests in flight per owner

	draining atomic.Bool  // Drain was called: /healthz answers 503 "draining"
	calls    atomic.Int64 // handlers running, WebSocket execs included (see Wait)

	cl *clusterState // cluster mode's routing state (cluster.go); nil in single-node mode
}

// Wait returns once no call is running, or with ctx's error when ctx ends first. It covers
// what http.Server.Shutdown does not wait for: WebSocket execs, whose connections are hijacked.
func (s *Server) Wait(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for s.calls.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Drain marks the daemon as shutting down: from now on /healthz answers 503 with status
// "draining", so that a load balancer stops sending work while the calls in flight finish.
func (s *Server) Drain() { s.draining.Store(true) }

// errTooManyRequests is the answer past Config.MaxRequestsPerKey.
var errTooManyRequests = api.Errorf(api.ErrResourceExhausted, "too many requests in flight for this API key")

// enter counts one more request in flight for owner; false if that would pass the bound.
func (s *Server) enter(owner string) bool {
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	if s.inflight[owner] >= s.cfg.MaxRequestsPerKey {
		return false
	}
	s.inflight[owner]++
	return true
}

func (s *Server) leave(owner string) {
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	if s.inflight[owner]--; s.inflight[owner] <= 0 {
		delete(s.inflight, owner)
	}
}

// New returns a server; Handler gives its http.Handler.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 10 << 20
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = time.Minute
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = time.Minute
	}
	if cfg.MaxRequestsPerKey == 0 {
		cfg.MaxRequestsPerKey = 256
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Logger = slog.New(audit.NewLogHandler(cfg.Logger.Handler())) // request and key ids on every line
	s := &Server{cfg: cfg, mux: http.NewServeMux(), paths: map[string]bool{}, metrics: newMetrics(cfg.Engine),
		inflight: map[string]int{}, byOwner: map[string]*keyState{}}
	keys := make([]Key, 0, len(cfg.APIKeys)+len(cfg.Keys))
	for _, k := range cfg.APIKeys {
		keys = append(keys, PlainKey(k))
	}
	for _, k := range append(keys, cfg.Keys...) {
		ks := newKeyState(k)
		if s.byOwner[ks.owner] != nil {
			return nil, fmt.Errorf("server: API key %s is given twice", k.ID)
		}
		s.keys = append(s.keys, ks)
		s.byOwner[ks.owner] = ks
	}
	if cfg.Cluster != nil {
		s.cl = newClusterState(s.metrics.reg, cfg.Cluster)
		for _, k := range s.keys {
			k.aligned = true
		}
	}
	s.routes()
	return s, nil
}

// Handler is the API's root handler.
func (s *Server) Handler() http.Handler { return withRequestID(s.clusterRoute(s.mux)) }

// AuditSink consumes the engine's audit records for the server: per-key CPU accounting and
// the metrics of runs, creations, OOM kills and timeouts. Hand it to engine.Config.Audit
// (through an audit.Fanout, as the engine is made first).
func (s *Server) AuditSink() audit.Sink { return serverSink{s} }

func (s *Server) routes() {
	s.handle("GET /healthz", false, s.handleHealth)
	s.handle("GET /v1/info", true, s.handleInfo)
	s.handle("GET /v1/openapi.json", false, s.handleOpenAPI)
	s.handle("GET /metrics", true, s.handleMetrics)
	s.handle("POST /v1/execute", true, s.handleExecute)
	s.handle("POST /execute", true, s.handleExecute) // seed-compatible
	s.handle("POST /v1/execute/batch", true, s.handleBatch)
	s.sandboxRoutes()
	s.sessionRoutes()
	s.executionRoutes()
	s.imageRoutes()
	s.judgeRoutes()
	s.secretRoutes()
	s.playgroundRoutes()
	s.agentRoutes()
	s.batchRoutes()
	// Everything else: JSON errors rather than the mux's plain-text ones.
	for p := range s.paths {
		if s.underRest(p) {
			continue // the {x...} route's own fallback answers its 405s
		}
		s.mux.Handle(p, s.deadlines("", s.adapt(true, func(w http.ResponseWriter, r *http.Request) error {
			return api.Errorf(errMethod, "method %s is not allowed on %s", r.Method, r.URL.Path)
		})))
	}
	s.mux.Handle("/", s.deadlines("", s.adapt(true, func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(api.ErrNotFound, "no route %s %s", r.Method, r.URL.Path)
	})))
}

// judgeRoutes mounts the judge-style APIs (issue 14): Piston v2, Judge0 CE, go-judge and
// codapi, each under its prefix with its own credential and error shapes (internal/judge),
// all over the engine's one-shot path with the same keys and per-key bounds as /v1.
func (s *Server) judgeRoutes() {
	j, err := judge.New(judge.Config{Engine: s.cfg.Engine, Logger: s.cfg.Logger, MaxBodyBytes: s.cfg.MaxBodyBytes,
		Authorize: s.judgeAuthorize})
	if err != nil {
		panic(err) // the engine was validated, and the authorizer is ours
	}
	for prefix, h := range j.Handlers() {
		s.mux.Handle(prefix+"/", s.metrics.instrument(prefix+"/", s.deadlines("", http.StripPrefix(prefix, h))))
	}
}

// judgeAuthorize checks a key a judge API found in its own header, as authorize checks a
// bearer, and takes the key's in-flight slot.
func (s *Server) judgeAuthorize(r *http.Request, key string) (context.Context, func(), error) {
	r2 := r.Clone(r.Context())
	r2.Header.Set("Authorization", "Bearer "+key)
	owner, ok := s.authorize(r2)
	if !ok {
		return nil, nil, api.ErrUnauthenticated
	}
	release := func() {}
	if len(s.keys) > 0 {
		if err := s.AdmitOwner(owner); err != nil {
			return nil, nil, err
		}
		if !s.enter(owner) {
			return nil, nil, errTooManyRequests
		}
		release = func() { s.leave(owner) }
	}
	return engine.WithOwner(r.Context(), owner), release, nil
}

// underRest reports whether another route's path ends in a rest wildcard ({x...}) that also
// matches the literal path p (GET /v1/images/{ref...} and POST /v1/images/pull): a method-less
// fallback for p would conflict with that route in the mux.
func (s *Server) underRest(p string) bool {
	for q := range s.paths {
		if i := strings.LastIndex(q, "/{"); i >= 0 && strings.HasSuffix(q, "...}") && q != p &&
			!strings.Contains(p, "{") && strings.HasPrefix(p, q[:i+1]) {
			return true
		}
	}
	return false
}

// errMethod is a 405; it has no public code of its own beyond invalid_argument semantics.
var errMethod = &api.Error{Code: "method_not_allowed", Message: "method not allowed"}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) handle(pattern string, auth bool, h handlerFunc) {
	s.mux.Handle(pattern, s.counted(s.metrics.instrument(pattern, s.deadlines(pattern, s.adapt(auth, s.limited(pattern, s.audited(pattern, h)))))))
	_, p, _ := strings.Cut(pattern, " ")
	s.paths[p] = true
	s.patterns = append(s.patterns, pattern)
}

// counted counts h's calls in flight, for Wait.
func (s *Server) counted(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		defer s.calls.Add(-1)
		h.ServeHTTP(w, r)
	})
}

// adapt turns an error-returning handler into an http.Handler: authentication first, then
// the handler; a returned error is logged and written as the one JSON error shape.
func (s *Server) adapt(auth bool, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := func() error {
			if !auth {
				return h(w, r)
			}
			k, ok := s.authorizeKey(r)
			if !ok {
				// No keep-alive for a client without a key: it gets nothing to hold open.
				w.Header().Set("Connection", "close")
				return api.ErrUnauthenticated
			}
			if k == nil {
				return h(w, r)
			}
			// The key's id (never the key) on every log line and audit record from here on.
			r = r.WithContext(withKey(audit.WithKeyID(engine.WithOwner(r.Context(), k.owner), k.ID), k))
			if err := s.allowRate(k); err != nil {
				return err
			}
			if !s.enter(k.owner) {
				s.metrics.refusal(k.ID, "inflight")
				return errTooManyRequests
			}
			defer s.leave(k.owner)
			return h(w, r)
		}()
		if err != nil {
			s.writeError(w, r, err)
		}
	})
}

// authorize checks the bearer key and returns the caller's identity: a hash of its key, under
// which its sandboxes and sessions live ("" when the server has no keys).
func (s *Server) authorize(r *http.Request) (owner string, ok bool) {
	k, ok := s.authorizeKey(r)
	if k == nil {
		return "", ok
	}
	return k.owner, ok
}

// authorizeKey checks the bearer key and returns the caller's key: its owner, id and limits;
// nil, true when the server has no keys.
func (s *Server) authorizeKey(r *http.Request) (*keyState, bool) {
	if len(s.keys) == 0 {
		return nil, true
	}
	tok, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !found {
		return nil, false
	}
	return s.keyFor(tok)
}

// Authenticate checks an API key as the bearer check does and returns its owner ("", true
// when the server has no keys): for front ends that carry the key elsewhere (Modal's
// x-modal-token-secret, E2B's X-API-KEY).
func (s *Server) Authenticate(key string) (owner string, ok bool) {
	if len(s.keys) == 0 {
		return "", true
	}
	k, ok := s.keyFor(key)
	if k == nil {
		return "", false
	}
	return k.owner, ok
}

// keyFor returns the key whose hash matches key, nil if none does.
func (s *Server) keyFor(key string) (*keyState, bool) {
	sum := sha256.Sum256([]byte(strings.TrimSpace(key)))
	var match *keyState
	for _, k := range s.keys { // every key is compared, in constant time each
		if subtle.ConstantTimeCompare(sum[:], k.Hash[:]) == 1 {
			match = k
		}
	}
	return match, match != nil
}

// statusOf maps each error code to its one HTTP status: the API's (api.HTTPStatus), and 405
// for the router's own method_not_allowed.
func statusOf(code string) int {
	if code == errMethod.Code {
		return http.StatusMethodNotAllowed
	}
	return api.HTTPStatus(code)
}

// writeError writes err as {"error":{code,message}}. A 5xx never carries internal detail.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	err = shutdownCause(r.Context(), err)
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away; nobody to answer
	}
	d := api.PublicDetail(err)
	d.RequestID = audit.RequestID(r.Context())
	status := statusOf(d.Code)
	if status >= 500 {
		s.cfg.Logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	setRetryAfter(w, status, err)
	writeJSON(w, status, api.ErrorBody{Error: d})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// decode reads one JSON object into v: body capped, unknown fields and trailing data refused.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	// The Content-Type is not checked: `curl -d` sends form-urlencoded, and the body must
	// parse as strict JSON anyway.
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err, s.cfg.MaxBodyBytes)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return decodeError(err, s.cfg.MaxBodyBytes)
		}
		return api.Errorf(api.ErrInvalidArgument, "request body has data after the JSON object")
	}
	return nil
}

func decodeError(err error, limit int64) error {
	var maxErr *http.MaxBytesError
	var typeErr *json.UnmarshalTypeError
	var synErr *json.SyntaxError
	switch {
	case errors.As(err, &maxErr):
		return api.Errorf(api.ErrTooLarge, "request body exceeds %d bytes", limit)
	case errors.As(err, &typeErr):
		return api.Errorf(api.ErrInvalidArgument, "field %q must be %s, not JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &synErr):
		return api.Errorf(api.ErrInvalidArgument, "malformed JSON at byte %d: %v", synErr.Offset, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return api.Errorf(api.ErrInvalidArgument, "request body did not arrive within the read timeout")
	case errors.Is(err, io.EOF):
		return api.Errorf(api.ErrInvalidArgument, "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return api.Errorf(api.ErrInvalidArgument, "malformed JSON: unexpected end of body")
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return api.Errorf(api.ErrInvalidArgument, "%s", strings.TrimPrefix(err.Error(), "json: "))
	default:
		return api.Errorf(api.ErrInvalidArgument, "malformed JSON: %v", err)
	}
}

// shutdownCause is the error to answer for err, returned by a call whose request context was
// ended: when the daemon ended it (serve cancels the calls still running past the shutdown's
// grace period, with an API error as the cause), that cause, rather than whatever the call
// made of the cancellation; otherwise err.
func shutdownCause(ctx context.Context, err error) error {
	var ae *api.Error
	if cause := context.Cause(ctx); err != nil && cause != nil && errors.As(cause, &ae) {
		return cause
	}
	return err
}

// handleHealth answers without authentication, so it says nothing of the tenants' sandboxes
// (their count is in /metrics, behind a key). While the daemon shuts down (Drain) it answers
// 503 "draining".
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) error {
	if s.draining.Load() {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "draining"})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	return nil
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) error {
	lim := s.cfg.Engine.Limits()
	lim.MaxBodyBytes = s.cfg.MaxBodyBytes
	writeJSON(w, http.StatusOK, api.Info{
		Version: s.cfg.Version, Runtimes: s.cfg.Runtimes, Cgroup: s.cfg.CgroupVersion,
		Languages: languageNames(s.cfg.Engine.Languages(r.Context())), Limits: lim, Key: keyInfo(keyOf(r.Context())),
	})
	return nil
}

func (s *Server) handleExecute(w http.ResponseWriter, r *http.Request) error {
	var req api.ExecuteRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	// The id is in the answer's headers whatever the outcome, to match it with GET /v1/executions.
	_, release, err := s.holdRuns(keyOf(r.Context()), 1, false)
	if err != nil {
		return err
	}
	defer release()
	ctx := engine.WithExecutionHook(r.Context(), func(id string) { w.Header().Set(api.ExecutionHeader, id) })
	if wantsNDJSON(r) {
		return s.streamExecute(ctx, w, OneShot(req))
	}
	res, err := s.cfg.Engine.Execute(ctx, OneShot(req))
	if err != nil {
		return err
	}
	resp := ExecuteResponse(res)
	s.metrics.execution(resp)
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// streamExecute answers a one-shot with NDJSON events: stdout and stderr chunks as the program
// writes them (within the output caps), then one "result" event with the whole answer, or an
// "error" event.
func (s *Server) streamExecute(ctx context.Context, w http.ResponseWriter, o engine.OneShot) error {
	es := newEventStream(w)
	send := es.send
	o.Output = func(stream int, b []byte) {
		t := api.EventStdout
		if stream == engine.StreamStderr {
			t = api.EventStderr
		}
		send(api.ExecEvent{Type: t, Data: engine.UTF8(b)})
	}
	res, err := s.cfg.Engine.Execute(ctx, o)
	if err != nil {
		if !es.started() {
			return err // nothing sent yet: a normal error response
		}
		d := publicDetail(ctx, shutdownCause(ctx, err))
		send(api.ExecEvent{Type: api.EventError, Error: &d})
		return nil
	}
	resp := ExecuteResponse(res)
	s.metrics.execution(resp)
	send(api.ExecEvent{Type: api.EventResult, Result: resp})
	return nil
}

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) error {
	var req api.BatchRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	b := batch(req)
	// The key's MaxRuns: the batch runs at most as many snippets side by side as it has free.
	want := len(b.Runs)
	if b.Concurrency > 0 {
		want = min(want, b.Concurrency)
	}
	held, release, err := s.holdRuns(keyOf(r.Context()), want, true)
	if err != nil {
		return err
	}
	defer release()
	if held < want {
		b.Concurrency = held
	}
	items, err := s.cfg.Engine.ExecuteBatch(r.Context(), b)
	if err != nil {
		return err
	}
	resp := batchResponse(items)
	for _, res := range resp.Results {
		if res.ExecuteResponse != nil {
			s.metrics.execution(res.ExecuteResponse)
		}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// languageNames lists the names of ls.
func languageNames(ls []engine.Language) []string {
	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = l.Name
	}
	return names
}

// CheckListen refuses a non-loopback address when no API key is configured.
func CheckListen(addr string, keys []string) error {
	if len(keys) > 0 {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to listen on %q without API keys: set --api-key-file or AIRLOCK_API_KEYS, or listen on 127.0.0.1", addr)
	}
	return nil
}
