package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/net/netutil"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/cluster"
	"github.com/airlockhq/airlock/internal/compat/e2b"
	"github.com/airlockhq/airlock/internal/compat/modal"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/secrets"
	"github.com/airlockhq/airlock/internal/server"
)

// connOptions bound the daemon's client connections beyond what server.Config has.
type connOptions struct {
	idleTimeout time.Duration // keep-alive connection idle this long is closed; 60 s
	maxConns    int           // connections at once; more wait in the kernel's backlog
}

// checkConns refuses timeouts that would cut every request, and fills the connection cap's
// default.
func checkConns(co *connOptions, sc server.Config) error {
	if co.idleTimeout <= 0 || sc.ReadTimeout <= 0 || sc.WriteTimeout <= 0 {
		return errors.New("--idle-timeout, --read-timeout and --write-timeout must be positive")
	}
	if co.maxConns == 0 {
		co.maxConns = defaultMaxConns()
	}
	if co.maxConns < 1 {
		return errors.New("--max-connections must be positive")
	}
	return nil
}

// defaultMaxConns is half the daemon's RLIMIT_NOFILE (Go raises the soft limit to the hard one
// at start), at most 16384: the other half stays for sandboxes, their agent connections and
// state files, so idle clients can never make accept fail with EMFILE.
func defaultMaxConns() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 512
	}
	return int(min(max(rl.Cur/2, 16), 16384))
}

// shedIdle is an http.Server.ConnState hook: once more than half of maxConns connections are
// open, a connection that turns idle after its answer is closed at once instead of kept alive,
// so clients that merely hold keep-alive connections cannot keep the cap filled until their
// idle timeout while others wait.
func shedIdle(maxConns int) func(net.Conn, http.ConnState) {
	var open atomic.Int64
	return func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		case http.StateIdle:
			if open.Load() > int64(maxConns/2) {
				c.Close()
			}
		}
	}
}

// perKeySandboxes is the default bound on one API key's live sandboxes: a quarter of the
// sandbox limit, and small enough that one key's sandboxes (PTYsPerSandbox each) take at most
// half of the host's shared PTY pool, so other tenants and the host keep terminals.
func perKeySandboxes(maxSandboxes int) int {
	n := engine.SandboxesPerOwner(maxSandboxes)
	if native.CheckPTYPool(2*n) == nil {
		return n
	}
	lo, hi := 1, n // the largest k ≤ n whose double fits the pool, or 1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if native.CheckPTYPool(2*mid) == nil {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// shutdownOptions are what serve does on SIGTERM or SIGINT.
type shutdownOptions struct {
	grace time.Duration // calls in flight may finish within it; 30 s
	drain bool          // destroy long-lived sandboxes and sessions instead of keeping them
}

// shutdown stops the daemon: health checks say draining, the listener closes and idle
// connections with it, the calls in flight get sd.grace to finish (then their contexts end
// with a clear 503 cause, and a few seconds more to write that answer), and the engine
// destroys the one-shot (and pooled) sandboxes — and, with sd.drain, every other — leaving the
// rest for the next daemon. It returns how many sandboxes it left running.
func shutdown(ctx context.Context, logger *slog.Logger, sd shutdownOptions, srv *server.Server, hs *http.Server,
	cancelCalls context.CancelCauseFunc, e *engine.Engine) (kept int) {
	ctx = context.WithoutCancel(ctx)
	logger.InfoContext(ctx, "shutting down", "grace", sd.grace, "drain", sd.drain)
	srv.Drain()
	gctx, cancel := context.WithTimeout(ctx, sd.grace)
	err := hs.Shutdown(gctx)
	if err == nil {
		err = srv.Wait(gctx) // WebSocket execs, which Shutdown does not wait for
	}
	cancel()
	if err != nil {
		logger.WarnContext(ctx, "calls still in flight past the shutdown grace period: ending them", "grace", sd.grace)
		cancelCalls(api.Errorf(api.ErrUnavailable, "the daemon is shutting down and this call did not finish within its %v grace period (--shutdown-grace)", sd.grace))
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if hs.Shutdown(fctx) != nil || srv.Wait(fctx) != nil {
			hs.Close() // answers that cannot be written in time are cut
		}
		cancel()
	}
	mode := engine.KeepSandboxes
	if sd.drain {
		mode = engine.DrainSandboxes
	}
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// A warm pool's sandboxes are destroyed here too, whatever the mode: they hold no caller's
	// state (engine.Shutdown destroys every unregistered instance).
	kept, err = e.Shutdown(ectx, mode)
	if err != nil {
		logger.WarnContext(ctx, "shutting the engine down", "err", err)
	}
	if kept > 0 {
		logger.InfoContext(ctx, "left sandboxes and sessions running for the next daemon", "sandboxes", kept)
	}
	return kept
}

func serveCmd() *cobra.Command {
	var (
		addr    = "127.0.0.1:8080"
		keyFile string
		// auditPath and secretsKeyFile are --audit-log and --secrets-key-file.
		auditPath, secretsKeyFile string
		ec                        = engine.Config{Zygote: true}
		rc                        runtimeConfig
		sc                        = server.Config{ReadTimeout: time.Minute, WriteTimeout: time.Minute}
		co                        = connOptions{idleTimeout: time.Minute}
		ic                        image.Config
		sd                        = shutdownOptions{grace: 30 * time.Second}
		// skipPreflight starts serve even where doctor's checks FAIL.
		skipPreflight bool
		llm           llmOptions
		cc            cluster.Config      // --cluster…: off unless --cluster names a NATS server
		qc            cluster.QueueConfig // the async batch queue's flags
	)
	// The daemon pools by default (modestly: classes appear only once asked for, and empty
	// after --pool-idle); the engine alone, as `airlock run` embeds it, does not.
	ec.PoolSize, ec.PoolMemory, ec.PoolCPU, ec.PoolIdle = 4, 1<<30, 0.5, 2*time.Minute
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Airlock daemon (HTTP API)",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			// Every line of a request carries its request id and key id (audit.LogHandler).
			logger := slog.New(audit.NewLogHandler(slog.NewJSONHandler(os.Stderr, nil)))
			if err := checkConns(&co, sc); err != nil {
				return err
			}
			if sd.grace < 0 {
				return errors.New("--shutdown-grace must not be negative")
			}
			if ec.MaxSandboxesPerOwner == 0 {
				ec.MaxSandboxesPerOwner = perKeySandboxes(ec.MaxSandboxes)
			}
			keys, err := loadKeys(keyFile)
			if err != nil {
				return err
			}
			if sc.Keys, err = loadKeyLimits(keyFile); err != nil {
				return err
			}
			if err := server.CheckListen(addr, append(keys, keyIDs(sc.Keys)...)); err != nil {
				return err
			}
			// Before anything is built: a host where no sandbox can work is refused with every
			// reason and its fix, rather than found out request by request.
			if !skipPreflight {
				if err := preflight(ctx, logger, doctorConfig(rc.Native.StateDir, ec.MaxSandboxes)); err != nil {
					return err
				}
			}
			// The audit log gets the engine's records and the server's own; the server's
			// consumer of the engine's records joins once the server exists.
			var fan audit.Fanout
			ec.Audit = &fan
			if auditPath != "" {
				al, err := audit.Open(auditPath)
				if err != nil {
					return err
				}
				defer func() {
					if err := al.Close(); err != nil {
						logger.WarnContext(ctx, "closing the audit log", "err", err)
					}
				}()
				fan.Add(al)
				sc.Audit = al
			}
			if secretsKeyFile != "" {
				key, err := secrets.LoadKey(secretsKeyFile)
				if err != nil {
					return err
				}
				st, err := secrets.Open(secretsDir(rc.Native.StateDir), key)
				clear(key)
				if err != nil {
					return err
				}
				ec.Secrets, sc.Secrets = st, st
			}
			// The image store (/v1/images), opened before the engine: sandboxes adopted from a
			// previous daemon lease their images again.
			ic.Dir, ic.Logger = imageDir(rc.Native.StateDir), logger
			if sc.Images, err = image.Open(ic); err != nil {
				return err
			}
			ec.Images = image.EngineImages(sc.Images)
			e, rts, err := newEngine(logger, ec, rc)
			if err != nil {
				return err
			}
			// Last, after e.Shutdown below: the cgroup parent goes too, in every hierarchy, and
			// the state directory and cgroup-root claims are released. Sandboxes left running for
			// the next daemon (the default on SIGTERM, and on a failed start those adopted from a
			// previous daemon) keep the parent: EBUSY, expected then.
			kept := 0
			defer func() {
				if err := rts.Close(); err != nil && !(kept > 0 && errors.Is(err, syscall.EBUSY)) {
					logger.WarnContext(ctx, "closing the runtimes", "err", err)
				}
			}()
			if err := native.CheckPTYPool(2 * e.MaxSandboxesPerOwner()); err != nil {
				logger.WarnContext(ctx, "one API key's sandboxes can take more than half of the PTY pool: raise kernel.pty.max with the sysctl in err, or lower --max-sandboxes-per-key", "err", err)
			}
			// Before Recover: the sandboxes adopted from a previous daemon are re-registered.
			node, err := joinCluster(ctx, logger, cc, addr, e, sc.Images, rts.Names())
			if err != nil {
				return err
			}
			if node != nil {
				defer node.Close()
				sc.Cluster = node
			}
			adopted, destroyed, err := e.Recover(ctx)
			if err != nil {
				logger.WarnContext(ctx, "recovering sandboxes", "err", err)
			}
			if adopted+destroyed > 0 {
				logger.InfoContext(ctx, "recovered sandboxes of a previous daemon", "adopted", adopted, "destroyed", destroyed)
			}
			if node != nil {
				reconcile(ctx, logger, node)
			}
			// /v1/batches: over the cluster's JetStream, or without --cluster the same queue
			// over an embedded NATS server storing in the state directory.
			qc.Logger = logger
			var queue *cluster.Queue
			if node != nil {
				queue, err = node.Queue(ctx, qc)
			} else {
				queue, err = cluster.LocalQueue(ctx, batchesDir(rc.Native.StateDir), e, qc)
			}
			if err != nil {
				return err
			}
			defer queue.Close() // after the node's stop below (defers run last first)
			sc.Batches = queue
			sc.Logger, sc.Engine, sc.APIKeys, sc.Version = logger, e, keys, Version
			sc.CgroupVersion, sc.Runtimes = rts.cgroupVersion(), rts.Names()
			// POST /v1/images runs its steps through the engine: its funnel, limits and modes.
			sc.BuildRunner = image.EngineRunner(e, sc.Images)
			// A quarter of the connection cap per key: one tenant's requests — streams and
			// WebSockets included — can never hold every connection.
			sc.MaxRequestsPerKey = max(co.maxConns/4, 16)
			var ar *agentRunner // POST /v1/agent/runs, when an LLM is configured
			if llm.configured() {
				a, err := llm.agent(logger)
				if err != nil {
					return err
				}
				ar = &agentRunner{a: a}
				sc.Agent = ar
			}
			srv, err := server.New(sc)
			if err != nil {
				return err
			}
			fan.Add(srv.AuditSink())
			if node != nil {
				node.SetKeyUsage(srv.KeyUsage) // a key's CPU seconds and rate bound it over the cluster
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			// Past the cap, new connections wait in the kernel's backlog until idle ones are
			// closed (IdleTimeout) rather than exhausting the daemon's file descriptors. The
			// server's own ReadTimeout and WriteTimeout stay unset: they would cut streams;
			// the API sets per-request deadlines instead (server.Config).
			ln = netutil.LimitListener(ln, co.maxConns)
			// Modal's client API: gRPC over h2c on this same listener (its clients dial
			// MODAL_SERVER_URL=http://ADDR with HTTP/2 prior knowledge); every other request is
			// the REST API's.
			mc := modal.Config{Logger: logger, Engine: e, Authenticate: srv.Authenticate,
				Images: sc.Images, Builder: &image.Builder{Store: sc.Images, Runner: sc.BuildRunner, Logger: logger},
				MaxRequestsPerKey: sc.MaxRequestsPerKey, Admit: srv.AdmitOwner, HoldCreate: srv.HoldCreate}
			if ec.Secrets != nil { // Modal's secrets.fromName is a named secret of the key's
				mc.Secrets = func(ctx context.Context, owner, name string) (map[string]string, error) {
					return ec.Secrets.Resolve(ctx, owner, []string{name})
				}
			}
			msrv, err := modal.New(mc)
			if err != nil {
				return err
			}
			defer msrv.Close()
			// E2B's API: the control plane at /e2b, the envd data plane at /e2b/sandbox.
			esrv, err := e2b.New(e2b.Config{Logger: logger, Engine: e, Authenticate: srv.Authenticate,
				MaxRequestsPerKey: sc.MaxRequestsPerKey, Admit: srv.AdmitOwner, HoldCreate: srv.HoldCreate, Peers: srv.AskPeers})
			if err != nil {
				return err
			}
			defer esrv.Close()
			var protocols http.Protocols
			protocols.SetHTTP1(true)
			protocols.SetUnencryptedHTTP2(true)
			// /mcp and the agent call the API over the daemon's own listener, with each caller's key.
			self := selfURL(ln.Addr())
			if ar != nil {
				ar.base = self
			}
			// In cluster mode, E2B's planes are routed by sandbox id before its front end (ClusterFront).
			hs := &http.Server{Handler: srv.ClusterFront(msrv.Handler(esrv.Handler(mountMCP(srv.Handler(), self, logger)))), Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: co.idleTimeout,
				ConnState: shedIdle(co.maxConns), ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
			lim := e.Limits()
			logger.InfoContext(ctx, "airlock serving", "addr", ln.Addr().String(), "auth", len(keys)+len(sc.Keys) > 0,
				"runtimes", sc.Runtimes, "max_connections", co.maxConns, "idle_timeout", co.idleTimeout,
				"max_concurrent", lim.MaxConcurrent, "max_concurrent_per_key", lim.MaxConcurrentPerKey,
				"max_sandboxes", lim.MaxSandboxes, "max_sandboxes_per_key", lim.MaxSandboxesPerKey)
			// Calls run on a context serve ends, with a clear cause, once the shutdown's grace
			// period has passed (see shutdown).
			reqCtx, cancelCalls := context.WithCancelCause(context.WithoutCancel(ctx))
			defer cancelCalls(nil)
			hs.BaseContext = func(net.Listener) context.Context { return reqCtx }
			errc := make(chan error, 1)
			go func() { errc <- hs.Serve(ln) }()
			rctx, stopReaper := context.WithCancel(ctx)
			reaped := make(chan struct{})
			go func() { e.Run(rctx); close(reaped) }()
			defer func() { stopReaper(); <-reaped }()
			qctx, stopQueue := context.WithCancel(ctx)
			pulled := make(chan struct{})
			go func() { queue.Run(qctx, srv.RunQueued); close(pulled) }()
			// The queue stops first: snippets cut short go back to it, for the other nodes
			// (or this daemon's next start).
			haltQueue := sync.OnceFunc(func() { stopQueue(); <-pulled })
			defer haltQueue()
			stopNode := haltQueue
			if node != nil {
				nctx, cancel := context.WithCancel(ctx)
				ran := make(chan struct{})
				go func() {
					if err := node.Run(nctx); err != nil {
						logger.ErrorContext(nctx, "cluster membership stopped", "err", err)
					}
					close(ran)
				}()
				stopNode = sync.OnceFunc(func() {
					haltQueue()
					cancel()
					<-ran
					if err := node.Leave(ctx); err != nil {
						logger.WarnContext(ctx, "leaving the cluster", "err", err)
					}
				})
				defer stopNode() // on every return; once
			}
			select {
			case err = <-errc:
			case <-ctx.Done():
			}
			stopNode() // first: the other nodes stop sending this one work
			kept = shutdown(ctx, logger, sd, srv, hs, cancelCalls, e)
			stopReaper()
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			return err
		},
	}
	f := cmd.Flags()
	flagEnv(f, &addr, "addr", "AIRLOCK_ADDR", "listen address")
	flagEnv(f, &keyFile, "api-key-file", "AIRLOCK_API_KEY_FILE", "file with one API key per line, or JSON or YAML with key ids and per-key limits (see README); AIRLOCK_API_KEYS (comma-separated) adds more")
	flagEnv(f, &auditPath, "audit-log", "AIRLOCK_AUDIT_LOG", "append one JSON line per execution and lifecycle event to this file (created 0600), or - for stdout")
	flagEnv(f, &secretsKeyFile, "secrets-key-file", "AIRLOCK_SECRETS_KEY_FILE", "file with the 32-byte key (raw, hex or base64; mode 0600) that encrypts named secrets at rest; without it /v1/secrets is disabled")
	bindEngineFlags(f, &ec)
	bindClusterNodeFlags(f, &cc)
	flagEnv(f, &qc.WebhookAllowPrivate, "webhook-allow-private", "AIRLOCK_WEBHOOK_ALLOW_PRIVATE", "let async batches' webhooks target loopback, private and link-local addresses (refused by default: webhook URLs are user input)")
	flagEnv(f, &qc.AckWait, "batch-ack-wait", "AIRLOCK_BATCH_ACK_WAIT", "async batches: how long a snippet pulled by a node may go without a sign of life from it before another node takes it (or, without --cluster, this daemon retries it; default 30s; set by the first node)")
	flagEnv(f, &qc.Slots, "batch-slots", "AIRLOCK_BATCH_SLOTS", "async batches: snippets this node runs at once (default --max-concurrent)")
	bindRuntimeFlags(f, &rc, "state directory (default /var/lib/airlock)")
	bindNetworkFlags(f, &ec, rc.Native.Network)
	flagEnv(f, &co.idleTimeout, "idle-timeout", "AIRLOCK_IDLE_TIMEOUT", "close a keep-alive connection idle this long")
	flagEnv(f, &sc.ReadTimeout, "read-timeout", "AIRLOCK_READ_TIMEOUT", "a request body must arrive within this; streamed uploads and stdin excepted")
	flagEnv(f, &sc.WriteTimeout, "write-timeout", "AIRLOCK_WRITE_TIMEOUT", "an answer must be written within this once begun; streams excepted")
	flagEnv(f, (*byteSize)(&ic.MaxBytes), "image-budget", "AIRLOCK_IMAGE_BUDGET", "disk for the image store's blobs and layers together; past it a pull, import or snapshot prunes unused images, then fails with 413 (default no limit)")
	flagEnv(f, &ec.PublicPorts, "public-ports", "AIRLOCK_PUBLIC_PORTS", "let sandboxes expose unauthenticated_ports, reachable through the daemon without a key or token")
	flagEnv(f, &ec.PoolSize, "pool-size", "AIRLOCK_POOL_SIZE", "warm pool: the most ready sandboxes of one class (kind, image, network mode, memory limit), sized by demand up to this; 0 turns the pool off")
	flagEnv(f, (*byteSize)(&ec.PoolMemory), "pool-memory", "AIRLOCK_POOL_MEMORY", "warm pool: host memory all ready sandboxes hold together")
	flagEnv(f, &ec.PoolCPU, "pool-cpu", "AIRLOCK_POOL_CPU", "warm pool: the share of one core refills may use, in (0, 1]")
	flagEnv(f, &ec.PoolIdle, "pool-idle", "AIRLOCK_POOL_IDLE", "warm pool: a class with no request for this long holds no ready sandbox")
	flagEnv(f, &skipPreflight, "skip-preflight", "AIRLOCK_SKIP_PREFLIGHT", "start even where the host checks of airlock doctor FAIL (experts: sandboxes will fail instead)")
	flagEnv(f, &ec.Zygote, "zygote", "AIRLOCK_ZYGOTE", "run Python one-shots (network block, host image, no output files) in children of pre-imported Python zygotes (two per API key: numpy, pandas and matplotlib imported, or the standard library only); --zygote=false runs every one cold")
	flagEnv(f, (*stringList)(&ec.ZygoteModules), "zygote-modules", "AIRLOCK_ZYGOTE_MODULES", "modules the zygote imports besides numpy, pandas and matplotlib, comma-separated")
	flagEnv(f, &co.maxConns, "max-connections", "AIRLOCK_MAX_CONNECTIONS", "client connections at once; more wait (default half of RLIMIT_NOFILE, at most 16384)")
	flagEnv(f, &sd.grace, "shutdown-grace", "AIRLOCK_SHUTDOWN_GRACE", "on SIGTERM or SIGINT, how long calls in flight (runs, cells, execs) may take to finish; past it they end with 503")
	bindLLMFlags(f, &llm)
	flagEnv(f, &sd.drain, "drain-on-stop", "AIRLOCK_DRAIN_ON_STOP", "on SIGTERM or SIGINT, destroy long-lived sandboxes and sessions instead of leaving them running for the next daemon to adopt")
	return cmd
}

// loadKeyLimits reads a structured key file's keys with their ids and limits; nil for a plain
// file.
func loadKeyLimits(file string) ([]server.Key, error) {
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("api key file: %w", err)
	}
	if !server.StructuredKeys(b) {
		return nil, nil
	}
	return server.ParseKeyFile(b)
}

func keyIDs(keys []server.Key) []string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return ids
}

// batchesDir is where a daemon without --cluster keeps its async batch queue (LocalQueue).
func batchesDir(stateDir string) string {
	if stateDir == "" {
		stateDir = defaultStateDir
	}
	return filepath.Join(stateDir, "batches")
}

// secretsDir is where named secrets are stored, under the state directory.
func secretsDir(stateDir string) string {
	if stateDir == "" {
		stateDir = defaultStateDir
	}
	return filepath.Join(stateDir, "secrets")
}

// loadKeys reads API keys from a plain key file (one per line, # comments; a structured key
// file is loadKeyLimits') and AIRLOCK_API_KEYS.
func loadKeys(file string) ([]string, error) {
	var keys []string
	if v := os.Getenv("AIRLOCK_API_KEYS"); v != "" {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				keys = append(keys, k)
			}
		}
	}
	if file == "" {
		return keys, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("api key file: %w", err)
	}
	if server.StructuredKeys(b) {
		return keys, nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k := strings.TrimSpace(sc.Text()); k != "" && !strings.HasPrefix(k, "#") {
			keys = append(keys, k)
		}
	}
	return keys, sc.Err()
}
