package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
)

// TestMain fails the package if its tests leave goroutines behind: every engine is closed by
// its test, and a closed engine must have stopped everything it started (teardowns, calls into
// agents). The count may take a moment to settle, so it is polled.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		if n, stacks := settledGoroutines(before, 10*time.Second); n > before {
			fmt.Fprintf(os.Stderr, "engine tests leaked %d goroutines (%d before, %d after):\n%s\n", n-before, before, n, stacks)
			code = 1
		}
	}
	os.Exit(code)
}

// settledGoroutines polls until at most want goroutines run or the deadline passes, and
// returns the last count and, if it is over want, every goroutine's stack.
func settledGoroutines(want int, within time.Duration) (int, []byte) {
	deadline := time.Now().Add(within)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return n, nil
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			return n, buf[:runtime.Stack(buf, true)]
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lastInstance returns the instance the runtime created last.
func (r *fakeRuntime) lastInstance(t *testing.T) *fakeInstance {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.insts) == 0 {
		t.Fatal("no sandbox was created")
	}
	return r.insts[len(r.insts)-1]
}

func TestExecuteThroughAgent(t *testing.T) {
	t.Parallel()
	big := "#" + strings.Repeat("x", maxInlineCode) // passed as a file, not as an argument
	cases := []struct {
		name string
		req  OneShot
		want string // stdout: the fake agent prints the program it was given
	}{
		{"python", OneShot{Code: "print(1)"}, "print(1)"},
		{"bash alias", OneShot{Language: "sh", Code: "echo hi"}, "echo hi"},
		{"large program", OneShot{Code: big}, big},
		{"files", OneShot{Code: "open('data/in.txt')", Files: map[string]string{"data/in.txt": "content", "/tmp/t": "tmp"}}, "open('data/in.txt')"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e, rt := newTestEngine(t, Config{})
			resp, err := e.Execute(t.Context(), c.req)
			if err != nil {
				t.Fatal(err)
			}
			if !resp.Success() || resp.ExitCode != 0 || resp.Stdout != c.want || resp.Duration <= 0 {
				t.Fatalf("got success %v, code %d, stdout %.40q, time %v; want success, 0, %.40q, > 0",
					resp.Success(), resp.ExitCode, resp.Stdout, resp.Duration, c.want)
			}
			a := &rt.lastInstance(t).agent
			for name, content := range c.req.Files {
				p, _ := filePath(name)
				var b bytes.Buffer
				if err := a.ReadFile(t.Context(), p, &b, nil); err != nil || b.String() != content {
					t.Errorf("file %s in the sandbox: got %q, %v; want %q", p, b.String(), err, content)
				}
			}
		})
	}
}

// TestExecuteAgentRefusalIs4xx: what the agent refuses in a one-shot reaches the caller as the
// agent's api error, not as an internal one.
func TestExecuteAgentRefusalIs4xx(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{})
	_, err := e.Execute(t.Context(), OneShot{Code: "1", Files: map[string]string{"data": "f", "data/in": "g"}})
	if got, want := api.CodeOf(err), api.CodeInvalidArgument; got != want {
		t.Fatalf("a file beneath a file: got %q (%v), want %q", got, err, want)
	}
}

func TestExecThroughAgent(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{})
	sb, err := e.CreateSandbox(t.Context(), SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("buffered", func(t *testing.T) {
		var out bytes.Buffer
		end, err := sb.Exec(t.Context(), ExecSpec{Cmd: []string{"echo", "a", "b"}, OutputLimit: 100},
			func(ev Event) { out.Write(ev.Stdout) })
		if err != nil {
			t.Fatal(err)
		}
		if got, want := out.String(), "a b\n"; got != want || end.ExitCode != 0 {
			t.Fatalf("got %q, exit %d; want %q, 0", got, end.ExitCode, want)
		}
	})
	t.Run("streamed stdin", func(t *testing.T) {
		var mu sync.Mutex
		var events []string
		var wg sync.WaitGroup
		end, err := sb.Exec(t.Context(), ExecSpec{Cmd: []string{"cat"}, KeepStdin: true}, func(ev Event) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case ev.Pid != 0:
				events = append(events, "start")
				wg.Go(func() {
					if ps, err := sb.Processes(t.Context()); err != nil || len(ps) != 1 || ps[0].Pid != ev.Pid {
						t.Errorf("processes while cat runs: %+v %v", ps, err)
					}
					if err := sb.WriteStdin(t.Context(), ev.Pid, strings.NewReader("hello"), true); err != nil {
						t.Errorf("write stdin: %v", err)
					}
				})
			default:
				events = append(events, "stdout "+string(ev.Stdout))
			}
		})
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"start", "stdout hello"}; !slices.Equal(events, want) || end.ExitCode != 0 {
			t.Fatalf("got events %q, exit %d; want %q, 0", events, end.ExitCode, want)
		}
	})
	t.Run("signal", func(t *testing.T) {
		var wg sync.WaitGroup
		end, err := sb.Exec(t.Context(), ExecSpec{Cmd: []string{"cat"}, KeepStdin: true}, func(ev Event) {
			if ev.Pid != 0 {
				wg.Go(func() {
					if err := sb.Signal(t.Context(), ev.Pid, 15); err != nil {
						t.Errorf("signal: %v", err)
					}
				})
			}
		})
		wg.Wait()
		if err != nil || end.Signal != 15 {
			t.Fatalf("got %+v, %v; want ended by signal 15", end, err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		_, err := sb.Exec(t.Context(), ExecSpec{Cmd: []string{"no-such-command"}}, func(Event) {})
		if !errors.Is(err, api.ErrInvalidArgument) {
			t.Fatalf("unknown command: got %v, want invalid_argument", err)
		}
		if err := sb.Signal(t.Context(), 99999, 9); !errors.Is(err, api.ErrNotFound) {
			t.Fatalf("signal to no process: got %v, want not_found", err)
		}
	})
}

func TestFileRoundTripThroughAgent(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{})
	sb, err := e.CreateSandbox(t.Context(), SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	fi, err := sb.WriteFile(ctx, "notes/a.txt", strings.NewReader("hello"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Path != "/workspace/notes/a.txt" || fi.Size != 5 || fi.Type != "file" {
		t.Fatalf("written: got %+v, want /workspace/notes/a.txt, 5 bytes, a file", fi)
	}
	var b bytes.Buffer
	started := false
	if err := sb.ReadFile(ctx, "/workspace/notes/a.txt", &b, func() { started = true }); err != nil || b.String() != "hello" || !started {
		t.Fatalf("read back: got %q, started %v, %v; want \"hello\", started", b.String(), started, err)
	}
	if _, err := sb.Mkdir(ctx, "notes/sub"); err != nil {
		t.Fatal(err)
	}
	l, err := sb.List(ctx, "notes", 1)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range l {
		names = append(names, f.Name+":"+f.Type)
	}
	if want := []string{"a.txt:file", "sub:dir"}; !slices.Equal(names, want) {
		t.Fatalf("list: got %q, want %q", names, want)
	}
	if err := sb.Remove(ctx, "notes", false); !errors.Is(err, api.ErrInvalidArgument) {
		t.Fatalf("non-recursive remove of a full directory: got %v, want invalid_argument", err)
	}
	if err := sb.Remove(ctx, "notes", true); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Stat(ctx, "notes/a.txt"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("stat after remove: got %v, want not_found", err)
	}
}

func TestSessionCellThroughAgent(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{WheelDirSet: true})
	sb, err := e.CreateSession(t.Context(), SessionSpec{})
	if err != nil {
		t.Fatal(err)
	}
	for i, code := range []string{"x = 1", "x + 1"} {
		r, err := sb.RunCell(t.Context(), code, 0)
		if err != nil {
			t.Fatal(err)
		}
		// The fake interpreter counts its cells: the second cell ran in the same interpreter.
		want := fmt.Sprint(i + 1)
		if !r.Success() || r.Stdout != code || r.Result == nil || *r.Result != want ||
			len(r.Display) != 1 || string(r.Display[0].Data) != want || r.Duration <= 0 {
			t.Fatalf("cell %d: got %+v; want success, stdout %q, result and display %q", i, r, code, want)
		}
	}
	if interrupted, _, err := sb.Interrupt(t.Context()); err != nil || interrupted {
		t.Fatalf("interrupt with nothing running: got %v, %v; want not interrupted", interrupted, err)
	}
	if r, err := sb.Install(t.Context(), InstallSpec{Packages: []string{"six"}}); err != nil || !r.Success() || r.Output != "installed six" {
		t.Fatalf("install: got %+v, %v; want success", r, err)
	}
}
