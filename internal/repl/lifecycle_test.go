//go:build linux

package repl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
)

// Lifecycle tests: interrupts, timeouts, crashes, restarts, start failures and Close.

// TestInterrupt stops blocking cells by Interrupt, by the cell timeout and by ctx; each time the
// interpreter keeps its state.
func TestInterrupt(t *testing.T) {
	t.Parallel()
	cells := map[string]string{
		"busy loop":  "while True:\n    pass",
		"sleep":      "import time\ntime.sleep(100)",
		"subprocess": "import subprocess\nsubprocess.run(['sleep', '100'])",
	}
	how := []string{"Interrupt", "timeout", "ctx"}
	for name, code := range cells {
		for _, h := range how {
			t.Run(name+"/"+h, func(t *testing.T) {
				t.Parallel()
				ip := start(t, Config{})
				pid := ip.Pid()
				run(t, ip, "before = 'kept'")
				t0 := time.Now()
				var res *Result
				var err error
				switch h {
				case "Interrupt":
					ch := make(chan struct{})
					go func() {
						defer close(ch)
						res, err = ip.Run(t.Context(), code, time.Minute)
					}()
					time.Sleep(50 * time.Millisecond) // let the cell reach its loop
					interrupted, restarted, ierr := false, false, error(nil)
					for !interrupted && !restarted && ierr == nil {
						interrupted, restarted, ierr = ip.Interrupt()
						time.Sleep(time.Millisecond)
					}
					<-ch
					if !interrupted || restarted || ierr != nil {
						t.Errorf("Interrupt = %v, %v, %v; want true, false, nil", interrupted, restarted, ierr)
					}
				case "timeout":
					res, err = ip.Run(t.Context(), code, 200*time.Millisecond)
				case "ctx":
					ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
					defer cancel()
					res, err = ip.Run(ctx, code, 0)
				}
				elapsed := time.Since(t0)
				if h == "ctx" {
					if !errors.Is(err, context.DeadlineExceeded) || res != nil {
						t.Fatalf("Run with an expiring ctx = %v, %v; want nil, DeadlineExceeded", res, err)
					}
				} else {
					if err != nil {
						t.Fatalf("Run: %v", err)
					}
					if !res.Interrupted || res.Restarted || errName(res) != "KeyboardInterrupt" {
						t.Errorf("result: interrupted=%v restarted=%v (%s) error=%+v; want an interrupted KeyboardInterrupt", res.Interrupted, res.Restarted, res.RestartReason, res.Error)
					}
					if res.TimedOut != (h == "timeout") {
						t.Errorf("TimedOut = %v, want %v", res.TimedOut, h == "timeout")
					}
					if res.Error != nil && !strings.Contains(strings.Join(res.Error.Traceback, "\n"), "<cell-2>") {
						t.Errorf("traceback %q does not point at the cell", res.Error.Traceback)
					}
				}
				if elapsed > 5*time.Second {
					t.Errorf("interrupt took %v", elapsed)
				}
				if got := run(t, ip, "before").Result; got != "'kept'" {
					t.Errorf("after the interrupt, before = %s, want 'kept'", got)
				}
				if ip.Pid() != pid {
					t.Errorf("pid changed from %d to %d: the interpreter was restarted", pid, ip.Pid())
				}
			})
		}
	}
}

// TestUninterruptible: a cell that ignores SIGINT is killed after the grace period and the next
// cell runs on a fresh interpreter.
func TestUninterruptible(t *testing.T) {
	t.Parallel()
	cells := map[string]string{
		"SIG_IGN":     "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
		"bare except": "while True:\n    try:\n        while True:\n            pass\n    except:\n        pass",
		"C code":      "import ctypes, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\nctypes.CDLL(None).sleep(100)",
	}
	for name, code := range cells {
		for _, h := range []string{"Interrupt", "timeout"} {
			t.Run(name+"/"+h, func(t *testing.T) {
				t.Parallel()
				ip := start(t, Config{InterruptGrace: 300 * time.Millisecond})
				pid := ip.Pid()
				run(t, ip, "before = 1")
				var res *Result
				var err error
				if h == "timeout" {
					res, err = ip.Run(t.Context(), code, 200*time.Millisecond)
				} else {
					ch := make(chan struct{})
					go func() {
						defer close(ch)
						res, err = ip.Run(t.Context(), code, time.Minute)
					}()
					time.Sleep(100 * time.Millisecond)
					interrupted, restarted := false, false
					for !interrupted && !restarted {
						interrupted, restarted, _ = ip.Interrupt()
						time.Sleep(time.Millisecond)
					}
					<-ch
					if interrupted || !restarted {
						t.Errorf("Interrupt = %v, %v; want false, true", interrupted, restarted)
					}
				}
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if !res.Restarted || res.Interrupted || errName(res) != "InterpreterKilled" || res.RestartReason == "" {
					t.Errorf("result: restarted=%v (%q) interrupted=%v error=%+v; want a restart", res.Restarted, res.RestartReason, res.Interrupted, res.Error)
				}
				if res.TimedOut != (h == "timeout") {
					t.Errorf("TimedOut = %v, want %v", res.TimedOut, h == "timeout")
				}
				if ip.Pid() == pid || ip.Pid() == 0 {
					t.Errorf("pid = %d, want a new interpreter (old %d)", ip.Pid(), pid)
				}
				if got := errName(run(t, ip, "before")); got != "NameError" {
					t.Errorf("after the restart, `before` gave error %q, want NameError (fresh state)", got)
				}
				step{code: "1 + 1", result: "2"}.check(t, run(t, ip, "1 + 1"))
			})
		}
	}
}

// TestCrash: an interpreter that dies in a cell is reported and replaced.
func TestCrash(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, code, value string
	}{
		{"os._exit", "print('before', flush=True)\nimport os\nos._exit(3)", "exit status 3"},
		{"segfault", "print('before')\nimport ctypes\nctypes.string_at(0)", "signal: segmentation fault"},
		{"SIGKILL", "print('before')\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "signal: killed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ip := start(t, Config{})
			pid := ip.Pid()
			run(t, ip, "before = 1")
			res := run(t, ip, tt.code)
			if !res.Restarted || errName(res) != "InterpreterDied" || !strings.Contains(res.Error.Value, tt.value) {
				t.Errorf("result: restarted=%v error=%+v; want InterpreterDied with %q", res.Restarted, res.Error, tt.value)
			}
			if !strings.Contains(res.RestartReason, tt.value) {
				t.Errorf("restart reason %q lacks %q", res.RestartReason, tt.value)
			}
			if string(res.Stdout) != "before\n" {
				t.Errorf("stdout = %q, want the output before the crash", res.Stdout)
			}
			if ip.Pid() == pid {
				t.Errorf("pid unchanged (%d) after a crash", pid)
			}
			if got := errName(run(t, ip, "before")); got != "NameError" {
				t.Errorf("after the restart, `before` gave error %q, want NameError", got)
			}
			step{code: "print('ok')", stdout: "ok\n"}.check(t, run(t, ip, "print('ok')"))
		})
	}
}

// TestDiedBetweenCells: an interpreter that dies between cells is restarted by the next Run.
func TestDiedBetweenCells(t *testing.T) {
	t.Parallel()
	ip := start(t, Config{})
	run(t, ip, "import os, threading\nthreading.Timer(0.1, os._exit, (4,)).start()")
	deadline := time.Now().Add(10 * time.Second)
	for ip.Pid() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	res := run(t, ip, "6 * 7")
	if res.Result != "42" || res.Error != nil {
		t.Errorf("result = %q, error %+v; want 42", res.Result, res.Error)
	}
	if !res.Restarted || !strings.Contains(res.RestartReason, "exit status 4") {
		t.Errorf("restarted=%v reason=%q; want a restart reporting exit status 4", res.Restarted, res.RestartReason)
	}
	if res := run(t, ip, "1"); res.Restarted {
		t.Errorf("the cell after the restart reports a restart again: %q", res.RestartReason)
	}
}

// TestLateSIGINT: SIGINTs between cells, even with a user handler installed, do not kill the driver.
func TestLateSIGINT(t *testing.T) {
	t.Parallel()
	for _, setup := range []string{"x = 1", "x = 1\nimport signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)"} {
		ip := start(t, Config{})
		pid := ip.Pid()
		run(t, ip, setup)
		for range 20 {
			if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		res := run(t, ip, "x + 1")
		if res.Result != "2" || res.Error != nil || res.Restarted {
			t.Errorf("after SIGINTs between cells: result %q error %+v restarted %v", res.Result, res.Error, res.Restarted)
		}
		if ip.Pid() != pid {
			t.Errorf("pid changed from %d to %d", pid, ip.Pid())
		}
	}
}

func TestInterruptIdle(t *testing.T) {
	t.Parallel()
	ip := start(t, Config{})
	if i, r, err := ip.Interrupt(); i || r || err != nil {
		t.Errorf("Interrupt with no cell = %v, %v, %v; want false, false, nil", i, r, err)
	}
}

func TestStartFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, python, want string
	}{
		{"missing", "/nonexistent/python3", "no such file"},
		{"not python", "/bin/false", "exit status 1"},
		{"old python", "/bin/sh", "exit status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ip, err := Start(t.Context(), Config{Python: tt.python})
			if err == nil {
				ip.Close()
				t.Fatalf("Start(%s) succeeded", tt.python)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Start(%s) = %v, want it to mention %q", tt.python, err, tt.want)
			}
		})
	}
}

// TestClose runs no other test in parallel: it counts goroutines and checks that the interpreter,
// a cell in progress and the cell's child processes are all gone after Close.
func TestClose(t *testing.T) {
	base := runtime.NumGoroutine()
	fds := openFDs(t)
	ip, err := Start(t.Context(), Config{Python: testPython(t)})
	if err != nil {
		t.Fatal(err)
	}
	pid := ip.Pid()
	res := run(t, ip, "import subprocess\np = subprocess.Popen(['sleep', '100'])\np.pid")
	var child int
	fmt.Sscan(res.Result, &child)
	if child == 0 {
		t.Fatalf("no child pid in %+v", res)
	}
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { _, runErr = ip.Run(t.Context(), "while True:\n    pass", 0) })
	time.Sleep(100 * time.Millisecond)
	if err := ip.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	if !errors.Is(runErr, ErrClosed) || !errors.Is(runErr, api.ErrGone) {
		t.Errorf("Run in progress during Close = %v, want ErrClosed", runErr)
	}
	if _, err := ip.Run(t.Context(), "1", 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
	if _, _, err := ip.Interrupt(); !errors.Is(err, ErrClosed) {
		t.Errorf("Interrupt after Close = %v, want ErrClosed", err)
	}
	if err := ip.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if ip.Pid() != 0 {
		t.Errorf("Pid after Close = %d", ip.Pid())
	}
	for _, p := range []int{pid, child} {
		if alive(p) {
			t.Errorf("process %d is still alive after Close", p)
		}
	}
	if got := openFDs(t); got != fds {
		t.Errorf("%d open fds after Close, %d before", got, fds)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		// The state follows the parenthesized command name.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return false
		}
		if time.Now().After(deadline) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestSpawn: with Config.Spawn the caller starts and waits for the interpreter (as the agent's
// reaper does), and exit statuses still reach the Result.
func TestSpawn(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var spawned []int
	ip := start(t, Config{Spawn: func(cmd *exec.Cmd) (func() (syscall.WaitStatus, error), error) {
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		pid := cmd.Process.Pid
		mu.Lock()
		spawned = append(spawned, pid)
		mu.Unlock()
		return func() (syscall.WaitStatus, error) {
			var ws syscall.WaitStatus
			for {
				_, err := syscall.Wait4(pid, &ws, 0, nil)
				if err != syscall.EINTR {
					return ws, err
				}
			}
		}, nil
	}})
	res := run(t, ip, "import os; os._exit(7)")
	if errName(res) != "InterpreterDied" || res.Error.Value != "exit status 7" || !res.Restarted {
		t.Errorf("result: error %+v restarted %v; want InterpreterDied with exit status 7", res.Error, res.Restarted)
	}
	step{code: "1", result: "1"}.check(t, run(t, ip, "1"))
	mu.Lock()
	defer mu.Unlock()
	if len(spawned) != 2 || spawned[1] != ip.Pid() {
		t.Errorf("Spawn started %v, want two interpreters, the second being %d", spawned, ip.Pid())
	}
}
