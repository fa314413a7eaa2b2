// Package fakeagent is an in-memory agent for tests of the engine and the server that need no
// sandbox (and no root): it implements engine.Agent with a map of files, a few commands and a
// REPL that counts its cells. It imports only the agent client's types, not the engine, so the
// engine's own tests can use it.
package fakeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/layout"
)

// Agent is a fake sandbox agent. Its commands, found as the agent finds an executable (any
// other is refused before it starts, as the agent refuses a command not in PATH):
//
//   - python3 and bash print their program (the -c argument, or the file it names) and exit 0;
//   - sh runs its program (the same way) as a tiny shell: commands separated by newlines or
//     ";", words split at spaces (no quoting), a last word ">&2" sends that command's stdout to
//     stderr, an unknown command prints "sh: NAME: not found" and has status 127, exit ends
//     the program, and the status is the last command's;
//   - echo prints its arguments and a newline;
//   - cat prints the files it names, or else its stdin: the Stdin bytes and, with KeepStdin,
//     each chunk WriteStdin sends, as it arrives, until EOF;
//   - seq N prints 1…N, a number a line, in chunks of at most 64 KiB;
//   - sleep N waits N seconds; exit [N] exits with status N; true and false.
//
// A signal ends a running command as it ends a real one: not exited, exit code 128+N. Writes to
// /dev/null are counted (NullBytes) and kept nowhere. Stop makes the agent die with its sandbox.
// Every call counts in Calls, so a test can see that a call reached the agent. The zero value is
// ready to use.
type Agent struct {
	mu      sync.Mutex // guards everything below
	files   map[string][]byte
	modes   map[string]uint32 // of files
	dirs    map[string]bool
	procs   map[int]*proc
	nextPid int
	repl    bool // the interpreter was started
	cells   int
	calls   int
	stop    chan struct{} // closed by Stop
	stopped bool

	null atomic.Int64 // bytes written to /dev/null

	ports ports // what listens "in the sandbox" (Listen)
}

// errGone is what a call to a dead agent gets: a broken connection, not an answer of the agent.
var errGone = errors.New("fakeagent: the agent is gone (connection closed)")

// Calls is how many calls reached the agent.
func (a *Agent) Calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// NullBytes is how many bytes were written to /dev/null.
func (a *Agent) NullBytes() int64 { return a.null.Load() }

// Stop kills the agent, as destroying its sandbox does: running calls and every later call fail
// as a broken connection would.
func (a *Agent) Stop() {
	a.begin()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.stopped {
		a.stopped = true
		close(a.stop)
	}
}

type proc struct {
	p     agentclient.Process
	stdin chan []byte   // closed at EOF; nil unless KeepStdin
	sig   chan int      // a signal to end on
	done  chan struct{} // closed when the process has ended

	wmu    sync.Mutex // serialises WriteStdin calls, so none sends after another closed stdin
	closed bool       // stdin was closed; guarded by wmu
}

// begin counts a call and reports errGone once the agent was stopped.
func (a *Agent) begin() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.files == nil {
		a.files, a.dirs, a.procs = map[string][]byte{}, map[string]bool{"/": true, layout.Workspace: true, layout.Tmp: true}, map[int]*proc{}
		a.modes, a.stop = map[string]uint32{}, make(chan struct{})
	}
	if a.stopped {
		return errGone
	}
	return nil
}

// signalled is how a command reports that a signal ended it.
type signalled int

func (s signalled) Error() string { return fmt.Sprintf("signal %d", int(s)) }

// commands are the programs the fake finds in its PATH.
var commands = []string{"python3", "bash", "sh", "echo", "cat", "seq", "sleep", "exit", "true", "false"}

// Exec runs p as described on Agent.
func (a *Agent) Exec(ctx context.Context, p agentclient.Process, on func(agentclient.Event)) (*agentclient.End, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	if !slices.Contains(commands, p.Cmd) {
		return nil, api.Errorf(api.ErrInvalidArgument, "%s: executable file not found in PATH", p.Cmd)
	}
	a.mu.Lock()
	a.nextPid++
	pid := a.nextPid + 100
	pr := &proc{p: p, sig: make(chan int, 1), done: make(chan struct{})}
	if p.KeepStdin {
		pr.stdin = make(chan []byte, 16)
	}
	a.procs[pid] = pr
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.procs, pid)
		a.mu.Unlock()
		close(pr.done)
	}()
	start := time.Now()
	on(agentclient.Event{Pid: pid})
	r := &run{a: a, ctx: ctx, pr: pr, on: on}
	code, err := r.command(p.Cmd, p.Args)
	end := &agentclient.End{Exited: true}
	var sig signalled
	switch {
	case errors.As(err, &sig):
		end.Exited, end.Signal, code = false, int(sig), 128+int(sig)
	case err != nil:
		return nil, err
	}
	end.ExitCode, end.Duration = code, max(time.Since(start), time.Microsecond)
	return end, nil
}

// run is one process of the fake running.
type run struct {
	a        *Agent
	ctx      context.Context
	pr       *proc
	on       func(agentclient.Event)
	toStderr bool // the current command's stdout is redirected to stderr
}

func (r *run) print(b []byte) {
	if len(b) == 0 {
		return
	}
	b = bytes.Clone(b)
	if r.toStderr {
		r.on(agentclient.Event{Stderr: b})
	} else {
		r.on(agentclient.Event{Stdout: b})
	}
}

// wait blocks until ch is ready, a signal or the process's context ends it, or the agent dies.
func (r *run) wait(ch <-chan []byte, timer <-chan time.Time) ([]byte, bool, error) {
	select {
	case b, ok := <-ch:
		return b, ok, nil
	case <-timer:
		return nil, false, nil
	case sig := <-r.pr.sig:
		return nil, false, signalled(sig)
	case <-r.ctx.Done():
		return nil, false, context.Cause(r.ctx)
	case <-r.a.stop:
		return nil, false, errGone
	}
}

// program is what python3 or bash runs: the -c argument or the file named.
func (r *run) program(args []string) []byte {
	if len(args) == 2 && args[0] == "-c" {
		return []byte(args[1])
	}
	if len(args) == 1 {
		r.a.mu.Lock()
		defer r.a.mu.Unlock()
		return r.a.files[args[0]]
	}
	return nil
}

func (r *run) command(name string, args []string) (int, error) {
	switch name {
	case "python3", "bash":
		r.print(r.program(args))
	case "sh":
		return r.shell(string(r.program(args)))
	case "echo":
		r.print([]byte(strings.Join(args, " ") + "\n"))
	case "cat":
		return r.cat(args)
	case "seq":
		return r.seq(args)
	case "sleep":
		var s float64
		if len(args) != 1 {
			r.on(agentclient.Event{Stderr: []byte("sleep: missing operand\n")})
			return 1, nil
		}
		fmt.Sscan(args[0], &s)
		t := time.NewTimer(time.Duration(s * float64(time.Second)))
		defer t.Stop()
		_, _, err := r.wait(nil, t.C)
		return 0, err
	case "exit":
		code := 0
		if len(args) > 0 {
			fmt.Sscan(args[0], &code)
		}
		return code, nil
	case "false":
		return 1, nil
	}
	return 0, nil // true
}

// shell runs prog as described on Agent.
func (r *run) shell(prog string) (int, error) {
	code := 0
	for _, line := range strings.Split(prog, "\n") {
		for _, stmt := range strings.Split(line, ";") {
			words := strings.Fields(stmt)
			if len(words) == 0 {
				continue
			}
			r.toStderr = words[len(words)-1] == ">&2"
			if r.toStderr {
				words = words[:len(words)-1]
			}
			var err error
			switch {
			case !slices.Contains(commands, words[0]):
				r.on(agentclient.Event{Stderr: []byte("sh: " + words[0] + ": not found\n")})
				code = 127
			case words[0] == "exit":
				code, err = r.command(words[0], words[1:])
				r.toStderr = false
				return code, err
			default:
				code, err = r.command(words[0], words[1:])
			}
			r.toStderr = false
			if err != nil {
				return code, err
			}
		}
	}
	return code, nil
}

func (r *run) cat(files []string) (int, error) {
	code := 0
	for _, f := range files {
		r.a.mu.Lock()
		b, ok := r.a.files[f]
		r.a.mu.Unlock()
		if !ok {
			r.on(agentclient.Event{Stderr: []byte("cat: " + f + ": No such file or directory\n")})
			code = 1
		}
		r.print(b)
	}
	if len(files) > 0 {
		return code, nil
	}
	r.print(r.pr.p.Stdin)
	for r.pr.stdin != nil {
		b, ok, err := r.wait(r.pr.stdin, nil)
		if err != nil || !ok {
			return 0, err
		}
		r.print(b)
	}
	return 0, nil
}

func (r *run) seq(args []string) (int, error) {
	n := 0
	if len(args) != 1 {
		r.on(agentclient.Event{Stderr: []byte("seq: missing operand\n")})
		return 1, nil
	}
	fmt.Sscan(args[0], &n)
	var buf []byte
	for i := 1; i <= n; i++ {
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, '\n')
		if len(buf) > 64<<10-24 || i == n {
			r.print(buf)
			buf = buf[:0]
			if err := r.ctx.Err(); err != nil {
				return 0, context.Cause(r.ctx)
			}
		}
	}
	return 0, nil
}

func (a *Agent) proc(pid int) (*proc, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if pr, ok := a.procs[pid]; ok {
		return pr, nil
	}
	return nil, api.Errorf(api.ErrNotFound, "process %d not found", pid)
}

// WriteStdin passes r to a running process's stdin chunk by chunk, as it arrives.
func (a *Agent) WriteStdin(ctx context.Context, pid int, r io.Reader, eof bool) error {
	pr, err := a.proc(pid)
	if err != nil {
		return err
	}
	pr.wmu.Lock()
	defer pr.wmu.Unlock()
	if pr.stdin == nil || pr.closed {
		return api.Errorf(api.ErrInvalidArgument, "stdin of process %d is closed", pid)
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			select {
			case pr.stdin <- bytes.Clone(buf[:n]):
			case <-pr.done:
				return api.Errorf(api.ErrNotFound, "process %d has exited", pid)
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read input: %w", err)
		}
	}
	if eof {
		pr.closed = true
		close(pr.stdin)
	}
	return nil
}

// Signal ends a running process.
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
	if err := a.begin(); err != nil {
		return nil, err
	}
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
	if err := a.begin(); err != nil {
		return err
	}
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
	if err := a.begin(); err != nil {
		return err
	}
	if p == "/dev/null" {
		if _, err := io.Copy(writerFunc(func(b []byte) (int, error) { a.null.Add(int64(len(b))); return len(b), nil }), r); err != nil {
			return fmt.Errorf("read input: %w", err)
		}
		return nil
	}
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
	a.modes[p] = mode & 0o7777
	return nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

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
		return api.FileInfo{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b)), Mode: a.modes[p]}, true
	}
	if p == "/dev/null" {
		return api.FileInfo{Name: "null", Path: p, Type: "file", Mode: 0o666}, true
	}
	if a.dirs[p] {
		return api.FileInfo{Name: path.Base(p), Path: p, Type: "dir", Mode: 0o755}, true
	}
	return api.FileInfo{}, false
}

// Stat describes p.
func (a *Agent) Stat(ctx context.Context, p string) (api.FileInfo, error) {
	if err := a.begin(); err != nil {
		return api.FileInfo{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if fi, ok := a.infoLocked(p); ok {
		return fi, nil
	}
	return api.FileInfo{}, api.Errorf(api.ErrNotFound, "%s: no such file or directory", p)
}

// List lists the entries directly in p (any depth lists one level).
func (a *Agent) List(ctx context.Context, p string, depth int) ([]api.FileInfo, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
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
	if err := a.begin(); err != nil {
		return api.FileInfo{}, err
	}
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
	if err := a.begin(); err != nil {
		return err
	}
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
			delete(a.modes, name)
			delete(a.dirs, name)
		}
	}
	delete(a.files, p)
	delete(a.modes, p)
	delete(a.dirs, p)
	return nil
}

// ReplStart starts the interpreter.
func (a *Agent) ReplStart(ctx context.Context, env map[string]string, cwd string) error {
	if err := a.begin(); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.repl = true
	return nil
}

// ReplRun answers a cell with its code as stdout and, as its result, how many cells the
// interpreter has run, so a test can see that cells share one interpreter. Like the real
// driver, it does not count an empty cell (the warm pool's warm-up).
func (a *Agent) ReplRun(ctx context.Context, code string, timeout time.Duration, outputLimit int64) (*agentclient.Cell, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.repl {
		return nil, api.Errorf(api.ErrInvalidArgument, "no interpreter running")
	}
	if strings.TrimSpace(code) != "" {
		a.cells++
	}
	res := fmt.Sprint(a.cells)
	return &agentclient.Cell{Stdout: []byte(code), Result: &res, ExecutionTime: time.Millisecond,
		Display: []agentclient.Display{{MIME: "text/plain", Data: []byte(res)}}}, nil
}

// ReplInterrupt reports that nothing was running.
func (a *Agent) ReplInterrupt(ctx context.Context) (interrupted, restarted bool, err error) {
	if err := a.begin(); err != nil {
		return false, false, err
	}
	return false, false, nil
}

// ReplInstall reports every package installed.
func (a *Agent) ReplInstall(ctx context.Context, packages []string, src agentclient.InstallSource, timeout time.Duration) (*agentclient.Installed, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	return &agentclient.Installed{Output: []byte("installed " + strings.Join(packages, " "))}, nil
}
