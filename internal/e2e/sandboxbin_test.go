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

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// buildSandboxBinary builds cmd/airlock-sandbox (static) into a directory of its own.
func buildSandboxBinary(t *testing.T) string {
	t.Helper()
	dir := mkdirTraversable(t, "airlock-sandbox-bin-")
	bin := filepath.Join(dir, "airlock-sandbox")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/airlockhq/airlock/cmd/airlock-sandbox")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build airlock-sandbox: %v\n%s", err, out)
	}
	return bin
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestSandboxBinary: with --sandbox-binary every sandbox's init and agent is the small
// airlock-sandbox program, not the daemon re-executed (the host's /proc/PID/exe of the sandbox's
// PID 1 says which), and one-shots, execs, files and sessions work through it as through the
// daemon's own binary. A binary others may write is refused: it runs as root at every start.
func TestSandboxBinary(t *testing.T) {
	testutil.MustHaveRoot(t)
	bin := buildSandboxBinary(t)
	state := mkdirTraversable(t, "airlock-sbbin-state-")
	cg := fmt.Sprintf("airlock-sbbin-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	d := startDaemon(t, state, cg, freeAddr(t), noPool, zygoteOff, func(c *exec.Cmd) {
		c.Env = append(c.Env, "AIRLOCK_SANDBOX_BINARY="+bin)
	})
	t.Cleanup(d.stop)

	var run api.ExecuteResponse
	if st := postJSON(t, d.url+"/v1/execute", `{"code":"print(6*7)"}`, &run); st != 200 || run.Stdout != "42\n" {
		t.Fatalf("one-shot through the sandbox binary: %d %+v", st, run)
	}
	// The daemon holds the sandbox binary open: that descriptor, and the daemon's environment,
	// must not reach the program (listdir's own descriptor is the 3).
	probe := `import os; print(sorted(os.listdir('/proc/self/fd')), sorted(k for k in os.environ if k.startswith('AIRLOCK')))`
	body, _ := json.Marshal(api.ExecuteRequest{Code: probe})
	if st := postJSON(t, d.url+"/v1/execute", string(body), &run); st != 200 || run.Stdout != "['0', '1', '2', '3'] []\n" {
		t.Fatalf("descriptors and AIRLOCK_* variables in a sandbox started from the sandbox binary: %d %q %q, want only 0-2 (and listdir's) and none", st, run.Stdout, run.Stderr)
	}
	var sb api.SandboxInfo
	if st := postJSON(t, d.url+"/v1/sandboxes", `{}`, &sb); st != 201 {
		t.Fatalf("create sandbox: %d", st)
	}
	var res api.ExecResult
	if st := postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":["sh","-c","echo hi > /workspace/f; cat /workspace/f"]}`, &res); st != 200 || res.Stdout != "hi\n" {
		t.Fatalf("exec through the sandbox binary: %d %+v", st, res)
	}
	raw, err := os.ReadFile(filepath.Join(state, "sandboxes", sb.ID, "state.json"))
	var st struct{ Pid int }
	if err != nil || json.Unmarshal(raw, &st) != nil || st.Pid == 0 {
		t.Fatalf("state of %s: %v %s", sb.ID, err, raw)
	}
	// The runtime starts sandboxes from its own copy in the state directory (an upgrade that
	// replaces the original changes nothing it starts): the same bytes.
	copied := filepath.Join(state, "airlock-sandbox")
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", st.Pid)); err != nil || exe != copied {
		t.Errorf("the sandbox's PID 1 runs %q (%v), want the sandbox binary's copy %s", exe, err, copied)
	}
	if a, b := fileSize(t, bin), fileSize(t, copied); a != b {
		t.Errorf("the copy has %d bytes, the sandbox binary %d", b, a)
	}
	var sess api.SandboxInfo
	if code := postJSON(t, d.url+"/v1/sessions", `{}`, &sess); code != 201 {
		t.Fatalf("create session: %d", code)
	}
	var cell api.RunResult
	postJSON(t, d.url+"/v1/sessions/"+sess.ID+"/run", `{"code":"x = 20"}`, nil)
	if code := postJSON(t, d.url+"/v1/sessions/"+sess.ID+"/run", `{"code":"x + 22"}`, &cell); code != 200 || cell.Result == nil || *cell.Result != "42" {
		t.Fatalf("session cell through the sandbox binary: %d %+v", code, cell)
	}

	t.Run("refused when others may write it", func(t *testing.T) {
		bad := filepath.Join(mkdirTraversable(t, "airlock-sandbox-bad-"), "airlock-sandbox")
		b, err := os.ReadFile(bin)
		if err != nil || os.WriteFile(bad, b, 0o755) != nil || os.Chmod(bad, 0o757) != nil {
			t.Fatalf("copy the binary: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		exe, _ := os.Executable()
		cmd := exec.CommandContext(ctx, exe)
		cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=serve --addr "+freeAddr(t)+" --state-dir "+mkdirTraversable(t, "airlock-sbbad-state-"),
			"AIRLOCK_CGROUP_ROOT="+cg+"-bad", "AIRLOCK_SANDBOX_BINARY="+bad)
		t.Cleanup(func() { removeCgroupRoot(cg + "-bad") })
		out, _ := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("serve started with a world-writable sandbox binary:\n%s", out)
		}
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "must be writable by root alone") {
			t.Errorf("serve with a world-writable sandbox binary: exit %d, want 1 naming the mode:\n%s", code, out)
		}
	})
}
