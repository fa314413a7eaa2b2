package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
)

// EnvConfig configures an Env. Zero values mean defaults, except EngineRuntime.
type EnvConfig struct {
	Logger *slog.Logger
	// EngineRuntime adapts the native runtime to the engine (internal/native.EngineRuntime). It is
	// passed in rather than imported because internal/cli imports this package.
	EngineRuntime func(*native.Runtime) engine.Runtime
	// StateDir is the runtime's state directory; default a fresh temporary directory, removed
	// by Close, so a benchmark never touches a daemon's /var/lib/airlock.
	StateDir string
	// CgroupRoot is the parent cgroup of the sandboxes; default "airlock-bench-<pid>", removed by
	// Close.
	CgroupRoot string
	// MaxConcurrent is the engine's sandbox limit; default the engine's (4 per core).
	MaxConcurrent int
}

// Env is the in-process world the benchmarks run against: a native runtime on a private state
// directory and cgroup root, an engine over it with its default limits (as `airlock serve` and
// `airlock run` use), and the HTTP API served on a loopback port of this process with an SDK
// client for it. Every sandbox is started by re-executing this binary, which must therefore
// dispatch native.IsInit to the agent first thing (cli.Main does; test binaries do it in
// TestMain).
type Env struct {
	Runtime *native.Runtime
	Engine  *engine.Engine
	Client  *airlock.Client // reaches the HTTP API at URL
	URL     string

	logger   *slog.Logger
	stateDir string
	ownState bool // stateDir was made by NewEnv
	hs       *http.Server
	tr       *http.Transport // the SDK client's
	served   sync.WaitGroup  // the Serve goroutine
	seq      atomic.Int64    // sandbox ids of RuntimePrint1
	closed   sync.Once
	closeErr error
}

// NewEnv builds the runtime, the engine and the HTTP server. The caller must Close it.
func NewEnv(ctx context.Context, cfg EnvConfig) (_ *Env, err error) {
	if cfg.EngineRuntime == nil {
		return nil, errors.New("bench environment: no EngineRuntime adapter")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Env{logger: cfg.Logger, stateDir: cfg.StateDir}
	defer func() {
		if err != nil {
			e.Close(context.WithoutCancel(ctx))
		}
	}()
	if e.stateDir == "" {
		if e.stateDir, err = os.MkdirTemp("", "airlock-bench-"); err != nil {
			return nil, fmt.Errorf("bench state directory: %w", err)
		}
		e.ownState = true
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "airlock-bench-" + strconv.Itoa(os.Getpid())
	}
	e.Runtime, err = native.New(native.Config{Logger: cfg.Logger, StateDir: e.stateDir, CgroupRoot: cfg.CgroupRoot})
	if err != nil {
		return nil, fmt.Errorf("native runtime: %w", err)
	}
	e.Engine, err = engine.New(engine.Config{Logger: cfg.Logger, Runtime: cfg.EngineRuntime(e.Runtime),
		MaxConcurrent: cfg.MaxConcurrent})
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{Logger: cfg.Logger, Engine: e.Engine, Version: "bench",
		CgroupVersion: e.Runtime.CgroupVersion(), Runtimes: []string{"native"}})
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench listener: %w", err)
	}
	e.hs = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn)}
	e.served.Go(func() { e.hs.Serve(ln) })
	e.URL = "http://" + ln.Addr().String()
	// The SDK's default client keeps only two idle connections per host; with up to 256
	// concurrent benchmark clients that would measure TCP connection churn, not the server.
	e.tr = http.DefaultTransport.(*http.Transport).Clone()
	e.tr.MaxIdleConnsPerHost = 256
	e.Client = airlock.New(e.URL, "").WithHTTPClient(&http.Client{Transport: e.tr})
	return e, nil
}

// Close stops the server, destroys every sandbox, removes the cgroup root and, if NewEnv made
// it, the state directory. It is idempotent.
func (e *Env) Close(ctx context.Context) error {
	e.closed.Do(func() {
		var errs []error
		if e.tr != nil {
			e.tr.CloseIdleConnections()
		}
		if e.hs != nil {
			if err := e.hs.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stop bench server: %w", err))
			}
			e.served.Wait()
		}
		if e.Engine != nil {
			if err := e.Engine.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("close engine: %w", err))
			}
		}
		if e.Runtime != nil {
			if err := e.Runtime.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close runtime: %w", err))
			}
		}
		if e.ownState && e.stateDir != "" {
			if err := os.RemoveAll(e.stateDir); err != nil {
				errs = append(errs, fmt.Errorf("remove bench state directory: %w", err))
			}
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// StateDir is the runtime's state directory.
func (e *Env) StateDir() string { return e.stateDir }

// ExecutePrint1 runs print(1) once through the embedded engine and checks the result.
func (e *Env) ExecutePrint1(ctx context.Context) error {
	res, err := e.Engine.Execute(ctx, engine.OneShot{Code: printCode})
	if err != nil {
		return fmt.Errorf("engine execute: %w", err)
	}
	return checkOutput(res.Success(), res.ExitCode, res.Stdout, res.Stderr)
}

// HTTPPrint1 runs print(1) once through the HTTP API with the SDK and checks the result.
func (e *Env) HTTPPrint1(ctx context.Context) error {
	resp, err := e.Client.Execute(ctx, api.ExecuteRequest{Code: printCode})
	if err != nil {
		return fmt.Errorf("http execute: %w", err)
	}
	return checkOutput(resp.Success, resp.ReturnCode, resp.Stdout, resp.Stderr)
}

// RuntimePrint1 is a one-shot print(1) at the runtime level, without the engine: Create a
// sandbox with a one-shot's spec, exec python3 through its agent as the engine does, Destroy.
func (e *Env) RuntimePrint1(ctx context.Context) error {
	spec := oneShotSpec
	spec.ID = "bench-rt-" + strconv.FormatInt(e.seq.Add(1), 10)
	sb, err := e.Runtime.Create(ctx, spec)
	if err != nil {
		return fmt.Errorf("sandbox create: %w", err)
	}
	err = execPython(ctx, sb.Agent())
	if derr := sb.Destroy(ctx); derr != nil {
		err = errors.Join(err, fmt.Errorf("sandbox destroy: %w", derr))
	}
	return err
}

func checkOutput(success bool, code int, stdout, stderr string) error {
	if !success || stdout != wantOutput {
		return fmt.Errorf("print(1) in a sandbox: success=%v returncode=%d stdout=%q stderr=%q",
			success, code, stdout, stderr)
	}
	return nil
}
