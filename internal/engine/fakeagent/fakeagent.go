// Package fakeagent is an in-memory agent for tests of the engine and the server that need no
// sandbox (and no root): it implements engine.Agent with a map of files, a few commands and a
// REPL that counts its cells. It imports only the agent client's types, not the engine, so the
// engine's own tests can use it.
package fakeagent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/layout"
)

// Agent is a fake sandbox agent. Its commands:
//
//   - python3 and bash print their program (the -c argument, or the file it names) and exit 0;
//   - echo prints its arguments and a newline;
//   - cat prints its stdin; with KeepStdin it prints each chunk WriteStdin sends, until EOF;
//   - exit N exits with status N;
//
// and it refuses any other, as the agent refuses a command it cannot find. Every call counts in
// Calls, so a test can see that a call reached the agent. The zero value is ready to use.
type Agent struct {
	mu      sync.Mutex // guards everything below
	files   map[string][]byte
	dirs    map[string]bool
	procs   map[int]*proc
	nextPid int
	repl    bool // the interpreter was started
	cells   int
	calls   int
}

// Calls is how many calls reached the agent.
func (a *Agent) Calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

type proc struct {
	p     agentclient.Process
	stdin chan []byte // closed at EOF; nil unless KeepStdin
	sig   chan int    // a signal to end on
}

func (a *Agent) begin() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.files == nil {
		a.files, a.dirs, a.procs = map[string][]byte{}, map[string]bool{"/": true, layout.Workspace: true, layout.Tmp: true}, map[int]*proc{}
	}
}

// Exec runs p as described on Agent.
func (a *Agent) Exec(ctx context.Context, p agentclient.Process, on func(agentclient.Event)) (*agentclient.End, error) {
	a.begin()
	var out []byte
	code := 0
	switch p.Cmd {
	case "python3", "bash":
		if len(p.Args) == 2 && p.Args[0] == "-c" {
			out = []byte(p.Args[1])
		} else if len(p.Args) == 1 {
			a.mu.Lock()
			out = a.files[p.Args[0]]
			a.mu.Unlock()
		}
	case "echo":
		out = []byte(strings.Join(p.Args, " ") + "\n")
	case "cat":
		out = p.Stdin
	case "exit":
		if len(p.Args) != 1 {
			return nil, api.Errorf(api.ErrInvalidArgument, "exit takes a status")
		}
		fmt.Sscan(p.Args[0], &code)
	default:
		return nil, api.Errorf(api.ErrInvalidArgument, "%s: command not found", p.Cmd)
	}
	a.mu.Lock()
	a.nextPid++
	pid := a.nextPid + 100
	pr := &proc{p: p, sig: make(chan int, 1)}
	if p.KeepStdin {
		pr.stdin = make(chan []byte, 16)
	}
	a.procs[pid] = pr
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.procs, pid)
		a.mu.Unlock()
	}()
	start := time.Now()
	on(agentclient.Event{Pid: pid})
	end := &agentclient.End{Exited: true}
	if len(out) > 0 {
		on(agentclient.Event{Stdout: out})
	}
	if pr.stdin != nil && p.Cmd == "cat" {
	loop:
		for {
			select {
			case b, ok := <-pr.stdin:
				if !ok {
					break loop
				}
				on(agentclient.Event{Stdout: b})
			case sig := <-pr.sig:
				end.Exited, end.Signal, code = false, sig, -1
				break loop
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
	}
	end.ExitCode, end.Duration = code, max(time.Since(start), time.Microsecond)
	return end, nil
}

func (a *Agent) proc(pid int) (*proc, error) {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	if pr, ok := a.procs[pid]; ok {
		return pr, nil
	}
	return nil, api.Errorf(api.ErrNotFound, "process %d not found", pid)
}

// WriteStdin sends r to a running cat.
func (a *Agent) WriteStdin(ctx context.Context, pid int, r io.Reader, eof bool) error {
	pr, err := a.proc(pid)
	if err != nil {
		return err
	}
	if pr.stdin == nil {
		return api.Errorf(api.ErrInvalidArgument, "stdin of process %d is closed", pid)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read input: %w", err)
	}
	if len(b) > 0 {
		pr.stdin <- b
	}
	if eof {
		close(pr.stdin)
	}
	return nil
}

// Signal ends a running cat.
func (a *Agent) Signal(ctx context.Context, pid, sig int) error {
	pr, err := a.proc(pid)
	if err != nil {
		return err
	}
	select {
	case pr.sig <- sig:
	default:
	}
	return nil
}

// Resize accepts any size for a running process.
func (a *Agent) Resize(ctx context.Context, pid int, cols, rows uint16) error {
	_, err := a.proc(pid)
	return err
}

// Processes lists the running processes.
func (a *Agent) Processes(ctx context.Context) ([]api.ProcessInfo, error) {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []api.ProcessInfo{}
	for pid, pr := range a.procs {
		out = append(out, api.ProcessInfo{Pid: pid, Tag: pr.p.Tag, Cmd: append([]string{pr.p.Cmd}, pr.p.Args...)})
	}
	slices.SortFunc(out, func(x, y api.ProcessInfo) int { return x.Pid - y.Pid })
	return out, nil
}

// ReadFile copies a file to w.
func (a *Agent) ReadFile(ctx context.Context, p string, w io.Writer, started func()) error {
	a.begin()
	a.mu.Lock()
	b, ok := a.files[p]
	a.mu.Unlock()
	if !ok {
		return api.Errorf(api.ErrNotFound, "%s: no such file", p)
	}
	if started != nil {
		started()
	}
	_, err := w.Write(b)
	return err
}

// WriteFile stores r at p, creating its parents; a parent that is a file is refused.
func (a *Agent) WriteFile(ctx context.Context, p string, r io.Reader, mode uint32) error {
	a.begin()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return fmt.Errorf("read input: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dirs[p] {
		return api.Errorf(api.ErrInvalidArgument, "%s is a directory", p)
	}
	if err := a.mkdirLocked(path.Dir(p)); err != nil {
		return err
	}
	a.files[p] = buf.Bytes()
	return nil
}

func (a *Agent) mkdirLocked(p string) error {
	for d := p; d != "/"; d = path.Dir(d) {
		if _, ok := a.files[d]; ok {
			return api.Errorf(api.ErrInvalidArgument, "%s is not a directory", d)
		}
	}
	for d := p; d != "/"; d = path.Dir(d) {
		a.dirs[d] = true
	}
	return nil
}

func (a *Agent) infoLocked(p string) (api.FileInfo, bool) {
	if b, ok := a.files[p]; ok {
		return api.FileInfo{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b)), Mode: 0o644}, true
	}
	if a.dirs[p] {
		return api.FileInfo{Name: path.Base(p), Path: p, Type: "dir", Mode: 0o755}, true
	}
	return api.FileInfo{}, false
}

// Stat describes p.
func (a *Agent) Stat(ctx context.Context, p string) (api.FileInfo, error) {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	if fi, ok := a.infoLocked(p); ok {
		return fi, nil
	}
	return api.FileInfo{}, api.Errorf(api.ErrNotFound, "%s: no such file or directory", p)
}

// List lists the entries directly in p (any depth lists one level).
func (a *Agent) List(ctx context.Context, p string, depth int) ([]api.FileInfo, error) {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.dirs[p] {
		return nil, api.Errorf(api.ErrNotFound, "%s: no such directory", p)
	}
	out := []api.FileInfo{}
	for _, name := range slices.Sorted(a.namesLocked()) {
		if name != p && path.Dir(name) == p {
			fi, _ := a.infoLocked(name)
			out = append(out, fi)
		}
	}
	return out, nil
}

func (a *Agent) namesLocked() func(func(string) bool) {
	return func(yield func(string) bool) {
		for n := range a.files {
			if !yield(n) {
				return
			}
		}
		for n := range a.dirs {
			if !yield(n) {
				return
			}
		}
	}
}

// MakeDir creates p and its parents.
func (a *Agent) MakeDir(ctx context.Context, p string) (api.FileInfo, error) {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.mkdirLocked(p); err != nil {
		return api.FileInfo{}, err
	}
	fi, _ := a.infoLocked(p)
	return fi, nil
}

// Remove deletes p; a directory with entries only when recursive.
func (a *Agent) Remove(ctx context.Context, p string, recursive bool) error {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.infoLocked(p); !ok {
		return api.Errorf(api.ErrNotFound, "%s: no such file or directory", p)
	}
	for name := range a.namesLocked() {
		if strings.HasPrefix(name, p+"/") {
			if !recursive {
				return api.Errorf(api.ErrInvalidArgument, "%s: directory not empty", p)
			}
			delete(a.files, name)
			delete(a.dirs, name)
		}
	}
	delete(a.files, p)
	delete(a.dirs, p)
	return nil
}

// ReplStart starts the interpreter.
func (a *Agent) ReplStart(ctx context.Context, env map[string]string, cwd string) error {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.repl = true
	return nil
}

// ReplRun answers a cell with its code as stdout and, as its result, how many cells the
// interpreter has run, so a test can see that cells share one interpreter.
func (a *Agent) ReplRun(ctx context.Context, code string, timeout time.Duration, outputLimit int64) (*agentclient.Cell, error) {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.repl {
		return nil, api.Errorf(api.ErrInvalidArgument, "no interpreter running")
	}
	a.cells++
	res := fmt.Sprint(a.cells)
	return &agentclient.Cell{Stdout: []byte(code), Result: &res, ExecutionTime: time.Millisecond,
		Display: []agentclient.Display{{MIME: "text/plain", Data: []byte(res)}}}, nil
}

// ReplInterrupt reports that nothing was running.
func (a *Agent) ReplInterrupt(ctx context.Context) (interrupted, restarted bool, err error) {
	a.begin()
	return false, false, nil
}

// ReplInstall reports every package installed.
func (a *Agent) ReplInstall(ctx context.Context, packages []string, findLinks string, timeout time.Duration) (*agentclient.Installed, error) {
	a.begin()
	return &agentclient.Installed{Output: []byte("installed " + strings.Join(packages, " "))}, nil
}
