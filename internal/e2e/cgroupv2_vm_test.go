package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"iter"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
// internal/cgroup, internal/runtime/native and the cgroup-relevant e2e tests inside it, strict.
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
	// The VM takes a few minutes under software emulation; the script's own limit (AIRLOCK_VM_TIMEOUT,
	// 900 s) ends it first, this one only bounds a wedged build or install.
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Minute)
	defer cancel()
	if dl, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
		defer cancel()
	}
	log := filepath.Join(t.TempDir(), "console.log")
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "AIRLOCK_VM_LOG="+log)
	cmd.Stdout, cmd.Stderr = &out, &out
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
		t.Fatalf("scripts/vm-cgroup2 did not finish in time (%v): %v\nconsole tail:\n%s\nscript output tail:\n%s",
			context.Cause(ctx), err, tail(string(console), 80), tail(out.String(), 20))
	}
	t.Fatalf("scripts/vm-cgroup2: %v\nfailures in the guest:\n%s\nconsole tail:\n%s\nscript output tail:\n%s",
		err, strings.Join(vmFailures(console), "\n"), tail(string(console), 80), tail(out.String(), 20))
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

// vmFailures returns the failed tests' lines and the messages right above each, as go test -v
// prints them.
func vmFailures(console []byte) []string {
	var out, pending []string
	for l := range vmLines(console) {
		switch t := strings.TrimSpace(l); {
		case strings.HasPrefix(t, "--- FAIL:"), strings.HasPrefix(t, "panic:"):
			out = append(append(out, pending...), l)
			pending = nil
		case strings.HasPrefix(t, "=== "), strings.HasPrefix(t, "--- "):
			pending = nil
		case len(pending) < 20:
			pending = append(pending, l)
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
