// Package e2e attacks real sandboxes end to end: the engine, the native runtime and the agent,
// with the test binary re-executed as each sandbox's PID 1.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/cli"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
	"github.com/airlockhq/airlock/internal/testutil"
)

// fakeSecret is put in the daemon's (this test process's) environment; no sandbox may see it.
const fakeSecret = "AIRLOCK_FAKE_SECRET=hunter2-e2e-do-not-leak"

var (
	eng      *engine.Engine
	rt       *native.Runtime
	images   *image.Store // the shared engine's image store, in stateDir/images
	stateDir string
	cgRoot   string
	setupErr error
)

func TestMain(m *testing.M) {
	if code, ok := cli.RunInit(); ok {
		// This test binary, re-executed by a runtime as a sandbox's init.
		os.Exit(code)
	}
	if args := os.Getenv("AIRLOCK_E2E_DAEMON"); args != "" {
		// This test binary, re-executed as an airlock daemon (see daemon_test.go).
		os.Exit(cli.Main(context.Background(), strings.Fields(args)))
	}
	k, v, _ := strings.Cut(fakeSecret, "=")
	os.Setenv(k, v)
	code := func() int {
		defer func() {
			if gvisorCleanup != nil { // the gvisor engine, if a test built one (gvisor_test.go)
				gvisorCleanup()
			}
		}()
		defer removeNPMProjects() // the npm projects tests installed (npm_test.go)
		if os.Geteuid() == 0 {
			var err error
			stateDir, err = os.MkdirTemp("", "airlock-e2e-")
			if err != nil {
				setupErr = err
				return m.Run()
			}
			defer os.RemoveAll(stateDir)
			cgRoot = fmt.Sprintf("airlock-e2e-%d", os.Getpid())
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			rt, err = native.New(native.Config{Logger: logger, StateDir: stateDir, CgroupRoot: cgRoot})
			if err != nil {
				setupErr = err
				return m.Run()
			}
			if images, err = image.Open(image.Config{Dir: stateDir + "/images", Logger: logger}); err != nil {
				setupErr = err
				return m.Run()
			}
			eng, setupErr = engine.New(engine.Config{Logger: logger, Runtime: native.EngineRuntime(rt),
				Images: image.EngineImages(images), ScratchBytes: 64 << 20, MaxConcurrent: 8})
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				eng.Close(ctx)
				rt.Close()
			}()
		}
		return m.Run()
	}()
	os.Exit(code)
}

// mustEngine returns the shared engine or skips/fails with the reason it is missing.
func mustEngine(t testing.TB) *engine.Engine {
	t.Helper()
	testutil.MustHaveRoot(t)
	if setupErr != nil {
		t.Fatalf("engine setup: %v", setupErr)
	}
	return eng
}

func run(t *testing.T, req api.ExecuteRequest) *api.ExecuteResponse {
	t.Helper()
	return runOn(t, mustEngine(t), req)
}

// runOn runs req on e (default timeout 20 s) and fails the test if it cannot run.
func runOn(t *testing.T, e *engine.Engine, req api.ExecuteRequest) *api.ExecuteResponse {
	t.Helper()
	if req.Timeout == 0 {
		req.Timeout = 20
	}
	res, err := e.Execute(t.Context(), server.OneShot(req))
	if err != nil {
		t.Fatalf("execute: %v", err)
	}
	return server.ExecuteResponse(res)
}

func py(t *testing.T, code string) *api.ExecuteResponse {
	t.Helper()
	return run(t, api.ExecuteRequest{Code: code})
}

// mustStillServe proves the engine still runs a normal program after an abuse test.
func mustStillServe(t *testing.T) {
	t.Helper()
	resp := py(t, "print(6*7)")
	if !resp.Success || strings.TrimSpace(resp.Stdout) != "42" {
		t.Fatalf("engine no longer serves a normal run after the attack: %+v", resp)
	}
}

func decodeJSON(t testing.TB, resp *http.Response, out any) {
	t.Helper()
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("decode %s: %v", resp.Request.URL, err)
	}
}
