package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

// vmPrereqExit is scripts/vm-cgroup2's exit code for a prerequisite it could not install.
const vmPrereqExit = 77

// TestCgroupV2InVM proves the cgroup v2 code paths on a host that lacks them (cgroup v1 or
// hybrid, where TestV2 and the v2 branches of the runtime and agent cannot run):
// scripts/vm-cgroup2 boots a qemu VM on a pure cgroup2 hierarchy and runs the tests of
// internal/cgroup, internal/doctor, internal/runtime/native and the cgroup-relevant e2e tests
// (airlock doctor and serve's preflight among them) inside it, strict.
// On a cgroup v2 host those tests run directly, so this one skips; AIRLOCK_TEST_VM=0 turns it
// off.
func TestCgroupV2InVM(t *testing.T) {
	if os.Getenv("AIRLOCK_VM_GUEST") == "1" {
		t.Skip("running inside the cgroup v2 VM")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		t.Skip("host is on cgroup v2: the v2 paths run directly in this suite")
	}
	if os.Getenv("AIRLOCK_TEST_VM") == "0" {
		t.Skip("AIRLOCK_TEST_VM=0")
	}
	testutil.MustHaveRoot(t)
	script, err := filepath.Abs("../../scripts/vm-cgroup2")
	if err != nil {
		t.Fatal(err)
	}
	// The VM's own limit (AIRLOCK_VM_TIMEOUT) ends a hung guest and leaves time to report it:
	// 15 minutes, or less if the test binary's -timeout comes sooner. The context only bounds a
	// wedged build or install.
	vmTimeout := 15 * time.Minute
	ctx, cancel := context.WithTimeout(t.Context(), vmTimeout+10*time.Minute)
	defer cancel()
	if dl, ok := t.Deadline(); ok {
		const build, report = 3 * time.Minute, 30 * time.Second
		left := time.Until(dl) - build - report
		if left < 5*time.Minute {
			t.Fatalf("only %v left before this test binary's -timeout, and the VM's build and run need about 9 minutes: use -timeout 20m or more",
				time.Until(dl).Round(time.Second))
		}
		vmTimeout = min(vmTimeout, left)
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-report))
		defer cancel()
	}
	log := filepath.Join(t.TempDir(), "console.log")
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "AIRLOCK_VM_LOG="+log,
		"AIRLOCK_VM_TIMEOUT="+strconv.Itoa(int(vmTimeout.Seconds())))
	cmd.Stdout, cmd.Stderr = &out, &out
	// The script, its build and qemu share a process group, so that cancelling ends them all.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	err = cmd.Run()
	console, _ := os.ReadFile(log)
	for _, line := range vmSummary(console) {
		t.Log(line)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return
	case errors.As(err, &ee) && ee.ExitCode() == vmPrereqExit:
		msg := "scripts/vm-cgroup2 lacks a prerequisite it could not install:\n" + tail(out.String(), 20)
		if testutil.Strict() {
			t.Fatalf("AIRLOCK_TEST_STRICT=1 and %s", msg)
		}
		t.Skip(msg)
	case ctx.Err() != nil:
		err = fmt.Errorf("did not finish in time (%w): %w", context.Cause(ctx), err)
	}
	// The script's output holds the console (it tees it) and its own messages after it.
	t.Fatalf("scripts/vm-cgroup2: %v\nfailures in the guest:\n%s\noutput tail:\n%s",
		err, strings.Join(vmFailures(console), "\n"), tail(out.String(), 80))
}

// vmSummary returns the harness's own lines from the guest's console (boot time, mounts, each
// test binary's exit and run time, the result).
func vmSummary(console []byte) []string {
	var lines []string
	for l := range vmLines(console) {
		if strings.HasPrefix(l, "AIRLOCK-VM") && !strings.HasPrefix(l, "AIRLOCK-VM: === ") ||
			strings.HasPrefix(l, "AIRLOCK-VM: === ") && strings.Contains(l, " exit ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// vmFailures returns each failed test's line (go test -v's "--- FAIL: name") with the lines that
// test logged, found by the "=== RUN/CONT/NAME name" line that precedes them. Kernel messages are
// left out; they are in the console's tail.
func vmFailures(console []byte) []string {
	logged := map[string][]string{}
	var out []string
	cur := ""
	for l := range vmLines(console) {
		t := strings.TrimSpace(l)
		switch f := strings.Fields(t); {
		case len(f) >= 3 && (f[0] == "===" || f[0] == "---"):
			if f[0] == "===" {
				cur = f[2]
			} else if f[1] == "FAIL:" {
				out = append(append(out, l), logged[f[2]]...)
			}
		case strings.HasPrefix(t, "panic:"):
			out = append(out, l)
		case cur != "" && t != "" && !strings.HasPrefix(t, "[") && len(logged[cur]) < 30:
			logged[cur] = append(logged[cur], l)
		}
	}
	return out
}

// vmLines yields the console's lines without the serial line's carriage returns.
func vmLines(console []byte) iter.Seq[string] {
	return func(yield func(string) bool) {
		sc := bufio.NewScanner(bytes.NewReader(console))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if !yield(strings.TrimRight(sc.Text(), "\r")) {
				return
			}
		}
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestVMFailures checks that a guest's failures are reported with their own messages, also for
// a subtest whose message is followed by other subtests' output.
func TestVMFailures(t *testing.T) {
	console := strings.Join([]string{
		"=== RUN   TestA",
		"=== RUN   TestA/bad",
		"    a_test.go:1: attack worked\r",
		"=== RUN   TestA/good",
		"[   11.3] Memory cgroup out of memory: Killed process 449",
		"--- FAIL: TestA (1.00s)",
		"    --- FAIL: TestA/bad (0.50s)",
		"    --- PASS: TestA/good (0.50s)",
		"=== RUN   TestB",
		"    b_test.go:2: fine",
		"--- PASS: TestB (0.01s)",
		"=== CONT  TestC",
		"    c_test.go:3: too slow",
		"--- FAIL: TestC (60.00s)",
		"panic: test timed out after 9m0s",
	}, "\n")
	got := strings.Join(vmFailures([]byte(console)), "\n")
	want := strings.Join([]string{
		"--- FAIL: TestA (1.00s)",
		"    --- FAIL: TestA/bad (0.50s)",
		"    a_test.go:1: attack worked",
		"--- FAIL: TestC (60.00s)",
		"    c_test.go:3: too slow",
		"panic: test timed out after 9m0s",
	}, "\n")
	if got != want {
		t.Errorf("vmFailures:\n%s\nwant:\n%s", got, want)
	}
}
