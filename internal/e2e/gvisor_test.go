package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/testutil"
)

// The gvisor engine is built on first use, in its own state directory and cgroup root, and
// torn down by TestMain's cleanup (gvisorCleanup).
var (
	gvisorOnce    sync.Once
	gvisorEng     *engine.Engine
	gvisorRT      *gvisor.Runtime
	gvisorState   string
	gvisorCgRoot  string
	gvisorErr     error
	gvisorCleanup func()
)

// mustGvisor returns the shared gvisor engine, or fails (skips without runsc unless strict).
func mustGvisor(t testing.TB) *engine.Engine {
	t.Helper()
	testutil.MustHaveRoot(t)
	gvisorOnce.Do(func() {
		gvisorState, gvisorErr = os.MkdirTemp("", "airlock-e2e-gvisor-")
		if gvisorErr != nil {
			return
		}
		gvisorCgRoot = fmt.Sprintf("airlock-e2e-gvisor-%d", os.Getpid())
		logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		gvisorRT, gvisorErr = gvisor.New(gvisor.Config{Logger: logger, StateDir: gvisorState, CgroupRoot: gvisorCgRoot})
		if gvisorErr != nil {
			os.RemoveAll(gvisorState)
			return
		}
		gvisorEng, gvisorErr = engine.New(engine.Config{Logger: logger, Runtime: gvisor.EngineRuntime(gvisorRT),
			ScratchBytes: 64 << 20, MaxConcurrent: 4})
		gvisorCleanup = func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if gvisorEng != nil {
				gvisorEng.Close(ctx)
			}
			removeCgroupRoot(gvisorCgRoot)
			os.RemoveAll(gvisorState)
		}
	})
	if gvisorErr != nil {
		if testutil.Strict() {
			t.Fatalf("AIRLOCK_TEST_STRICT=1 and the gvisor runtime is not available: %v", gvisorErr)
		}
		t.Skipf("gvisor runtime not available: %v", gvisorErr)
	}
	return gvisorEng
}

func TestGvisorRunsPython(t *testing.T) {
	e := mustGvisor(t)
	resp := runOn(t, e, api.ExecuteRequest{Code: "import platform; print(6*7, platform.release())"})
	// gVisor's kernel reports its own release (4.4.0), not the host's.
	if !resp.Success || !strings.HasPrefix(resp.Stdout, "42 ") {
		t.Fatalf("run: %+v", resp)
	}
	waitGvisorClean(t)
}

// waitGvisorClean fails unless nothing of a gvisor sandbox is left once its run has ended:
// no sandbox directory, no runsc state, no scratch mount, no process in its cgroups.
func waitGvisorClean(t *testing.T) {
	t.Helper()
	var left []string
	clean := func() bool {
		left = nil
		m, _ := filepath.Glob(filepath.Join(gvisorState, "gvisor", "sandboxes", "*"))
		left = append(left, m...)
		m, _ = filepath.Glob(filepath.Join(gvisorState, "gvisor", "runsc", "*"))
		left = append(left, m...)
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), gvisorState) {
			left = append(left, "a mount under "+gvisorState)
		}
		if pids := testutil.ProcsInCgroup(gvisorCgRoot); len(pids) > 0 {
			left = append(left, fmt.Sprintf("processes %v", pids))
		}
		if m, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", gvisorCgRoot, "*")); len(m) > 0 {
			for _, d := range m {
				if fi, err := os.Stat(d); err == nil && fi.IsDir() {
					left = append(left, d)
				}
			}
		}
		return len(left) == 0
	}
	deadline := time.Now().Add(15 * time.Second)
	for !clean() {
		if time.Now().After(deadline) {
			t.Fatalf("left behind by a gvisor sandbox: %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
