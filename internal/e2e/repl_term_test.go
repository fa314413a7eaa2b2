package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/testutil"
)

// ptyRepl is `airlock repl` (this test binary re-executed, see TestMain) on a pseudo-terminal.
type ptyRepl struct {
	master *os.File
	cmd    *exec.Cmd
	mu     sync.Mutex
	cond   *sync.Cond
	out    bytes.Buffer // everything the REPL wrote to the terminal
	mark   int          // expect searches from here
	eof    bool
}

func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pts: %v", err)
	}
	return m, s
}

func startPtyRepl(t *testing.T, histDir, name string) *ptyRepl {
	t.Helper()
	master, slave := openPty(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: the state directory's parent must be traversable by the sandboxes' uid.
	state, err := os.MkdirTemp("", "airlock-replterm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+histDir,
		"AIRLOCK_E2E_DAEMON=repl --state-dir "+state+" --cgroup-root "+name)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start repl: %v", err)
	}
	slave.Close()
	p := &ptyRepl{master: master, cmd: cmd}
	p.cond = sync.NewCond(&p.mu)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			p.mu.Lock()
			p.out.Write(b[:n])
			p.eof = err != nil
			p.mu.Unlock()
			p.cond.Broadcast()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		// Ctrl-D first: the REPL then destroys its sandbox and releases its cgroup root. A
		// REPL still running after that is killed, and what it leaves is removed here (its
		// sandbox outlives it, as sandboxes outlive a killed daemon).
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		master.WriteString("\x04")
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		master.Close()
		killCgroupTree(name)
		removeCgroupTree(name)
		os.Remove("/run/airlock/cgroup-" + name + ".lock")
	})
	return p
}

// killCgroupTree SIGKILLs every process in the groups named name (and below) until none is
// left, in every hierarchy.
func killCgroupTree(name string) {
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	if d := filepath.Join("/sys/fs/cgroup", name); dirExists(d) {
		roots = append(roots, d)
	}
	for range 100 {
		n := 0
		for _, r := range roots {
			filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
						n++
					}
				}
				return nil
			})
		}
		if n == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroupTree removes the (empty) groups named name and every group below them.
func removeCgroupTree(name string) {
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	if d := filepath.Join("/sys/fs/cgroup", name); dirExists(d) {
		roots = append(roots, d)
	}
	for _, r := range roots {
		var dirs []string
		filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}

func (p *ptyRepl) send(t *testing.T, s string) {
	t.Helper()
	if _, err := p.master.WriteString(s); err != nil {
		t.Fatalf("write to pty: %v", err)
	}
}

// expect waits until the output after the mark contains want and moves the mark past it; it
// returns the output up to and including want. within only bounds a hung REPL (a failure).
func (p *ptyRepl) expect(t *testing.T, want string, within time.Duration) string {
	t.Helper()
	got, ok := p.wait(want, within)
	if !ok {
		t.Fatalf("no %q in the REPL's output; got %q", want, got)
	}
	return got
}

func (p *ptyRepl) wait(want string, within time.Duration) (string, bool) {
	timer := time.AfterFunc(within, func() { p.mu.Lock(); p.eof = true; p.mu.Unlock(); p.cond.Broadcast() })
	defer timer.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		rest := p.out.String()[p.mark:]
		if i := strings.Index(rest, want); i >= 0 {
			p.mark += i + len(want)
			return rest[:i+len(want)], true
		}
		if p.eof {
			p.eof = false // the reader sets it again if the pty is really gone
			return rest, false
		}
		p.cond.Wait()
	}
}

// TestReplTerminal drives `airlock repl` through a pseudo-terminal as a user would: Tab completes
// a variable of an earlier line, a traceback has no driver frames, Ctrl-C during a long cell
// prints one KeyboardInterrupt and keeps the variables, Ctrl-C at the prompt drops the line, and
// Up recalls a line of the previous run from the history file.
func TestReplTerminal(t *testing.T) {
	testutil.MustHaveRoot(t)
	hist := t.TempDir()
	name := fmt.Sprintf("airlock-e2e-replterm-%d", os.Getpid())
	p := startPtyRepl(t, hist, name)
	p.expect(t, ">>> ", 60*time.Second)

	p.send(t, "answer_value = 42\r")
	p.expect(t, ">>> ", 60*time.Second)
	t.Run("completion", func(t *testing.T) {
		p.send(t, "answer_v\t")
		p.expect(t, "answer_value", 30*time.Second) // the completed line, redrawn
		p.send(t, "\r")
		got := p.expect(t, ">>> ", 30*time.Second)
		if !strings.Contains(got, "42") || strings.Contains(got, "NameError") {
			t.Errorf("after Tab and Enter: got %q, want 42", got)
		}
	})
	t.Run("traceback", func(t *testing.T) {
		p.send(t, "def f():\r")
		p.expect(t, "... ", 30*time.Second)
		p.send(t, "\treturn 1/0\r\r") // Tab at the start of a line indents
		p.expect(t, ">>> ", 30*time.Second)
		p.send(t, "f()\r")
		got := p.expect(t, ">>> ", 30*time.Second)
		if !strings.Contains(got, "ZeroDivisionError") || !strings.Contains(got, "<cell-") {
			t.Errorf("traceback: got %q, want the cell's frames and ZeroDivisionError", got)
		}
		if strings.Contains(got, "airlock-driver") {
			t.Errorf("traceback has driver frames: %q", got)
		}
	})
	t.Run("interrupt", func(t *testing.T) {
		p.send(t, "import time; time.sleep(600)\r")
		p.expect(t, "time.sleep(600)\r", 30*time.Second) // the echo: the cell is being sent
		// The cell may not have reached the interpreter yet when Ctrl-C comes (then it stops
		// nothing, and prints nothing): press again until it is interrupted.
		var got string
		for {
			p.send(t, "\x03")
			var ok bool
			if got, ok = p.wait("KeyboardInterrupt", 2*time.Second); ok {
				break
			}
		}
		got += p.expect(t, ">>> ", 30*time.Second)
		all := got
		if n := strings.Count(got, "KeyboardInterrupt"); n != 1 {
			t.Errorf("%d KeyboardInterrupt lines, want 1: %q", n, got)
		}
		p.send(t, "answer_value\r")
		if got := p.expect(t, ">>> ", 30*time.Second); !strings.Contains(got, "42") {
			t.Errorf("after the interrupt (%q): got %q, want 42 (the session keeps its variables)", all, got)
		}
	})
	t.Run("ctrl-c at the prompt", func(t *testing.T) {
		p.send(t, "undefined_name_x")
		p.expect(t, "undefined_name_x", 30*time.Second)
		p.send(t, "\x03")
		got := p.expect(t, ">>> ", 30*time.Second)
		if strings.Count(got, "KeyboardInterrupt") != 1 || strings.Contains(got, "NameError") {
			t.Errorf("Ctrl-C at the prompt: got %q, want one KeyboardInterrupt and the line dropped", got)
		}
	})
	p.send(t, "answer_value\r")
	p.expect(t, ">>> ", 30*time.Second)
	p.send(t, "\x04") // Ctrl-D ends the session
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("repl exit: %v; output %q", err, p.out.String())
	}

	t.Run("history", func(t *testing.T) {
		p := startPtyRepl(t, hist, name+"-2")
		p.expect(t, ">>> ", 60*time.Second)
		p.send(t, "\x1b[A") // Up: the last line of the previous run
		p.expect(t, "answer_value", 30*time.Second)
		p.send(t, "\r")
		// A new session: the recalled line runs, and the variable is gone.
		if got := p.expect(t, ">>> ", 30*time.Second); !strings.Contains(got, "NameError") {
			t.Errorf("recalled line: got %q, want it run (NameError in a new session)", got)
		}
		if b, err := os.ReadFile(hist + "/airlock/history"); err != nil || !strings.Contains(string(b), "answer_value = 42\n") {
			t.Errorf("history file: %q, %v", b, err)
		}
	})
}
