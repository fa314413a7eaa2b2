package e2e

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
)

// zygoteEngine is an engine over the shared runtime with the zygote on, its zygote for ctx's
// owner ready.
func zygoteEngine(t testing.TB) *engine.Engine {
	t.Helper()
	mustEngine(t)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := engine.New(engine.Config{Logger: logger, Runtime: native.EngineRuntime(rt), ScratchBytes: 64 << 20,
		MaxConcurrent: 8, Zygote: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.WarmZygote(ctx); err != nil {
		t.Fatalf("warm zygote: %v", err)
	}
	return e
}

// zrun runs req on e and fails the test if it could not run.
func zrun(t testing.TB, e *engine.Engine, req api.ExecuteRequest) *api.ExecuteResponse {
	t.Helper()
	if req.Timeout == 0 {
		req.Timeout = 20
	}
	res, err := e.Execute(context.Background(), server.OneShot(req))
	if err != nil {
		t.Fatalf("execute: %v", err)
	}
	return server.ExecuteResponse(res)
}

// inZygote is a program prefix that fails a run that did not start in a zygote child: there,
// numpy is imported before the program's first line.
const inZygote = "import sys\nif 'numpy' not in sys.modules: raise SystemExit('not a zygote child')\n"

func TestZygoteRuns(t *testing.T) {
	e := zygoteEngine(t)
	res := zrun(t, e, api.ExecuteRequest{Code: inZygote + "import numpy, pandas\nprint(pandas.DataFrame({'a': numpy.arange(3)}).a.sum())"})
	if !res.Success || strings.TrimSpace(res.Stdout) != "3" {
		t.Fatalf("got %+v, want 3", res)
	}
}
