package modal

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"

	pb "github.com/modal-labs/modal-client/go/proto/modal_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
)

// Images is the image store as far as Modal's image calls need it: *image.Store.
type Images interface {
	Resolve(ref string) (*image.Image, error)
}

// Config configures the Modal front end. Zero values mean defaults.
type Config struct {
	Logger *slog.Logger
	Engine *engine.Engine
	// Authenticate checks an API key (MODAL_TOKEN_SECRET) and returns its owner, as the REST
	// API's bearer check does; nil accepts every caller as the one tenant "" (a daemon without
	// keys).
	Authenticate func(key string) (owner string, ok bool)
	// Images resolves registry references and image ids; nil means no image store, so every
	// image build fails saying so.
	Images Images
	// Builder builds images whose Dockerfile commands go beyond FROM (RUN, ENV, WORKDIR);
	// nil refuses such images with a clear error.
	Builder *image.Builder
	// Secrets resolves a named secret (secrets.fromName) to its variables for owner. Nil, the
	// daemon has no named secrets and such requests fail with FAILED_PRECONDITION saying so.
	Secrets func(ctx context.Context, owner, name string) (map[string]string, error)
	// MaxRequestsPerKey bounds the calls (streams and long polls included) one key has in
	// flight, as the REST API's bound of the same name; past it, RESOURCE_EXHAUSTED. 0 is no
	// bound; it applies only with Authenticate.
	MaxRequestsPerKey int
	// Admit applies the owner's per-key request rate to each call (the REST API's
	// Server.AdmitOwner); nil admits every call.
	Admit func(owner string) error
	// HoldCreate applies the owner's per-key quotas (CPU seconds, live sandboxes) to a sandbox
	// about to be created (the REST API's Server.HoldCreate); nil holds nothing.
	HoldCreate func(ctx context.Context, owner string, session bool) (release func(), err error)
}

// Server serves Modal's two gRPC services. Its ServeHTTP runs inside net/http (h2c on the
// daemon's listener); Close ends the executions it started.
type Server struct {
	cfg   Config
	grpc  *grpc.Server
	key   []byte // signs router tokens; random per daemon, so a restart makes clients refetch
	state *state

	inflightMu sync.Mutex     // guards inflight
	inflight   map[string]int // calls in flight per owner

	ctx    context.Context // executions and entrypoints run under it; Close cancels it
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the server starts
}

// maxMessage is the largest gRPC message either way, as Modal's clients allow.
const maxMessage = 100 << 20

// New returns the front end over cfg.Engine.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil {
		return nil, errors.New("modal: no engine")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, key: make([]byte, 32), state: newState(), inflight: map[string]int{}}
	rand.Read(s.key)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage),
		grpc.ChainUnaryInterceptor(s.unaryAuth), grpc.ChainStreamInterceptor(s.streamAuth))
	pb.RegisterModalClientServer(s.grpc, &control{s: s})
	pb.RegisterTaskCommandRouterServer(s.grpc, &router{s: s})
	return s, nil
}

// IsGRPC reports whether r is a gRPC call: HTTP/2 with a gRPC content type. Everything else
// on the shared listener is the REST API's.
func IsGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// hostKey carries the :authority a call arrived at, for the router URL.
type hostKey struct{}

// ServeHTTP serves one gRPC call.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.grpc.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), hostKey{}, r.Host)))
}

// Handler routes gRPC calls to s and everything else to next.
func (s *Server) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsGRPC(r) {
			s.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Close cancels the executions the server started and waits for them. The sandboxes stay
// (the engine owns them).
func (s *Server) Close() {
	s.cancel()
	s.wg.Wait()
}

// callerKey carries the caller (a caller) in a call's context.
type callerKey struct{}

// caller is who made a call: the owner of an API key, or of a router token's sandbox.
type caller struct {
	owner   string
	sandbox string // for router calls: the one sandbox the token reaches
	client  string // x-modal-client-type: "8"/"9" JavaScript/Go, "1" Python
}

func callerOf(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// authenticate checks a call's credentials and returns its context with the caller.
// Control-plane calls carry the API key as x-modal-token-secret on every call; router calls
// carry a router token (a JWT this server signed) as a bearer.
func (s *Server) authenticate(ctx context.Context, method string) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	first := func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	var c caller
	if strings.HasPrefix(method, "/"+pb.TaskCommandRouter_ServiceDesc.ServiceName+"/") {
		tok, ok := strings.CutPrefix(first("authorization"), "Bearer ")
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "router calls need the bearer token from SandboxGetCommandRouterAccess")
		}
		claims, err := s.verify(tok)
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		c = caller{owner: claims.Owner, sandbox: claims.Sandbox}
	} else {
		secret := first("x-modal-token-secret")
		if secret == "" {
			return nil, status.Error(codes.Unauthenticated, "missing x-modal-token-secret: set MODAL_TOKEN_SECRET to an Airlock API key")
		}
		owner, ok := "", true
		if s.cfg.Authenticate != nil {
			owner, ok = s.cfg.Authenticate(secret)
		}
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "invalid API key: MODAL_TOKEN_SECRET must be an Airlock API key")
		}
		c = caller{owner: owner, client: first("x-modal-client-type")}
	}
	ctx = context.WithValue(ctx, callerKey{}, c)
	return engine.WithOwner(ctx, c.owner), nil
}

// enter counts one more call in flight for ctx's owner and returns its release, or refuses
// it past Config.MaxRequestsPerKey.
func (s *Server) enter(ctx context.Context) (leave func(), err error) {
	if s.cfg.Admit != nil {
		if err := s.cfg.Admit(engine.Owner(ctx)); err != nil {
			return nil, grpcError(err)
		}
	}
	if s.cfg.MaxRequestsPerKey <= 0 || s.cfg.Authenticate == nil {
		return func() {}, nil
	}
	owner := engine.Owner(ctx)
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	if s.inflight[owner] >= s.cfg.MaxRequestsPerKey {
		return nil, status.Error(codes.ResourceExhausted, "too many requests in flight for this API key")
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

// recovered turns a handler's panic into an INTERNAL answer: grpc-go runs each call on a
// goroutine of its own, where a panic would end the daemon with every sandbox in it.
func (s *Server) recovered(ctx context.Context, method string, err *error) {
	if p := recover(); p != nil {
		s.cfg.Logger.ErrorContext(ctx, "modal: handler panicked", "method", method, "panic", p, "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal error")
	}
}

func (s *Server) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer s.recovered(ctx, info.FullMethod, &err)
	ctx, err = s.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	resp, err = h(ctx, req)
	return resp, grpcError(err)
}

// authStream is a server stream whose context carries the caller.
type authStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a authStream) Context() context.Context { return a.ctx }

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer s.recovered(ss.Context(), info.FullMethod, &err)
	ctx, err := s.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	return grpcError(h(srv, authStream{ss, ctx}))
}

// grpcError maps an error to its gRPC status, once for every RPC: Airlock's api codes to
// their gRPC codes; a status already made passes through. Permanent failures are never
// INTERNAL or UNKNOWN, which Modal's clients retry (TaskExecWait forever), and a server
// fault never carries internal text.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "the call was cancelled")
	}
	d := api.PublicDetail(err)
	code, ok := grpcCodes[d.Code]
	if !ok {
		code = codes.Internal
	}
	return status.Error(code, d.Message)
}

// grpcCodes is the gRPC code of each Airlock error code.
var grpcCodes = map[string]codes.Code{
	api.CodeInvalidArgument: codes.InvalidArgument,
	api.CodeUnauthenticated: codes.Unauthenticated,
	api.CodeNotFound:        codes.NotFound,
	// An ended sandbox: permanent (never retried), and what Modal answers for one.
	api.CodeGone:              codes.FailedPrecondition,
	api.CodeConflict:          codes.AlreadyExists,
	api.CodeTooLarge:          codes.ResourceExhausted,
	api.CodeResourceExhausted: codes.ResourceExhausted,
	api.CodeUnimplemented:     codes.Unimplemented,
	api.CodeUnavailable:       codes.Unavailable,
	api.CodeTimeout:           codes.DeadlineExceeded,
}

// code is the gRPC code of err.
func code(err error) codes.Code { return status.Code(err) }

// errorf is a gRPC status error.
func errorf(c codes.Code, format string, args ...any) error {
	return status.Error(c, fmt.Sprintf(format, args...))
}
