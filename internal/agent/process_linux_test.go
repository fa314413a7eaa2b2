package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

// newTestAgent is an agent around its own reaper (in its own child process, see inChild) whose
// processes run as the test's own uid and gid. It needs root: startProc always sets the
// process's credentials, and an empty supplementary group list (setgroups) needs CAP_SETGID.
func newTestAgent(t *testing.T, maxProcs int) *Agent {
	t.Helper()
	testutil.MustHaveRoot(t)
	r, _ := startReaper(t)
	return &Agent{
		cfg:    Config{Logger: slog.New(slog.DiscardHandler), UID: os.Getuid(), GID: os.Getgid(), MaxProcesses: maxProcs},
		reaper: r, started: time.Now(), transfers: make(chan struct{}, maxTransfers),
		procs: map[int]*proc{}, tags: map[string]*proc{},
	}
}

func shSpec(t *testing.T, script string) procSpec {
	return procSpec{Cmd: "sh", Args: []string{"-c", script}, Dir: t.TempDir()}
}

// result is everything one subscriber saw.
type result struct {
	stdout, stderr string
	end            *endInfo
}

// collect drains s to its end event.
func collect(t *testing.T, s *sub) result {
	t.Helper()
	r, err := collectErr(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// collectErr is collect for goroutines other than the test's.
func collectErr(s *sub) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	var out, errb strings.Builder
	end, err := drain(ctx, s, func(ev event) {
		out.Write(ev.Stdout)
		errb.Write(ev.Stderr)
	})
	if err != nil {
		return result{}, fmt.Errorf("waiting for the end event: %w (stdout so far %q)", err, out.String())
	}
	return result{stdout: out.String(), stderr: errb.String(), end: end}, nil
}

// readLine reads events from s until a full line of stdout has arrived.
func readLine(t *testing.T, s *sub) string {
	t.Helper()
	var b strings.Builder
	for !strings.Contains(b.String(), "\n") {
		select {
		case ev, ok := <-s.ch:
			if !ok || ev.End != nil {
				t.Fatalf("process ended before a line arrived (got %q)", b.String())
			}
			b.Write(ev.Stdout)
		case <-time.After(hangGuard):
			t.Fatalf("no line arrived (got %q)", b.String())
		}
	}
	return b.String()
}

func readPid(t *testing.T, s *sub) int {
	t.Helper()
	return readPids(t, s, 1)[0]
}

// readPids reads n lines of one pid each, which may arrive in one chunk of output.
func readPids(t *testing.T, s *sub, n int) []int {
	t.Helper()
	text := ""
	for strings.Count(text, "\n") < n {
		text += readLine(t, s)
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("want %d pids, got %q", n, text)
	}
	pids := make([]int, n)
	for i, l := range lines {
		pid, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("want a pid, got %q", text)
		}
		pids[i] = pid
	}
	return pids
}

// awaitGone polls until pid no longer exists (orphans are reaped by the test's reaper).
func awaitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for unix.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d is still alive", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive reports whether pid is running: a zombie is not (it can still be signalled), and /proc
// belongs to the host's pid namespace here, so a pidfd tells (it is readable once pid exited).
func alive(t *testing.T, pid int) bool {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil {
		t.Fatalf("poll pidfd: %v", err)
	}
	return n == 0
}

// TestProcFanOut: every subscriber sees all output in order, and a slow subscriber that has
// stopped reading, once it leaves, wedges neither the others nor the end.
func TestProcFanOut(t *testing.T) {
	if !inChild(t) {
		return
	}
	a := newTestAgent(t, 8)
	spec := shSpec(t, `while IFS= read -r l; do printf '%s\n' "$l"; done`)
	spec.KeepStdin = true
	p, first, err := a.startProc(spec)
	if err != nil {
		t.Fatal(err)
	}
	second, _ := p.subscribe()
	slow, _ := p.subscribe()
	if second == nil || slow == nil {
		t.Fatal("subscribe to a running process failed")
	}
	const lines = 100
	done := make(chan result, 1)
	go func() {
		r, err := collectErr(second)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	var want strings.Builder
	// In lock step with first, so each line is one event, until slow's buffer is full and the
	// pumps block on it.
	i := 0
	for ; len(slow.ch) < cap(slow.ch); i++ {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		if err := p.writeStdin([]byte(line)); err != nil {
			t.Fatal(err)
		}
		if got := readLine(t, first); got != line {
			t.Fatalf("first subscriber: got %q, want %q", got, line)
		}
		if i > lines {
			t.Fatalf("slow subscriber's buffer never filled (%d of %d)", len(slow.ch), cap(slow.ch))
		}
	}
	for ; i < lines; i++ {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		if err := p.writeStdin([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	slow.leave()
	p.closeStdin()
	r := collect(t, first)
	if got, want := r.end.ExitCode, 0; !r.end.Exited || got != want {
		t.Errorf("end: got %+v, want exit %d", r.end, want)
	}
	r2 := <-done
	if r2.end == nil {
		return
	}
	if got, want := r2.stdout, want.String(); got != want {
		t.Errorf("second subscriber: got %q, want %q", got, want)
	}
	if got := r2.end; got == nil || got.ExitCode != 0 {
		t.Errorf("second subscriber's end: got %+v, want exit 0", got)
	}
	if s, end := p.subscribe(); s != nil || end == nil {
		t.Errorf("subscribe after the end: got sub %v, end %v; want the end", s, end)
	}
}

// TestProcTimeoutKillsGroup: the timeout kills the process and every process of its group, a
// background grandchild included, and reports TimedOut with SIGKILL.
func TestProcTimeoutKillsGroup(t *testing.T) {
	if !inChild(t) {
		return
	}
	a := newTestAgent(t, 8)
	spec := shSpec(t, `sleep 1000 & echo $!; wait`)
	spec.Timeout = time.Second
	_, s, err := a.startProc(spec)
	if err != nil {
		t.Fatal(err)
	}
	grandchild := readPid(t, s)
	r := collect(t, s)
	if got, want := r.end.Signal, int(syscall.SIGKILL); !r.end.TimedOut || got != want {
		t.Errorf("end: got %+v, want TimedOut and signal %d", r.end, want)
	}
	if got, want := r.end.ExitCode, 128+int(syscall.SIGKILL); got != want {
		t.Errorf("exit code: got %d, want %d", got, want)
	}
	awaitGone(t, grandchild)
}

// TestProcSignalGroupAndStragglers: a signal goes to the whole group; a grandchild that left
// the group with setsid survives it (only KillTree reaches it), and although it still holds
// stdout the end event arrives (the straggler deadline).
func TestProcSignalGroupAndStragglers(t *testing.T) {
	if !inChild(t) {
		return
	}
	a := newTestAgent(t, 8)
	// The escapee prints its pid only after setsid, so it has left the group when it is read.
	p, s, err := a.startProc(shSpec(t, `sleep 1000 & echo $!; setsid sh -c 'echo $$; exec sleep 1000' & wait`))
	if err != nil {
		t.Fatal(err)
	}
	pids := readPids(t, s, 2)
	member, escapee := pids[0], pids[1]
	t.Cleanup(func() { unix.Kill(escapee, unix.SIGKILL) })
	if err := p.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := collect(t, s)
	if got, want := r.end.Signal, int(syscall.SIGTERM); got != want || r.end.TimedOut {
		t.Errorf("end: got %+v, want signal %d", r.end, want)
	}
	awaitGone(t, member)
	if !alive(t, escapee) {
		t.Errorf("the setsid grandchild %d was killed by a signal to the group", escapee)
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		t.Errorf("signal after the end: got %v, want nil (ESRCH is not an error)", err)
	}
}

// TestProcStragglerDeadline: a background child that keeps stdout open does not hang the
// exec: the end event arrives with the shell's own status.
func TestProcStragglerDeadline(t *testing.T) {
	if !inChild(t) {
		return
	}
	a := newTestAgent(t, 8)
	_, s, err := a.startProc(shSpec(t, `sleep 1000 & echo $!; exit 3`))
	if err != nil {
		t.Fatal(err)
	}
	bg := readPid(t, s)
	t.Cleanup(func() { unix.Kill(bg, unix.SIGKILL) })
	r := collect(t, s)
	if got, want := r.end.ExitCode, 3; !r.end.Exited || got != want {
		t.Errorf("end: got %+v, want exit %d", r.end, want)
	}
	if !alive(t, bg) {
		t.Errorf("the background child was killed without KillTree")
	}
}

// TestProcKillTree: a one-shot's KillTree kills everything left in the sandbox when the
// process ends, a grandchild in its own session included.
func TestProcKillTree(t *testing.T) {
	if !inChild(t) {
		return
	}
	a := newTestAgent(t, 8)
	if os.Getpid() != 1 {
		// kill(-1) outside a pid namespace would hit every process of the host.
		t.Fatalf("KillTree test must run as PID 1 of a pid namespace, runs as %d", os.Getpid())
	}
	spec := shSpec(t, `setsid sh -c 'echo $$; exec sleep 1000' & wait`)
	spec.KillTree, spec.Timeout = true, time.Second
	_, s, err := a.startProc(spec)
	if err != nil {
		t.Fatal(err)
	}
	escapee := readPid(t, s)
	r := collect(t, s)
	if !r.end.TimedOut {
		t.Errorf("end: got %+v, want TimedOut", r.end)
	}
	awaitGone(t, escapee)
}

// TestProcOutputCap: output past OutputLimit is cut per stream and flagged, and the rest is
// drained so a writer far past the cap still ends.
func TestProcOutputCap(t *testing.T) {
	if !inChild(t) {
		return
	}
	a := newTestAgent(t, 8)
	tests := []struct {
		name, script       string
		limit              int64
		stdout, stderr     string
		outTrunc, errTrunc bool
	}{
		{"stdout cut", `printf 0123456789abcdef; printf xyz >&2`, 10, "0123456789", "xyz", true, false},
		{"stderr cut", `printf abc; printf 0123456789abcdef >&2`, 10, "abc", "0123456789", false, true},
		{"exactly the cap", `printf 0123456789`, 10, "0123456789", "", false, false},
		{"far past the cap", `head -c 10000000 /dev/zero | tr '\0' x`, 4, "xxxx", "", true, false},
		{"unlimited", `printf 0123456789abcdef`, 0, "0123456789abcdef", "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := shSpec(t, tt.script)
			spec.OutputLimit = tt.limit
			_, s, err := a.startProc(spec)
			if err != nil {
				t.Fatal(err)
			}
			r := collect(t, s)
			if r.stdout != tt.stdout || r.stderr != tt.stderr {
				t.Errorf("got stdout %q stderr %q, want %q %q", r.stdout, r.stderr, tt.stdout, tt.stderr)
			}
			if r.end.StdoutTruncated != tt.outTrunc || r.end.StderrTruncated != tt.errTrunc {
				t.Errorf("got truncated %v/%v, want %v/%v", r.end.StdoutTruncated, r.end.StderrTruncated, tt.outTrunc, tt.errTrunc)
			}
			if !r.end.Exited || r.end.ExitCode != 0 {
				t.Errorf("end: got %+v, want exit 0", r.end)
			}
		})
	}
}

// TestProcMaxProcesses: past MaxProcesses running processes a start fails with
// errTooManyProcesses; the slot of an ended process, and of a start that failed, comes back.
func TestProcMaxProcesses(t *testing.T) {
	if !inChild(t) {
		return
	}
	a := newTestAgent(t, 2)
	var running []*proc
	var subs []*sub
	for range 2 {
		spec := shSpec(t, `read x`)
		spec.KeepStdin = true
		p, s, err := a.startProc(spec)
		if err != nil {
			t.Fatal(err)
		}
		running, subs = append(running, p), append(subs, s)
	}
	if _, _, err := a.startProc(shSpec(t, `true`)); !errors.Is(err, errTooManyProcesses) {
		t.Fatalf("third start: got %v, want %v", err, errTooManyProcesses)
	}
	running[0].closeStdin()
	collect(t, subs[0])
	// A start that fails gives its slot back too.
	if _, _, err := a.startProc(procSpec{Cmd: "/nonexistent", Dir: t.TempDir()}); err == nil || errors.Is(err, errTooManyProcesses) {
		t.Fatalf("start of a missing program: got %v, want an exec error", err)
	}
	_, s, err := a.startProc(shSpec(t, `true`))
	if err != nil {
		t.Fatalf("start after a process ended: %v", err)
	}
	collect(t, s)
	running[1].closeStdin()
	collect(t, subs[1])
	a.mu.Lock()
	defer a.mu.Unlock()
	if got, want := a.running, 0; got != want {
		t.Errorf("running after every process ended: got %d, want %d", got, want)
	}
	if got, want := len(a.procs), 0; got != want {
		t.Errorf("tracked processes after every process ended: got %d, want %d", got, want)
	}
}
