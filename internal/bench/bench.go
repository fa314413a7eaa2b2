// Package bench measures Airlock against baselines taken in the same process and the same run:
// bare python3 on the host, bubblewrap with every namespace, a one-shot through the native
// runtime alone (Create, exec, Destroy), through the embedded engine, and through the HTTP API
// with the Go SDK. It also times each phase of a sandbox's
// life separately (cgroup, namespaces, the agent binary's start, the sandbox's setup, an exec
// through the agent, teardown), so that the end-to-end numbers can be taken apart.
//
// Every number is paired: the sequential latency samples of all end-to-end targets are
// interleaved round by round (with the order rotated each round), so that drift on a shared
// machine touches them all alike, and every ratio is against bare python measured in the same
// run. Every run's output is checked; a failed run fails the benchmark rather than counting as a
// fast one.
//
// Run is what `airlock bench` calls; NewEnv is the in-process world it measures, which the Go
// benchmarks of this package use too.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"time"
)

// Config configures one benchmark run. Zero values mean defaults.
//
// Adding a setting: add the field here with its default in setDefaults and its check in
// Validate, its flag in internal/cli/bench.go, and mention it in BENCHMARKS.md if it changes
// what the numbers mean.
type Config struct {
	Logger   *slog.Logger
	Progress io.Writer // one line per stage while measuring; nil for none

	N           int   // sequential samples per end-to-end target and per phase; default 50
	Warmup      int   // unrecorded runs per target before measuring; default 3
	Concurrency []int // client counts for throughput; default 2, 8 and 32
	Runs        int   // runs per target and client count for throughput; default 100
	// Rounds splits each target's Runs into this many rounds, the targets taking turns round by
	// round (as the sequential samples do), so that load from outside that comes and goes
	// during a throughput measurement touches every target alike; default 4 (at most Runs).
	Rounds int

	Python string // host interpreter for the baselines; default /usr/bin/python3
	Bwrap  string // bubblewrap; default /usr/bin/bwrap; if missing, its row is skipped with the reason
	// GoJudge, if set, is a go-judge binary the operator provides: started on 127.0.0.1 with
	// directories of its own for the run, measured as a paired baseline, stopped after.
	GoJudge string
	// Only, if set, measures only these end-to-end target keys (bare python always, as every
	// ratio's base) and of the other sections only those it names: "pool", "snippet", "phases".
	Only []string
	// SnippetN is the sequential samples of the numpy/pandas snippet per row; default N/5, at
	// least 3 (each sample costs the imports, ≈ 0.5 s bare).
	SnippetN int

	// Env configures the runtime, engine and server being measured. EngineRuntime is required.
	Env EnvConfig

	// SelfArgs and SelfEnv run this binary (/proc/self/exe) as a no-op, to time how long the
	// agent binary takes to start and exit: `airlock version` for the CLI, an environment
	// switch for a test binary. With SelfArgs nil those phases are left out.
	SelfArgs []string
	SelfEnv  []string
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.N == 0 {
		c.N = 50
	}
	if c.Warmup == 0 {
		c.Warmup = 3
	}
	if c.Concurrency == nil {
		c.Concurrency = []int{2, 8, 32}
	}
	if c.Runs == 0 {
		c.Runs = 100
	}
	if c.Rounds == 0 {
		c.Rounds = 4
	}
	c.Rounds = min(c.Rounds, c.Runs)
	if c.Python == "" {
		c.Python = "/usr/bin/python3"
	}
	if c.Bwrap == "" {
		c.Bwrap = "/usr/bin/bwrap"
	}
	if c.Env.Logger == nil {
		c.Env.Logger = c.Logger
	}
	if c.SnippetN == 0 {
		c.SnippetN = max(3, c.N/5)
	}
}

// Validate reports a configuration that cannot be measured.
func (c *Config) Validate() error {
	switch {
	case c.N < 1:
		return fmt.Errorf("bench: n must be ≥ 1, got %d", c.N)
	case c.Warmup < 0:
		return fmt.Errorf("bench: warmup must be ≥ 0, got %d", c.Warmup)
	case c.Runs < 1:
		return fmt.Errorf("bench: runs must be ≥ 1, got %d", c.Runs)
	case c.Rounds < 1:
		return fmt.Errorf("bench: rounds must be ≥ 1, got %d", c.Rounds)
	case c.Env.EngineRuntime == nil:
		return errors.New("bench: no EngineRuntime adapter")
	}
	for _, k := range c.Concurrency {
		if k < 1 || k > 256 {
			return fmt.Errorf("bench: concurrency must be within 1…256, got %d", k)
		}
	}
	return nil
}

// Report is the result of one run. Times are in milliseconds.
type Report struct {
	Machine  Machine  `json:"machine"`
	Settings Settings `json:"settings"`
	Targets  []Target `json:"end_to_end"`
	Phases   []Phase  `json:"phases"`
	// Pool is sandbox and session creation, cold and from the warm pool, paired.
	Pool []Phase `json:"pool"`
	// Snippet is the numpy/pandas snippet: bare, in a fresh sandbox cold and from the pool.
	Snippet   []Target        `json:"snippet"`
	Breakdown []BreakdownLine `json:"breakdown"`
}

// Machine describes where the report was measured.
type Machine struct {
	Cores         int    `json:"cores"`
	CPU           string `json:"cpu"`
	Kernel        string `json:"kernel"`
	CgroupVersion int    `json:"cgroup_version"`
	Python        string `json:"python"`
	Bwrap         string `json:"bwrap,omitempty"`
	Go            string `json:"go"`
	Time          string `json:"time"`
	// LoadBefore is /proc/loadavg when the run started.
	LoadBefore string `json:"load_before"`
	// Seconds is the run's wall time; OtherCPU is the CPU time, in cores averaged over it, that
	// the machine spent outside this process and its reaped children: other work sharing the
	// machine, but also kernel threads finishing this run's cgroup and namespace teardown, and
	// the processes of this run that others reap (a zygote's children, which the kernel reaps
	// for the zygote: most of a zygote row's CPU counts here). Paired
	// ratios are what survives such interference; absolute numbers do not.
	Seconds  float64 `json:"seconds"`
	OtherCPU float64 `json:"other_cpu_cores"`
}

// Settings are the parameters the report was measured with.
type Settings struct {
	N           int   `json:"n"`
	Warmup      int   `json:"warmup"`
	Concurrency []int `json:"concurrency"`
	Runs        int   `json:"runs_per_throughput"`
	Rounds      int   `json:"throughput_rounds"`
}

// Target is one end-to-end way of running print(1).
type Target struct {
	Key     string  `json:"key"`
	Name    string  `json:"name"`
	Skipped string  `json:"skipped,omitempty"` // why it was not measured
	Latency Stats   `json:"latency"`
	Ratio   *Ratios `json:"ratio_to_bare,omitempty"` // p50, p90, p99 over bare python's
	// Throughput has one entry per client count.
	Throughput []Throughput `json:"throughput,omitempty"`
	// GoJudge is the target's p50 and runs/s over go-judge's in the same run (with --gojudge).
	GoJudge *Ratios `json:"ratio_to_gojudge,omitempty"`
}

// Ratios compare a target's latency percentiles with bare python's.
type Ratios struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
}

// Throughput is Runs runs done by Clients concurrent clients.
type Throughput struct {
	Clients    int     `json:"clients"`
	Runs       int     `json:"runs"`
	Seconds    float64 `json:"seconds"`
	RunsPerSec float64 `json:"runs_per_sec"`
	Ratio      float64 `json:"ratio_to_bare,omitempty"`    // over bare python's runs/s at the same client count
	GoJudge    float64 `json:"ratio_to_gojudge,omitempty"` // over go-judge's runs/s at the same client count
}

// Phase is one step of a sandbox's life, timed on its own.
type Phase struct {
	Key     string `json:"key"`
	Name    string `json:"name"`
	Latency Stats  `json:"latency"`
}

// BreakdownLine is one line of "where the time goes" for a one-shot: a measured phase or a
// difference of two measurements (Derived says which).
type BreakdownLine struct {
	Depth   int     `json:"depth"` // 0 total, 1 part, 2 part of a part, 3 part of that
	Name    string  `json:"name"`
	MeanMS  float64 `json:"mean_ms"`
	P50MS   float64 `json:"p50_ms"`
	Derived string  `json:"derived,omitempty"` // how it was computed, if not measured directly
}

// Target keys.
const (
	KeyBare    = "bare_python"
	KeyBwrap   = "bwrap"
	KeyRuntime = "airlock_runtime"
	KeyEngine  = "airlock_engine"
	KeyHTTP    = "airlock_http"
	printCode  = "print(1)"
	wantOutput = "1\n"
)

// Run measures everything and returns the report. It creates its own Env and tears it down.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.Python); err != nil {
		return nil, fmt.Errorf("baseline interpreter: %w", err)
	}
	env, err := NewEnv(ctx, cfg.Env)
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cerr := env.Close(cctx); cerr != nil {
			cfg.Logger.ErrorContext(cctx, "bench environment teardown", "err", cerr)
		}
	}()

	cpu0 := sampleCPU()
	rep := &Report{
		Machine: describeMachine(ctx, cfg, env),
		Settings: Settings{N: cfg.N, Warmup: cfg.Warmup, Concurrency: slices.Clone(cfg.Concurrency),
			Runs: cfg.Runs, Rounds: cfg.Rounds},
	}
	targets := []*target{
		{Target: Target{Key: KeyBare, Name: "bare python3 -c 'print(1)' (host)"},
			run: func(ctx context.Context) error { return BarePython(ctx, cfg.Python) }},
		{Target: Target{Key: KeyBwrap, Name: "bubblewrap --unshare-all, python3"},
			run: func(ctx context.Context) error { return Bwrap(ctx, cfg.Bwrap, cfg.Python) }},
		{Target: Target{Key: KeyRuntime, Name: "airlock one-shot, native runtime only"},
			run: env.RuntimePrint1},
		{Target: Target{Key: KeyEngine, Name: "airlock one-shot, engine.Execute"},
			run: env.ExecutePrint1},
		{Target: Target{Key: KeyHTTP, Name: "airlock one-shot, HTTP API + Go SDK"},
			run: env.HTTPPrint1},
	}
	targets = append(targets, pooledTargets(env)...)
	targets = append(targets, zygoteTargets(env)...)
	if _, err := exec.LookPath(cfg.Bwrap); err != nil {
		targets[1].Skipped = fmt.Sprintf("%s not available: %v", cfg.Bwrap, err)
	}
	if cfg.GoJudge != "" {
		gj, err := startGoJudge(ctx, cfg.GoJudge)
		if err != nil {
			return nil, err
		}
		defer gj.stop()
		targets = append(targets, &target{Target: Target{Key: KeyGoJudge, Name: "go-judge /run (pre-forked containers), python3"},
			run: gj.run})
	}
	targets = cfg.only(targets)
	if err := measureTargets(ctx, cfg, targets); err != nil {
		return nil, err
	}
	for _, t := range targets {
		rep.Targets = append(rep.Targets, t.Target)
	}
	if cfg.wants("pool") {
		if rep.Pool, err = measurePool(ctx, cfg, env); err != nil {
			return nil, err
		}
	}
	if cfg.wants("snippet") {
		snippet := snippetTargets(ctx, cfg, env)
		scfg := cfg
		scfg.N, scfg.Warmup, scfg.Concurrency = cfg.SnippetN, 1, nil
		if err := measureTargets(ctx, scfg, snippet); err != nil {
			return nil, err
		}
		for _, t := range snippet {
			rep.Snippet = append(rep.Snippet, t.Target)
		}
	}
	if cfg.wants("phases") {
		if rep.Phases, err = measurePhases(ctx, cfg, env); err != nil {
			return nil, err
		}
		rep.Breakdown = breakdown(rep)
	}
	rep.Machine.Seconds, rep.Machine.OtherCPU = cpu0.since()
	return rep, nil
}

// wants says whether the run measures the section or target key (Config.Only).
func (c *Config) wants(key string) bool {
	return len(c.Only) == 0 || key == KeyBare || slices.Contains(c.Only, key)
}

// only keeps the targets that Only names (all without it); go-judge, measured only when
// asked for, is always kept.
func (c *Config) only(ts []*target) []*target {
	return slices.DeleteFunc(ts, func(t *target) bool { return t.Key != KeyGoJudge && !c.wants(t.Key) })
}

// Target returns the end-to-end target with key, or nil.
func (r *Report) Target(key string) *Target {
	for i := range r.Targets {
		if r.Targets[i].Key == key {
			return &r.Targets[i]
		}
	}
	return nil
}

// Phase returns the phase with key, or nil.
func (r *Report) Phase(key string) *Phase {
	for i := range r.Phases {
		if r.Phases[i].Key == key {
			return &r.Phases[i]
		}
	}
	return nil
}
