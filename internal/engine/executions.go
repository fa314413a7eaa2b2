package engine

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
)

// Execution is a one-shot run in flight, as GET /v1/executions lists it.
type Execution struct {
	ID       string
	Owner    string
	Language string
	Started  time.Time
	Usage    Usage // zero when the sandbox's cgroup could not be read
}

// execution is the registry's entry for a running one-shot: enough to list it and to cancel it.
type execution struct {
	Execution
	inst   Instance
	cancel context.CancelCauseFunc
}

// executions are the one-shot runs in flight, by id (the id of their sandbox).
type executions struct {
	mu   sync.Mutex
	runs map[string]*execution
}

// errCancelled is the cause of a run's context once DELETE /v1/executions/{id} cancelled it.
var errCancelled = errors.New("cancelled by its owner")

// executionKey carries the hook WithExecutionHook sets.
type executionKey struct{}

// WithExecutionHook returns ctx with fn, which a one-shot run started under it calls with its
// execution id once its sandbox exists (the server puts it in the X-Airlock-Execution header).
func WithExecutionHook(ctx context.Context, fn func(id string)) context.Context {
	return context.WithValue(ctx, executionKey{}, fn)
}

// registerExecution lists the run in sandbox id until the returned func is called; cancel
// ends it. The hook of ctx, if any, learns the id.
func (e *Engine) registerExecution(ctx context.Context, id string, inst Instance, p *oneShotPlan, cancel context.CancelCauseFunc) (unregister func()) {
	x := &execution{Execution: Execution{ID: id, Owner: Owner(ctx), Language: p.Language, Started: time.Now()}, inst: inst, cancel: cancel}
	e.execs.mu.Lock()
	if e.execs.runs == nil {
		e.execs.runs = map[string]*execution{}
	}
	e.execs.runs[id] = x
	e.execs.mu.Unlock()
	if fn, ok := ctx.Value(executionKey{}).(func(string)); ok {
		fn(id)
	}
	return func() {
		e.execs.mu.Lock()
		delete(e.execs.runs, id)
		e.execs.mu.Unlock()
	}
}

// Executions lists ctx's owner's one-shot runs in flight, oldest first, with their usage so far.
func (e *Engine) Executions(ctx context.Context) []Execution {
	owner := Owner(ctx)
	e.execs.mu.Lock()
	var mine []*execution
	for _, x := range e.execs.runs {
		if x.Owner == owner {
			mine = append(mine, x)
		}
	}
	e.execs.mu.Unlock()
	out := make([]Execution, 0, len(mine))
	for _, x := range mine {
		v := x.Execution
		// A few cgroup files per run: cheap, and read outside the lock.
		if u, err := x.inst.Usage(); err == nil {
			v.Usage = u
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b Execution) int {
		return cmp.Or(a.Started.Compare(b.Started), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// CancelExecution ends ctx's owner's one-shot run id: its sandbox is destroyed and the run
// answers as killed (exit 137, a line on stderr). Another owner's run is not found.
func (e *Engine) CancelExecution(ctx context.Context, id string) (Execution, error) {
	e.execs.mu.Lock()
	x, ok := e.execs.runs[id]
	e.execs.mu.Unlock()
	if !ok || x.Owner != Owner(ctx) {
		return Execution{}, api.Errorf(api.ErrNotFound, "no execution %q in flight", id)
	}
	x.cancel(errCancelled)
	if err := x.inst.Destroy(context.WithoutCancel(ctx)); err != nil {
		e.cfg.Logger.WarnContext(ctx, "destroy a cancelled run's sandbox", "id", id, "err", err)
	}
	return x.Execution, nil
}

// cancelledResult is the answer of a run cancelled through CancelExecution.
func cancelledResult(res *Result) {
	res.ExitCode = 137
	res.Stderr += "\nairlock: the run was cancelled (DELETE /v1/executions/{id}); its sandbox was destroyed\n"
}
