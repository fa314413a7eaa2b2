package cli

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/bench"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

func benchCmd() *cobra.Command {
	var (
		cfg        bench.Config
		asJSON     bool
		sandboxBin string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure one-shot latency and throughput against bare python and bubblewrap",
		Long: "Measure print(1) end to end — bare python3 on the host, bubblewrap with every namespace,\n" +
			"airlock through the embedded engine and through the HTTP API with the Go SDK — in one\n" +
			"process, interleaved so that the numbers are paired, then time each phase of a sandbox's\n" +
			"life on its own and take a one-shot apart. Needs root. See BENCHMARKS.md.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// In bench.Config zero means "default"; here the defaults are in the flags, so a zero
			// was typed and is refused rather than silently replaced.
			switch {
			case cfg.N < 1:
				return fmt.Errorf("-n must be at least 1, got %d", cfg.N)
			case cfg.Runs < 1:
				return fmt.Errorf("--runs must be at least 1, got %d", cfg.Runs)
			case cfg.Rounds < 1:
				return fmt.Errorf("--rounds must be at least 1, got %d", cfg.Rounds)
			case cfg.Warmup < 1:
				return fmt.Errorf("--warmup must be at least 1, got %d", cfg.Warmup)
			case len(cfg.Concurrency) == 0:
				return errors.New("--concurrency needs at least one client count")
			}
			cfg.Logger = warnLogger()
			cfg.Progress = cmd.ErrOrStderr()
			cfg.Env.EngineRuntime = native.EngineRuntime
			// Sandboxes start from what `airlock serve` would start them from.
			exe, err := sandboxBinary(cfg.Logger, sandboxBin)
			if err != nil {
				return err
			}
			cfg.Env.SandboxExe = exe
			// `airlock version` is the cheapest way to start and end this binary.
			cfg.SelfArgs = []string{"version"}
			rep, err := bench.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return rep.WriteText(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVarP(&cfg.N, "n", "n", 50, "sequential samples per end-to-end target and per phase")
	f.IntSliceVar(&cfg.Concurrency, "concurrency", []int{2, 8, 32}, "concurrent clients for the throughput columns")
	f.IntVar(&cfg.Runs, "runs", 100, "runs per target and client count for throughput")
	f.IntVar(&cfg.Rounds, "rounds", 4, "interleaved rounds each target's throughput runs are split into (at most --runs)")
	f.IntVar(&cfg.Warmup, "warmup", 3, "unrecorded runs per target before measuring")
	f.StringVar(&cfg.Python, "python", "/usr/bin/python3", "host interpreter for the baselines (also the sandbox's /usr/bin/python3)")
	f.StringVar(&cfg.GoJudge, "gojudge", "", "a go-judge binary to measure as a paired baseline: started on 127.0.0.1 with its own directories, stopped after (none by default)")
	f.StringSliceVar(&cfg.Only, "only", nil, "measure only these end-to-end target keys (bare_python always) and of the sections pool, snippet and phases only those named (default everything)")
	f.IntVar(&cfg.SnippetN, "snippet-n", 0, "sequential samples per row of the numpy/pandas snippet (default n/5, at least 3)")
	f.StringVar(&cfg.Bwrap, "bwrap", "/usr/bin/bwrap", "bubblewrap binary for the bubblewrap baseline (skipped if missing)")
	flagEnv(f, &cfg.Env.StateDir, "state-dir", "AIRLOCK_BENCH_STATE_DIR", "runtime state directory (default a fresh temporary directory)")
	f.StringVar(&sandboxBin, "sandbox-binary", "", "the program run as each sandbox's init and agent, as serve's flag (default airlock-sandbox beside this binary if it is there, else this binary)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
