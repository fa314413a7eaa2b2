package bench

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/airlockhq/airlock/internal/engine"
)

// Target keys of the warm pool's rows and of the snippet.
const (
	KeyEnginePooled = "airlock_engine_pooled"
	KeyHTTPPooled   = "airlock_http_pooled"
	KeySnippetBare  = "snippet_bare_python"
	KeySnippetCold  = "snippet_engine_cold"
	KeySnippetPool  = "snippet_engine_pooled"

	// snippetCode is the typical LLM snippet of issue 11: the data-science imports and a little
	// work.
	snippetCode = "import numpy, pandas\n" +
		"df = pandas.DataFrame({'a': numpy.arange(10)})\n" +
		"print(int(df.a.sum() // 45))"
)

// Pool phase keys.
const (
	PhaseCreateCold        = "engine_create_sandbox_cold"
	PhaseCreatePooled      = "engine_create_sandbox_pooled"
	PhaseSessionCold       = "session_create_first_cell_cold"
	PhaseSessionPooled     = "session_create_first_cell_pooled"
	PhaseSessionCellPooled = "session_first_cell_pooled"
)

// poolReadyWait bounds how long a pooled sample waits for the pool to have a ready sandbox.
const poolReadyWait = 30 * time.Second

// awaitReady waits until eng's pool has a ready sandbox of kind (the pooled rows time a
// hand-out, not a refill; sustained throughput is measured without waiting).
func awaitReady(ctx context.Context, eng *engine.Engine, kind engine.Kind) error {
	deadline := time.Now().Add(poolReadyWait)
	ready := func() bool {
		for _, s := range eng.PoolStats() {
			if strings.HasPrefix(s.Class, string(kind)+"/") && s.Ready > 0 {
				return true
			}
		}
		return false
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for !ready() {
		if time.Now().After(deadline) {
			return errors.New("the warm pool did not refill within 30 s")
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// pooledTargets are print(1) through the engine with the warm pool, embedded and over HTTP.
func pooledTargets(env *Env) []*target {
	wait := func(ctx context.Context) error { return awaitReady(ctx, env.Pooled, engine.KindOneShot) }
	return []*target{
		{Target: Target{Key: KeyEnginePooled, Name: "airlock one-shot, engine.Execute, warm pool"},
			run: env.ExecutePooledPrint1, prepare: wait},
		{Target: Target{Key: KeyHTTPPooled, Name: "airlock one-shot, HTTP API + Go SDK, warm pool"},
			run: env.HTTPPooledPrint1, prepare: wait},
	}
}

// measurePool times what the pool changes beyond one-shots: creating a long-lived sandbox
// (cold and from the pool; the terminate is untimed), and a session's creation with its first
// cell, cold and from the pool. Samples alternate cold and pooled, paired.
func measurePool(ctx context.Context, cfg Config, env *Env) ([]Phase, error) {
	ps := newPhaseSet()
	fmt.Fprintf(cfg.Progress, "bench: warm pool: sandbox and session creation, %d samples\n", cfg.N)
	// createSandbox times engine.CreateSandbox alone; the terminate after it is untimed.
	createSandbox := func(eng *engine.Engine) (time.Duration, error) {
		t0 := time.Now()
		sb, err := eng.CreateSandbox(ctx, engine.SandboxSpec{})
		d := time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("create a sandbox: %w", err)
		}
		_, err = eng.TerminateSandbox(ctx, sb.ID())
		return d, err
	}
	// session times a session's creation with its first cell, and the cell alone.
	session := func(eng *engine.Engine) (total, cell time.Duration, err error) {
		t0 := time.Now()
		sb, err := eng.CreateSession(ctx, engine.SessionSpec{})
		if err != nil {
			return 0, 0, fmt.Errorf("create a session: %w", err)
		}
		t1 := time.Now()
		c, err := sb.RunCell(ctx, "1 + 1", 0)
		total, cell = time.Since(t0), time.Since(t1)
		if err == nil && (c.Result == nil || *c.Result != "2") {
			err = fmt.Errorf("session cell 1 + 1 gave %+v", c)
		}
		if _, terr := eng.TerminateSandbox(ctx, sb.ID()); terr != nil {
			err = errors.Join(err, terr)
		}
		return total, cell, err
	}
	// One of each first, unrecorded: the pool learns the classes.
	if _, err := createSandbox(env.Pooled); err != nil {
		return nil, err
	}
	if _, _, err := session(env.Pooled); err != nil {
		return nil, err
	}
	for range cfg.N {
		d, err := createSandbox(env.Engine)
		if err != nil {
			return nil, err
		}
		ps.add(PhaseCreateCold, "create a sandbox (engine.CreateSandbox), cold", d)
		if err := awaitReady(ctx, env.Pooled, engine.KindSandbox); err != nil {
			return nil, err
		}
		if d, err = createSandbox(env.Pooled); err != nil {
			return nil, err
		}
		ps.add(PhaseCreatePooled, "create a sandbox (engine.CreateSandbox), warm pool", d)
		total, _, err := session(env.Engine)
		if err != nil {
			return nil, err
		}
		ps.add(PhaseSessionCold, "session create + first cell, cold", total)
		if err := awaitReady(ctx, env.Pooled, engine.KindSession); err != nil {
			return nil, err
		}
		total, cell, err := session(env.Pooled)
		if err != nil {
			return nil, err
		}
		ps.add(PhaseSessionPooled, "session create + first cell, warm pool", total)
		ps.add(PhaseSessionCellPooled, "session first cell alone, warm pool", cell)
	}
	return ps.phases(), nil
}

// snippetTargets are the numpy/pandas snippet under bare python and in fresh sandboxes, cold
// and from the pool; all skipped when the host's python lacks numpy or pandas.
func snippetTargets(ctx context.Context, cfg Config, env *Env) []*target {
	ts := []*target{
		{Target: Target{Key: KeySnippetBare, Name: "bare python3, import numpy, pandas + work (host)"},
			run: func(ctx context.Context) error { return runPrint1(ctx, cfg.Python, []string{"-c", snippetCode}) }},
		{Target: Target{Key: KeySnippetCold, Name: "airlock one-shot, engine.Execute, cold"},
			run: func(ctx context.Context) error { return executeCode(ctx, env.Engine, snippetCode) }},
		{Target: Target{Key: KeySnippetPool, Name: "airlock one-shot, engine.Execute, warm pool"},
			run:     func(ctx context.Context) error { return executeCode(ctx, env.Pooled, snippetCode) },
			prepare: func(ctx context.Context) error { return awaitReady(ctx, env.Pooled, engine.KindOneShot) }},
		snippetZygote(env),
	}
	if out, err := exec.CommandContext(ctx, cfg.Python, "-c", "import numpy, pandas").CombinedOutput(); err != nil {
		why := fmt.Sprintf("%s cannot import numpy and pandas: %s", cfg.Python, strings.TrimSpace(string(out)))
		for _, t := range ts {
			t.Skipped = why
		}
	}
	return ts
}
