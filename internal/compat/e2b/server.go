package e2b

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
	"github.com/airlockhq/airlock/internal/engine"
)

// Prefix is where the control plane is mounted (E2B_API_URL=http://HOST:PORT/e2b), and
// SandboxPrefix the data plane (E2B_SANDBOX_URL=http://HOST:PORT/e2b/sandbox).
const (
	Prefix        = "/e2b"
	SandboxPrefix = Prefix + "/sandbox"
)

// Ports of a sandbox the data plane reaches, as E2B numbers them (E2b-Sandbox-Port).
const (
	envdPort        = "49983"
	interpreterPort = "49999"
)

// envdVersion is the envd version sandboxes report. The SDK turns features on by it (COMPAT.md
// §3.10); 0.5.7 turns on CloseStdin and octet-stream uploads, both served here, and leaves file
// metadata (0.6.2) and watch options off.
const envdVersion = "0.5.7"

// clientID is the clientID of every sandbox (E2B's names the cluster client; no SDK reads it).
const clientID = "airlock"

// Config configures the E2B front end. Zero values mean defaults.
type Config struct {
	Logger *slog.Logger
	Engine *engine.Engine
	// Authenticate checks an API key (X-API-KEY) and returns its owner, as the REST API's
	// bearer check does; nil accepts every caller as the one tenant "" (a daemon without keys).
	Authenticate func(key string) (owner string, ok bool)
	// MaxRequestsPerKey bounds the requests (streams included) one key has in flight, control
	// and data plane together, as the REST API's bound of the same name; past it, 429. 0 is no
	// bound; it applies only with Authenticate.
	MaxRequestsPerKey int
	// Admit applies the owner's per-key request rate to each request, control and data
	// plane (the REST API's Server.AdmitOwner); nil admits every request.
	Admit func(owner string) error
	// HoldCreate applies the owner's per-key quotas (CPU seconds, live sandboxes or sessions)
	// to a sandbox about to be created (the REST API's Server.HoldCreate); nil holds nothing.
	HoldCreate func(ctx context.Context, owner string, session bool) (release func(), err error)
	// Peers, in cluster mode (the REST API's Server.AskPeers), asks every other live node the
	// same list request and returns their answers by node, so that a list through any node
	// is the cluster's; nil (single-node mode) lists this node's sandboxes only.
	Peers func(w http.ResponseWriter, r *http.Request) map[string][]byte
}

// Server serves E2B's control and data planes.
type Server struct {
	cfg     Config
	control *http.ServeMux // below Prefix
	envd    *http.ServeMux // below SandboxPrefix, port 49983
	interp  *http.ServeMux // below SandboxPrefix, port 49999

	grantsMu sync.Mutex       // guards grants
	grants   map[string]grant // sandbox id → its access token, for sandboxes the data plane may reach

	procs procs // commands started through process.Process/Start, running

	inflightMu sync.Mutex     // guards inflight
	inflight   map[string]int // requests in flight per owner

	ctx    context.Context // the grant watchers and commands run under it; Close cancels it
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the server starts
}

// grant is the data plane's access to one sandbox: the token create or connect issued, and
// the owner the sandbox is looked up as.
type grant struct {
	owner string
	token string
}

// New returns the front end over cfg.Engine.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil {
		return nil, errors.New("e2b: no engine")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, control: http.NewServeMux(), envd: http.NewServeMux(), interp: http.NewServeMux(),
		grants: map[string]grant{}, inflight: map[string]int{}, procs: procs{all: map[procKey]*proc{}}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.controlRoutes()
	// A Connect message is a request or a chunk of stdin: 16 MiB is far above what the SDK
	// sends and bounds what one call can make the daemon hold.
	limit := connect.WithReadMaxBytes(16 << 20)
	s.envd.Handle(agentpbconnect.NewProcessHandler(&process{s: s}, limit))
	s.envd.Handle(agentpbconnect.NewFilesystemHandler(&filesystem{}, limit))
	s.envd.HandleFunc("GET /files", s.handleDownload)
	s.envd.HandleFunc("POST /files", s.handleUpload)
	s.envd.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	s.envd.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.ErrNotFound, "envd has no route %s %s", r.Method, r.URL.Path))
	})
	s.interpreterRoutes()
	return s, nil
}

// Handler routes requests below Prefix to s and everything else to next.
func (s *Server) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == Prefix || strings.HasPrefix(r.URL.Path, Prefix+"/") {
			s.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ServeHTTP serves one request below Prefix.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rest, ok := strings.CutPrefix(r.URL.Path, SandboxPrefix); ok && (rest == "" || rest[0] == '/') {
		s.serveData(w, stripped(r, rest))
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, Prefix)
	owner, ok := "", true
	if s.cfg.Authenticate != nil {
		key := r.Header.Get("X-API-KEY")
		if key == "" {
			writeError(w, api.Errorf(api.ErrUnauthenticated, "missing X-API-KEY: set E2B_API_KEY to an Airlock API key"))
			return
		}
		owner, ok = s.cfg.Authenticate(key)
	}
	if !ok {
		w.Header().Set("Connection", "close")
		writeError(w, api.Errorf(api.ErrUnauthenticated, "invalid API key: E2B_API_KEY must be an Airlock API key"))
		return
	}
	leave, err := s.enter(owner)
	if err != nil {
		writeError(w, err)
		return
	}
	defer leave()
	// Control-plane bodies and answers are small: a client that stalls is cut as the REST
	// API's deadlines cut it (the data plane's streams and uploads have none).
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(time.Minute))
	rc.SetWriteDeadline(time.Now().Add(time.Minute))
	r = stripped(r, rest)
	s.control.ServeHTTP(w, r.WithContext(engine.WithOwner(r.Context(), owner)))
}

// stripped is r with its path replaced by the part below a mount prefix.
func stripped(r *http.Request, rest string) *http.Request {
	if rest == "" {
		rest = "/"
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = rest, ""
	return r2
}

// Close ends the commands the server started and stops its goroutines. The sandboxes stay
// (the engine owns them).
func (s *Server) Close() {
	s.cancel()
	s.wg.Wait()
}

// enter counts one more request in flight for owner and returns its release, or refuses it
// past Config.MaxRequestsPerKey.
func (s *Server) enter(owner string) (leave func(), err error) {
	if s.cfg.Admit != nil {
		if err := s.cfg.Admit(owner); err != nil {
			return nil, err
		}
	}
	if s.cfg.MaxRequestsPerKey <= 0 || s.cfg.Authenticate == nil {
		return func() {}, nil
	}
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	if s.inflight[owner] >= s.cfg.MaxRequestsPerKey {
		return nil, api.Errorf(api.ErrResourceExhausted, "too many requests in flight for this API key")
	}
	s.inflight[owner]++
	return func() {
		s.inflightMu.Lock()
		defer s.inflightMu.Unlock()
		if s.inflight[owner]--; s.inflight[owner] <= 0 {
			delete(s.inflight, owner)
		}
	}, nil
}

// grantFor returns the access token of sb, issuing one the first time. The grant is dropped
// when the sandbox ends, so the map holds live sandboxes only.
func (s *Server) grantFor(ctx context.Context, sb *engine.Sandbox) string {
	id := sb.ID()
	s.grantsMu.Lock()
	defer s.grantsMu.Unlock()
	if g, ok := s.grants[id]; ok {
		return g.token
	}
	var b [32]byte
	rand.Read(b[:])
	g := grant{owner: engine.Owner(ctx), token: hex.EncodeToString(b[:])}
	s.grants[id] = g
	s.wg.Go(func() {
		select {
		case <-sb.Done():
			s.forget(id)
		case <-s.ctx.Done():
		}
	})
	return g.token
}

// forget drops the grant of sandbox id.
func (s *Server) forget(id string) {
	s.grantsMu.Lock()
	delete(s.grants, id)
	s.grantsMu.Unlock()
}

// sandboxKey carries the sandbox a data-plane request reaches.
type sandboxKey struct{}

func sandboxOf(ctx context.Context) *engine.Sandbox {
	sb, _ := ctx.Value(sandboxKey{}).(*engine.Sandbox)
	return sb
}

// serveData serves one data-plane request: the sandbox and port from E2B's headers, the
// access token checked against the sandbox's grant.
func (s *Server) serveData(w http.ResponseWriter, r *http.Request) {
	// Connect's procedures are /<package>.<Service>/<Method>; everything else is REST.
	connectCall := strings.Contains(strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)[0], ".")
	fail := func(err error) {
		if connectCall {
			writeConnectError(w, err)
			return
		}
		writeError(w, err)
	}
	id := r.Header.Get("E2b-Sandbox-Id")
	s.grantsMu.Lock()
	g, ok := s.grants[id]
	s.grantsMu.Unlock()
	if !ok {
		// E2B answers 502 for a sandbox that is not running; the SDK reads it as such.
		fail(errNotRunning(id))
		return
	}
	tok := r.Header.Get("X-Access-Token")
	if tok == "" {
		// The code interpreter's /contexts calls carry only the traffic token (COMPAT.md §3.2),
		// which is the same token here.
		tok = r.Header.Get("E2B-Traffic-Access-Token")
	}
	if subtle.ConstantTimeCompare([]byte(tok), []byte(g.token)) != 1 {
		fail(api.Errorf(api.ErrUnauthenticated, "missing or wrong X-Access-Token for sandbox %s (it is the envdAccessToken from create or connect)", id))
		return
	}
	ctx := engine.WithOwner(r.Context(), g.owner)
	sb, done, err := s.cfg.Engine.Use(ctx, id)
	if err != nil {
		s.forget(id)
		fail(errNotRunning(id))
		return
	}
	defer done()
	leave, err := s.enter(g.owner)
	if err != nil {
		fail(err)
		return
	}
	defer leave()
	r = r.WithContext(context.WithValue(ctx, sandboxKey{}, sb))
	switch port := r.Header.Get("E2b-Sandbox-Port"); port {
	case envdPort, "":
		s.envd.ServeHTTP(w, r)
	case interpreterPort:
		s.interp.ServeHTTP(w, r)
	default:
		fail(&statusError{status: http.StatusBadGateway, msg: "port " + port + " of sandbox " + id +
			" is not reachable through E2B_SANDBOX_URL (only 49983, envd, and 49999, the code interpreter); use Airlock's port proxy"})
	}
}

// statusError is an error answered with its own HTTP status (502 for a sandbox that is not
// running, as E2B answers), with a message fit for clients.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func errNotRunning(id string) error {
	return &statusError{status: http.StatusBadGateway, msg: "sandbox " + id + " is not running (unknown, ended, or never connected through /e2b)"}
}

// statusOf maps an error to E2B's HTTP status. An ended sandbox is a missing one for E2B's
// clients (SandboxNotFoundError), so gone is 404.
func statusOf(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return se.status
	}
	// The REST API's status otherwise (api.HTTPStatus).
	code := api.PublicDetail(err).Code
	if code == api.CodeGone {
		return http.StatusNotFound
	}
	return api.HTTPStatus(code)
}

// errorBody is E2B's REST error: an integer code (the HTTP status; the SDK compares it to 404
// to tell a missing sandbox) and a message.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// writeError writes err in E2B's REST shape; a server fault says only what api.PublicDetail
// lets through.
func writeError(w http.ResponseWriter, err error) {
	status := statusOf(err)
	msg := err.Error()
	var se *statusError
	if !errors.As(err, &se) {
		msg = api.PublicDetail(err).Message
	}
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

// writeJSON writes v with status and a Content-Length (openapi-fetch parses every 2xx body).
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":500,"message":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
