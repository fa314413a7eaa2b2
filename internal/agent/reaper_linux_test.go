package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The lifecycle tests need a process of their own: the reaper calls wait4(-1), which would collect
// any other child of the test binary, and a one-shot's KillTree sends kill(-1), which only a PID 1
// of a pid namespace may do safely. inChild re-runs one test in a fresh copy of this binary: as
// root in a new pid namespace, where the test is PID 1 like the agent; as another user as a child
// subreaper, so orphans still come back to it.
const lifecycleChildEnv = "AIRLOCK_AGENT_LIFECYCLE_CHILD"

// hangGuard bounds every wait in these tests; it only stops a hang, it measures nothing.
const hangGuard = 60 * time.Second

func TestMain(m *testing.M) {
	if os.Getenv(lifecycleChildEnv) == "1" && os.Getpid() != 1 {
		// Orphaned grandchildren are re-parented here, as they would be to the agent.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			fmt.Fprintln(os.Stderr, "subreaper:", err)
			os.Exit(2)
		}
	}
	os.Exit(m.Run())
}

// inChild reports whether t runs in its own child process already; if not, it runs t there,
// relays the result and returns false (the caller returns at once).
func inChild(t *testing.T) bool {
	t.Helper()
	if os.Getenv(lifecycleChildEnv) == "1" {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangGuard)
	defer cancel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, exe, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), lifecycleChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	out, err := cmd.CombinedOutput()
	switch {
	case err != nil:
		t.Fatalf("child test: %v\n%s", err, out)
	case strings.Contains(string(out), "--- SKIP: "+t.Name()):
		t.Skipf("child test skipped:\n%s", out)
	case !strings.Contains(string(out), "--- PASS: "+t.Name()):
		t.Fatalf("child test did not run:\n%s", out)
	}
	return false
}

// startReaper starts the reaper with a Spawn hook that counts the forks it runs.
func startReaper(t *testing.T) (*reaper, *atomic.Int64) {
	t.Helper()
	var forks atomic.Int64
	r := newReaper(func(fn func()) { forks.Add(1); fn() })
	t.Cleanup(r.stop)
	return r, &forks
}

// forkExec returns a start function for reaper.spawn running sh -c script.
func forkExec(script string) func() (int, error) {
	return func() (int, error) {
		return syscall.ForkExec("/bin/sh", []string{"sh", "-c", script}, &syscall.ProcAttr{
			Env:   []string{"PATH=/usr/bin:/bin"},
			Files: []uintptr{0, 1, 2},
		})
	}
}

func awaitExit(t *testing.T, ch <-chan exitInfo) unix.WaitStatus {
	t.Helper()
	select {
	case info := <-ch:
		return info.status
	case <-time.After(hangGuard):
		t.Fatal("no exit status: the reaper lost it")
		return 0
	}
}

// TestReaperImmediateExit: a process that exits before spawn returns still reports its status,
// because spawn registers it under the lock the reaper holds around wait4.
func TestReaperImmediateExit(t *testing.T) {
	if !inChild(t) {
		return
	}
	r, forks := startReaper(t)
	for i := range 50 {
		pid, ch, err := r.spawn(func() (int, error) {
			pid, err := forkExec("exit 7")()
			if err == nil {
				// Make sure the child is a zombie before spawn registers it: the SIGCHLD has
				// been sent, and the reaper is waiting for the lock.
				var info unix.Siginfo
				unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			}
			return pid, err
		})
		if err != nil {
			t.Fatal(err)
		}
		ws := awaitExit(t, ch)
		if got, want := ws.ExitStatus(), 7; !ws.Exited() || got != want {
			t.Fatalf("spawn %d (pid %d): status %v, exit %d, want exit %d", i, pid, ws, got, want)
		}
	}
	if got, want := forks.Load(), int64(50); got != want {
		t.Errorf("forks through the Spawn hook: got %d, want %d", got, want)
	}
}

// TestReaperConcurrentSpawns: many spawns at once each get their own status.
func TestReaperConcurrentSpawns(t *testing.T) {
	if !inChild(t) {
		return
	}
	r, _ := startReaper(t)
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, ch, err := r.spawn(forkExec(fmt.Sprintf("exit %d", i)))
			if err != nil {
				errs <- err
				return
			}
			select {
			case info := <-ch:
				if !info.status.Exited() || info.status.ExitStatus() != i {
					errs <- fmt.Errorf("spawn %d: got status %v, want exit %d", i, info.status, i)
				}
			case <-time.After(hangGuard):
				errs <- fmt.Errorf("spawn %d: no exit status", i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestReaperSpawnError: a failed fork registers nothing and reports the error.
func TestReaperSpawnError(t *testing.T) {
	if !inChild(t) {
		return
	}
	r, _ := startReaper(t)
	_, ch, err := r.spawn(func() (int, error) {
		return syscall.ForkExec("/nonexistent", []string{"x"}, &syscall.ProcAttr{})
	})
	if got, want := err, syscall.ENOENT; !errors.Is(got, want) {
		t.Fatalf("got err %v, want %v", got, want)
	}
	if ch != nil {
		t.Error("got a channel for a process that never started")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := len(r.waiters); got != 0 {
		t.Errorf("waiters after a failed spawn: got %d, want 0", got)
	}
}
