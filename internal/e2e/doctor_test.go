package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testutil"
)

// TestDoctorHere runs `airlock doctor` on this machine: every check reports, and none FAILs
// (the suite runs sandboxes here, so a FAIL would be a false alarm).
func TestDoctorHere(t *testing.T) {
	testutil.MustHaveRoot(t)
	out, errs, code := runCLI(t, "", "doctor --json --state-dir "+t.TempDir())
	var r struct {
		Findings []struct{ Check, Status, Detail, Fix string }
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("doctor --json: %v\n%s\n%s", err, out, errs)
	}
	checks := map[string]string{}
	for _, f := range r.Findings {
		checks[f.Check] = f.Status
		t.Logf("%-5s %-18s %s", f.Status, f.Check, f.Detail)
		if f.Status == "fail" {
			t.Errorf("doctor FAILs %s on a host that runs the suite: %s (fix: %s)", f.Check, f.Detail, f.Fix)
		}
	}
	for _, c := range []string{"root", "kernel", "namespaces", "userns", "cgroup", "seccomp", "close_range", "pty", "nftables", "state-dir", "python"} {
		if _, ok := checks[c]; !ok {
			t.Errorf("no %s finding", c)
		}
	}
	if code != 0 {
		t.Errorf("doctor exit status %d, want 0 with no FAIL", code)
	}
}

// brokenView returns a root for AIRLOCK_DOCTOR_ROOT that is this host's own /proc, /sys, /dev
// and /usr (through symlinks) except that user.max_user_namespaces reads 0: a host where no
// user namespace, and so no sandbox, can be created — without touching the real sysctl.
func brokenView(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	link := func(dst, src string) {
		if err := os.Symlink(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	for _, top := range []string{"sys", "dev", "usr", "bin", "sbin", "lib", "run", "var", "etc"} {
		if _, err := os.Lstat("/" + top); err == nil {
			link(filepath.Join(root, top), "/"+top)
		}
	}
	// proc/<entry> → /proc/<entry> (self resolves to whoever reads), but proc/sys/user is ours.
	mirror := func(dir string, except string) {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		ents, err := os.ReadDir("/" + dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Name() != except {
				link(filepath.Join(root, dir, e.Name()), filepath.Join("/", dir, e.Name()))
			}
		}
	}
	mirror("proc", "sys")
	mirror("proc/sys", "user")
	if err := os.MkdirAll(filepath.Join(root, "proc/sys/user"), 0o755); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir("/proc/sys/user")
	for _, e := range ents {
		v, _ := os.ReadFile(filepath.Join("/proc/sys/user", e.Name()))
		if e.Name() == "max_user_namespaces" {
			v = []byte("0\n")
		}
		if err := os.WriteFile(filepath.Join(root, "proc/sys/user", e.Name()), v, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestServeRefusesBrokenHost: on a host where no user namespace can be made, serve refuses to
// start, exit 1, naming the sysctl and its fix, having built nothing (no cgroup root, no state);
// `airlock doctor` says the same. --skip-preflight starts it anyway.
func TestServeRefusesBrokenHost(t *testing.T) {
	testutil.MustHaveRoot(t)
	view := brokenView(t)
	state, err := os.MkdirTemp("", "airlock-preflight-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-preflight-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	// runCLI's children inherit these.
	t.Setenv("AIRLOCK_DOCTOR_ROOT", view)
	t.Setenv("AIRLOCK_CGROUP_ROOT", cg)

	t.Run("doctor", func(t *testing.T) {
		out, _, code := runCLI(t, "", "doctor --state-dir "+state)
		if code != 1 {
			t.Errorf("doctor exit status %d, want 1:\n%s", code, out)
		}
		if !strings.Contains(out, "FAIL  userns") || !strings.Contains(out, "fix: sysctl -w user.max_user_namespaces=") {
			t.Errorf("doctor output does not FAIL userns with its fix:\n%s", out)
		}
	})
	t.Run("serve refuses", func(t *testing.T) {
		// A serve that does not refuse would serve on: bound the wait, and fail saying so.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		exe, _ := os.Executable()
		cmd := exec.CommandContext(ctx, exe)
		cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=serve --addr "+freeAddr(t)+" --state-dir "+state)
		out, _ := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("serve did not refuse the host: still running after 30 s:\n%s", out)
		}
		errs, code := string(out), cmd.ProcessState.ExitCode()
		if code != 1 {
			t.Fatalf("serve exit status %d, want 1:\n%s", code, errs)
		}
		for _, want := range []string{"this host cannot run sandboxes", "FAIL userns: user.max_user_namespaces = 0", "fix: sysctl -w user.max_user_namespaces=15000"} {
			if !strings.Contains(errs, want) {
				t.Errorf("serve's error does not say %q:\n%s", want, errs)
			}
		}
		if matches, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cg)); len(matches) > 0 || dirExists(filepath.Join("/sys/fs/cgroup", cg)) {
			t.Errorf("a refused serve made its cgroup root: %v", matches)
		}
		if ents, _ := os.ReadDir(state); len(ents) > 0 {
			t.Errorf("a refused serve wrote its state directory: %d entries", len(ents))
		}
	})
	t.Run("skip-preflight starts", func(t *testing.T) {
		d := startDaemon(t, state, cg, freeAddr(t), func(c *exec.Cmd) {
			c.Env = append(c.Env, "AIRLOCK_SKIP_PREFLIGHT=1")
		})
		d.stop()
	})
}
