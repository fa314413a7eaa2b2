package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/doctor"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// doctorRootEnv points the file-based checks of doctor and of serve's preflight at a fixture
// directory instead of /, so that tests can show serve refusing a host that cannot work
// without breaking the real one. Not for production.
const doctorRootEnv = "AIRLOCK_DOCTOR_ROOT"

// errPreflight is serve's refusal to start on a host where no sandbox can work.
var errPreflight = errors.New("this host cannot run sandboxes (airlock doctor shows every check; --skip-preflight starts anyway)")

// doctorConfig is what the checks know of the daemon: its state directory and how many
// sandboxes it allows at once.
func doctorConfig(stateDir string, maxSandboxes int) doctor.Config {
	if stateDir == "" {
		stateDir = defaultStateDir
	}
	if maxSandboxes <= 0 {
		maxSandboxes = engine.DefaultMaxSandboxes
	}
	return doctor.Config{Root: os.Getenv(doctorRootEnv), StateDir: stateDir, Sandboxes: maxSandboxes,
		PTYsPerSandbox: native.PTYsPerSandbox}
}

func doctorCmd() *cobra.Command {
	var (
		asJSON       bool
		stateDir     string
		maxSandboxes int
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run the daemon, and say how to fix what it cannot",
		Long: "Checks what airlock serve needs — kernel namespaces and features, cgroup version, controllers and\n" +
			"delegation, user-namespace sysctls, the PTY pool, overlayfs, loop devices and ext4, nftables and NAT,\n" +
			"the state directory's file system and space, python3 and the default image's packages — and prints\n" +
			"ok, info, warn or FAIL for each, with the fix. Exits 1 if any check FAILs: serve would refuse to start.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r := doctor.Run(doctorConfig(stateDir, maxSandboxes))
			out := cmd.OutOrStdout()
			var err error
			if asJSON {
				err = r.WriteJSON(out)
			} else {
				err = r.WriteText(out)
			}
			if err != nil {
				return err
			}
			if r.Worst() == doctor.Fail {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print the findings as JSON")
	flagEnv(f, &stateDir, "state-dir", "AIRLOCK_STATE_DIR", "the daemon's state directory (default "+defaultStateDir+")")
	flagEnv(f, &maxSandboxes, "max-sandboxes", "AIRLOCK_MAX_SANDBOXES", "the daemon's --max-sandboxes, for the PTY pool and namespace limits (default 1000)")
	return cmd
}

// preflight runs doctor's checks before serve builds anything: it logs each warning with its
// fix, and returns errPreflight, naming every failure and its fix, where no sandbox could work.
func preflight(ctx context.Context, logger *slog.Logger, c doctor.Config) error {
	r := doctor.Run(c)
	for _, f := range r.Warnings() {
		logger.WarnContext(ctx, "preflight: "+f.Check, "detail", f.Detail, "fix", f.Fix)
	}
	fails := r.Failures()
	if len(fails) == 0 {
		logger.InfoContext(ctx, "preflight: the host can run sandboxes", "checks", len(r.Findings), "warnings", len(r.Warnings()))
		return nil
	}
	var b strings.Builder
	for _, f := range fails {
		fmt.Fprintf(&b, "\n  FAIL %s: %s", f.Check, f.Detail)
		if f.Fix != "" {
			fmt.Fprintf(&b, "\n       fix: %s", f.Fix)
		}
	}
	return fmt.Errorf("%w:%s", errPreflight, b.String())
}
