// Package cli is the airlock command line: serve, run, bench and the hidden agent entry point.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
)

// Version is set at build time with -ldflags "-X github.com/airlockhq/airlock/internal/cli.Version=…".
var Version = "dev"

// exitError carries a process exit status through cobra.
type exitError struct{ code int }

func (e *exitError) Error() string { return "exit status " + strconv.Itoa(e.code) }

// Main runs the command line and returns the process exit status. A sandbox init (the binary
// re-executed by one of the runtimes) is recognised before anything else runs.
func Main(ctx context.Context, args []string) int {
	if code, ok := runInit(runtimeDefs); ok {
		return code // the runtime's init does its own descriptor sweep
	}
	// Descriptors inherited from whoever started us (a shell's `exec 3>`, a CI runner's pipes) would
	// pass into every sandbox init, agent and user process: exec keeps all that are not
	// close-on-exec (review finding C1). Only 0–2 and what the runtime passes on purpose may.
	if err := sandboxinit.CloseOnExecFrom(3); err != nil {
		fmt.Fprintln(os.Stderr, "airlock: mark inherited descriptors close-on-exec:", err)
		return 1
	}
	ctx, stop := notifySignals(ctx)
	defer stop()
	root := newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	default:
		fmt.Fprintln(os.Stderr, "airlock:", err)
		return 1
	}
}

// newRoot is the airlock command with every subcommand.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "airlock",
		Short:         "Run untrusted code safely and fast",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Flags bound by flagEnv not given on the command line take their AIRLOCK_* variable.
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error { return applyEnv(cmd.Flags()) },
	}
	root.AddCommand(runCmd(), serveCmd(), sandboxCmd(), psCmd(), replCmd(), imageCmd(), benchCmd(), versionCmd(), agentCmd(), doctorCmd(), secretCmd(), mcpCmd(), clusterCmd(), batchCmd())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, args []string) { fmt.Println("airlock", Version) },
	}
}
