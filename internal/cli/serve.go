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
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
)

func serveCmd() *cobra.Command {
	var (
		addr    string
		keyFile string
		eo      engineOptions
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Airlock daemon (HTTP API)",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			eo.fromEnv()
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
			defer rt.Close() // after e.Close below: releases the cgroup root and the state directory
			if err := native.CheckPTYPool(e.MaxSandboxes()); err != nil {
				logger.WarnContext(ctx, "PTY pool smaller than the sandbox limit needs", "err", err)
			}
			adopted, destroyed, err := e.Recover(ctx)
			if err != nil {
				logger.WarnContext(ctx, "recovering sandboxes", "err", err)
			}
			if adopted+destroyed > 0 {
				logger.InfoContext(ctx, "recovered sandboxes of a previous daemon", "adopted", adopted, "destroyed", destroyed)
			}
			srv, err := server.New(server.Config{Logger: logger, Engine: e, APIKeys: keys, Version: Version,
				CgroupVersion: rt.CgroupVersion(), Runtimes: []string{"native"}})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second,
				ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
			logger.InfoContext(ctx, "airlock serving", "addr", ln.Addr().String(), "auth", len(keys) > 0)
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
	f.IntVar(&eo.maxPerKey, "max-sandboxes-per-key", 0, "live sandboxes and sessions of one API key (default: no per-key bound)")
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
