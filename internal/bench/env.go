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
	// PoolSize is the warm pool of the second engine (Env.Pooled), as `airlock serve` runs it;
	// default 4 (serve's default).
	PoolSize int
	// SandboxExe is the program sandboxes start from (native.Config.Exe): `airlock bench`
	// passes the one `airlock serve` would use (airlock-sandbox beside it when it is there);
	// empty re-executes this binary.
	SandboxExe string
}

// Env is the in-process world the benchmarks run against: a native runtime on a private state
// directory and cgroup root, an engine over it with its default limits and no pool (as
// `airlock run` uses), and the HTTP API served on a loopback port of this process with an SDK
// client for it; and beside it a second engine over the same runtime with a warm pool (as
// `airlock serve` runs it), with its own HTTP API and client (Pooled). Every sandbox is started by re-executing this binary, which must therefore
// dispatch sandboxinit.IsInit to the agent first thing (cli.Main does; test binaries do it in
// TestMain).
type Env struct {
	Runtime *native.Runtime
	Engine  *engine.Engine
	Client  *airlock.Client // reaches the HTTP API at URL
	URL     string
	// Pooled is the engine with the warm pool, served at PooledClient's URL.
	Pooled       *engine.Engine
	PooledClient *airlock.Client
	// Zygote is an engine with the Python zygote on (as `airlock serve --zygote` runs it),
	// served at ZygoteClient's URL; ZygoteErr says why its zygote could not start (its rows
	// are then skipped).
	Zygote       *engine.Engine
	ZygoteClient *airlock.Client
	ZygoteErr    error

	logger   *slog.Logger
	stateDir string
	ownState bool // stateDir was made by NewEnv
	servers  []*http.Server
	tr       *http.Transport // the SDK clients'
	served   sync.WaitGroup  // the Serve goroutines
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
	e.Runtime, err = native.New(native.Config{Logger: cfg.Logger, StateDir: e.stateDir, CgroupRoot: cfg.CgroupRoot, Exe: cfg.SandboxExe})
	if err != nil {
		return nil, fmt.Errorf("native runtime: %w", err)
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 4
	}
	e.Engine, err = engine.New(engine.Config{Logger: cfg.Logger, Runtime: cfg.EngineRuntime(e.Runtime),
		MaxConcurrent: cfg.MaxConcurrent})
	if err != nil {
		return nil, err
	}
	e.Pooled, err = engine.New(engine.Config{Logger: cfg.Logger, Runtime: cfg.EngineRuntime(e.Runtime),
		MaxConcurrent: cfg.MaxConcurrent, PoolSize: cfg.PoolSize})
	if err != nil {
		return nil, err
	}
	// The SDK's default client keeps only two idle connections per host; with up to 256
	// concurrent benchmark clients that would measure TCP connection churn, not the server.
	e.tr = http.DefaultTransport.(*http.Transport).Clone()
	e.tr.MaxIdleConnsPerHost = 256
	if e.URL, err = e.serve(ctx, e.Engine); err != nil {
		return nil, err
	}
	e.Client = airlock.New(e.URL, "").WithHTTPClient(&http.Client{Transport: e.tr})
	pooledURL, err := e.serve(ctx, e.Pooled)
	if err != nil {
		return nil, err
	}
	e.PooledClient = airlock.New(pooledURL, "").WithHTTPClient(&http.Client{Transport: e.tr})
	if err := e.startZygote(ctx, cfg); err != nil {
		return nil, err
	}
	return e, nil
}

// serve serves the HTTP API over eng on a loopback port and returns its URL; Close stops it.
func (e *Env) serve(ctx context.Context, eng *engine.Engine) (string, error) {
	srv, err := server.New(server.Config{Logger: e.logger, Engine: eng, Version: "bench",
		CgroupVersion: e.Runtime.CgroupVersion(), Runtimes: []string{"native"}})
	if err != nil {
		return "", err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("bench listener: %w", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(e.logger.Handler(), slog.LevelWarn)}
	e.servers = append(e.servers, hs)
	e.served.Go(func() { hs.Serve(ln) })
	return "http://" + ln.Addr().String(), nil
}

// Close stops the server, destroys every sandbox, removes the cgroup root and, if NewEnv made
// it, the state directory. It is idempotent.
func (e *Env) Close(ctx context.Context) error {
	e.closed.Do(func() {
		var errs []error
		if e.tr != nil {
			e.tr.CloseIdleConnections()
		}
		for _, hs := range e.servers {
			if err := hs.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stop bench server: %w", err))
			}
		}
		e.served.Wait()
		for _, eng := range []*engine.Engine{e.Engine, e.Pooled, e.Zygote} {
			if eng != nil {
				if err := eng.Close(ctx); err != nil {
					errs = append(errs, fmt.Errorf("close engine: %w", err))
				}
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
func (e *Env) ExecutePrint1(ctx context.Context) error { return executeCode(ctx, e.Engine, printCode) }

// ExecutePooledPrint1 is ExecutePrint1 through the engine with the warm pool.
func (e *Env) ExecutePooledPrint1(ctx context.Context) error {
	return executeCode(ctx, e.Pooled, printCode)
}

// executeCode runs code once through eng and checks that it printed wantOutput.
func executeCode(ctx context.Context, eng *engine.Engine, code string) error {
	res, err := eng.Execute(ctx, engine.OneShot{Code: code})
	if err != nil {
		return fmt.Errorf("engine execute: %w", err)
	}
	return checkOutput(res.Success(), res.ExitCode, res.Stdout, res.Stderr)
}

// HTTPPrint1 runs print(1) once through the HTTP API with the SDK and checks the result.
func (e *Env) HTTPPrint1(ctx context.Context) error { return httpPrint1(ctx, e.Client) }

// HTTPPooledPrint1 is HTTPPrint1 through the engine with the warm pool.
func (e *Env) HTTPPooledPrint1(ctx context.Context) error { return httpPrint1(ctx, e.PooledClient) }

func httpPrint1(ctx context.Context, c *airlock.Client) error {
	resp, err := c.Execute(ctx, api.ExecuteRequest{Code: printCode})
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
