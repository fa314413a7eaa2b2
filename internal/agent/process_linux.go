package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/layout"
)

// procSpec is one process to start in the sandbox.
type procSpec struct {
	Cmd         string
	Args        []string
	Env         map[string]string
	Dir         string
	Tag         string
	Stdin       []byte // written to stdin, then stdin is closed (unless KeepStdin)
	KeepStdin   bool   // stdin stays open for SendInput/StreamInput
	Timeout     time.Duration
	OutputLimit int64 // bytes per stream; 0 = unlimited
	KillTree    bool  // one-shot: when the process ends, kill every process in the sandbox
	UID, GID    int
	PTY         *winSize // run on a new terminal of this size; output arrives as Pty events
}

// winSize is a terminal size.
type winSize struct{ Cols, Rows uint16 }

// event is one thing that happened to a process; exactly one field is set.
type event struct {
	Stdout, Stderr, Pty []byte
	End                 *endInfo
}

type endInfo struct {
	ExitCode        int
	Signal          int
	Exited          bool
	Status          string
	TimedOut        bool
	StdoutTruncated bool
	StderrTruncated bool
	Duration        time.Duration
	Err             string
}

// proc is a running process and its output pumps.
type proc struct {
	pid   int
	spec  procSpec
	start time.Time
	stdin *os.File // nil unless KeepStdin; the terminal's master side with a PTY
	pty   *os.File // the terminal's master side, or nil

	stdinMu sync.Mutex // serializes stdin writes and close

	mu       sync.Mutex // guards subs, ended and timedOut
	subs     []*sub
	ended    *endInfo
	timedOut bool
}

// sub is one subscriber to a process's events. The pumps block on ch (backpressure) until the
// subscriber leaves, which it signals by closing gone; a departed subscriber never wedges them.
type sub struct {
	ch   chan event
	gone chan struct{}
	once sync.Once
}

func newSub() *sub { return &sub{ch: make(chan event, 64), gone: make(chan struct{})} }

// leave detaches the subscriber; safe to call more than once.
func (s *sub) leave() { s.once.Do(func() { close(s.gone) }) }

// baseEnv is the environment of every process unless a request overrides it.
func (a *Agent) baseEnv() map[string]string {
	env := map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, kv := range a.cfg.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	env["LANG"], env["HOME"] = "C.UTF-8", layout.Workspace
	return env
}

// startProc forks and execs spec as the sandbox user and starts its output pumps. Events go to
// the subscriber channel returned (buffered; the pumps block on a full channel, which is the
// backpressure for output under the cap — output past the cap is discarded without blocking).
func (a *Agent) startProc(spec procSpec) (*proc, *sub, error) {
	env := a.baseEnv()
	for k, v := range spec.Env {
		env[k] = v
	}
	envv := make([]string, 0, len(env))
	for k, v := range env {
		envv = append(envv, k+"="+v)
	}
	path, err := lookPath(spec.Cmd, env["PATH"])
	if err != nil {
		return nil, nil, err
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/workspace"
	}
	if err := a.reserve(); err != nil {
		return nil, nil, err
	}
	a.startMu.Lock()
	defer a.startMu.Unlock()
	reserved := true
	defer func() {
		if reserved {
			a.release()
		}
	}()
	if spec.PTY != nil {
		p, s, err := a.startPTY(spec, path, envv, dir)
		reserved = err != nil
		return p, s, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	var inR, inW *os.File
	if spec.KeepStdin || len(spec.Stdin) > 0 {
		if inR, inW, err = os.Pipe(); err != nil {
			outR.Close()
			outW.Close()
			errR.Close()
			errW.Close()
			return nil, nil, err
		}
	} else if inR, err = os.Open("/dev/null"); err != nil {
		return nil, nil, err
	}
	uid, gid := spec.UID, spec.GID
	if uid == 0 {
		uid, gid = a.cfg.UID, a.cfg.GID
	}
	attr := &syscall.ProcAttr{
		Dir:   dir,
		Env:   envv,
		Files: []uintptr{inR.Fd(), outW.Fd(), errW.Fd()},
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
			Setsid:     true,
		},
	}
	a.intoUserCgroup(attr.Sys)
	argv := append([]string{spec.Cmd}, spec.Args...)
	p := &proc{spec: spec}
	first := newSub()
	p.subs = []*sub{first}
	pid, exitc, err := a.reaper.spawn(func() (int, error) {
		p.start = time.Now()
		return syscall.ForkExec(path, argv, attr)
	})
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if inW != nil {
			inW.Close()
		}
		return nil, nil, fmt.Errorf("start %s: %w", spec.Cmd, err)
	}
	p.pid = pid
	if spec.KeepStdin {
		p.stdin = inW
	} else if inW != nil {
		a.procsWG.Go(func() {
			inW.Write(spec.Stdin)
			inW.Close()
		})
	}
	a.track(p)
	reserved = false // released by run when the process has ended
	a.procsWG.Go(func() { a.run(p, exitc, outR, errR) })
	return p, first, nil
}

// run pumps output, enforces the timeout and reports the end.
func (a *Agent) run(p *proc, exitc <-chan exitInfo, outR, errR *os.File) {
	var wg sync.WaitGroup
	var outTrunc, errTrunc bool
	wg.Go(func() { outTrunc = p.pump(outR, p.spec.OutputLimit, streamStdout) })
	if errR != nil {
		wg.Go(func() { errTrunc = p.pump(errR, p.spec.OutputLimit, streamStderr) })
	}

	var timeout <-chan time.Time
	if p.spec.Timeout > 0 {
		t := time.NewTimer(p.spec.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var info exitInfo
	select {
	case info = <-exitc:
	case <-timeout:
		p.mu.Lock()
		p.timedOut = true
		p.mu.Unlock()
		p.kill()
		info = <-exitc
	}
	dur := time.Since(p.start)
	if p.spec.KillTree {
		// One-shot: nothing the program left behind (daemons, setsid grandchildren) outlives it.
		unix.Kill(-1, unix.SIGKILL)
	}
	// Straggling output: a background child may still hold the pipes. Give it a moment, then
	// stop reading (WaitDelay semantics) so a detached grandchild cannot hang the exec.
	pumped := make(chan struct{})
	go func() { wg.Wait(); close(pumped) }()
	select {
	case <-pumped:
	case <-time.After(200 * time.Millisecond):
		outR.SetReadDeadline(time.Now())
		if errR != nil {
			errR.SetReadDeadline(time.Now())
		}
		<-pumped
	}
	outR.Close()
	if errR != nil {
		errR.Close()
	}
	if p.stdin != nil {
		p.closeStdin()
	}
	ws := info.status
	end := &endInfo{Duration: dur, StdoutTruncated: outTrunc, StderrTruncated: errTrunc}
	p.mu.Lock()
	end.TimedOut = p.timedOut
	p.mu.Unlock()
	switch {
	case ws.Exited():
		end.Exited, end.ExitCode = true, ws.ExitStatus()
		end.Status = fmt.Sprintf("exit status %d", end.ExitCode)
	case ws.Signaled():
		end.Signal = int(ws.Signal())
		end.ExitCode = 128 + end.Signal
		end.Status = "signal: " + ws.Signal().String()
	}
	a.untrack(p)
	a.release()
	p.finish(end)
}

// pump copies one stream to the subscribers up to limit bytes, then drains and discards the
// rest so the writer is never blocked by the cap. It reports whether output was cut.
// Output streams a pump reads.
const (
	streamStdout = iota
	streamStderr
	streamPTY
)

func (p *proc) pump(r *os.File, limit int64, stream int) (truncated bool) {
	buf := make([]byte, 64<<10)
	var sent int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if limit > 0 && sent+int64(n) > limit {
				chunk = chunk[:max(limit-sent, 0)]
				truncated = true
			}
			if len(chunk) > 0 {
				sent += int64(len(chunk))
				b := append([]byte(nil), chunk...)
				switch stream {
				case streamStdout:
					p.publish(event{Stdout: b})
				case streamStderr:
					p.publish(event{Stderr: b})
				default:
					p.publish(event{Pty: b})
				}
			}
		}
		if err != nil {
			return truncated
		}
	}
}

func (p *proc) publish(ev event) {
	p.mu.Lock()
	subs := p.subs
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.gone:
		}
	}
}

// subscribe adds a subscriber to a running process; ok is false if it already ended, in which
// case end is returned.
func (p *proc) subscribe() (s *sub, end *endInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended != nil {
		return nil, p.ended
	}
	s = newSub()
	p.subs = append(p.subs, s)
	return s, nil
}

func (p *proc) finish(end *endInfo) {
	p.mu.Lock()
	p.ended = end
	subs := p.subs
	p.subs = nil
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- event{End: end}:
		case <-s.gone:
		}
		close(s.ch)
	}
}

// kill SIGKILLs the process's session (its process group; Setsid made pid the pgid).
func (p *proc) kill() {
	unix.Kill(-p.pid, unix.SIGKILL)
	unix.Kill(p.pid, unix.SIGKILL)
}

func (p *proc) signal(sig syscall.Signal) error {
	if err := unix.Kill(-p.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

func (p *proc) writeStdin(b []byte) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return errors.New("stdin is closed or was not kept open")
	}
	_, err := p.stdin.Write(b)
	return err
}

func (p *proc) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.pty != nil {
		// A terminal has no end of input; send the EOF character (^D), as a user would.
		p.stdin.Write([]byte{4})
		return
	}
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
}

// drain consumes a subscription until its end event, for callers that only want the result.
func drain(ctx context.Context, s *sub, w func(event)) (*endInfo, error) {
	defer s.leave()
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				return nil, io.ErrUnexpectedEOF
			}
			if ev.End != nil {
				return ev.End, nil
			}
			w(ev)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// lookPath resolves cmd against the sandbox PATH, as execvp would.
func lookPath(cmd, pathEnv string) (string, error) {
	if cmd == "" {
		return "", errors.New("empty command")
	}
	if strings.Contains(cmd, "/") {
		return cmd, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		p := filepath.Join(dir, cmd)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: executable file not found in PATH", cmd)
}
