package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/testutil"
)

// A one-shot's output reaches OneShot.Output as the program writes it, not at the end (issue 18).
func TestOneShotOutputStreams(t *testing.T) {
	testutil.MustHaveRoot(t)
	e := mustEngine(t)
	type call struct {
		at     time.Time
		stream int
		text   string
	}
	var calls []call
	res, err := e.Execute(t.Context(), engine.OneShot{
		Code: "import sys, time\nfor i in range(4):\n    print(f'line {i}', flush=True)\n    time.sleep(0.3)\nprint('err', file=sys.stderr, flush=True)\n",
		Output: func(stream int, b []byte) {
			calls = append(calls, call{at: time.Now(), stream: stream, text: string(b)})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.Stdout, "line 0\nline 1\nline 2\nline 3\n"; got != want {
		t.Fatalf("Result.Stdout = %q, want %q", got, want)
	}
	var stdout, stderr strings.Builder
	var lines []time.Time // when each stdout line was completed
	for _, c := range calls {
		switch c.stream {
		case engine.StreamStdout:
			stdout.WriteString(c.text)
			for range strings.Count(c.text, "\n") {
				lines = append(lines, c.at)
			}
		case engine.StreamStderr:
			stderr.WriteString(c.text)
		default:
			t.Errorf("Output called with stream %d", c.stream)
		}
	}
	if got, want := stdout.String(), res.Stdout; got != want {
		t.Errorf("streamed stdout = %q, want %q", got, want)
	}
	if got, want := stderr.String(), "err\n"; got != want {
		t.Errorf("streamed stderr = %q, want %q", got, want)
	}
	if len(lines) != 4 {
		t.Fatalf("streamed %d stdout lines in %d calls, want 4", len(lines), len(calls))
	}
	// The program sleeps 0.3 s between lines: had output been delivered only at the end, the
	// lines would arrive together.
	for i := 1; i < len(lines); i++ {
		if gap := lines[i].Sub(lines[i-1]); gap < 200*time.Millisecond {
			t.Errorf("line %d arrived %v after line %d, want ≥ 200ms (not streamed)", i, gap, i-1)
		}
	}
}

// Ctrl-C stops `airlock run`: it exits 130 and the sandboxed program is gone (issue 18).
func TestRunInterruptExits130(t *testing.T) {
	testutil.MustHaveRoot(t)
	marker := fmt.Sprintf("airlock-sigint-%d", os.Getpid())
	code := filepath.Join(mkdirTraversable(t, "airlock-sigint-"), "probe.py")
	if err := os.WriteFile(code, []byte("import time\nprint('ready', flush=True)\ntime.sleep(60) # "+marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := mkdirTraversable(t, "airlock-sigint-state-")
	cg := fmt.Sprintf("airlock-sigint-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	exe, _ := os.Executable()
	cmd := exec.CommandContext(t.Context(), exe)
	// The FILE argument form (no --file), which is part of the same issue.
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=run --timeout 20 "+code, "AIRLOCK_STATE_DIR="+state, "AIRLOCK_CGROUP_ROOT="+cg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The program's first line arrives while it runs (streaming); then it is interrupted.
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("first line of airlock run = %q, %v; want %q\n%s", line, err, "ready\n", stderr.Bytes())
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("airlock run after SIGINT: %v, want exit status 130\n%s", err, stderr.Bytes())
	}
	if pids := processesWith(t, marker); len(pids) > 0 {
		t.Errorf("after SIGINT processes %v still run the program", pids)
	}
}

// processesWith lists the processes whose command line contains s.
func processesWith(t *testing.T, s string) []string {
	t.Helper()
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []string
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

// `airlock run --output DIR --output-file GLOB FILE` saves what the program wrote into DIR.
func TestRunSavesOutputFiles(t *testing.T) {
	testutil.MustHaveRoot(t)
	work := mkdirTraversable(t, "airlock-runout-")
	code := filepath.Join(work, "probe.py")
	if err := os.WriteFile(code, []byte("open('r.csv', 'w').write('a,b\\n1,2\\n')\nopen('skip.txt', 'w').write('no')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(work, "out")
	state := mkdirTraversable(t, "airlock-runout-state-")
	cg := fmt.Sprintf("airlock-runout-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	exe, _ := os.Executable()
	cmd := exec.CommandContext(t.Context(), exe)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=run --output "+dir+" --output-file *.csv "+code, "AIRLOCK_STATE_DIR="+state, "AIRLOCK_CGROUP_ROOT="+cg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("airlock run: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "r.csv"))
	if err != nil || string(got) != "a,b\n1,2\n" {
		t.Errorf("saved r.csv = %q, %v; want %q", got, err, "a,b\n1,2\n")
	}
	if _, err := os.Stat(filepath.Join(dir, "skip.txt")); err == nil {
		t.Error("skip.txt saved though no pattern matched it")
	}
}
