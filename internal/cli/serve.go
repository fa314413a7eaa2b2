package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/net/netutil"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
)

// connOptions bound the daemon's client connections (flags of serve, each also an AIRLOCK_*
// variable; a flag given on the command line wins).
type connOptions struct {
	idleTimeout  time.Duration // keep-alive connection idle this long is closed; 60 s
	readTimeout  time.Duration // a request body must arrive within this; 60 s
	writeTimeout time.Duration // an answer must be written within this once begun; 60 s
	maxConns     int           // connections at once; more wait in the kernel's backlog
}

// fromEnv fills options whose flag was not given from AIRLOCK_* variables.
func (o *connOptions) fromEnv(changed func(flag string) bool) error {
	for _, d := range []struct {
		flag, env string
		v         *time.Duration
	}{
		{"idle-timeout", "AIRLOCK_IDLE_TIMEOUT", &o.idleTimeout},
		{"read-timeout", "AIRLOCK_READ_TIMEOUT", &o.readTimeout},
		{"write-timeout", "AIRLOCK_WRITE_TIMEOUT", &o.writeTimeout},
	} {
		if v := os.Getenv(d.env); v != "" && !changed(d.flag) {
			t, err := time.ParseDuration(v)
			if err != nil || t <= 0 {
				return fmt.Errorf("%s=%q: want a positive duration such as 60s", d.env, v)
			}
			*d.v = t
		}
	}
	if v := os.Getenv("AIRLOCK_MAX_CONNECTIONS"); v != "" && !changed("max-connections") {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("AIRLOCK_MAX_CONNECTIONS=%q: want a positive number", v)
		}
		o.maxConns = n
	}
	if o.idleTimeout <= 0 || o.readTimeout <= 0 || o.writeTimeout <= 0 {
		return errors.New("--idle-timeout, --read-timeout and --write-timeout must be positive")
	}
	if o.maxConns == 0 {
		o.maxConns = defaultMaxConns()
	}
	if o.maxConns < 1 {
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

func serveCmd() *cobra.Command {
	var (
		addr    string
		keyFile string
		eo      engineOptions
		co      connOptions
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Airlock daemon (HTTP API)",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			eo.fromEnv()
			if err := co.fromEnv(cmd.Flags().Changed); err != nil {
				return err
			}
			if eo.maxPerKey == 0 {
				eo.maxPerKey = perKeySandboxes(eo.maxSandboxes)
			}
			keys, err := loadKeys(keyFile)
			if err != nil {
				return err
			}
			if err := server.CheckListen(addr, keys); err != nil {
				return err
			}
			e, rt, err := newEngine(logger, eo)
			if err != nil {
				return err
			}
			// Last, after e.Close below has ended every sandbox: the cgroup parent goes too, in
			// every hierarchy, and the state directory and cgroup-root claims are released. (On a failed start, sandboxes adopted from a previous daemon are
			// left running for the next one, and the parent stays with them: EBUSY.)
			defer func() {
				if err := rt.Close(); err != nil {
					logger.WarnContext(ctx, "removing the cgroup root", "err", err)
				}
			}()
			if err := native.CheckPTYPool(e.MaxSandboxes()); err != nil {
				logger.WarnContext(ctx, "PTY pool smaller than the sandbox limit needs", "err", err)
			}
			if err := native.CheckPTYPool(2 * e.MaxSandboxesPerOwner()); err != nil {
				logger.WarnContext(ctx, "one API key's sandboxes can take more than half of the PTY pool", "err", err)
			}
			adopted, destroyed, err := e.Recover(ctx)
			if err != nil {
				logger.WarnContext(ctx, "recovering sandboxes", "err", err)
			}
			if adopted+destroyed > 0 {
				logger.InfoContext(ctx, "recovered sandboxes of a previous daemon", "adopted", adopted, "destroyed", destroyed)
			}
			srv, err := server.New(server.Config{Logger: logger, Engine: e, APIKeys: keys, Version: Version,
				CgroupVersion: rt.CgroupVersion(), Runtimes: []string{"native"},
				ReadTimeout: co.readTimeout, WriteTimeout: co.writeTimeout,
				// A quarter of the connection cap per key: one tenant's requests — streams and
				// WebSockets included — can never hold every connection.
				MaxRequestsPerKey: max(co.maxConns/4, 16)})
			if err != nil {
				return err
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
			hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: co.idleTimeout,
				ConnState: shedIdle(co.maxConns), ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
			lim := e.Limits()
			logger.InfoContext(ctx, "airlock serving", "addr", ln.Addr().String(), "auth", len(keys) > 0,
				"max_connections", co.maxConns, "idle_timeout", co.idleTimeout,
				"max_concurrent", lim.MaxConcurrent, "max_concurrent_per_key", lim.MaxConcurrentPerKey,
				"max_sandboxes", lim.MaxSandboxes, "max_sandboxes_per_key", lim.MaxSandboxesPerKey)
			errc := make(chan error, 1)
			go func() { errc <- hs.Serve(ln) }()
			rctx, stopReaper := context.WithCancel(ctx)
			reaped := make(chan struct{})
			go func() { e.Run(rctx); close(reaped) }()
			defer func() { stopReaper(); <-reaped }()
			select {
			case err = <-errc:
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			defer cancel()
			hs.Shutdown(sctx)
			e.Close(sctx)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:8080", "listen address")
	f.StringVar(&keyFile, "api-key-file", "", "file with one API key per line (also AIRLOCK_API_KEYS, comma-separated)")
	f.IntVar(&eo.maxConcurrent, "max-concurrent", 0, "one-shot runs at once; more wait in a bounded queue (default 4 per core)")
	f.IntVar(&eo.maxSandboxes, "max-sandboxes", 0, "long-lived sandboxes and sessions alive at once (default 1000)")
	f.IntVar(&eo.maxPerKey, "max-sandboxes-per-key", 0, "live sandboxes and sessions of one API key (default a quarter of --max-sandboxes, lowered so one key takes at most half of the host's PTY pool)")
	f.DurationVar(&co.idleTimeout, "idle-timeout", time.Minute, "close a keep-alive connection idle this long (env AIRLOCK_IDLE_TIMEOUT)")
	f.DurationVar(&co.readTimeout, "read-timeout", time.Minute, "a request body must arrive within this; streamed uploads and stdin excepted (env AIRLOCK_READ_TIMEOUT)")
	f.DurationVar(&co.writeTimeout, "write-timeout", time.Minute, "an answer must be written within this once begun; streams excepted (env AIRLOCK_WRITE_TIMEOUT)")
	f.IntVar(&co.maxConns, "max-connections", 0, "client connections at once; more wait (env AIRLOCK_MAX_CONNECTIONS; default half of RLIMIT_NOFILE, at most 16384)")
	f.IntVar(&eo.uidBase, "uid-base", 0, "first host uid of the sandboxes' uid ranges (env AIRLOCK_UID_BASE; default 2000000; must not overlap host users or /etc/subuid)")
	f.StringVar(&eo.wheelDir, "wheel-dir", "", "directory of Python wheels sessions may pip-install from (env AIRLOCK_WHEEL_DIR)")
	f.StringVar(&eo.stateDir, "state-dir", "", "state directory (env AIRLOCK_STATE_DIR; default /var/lib/airlock)")
	return cmd
}

// loadKeys reads API keys from the file (one per line, # comments) and AIRLOCK_API_KEYS.
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
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("api key file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k := strings.TrimSpace(sc.Text()); k != "" && !strings.HasPrefix(k, "#") {
			keys = append(keys, k)
		}
	}
	return keys, sc.Err()
}
