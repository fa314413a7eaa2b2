package cli

import (
	"context"
	"log/slog"
	"slices"

	"github.com/spf13/pflag"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// bindEngineFlags binds the engine's limits an operator tunes, each with its AIRLOCK_*
// variable; zero leaves the engine's default (see engine.Config), which its usage names.
func bindEngineFlags(fs *pflag.FlagSet, c *engine.Config) {
	flagEnv(fs, &c.MaxConcurrent, "max-concurrent", "AIRLOCK_MAX_CONCURRENT", "one-shot runs at once; more wait in a bounded queue (default 4 per core)")
	flagEnv(fs, &c.MaxQueue, "max-queue", "AIRLOCK_MAX_QUEUE", "one-shot runs waiting for a slot; more get 429 (default 8 × --max-concurrent)")
	flagEnv(fs, &c.MaxConcurrentPerOwner, "max-concurrent-per-key", "AIRLOCK_MAX_CONCURRENT_PER_KEY", "one-shot runs of one API key at once (default half of --max-concurrent)")
	flagEnv(fs, &c.MaxQueuePerOwner, "max-queue-per-key", "AIRLOCK_MAX_QUEUE_PER_KEY", "one-shot runs of one API key waiting (default half of --max-queue)")
	flagEnv(fs, &c.QueueTimeout, "queue-timeout", "AIRLOCK_QUEUE_TIMEOUT", "longest wait for a one-shot slot before 429 (default 30s)")
	flagEnv(fs, &c.MaxSandboxes, "max-sandboxes", "AIRLOCK_MAX_SANDBOXES", "long-lived sandboxes and sessions alive at once (default 1000)")
	flagEnv(fs, &c.MaxSandboxesPerOwner, "max-sandboxes-per-key", "AIRLOCK_MAX_SANDBOXES_PER_KEY", "live sandboxes and sessions of one API key (default a quarter of --max-sandboxes, lowered so one key takes at most half of the host's PTY pool)")
	flagEnv(fs, &c.DefaultTimeout, "default-timeout", "AIRLOCK_DEFAULT_TIMEOUT", "time limit of a run that names none (default 30s)")
	flagEnv(fs, &c.MaxTimeout, "max-timeout", "AIRLOCK_MAX_TIMEOUT", "largest time limit a run may ask for (default 5m0s)")
	flagEnv(fs, (*byteSize)(&c.DefaultMemory), "default-memory", "AIRLOCK_DEFAULT_MEMORY", "memory limit of a sandbox that names none (default 512MiB)")
	flagEnv(fs, (*byteSize)(&c.MaxMemory), "max-memory", "AIRLOCK_MAX_MEMORY", "largest memory limit a sandbox may ask for (default 8GiB)")
	flagEnv(fs, &c.SandboxTimeout, "sandbox-timeout", "AIRLOCK_SANDBOX_TIMEOUT", "life of a long-lived sandbox that names none (default 5m0s)")
	flagEnv(fs, &c.MaxSandboxTimeout, "max-sandbox-timeout", "AIRLOCK_MAX_SANDBOX_TIMEOUT", "longest life a sandbox may ask for (default 24h0m0s)")
	flagEnv(fs, &c.DefaultCPU, "default-cpu", "AIRLOCK_DEFAULT_CPU", "CPU cores of a sandbox that names none (default 1)")
	flagEnv(fs, &c.MaxCPU, "max-cpu", "AIRLOCK_MAX_CPU", "most CPU cores a sandbox may ask for (default the machine's cores)")
	flagEnv(fs, (*byteSize)(&c.OutputLimit), "output-limit", "AIRLOCK_OUTPUT_LIMIT", "bytes kept of each of a run's stdout and stderr (default 1MiB)")
	flagEnv(fs, (*byteSize)(&c.ScratchBytes), "scratch-size", "AIRLOCK_SCRATCH_SIZE", "writable layer of a sandbox: /workspace, /tmp and /dev/shm together (default 1GiB)")
	flagEnv(fs, (*byteSize)(&c.AnswerBudget), "answer-budget", "AIRLOCK_ANSWER_BUDGET", "daemon memory for agent answers in flight together, such as REPL cells (default 512MiB)")
}

// newEngine builds every runtime and an engine on them; closeEngine releases both.
func newEngine(logger *slog.Logger, ec engine.Config, rc runtimeConfig) (*engine.Engine, *runtimes, error) {
	rts, err := openRuntimes(logger, &rc, runtimeDefs)
	if err != nil {
		return nil, nil, err
	}
	ec.Logger, ec.Runtime = logger, rts
	ec.WheelDirSet = rc.Native.WheelDir != ""
	if err := rts.networkErr(); err != nil {
		// Offer only what the host can build: a request for more gets a clear 400 naming the
		// modes there are, not a failure per sandbox.
		if slices.ContainsFunc(ec.NetworkModes, func(m netpolicy.Mode) bool { return m != netpolicy.Block }) || ec.NetworkModes == nil {
			logger.Warn("sandboxes get no network on this host; only network mode block is offered", "err", err)
		}
		ec.NetworkModes = []netpolicy.Mode{netpolicy.Block}
	}
	e, err := engine.New(ec)
	if err != nil {
		rts.Close()
		return nil, nil, err
	}
	return e, rts, nil
}

// closeEngine destroys the engine's sandboxes, then releases the runtimes: their cgroup roots,
// state directory locks and host-wide claims, and private state directories.
func closeEngine(ctx context.Context, logger *slog.Logger, e *engine.Engine, rts *runtimes) {
	e.Close(ctx)
	if err := rts.Close(); err != nil {
		logger.WarnContext(ctx, "closing the runtimes", "err", err)
	}
}
