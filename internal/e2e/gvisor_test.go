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

// TestGvisorSentryUnprivileged checks the host side of a gvisor sandbox: the processes that
// run the sandbox's code — gVisor's kernel (runsc-sandbox) and, on the ptrace platform, the stub
// processes it runs user code in — are in a user namespace of their own, never the host's.
// runsc's own helpers (the gofer, which serves files, and runsc's waiting parent) stay host
// root by gVisor's design; no user code runs in them.
func TestGvisorSentryUnprivileged(t *testing.T) {
	e := mustGvisor(t)
	done := make(chan *api.ExecuteResponse, 1)
	go func() { done <- runOn(t, e, api.ExecuteRequest{Language: "bash", Code: "sleep 3; echo slept"}) }()
	host, _ := os.Readlink("/proc/self/ns/user")
	var pids []int
	waitFor(t, "the sandbox's host processes", func() bool {
		pids = testutil.ProcsInCgroup(gvisorCgRoot)
		return len(pids) >= 3
	})
	sentries := 0
	for _, pid := range pids {
		ns, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
		cmd, err2 := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err1 != nil || err2 != nil {
			continue // gone meanwhile
		}
		// runsc rewrites its argv as one space-separated string.
		f := strings.Fields(strings.ReplaceAll(string(cmd), "\x00", " "))
		if len(f) == 0 {
			continue
		}
		name := f[0]
		if name == "runsc-gofer" || strings.HasSuffix(name, "/runsc") {
			continue
		}
		if name == "runsc-sandbox" {
			sentries++
		}
		if ns == host {
			t.Errorf("host process %d (%s) of the sandbox runs in the host's user namespace", pid, name)
		}
	}
	if sentries != 1 {
		t.Errorf("found %d runsc-sandbox processes among %v, want 1", sentries, pids)
	}
	if r := <-done; !r.Success || r.Stdout != "slept\n" {
		t.Fatalf("run: %+v", r)
	}
}
