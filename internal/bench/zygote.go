package bench

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/internal/engine"
)

// Target keys of the zygote's rows.
const (
	KeyEngineZygote  = "airlock_engine_zygote"
	KeyHTTPZygote    = "airlock_http_zygote"
	KeySnippetZygote = "snippet_engine_zygote"
)

// zygoteWarm bounds the zygote's start (its imports of numpy, pandas and matplotlib).
const zygoteWarm = 2 * time.Minute

// startZygote builds Env.Zygote and its HTTP API and waits for its zygote. A zygote that
// cannot start (no python3 in the image, say) is recorded in ZygoteErr, not an error: its rows
// are skipped with the reason.
func (e *Env) startZygote(ctx context.Context, cfg EnvConfig) error {
	var err error
	e.Zygote, err = engine.New(engine.Config{Logger: cfg.Logger, Runtime: cfg.EngineRuntime(e.Runtime),
		MaxConcurrent: cfg.MaxConcurrent, Zygote: true})
	if err != nil {
		return err
	}
	url, err := e.serve(ctx, e.Zygote)
	if err != nil {
		return err
	}
	e.ZygoteClient = airlock.New(url, "").WithHTTPClient(&http.Client{Transport: e.tr})
	wctx, cancel := context.WithTimeout(ctx, zygoteWarm)
	defer cancel()
	if werr := e.Zygote.WarmZygote(wctx); werr != nil {
		e.ZygoteErr = fmt.Errorf("the python zygote did not start: %w", werr)
	}
	return nil
}

// zygoteTargets are print(1) through the engine with the zygote on, embedded and over HTTP.
// Runs that find no prepared child wait for one to be made (RunZygote), so these rows, and
// their throughput, are the zygote path's as `airlock serve --zygote` serves it.
func zygoteTargets(env *Env) []*target {
	ts := []*target{
		{Target: Target{Key: KeyEngineZygote, Name: "airlock one-shot, engine.Execute, python zygote"},
			run: func(ctx context.Context) error { return executeCode(ctx, env.Zygote, printCode) }},
		{Target: Target{Key: KeyHTTPZygote, Name: "airlock one-shot, HTTP API + Go SDK, python zygote"},
			run: func(ctx context.Context) error { return httpPrint1(ctx, env.ZygoteClient) }},
	}
	skipZygote(env, ts)
	return ts
}

// snippetZygote is the numpy/pandas snippet through the zygote.
func snippetZygote(env *Env) *target {
	t := &target{Target: Target{Key: KeySnippetZygote, Name: "airlock one-shot, engine.Execute, python zygote"},
		run: func(ctx context.Context) error { return executeCode(ctx, env.Zygote, snippetCode) }}
	skipZygote(env, []*target{t})
	return t
}

func skipZygote(env *Env, ts []*target) {
	if env.ZygoteErr == nil {
		return
	}
	for _, t := range ts {
		t.Skipped = env.ZygoteErr.Error()
	}
}
