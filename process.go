package airlock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
)

// MaxBufferedOutput is how many bytes of one output stream a [Process] keeps while nobody reads
// them. Past it the rest of that stream is dropped, Wait's result has Truncated set, and the
// stream's reader returns [ErrOutputOverflow] once it has returned what was kept.
const MaxBufferedOutput = 64 << 20

const ndjson = "application/x-ndjson"

// Process is a command running in a sandbox, started by [Sandbox.Exec] or [Sandbox.ExecWith].
// Its output arrives over one streamed HTTP response that a goroutine owned by the Process
// reads until the command ends; that goroutine never blocks on you, so Wait returns even if
// you never read Stdout or Stderr (output is buffered, up to [MaxBufferedOutput] per stream).
//
// The methods are safe for concurrent use. Stdin, Stdout and Stderr are each for one goroutine
// at a time.
type Process struct {
	// Stdin writes to the command's standard input. Bytes go out as you write them, over one
	// streamed request opened by the first Write; Close sends end-of-file and returns once the
	// daemon has closed the command's stdin. Programs that read stdin until EOF (cat, python
	// without -c) wait until you Close it. When the exec was started without StdinOpen, Write
	// fails and Close does nothing.
	Stdin io.WriteCloser
	// Stdout and Stderr read the command's output as it arrives and return io.EOF after the
	// command exited (or the error that ended the exec). Output travels as UTF-8 text; bytes
	// that are not valid UTF-8 arrive as U+FFFD. Use [Sandbox.ReadFile] for binary results.
	Stdout, Stderr io.Reader

	sb             *Sandbox
	ctx            context.Context // the exec's; bounds everything the process does
	stdin          *stdinWriter
	stdout, stderr *outputBuffer
	started        chan struct{} // closed when pid is set
	done           chan struct{} // closed when result, err are set and the stream is closed

	// Written by the reader goroutine before started or done is closed; read after.
	pid    int
	result *api.ExecResult
	err    error
}

// Exec starts cmd (program and arguments) with stdin open, streaming its output, and returns
// once the daemon reports the process started. ctx bounds the whole process: when it is
// canceled before the command exits, the process is killed (best effort) and Wait returns
// ctx's error. Close p.Stdin if the command reads stdin to its end.
func (s *Sandbox) Exec(ctx context.Context, cmd ...string) (*Process, error) {
	return s.ExecWith(ctx, api.ExecRequest{Cmd: cmd, StdinOpen: true})
}

// ExecWith is Exec with every exec option. req is sent as given: with StdinOpen false the
// command's stdin holds req.Stdin and then end-of-file, and Process.Stdin cannot be written;
// with StdinOpen true req.Stdin is written first and stdin stays open for Process.Stdin.
func (s *Sandbox) ExecWith(ctx context.Context, req api.ExecRequest) (*Process, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	hreq, err := s.c.newRequest(ctx, http.MethodPost, s.path("/exec"), nil, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", ndjson)
	resp, err := s.c.send(hreq)
	if err != nil {
		return nil, err
	}
	p := &Process{
		sb:      s,
		ctx:     ctx,
		stdout:  newOutputBuffer(),
		stderr:  newOutputBuffer(),
		started: make(chan struct{}),
		done:    make(chan struct{}),
	}
	p.Stdout, p.Stderr = p.stdout, p.stderr
	p.stdin = &stdinWriter{p: p, open: req.StdinOpen}
	p.stdin.ctx, p.stdin.cancel = context.WithCancel(ctx)
	p.Stdin = p.stdin
	go p.read(resp)
	select {
	case <-p.started:
		return p, nil
	case <-p.done:
		if p.pid == 0 {
			return nil, p.err
		}
		return p, nil
	}
}

// read consumes the exec's events until exit or error, then releases everything the Process
// holds and closes done. It is the only writer of pid, result and err.
func (p *Process) read(resp *http.Response) {
	defer resp.Body.Close()
	next := eventReader(resp)
	var (
		res       *api.ExecResult
		err       error
		truncated bool
	)
	for res == nil && err == nil {
		ev, rerr := next()
		if rerr != nil {
			switch {
			case p.ctx.Err() != nil:
				err = fmt.Errorf("exec: %w", context.Cause(p.ctx))
				p.killAfterCancel()
			case errors.Is(rerr, io.EOF):
				err = fmt.Errorf("exec: stream ended before the process exited: %w", io.ErrUnexpectedEOF)
			default:
				err = fmt.Errorf("exec: read stream: %w", rerr)
			}
			break
		}
		switch ev.Type {
		case api.EventStart:
			if p.pid == 0 {
				p.pid = ev.Pid
				close(p.started)
			}
		case api.EventStdout:
			truncated = !p.stdout.write(ev.Data) || truncated
		case api.EventStderr:
			truncated = !p.stderr.write(ev.Data) || truncated
		case api.EventExit:
			code := -1
			if ev.ExitCode != nil {
				code = *ev.ExitCode
			}
			if p.pid == 0 {
				p.pid = ev.Pid
			}
			res = &api.ExecResult{ExitCode: code, ExecutionTime: ev.ExecutionTime, TimedOut: ev.TimedOut,
				Truncated: truncated, Pid: p.pid}
		case api.EventError:
			if ev.Error == nil || ev.Error.Code == "" {
				err = &api.Error{Code: api.CodeInternal, Message: "exec failed"}
			} else {
				err = &api.Error{Code: ev.Error.Code, Message: ev.Error.Message}
			}
		}
		// Other types are from a newer daemon; skip them.
	}
	p.stdin.stop()
	outErr := error(io.EOF)
	if err != nil {
		outErr = err
	}
	p.stdout.close(outErr)
	p.stderr.close(outErr)
	p.result, p.err = res, err
	close(p.done)
}

// killAfterCancel kills the process when the caller gave up on it, like exec.CommandContext.
func (p *Process) killAfterCancel() {
	if p.pid == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 5*time.Second)
	defer cancel()
	p.signal(ctx, 9)
}

// eventReader returns a function yielding the exec's events. A daemon that answered with a
// plain JSON ExecResult (it ignored Accept) is turned into the same events.
func eventReader(resp *http.Response) func() (api.ExecEvent, error) {
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/json" {
		var r api.ExecResult
		err := json.NewDecoder(resp.Body).Decode(&r)
		evs := []api.ExecEvent{
			{Type: api.EventStart, Pid: r.Pid},
			{Type: api.EventStdout, Data: r.Stdout},
			{Type: api.EventStderr, Data: r.Stderr},
			{Type: api.EventExit, Pid: r.Pid, ExitCode: &r.ExitCode, TimedOut: r.TimedOut, ExecutionTime: r.ExecutionTime},
		}
		return func() (api.ExecEvent, error) {
			if err != nil {
				return api.ExecEvent{}, err
			}
			ev := evs[0]
			evs = evs[1:]
			return ev, nil
		}
	}
	dec := json.NewDecoder(resp.Body)
	return func() (api.ExecEvent, error) {
		var ev api.ExecEvent
		err := dec.Decode(&ev)
		return ev, err
	}
}

// Pid is the process id inside the sandbox.
func (p *Process) Pid() int { return p.pid }

// Wait waits for the command to exit and returns its exit status: ExitCode (128+N after signal
// N, 124 after its timeout), TimedOut, ExecutionTime, Pid, and Truncated when output was
// dropped unread. Stdout and Stderr of the result are empty: the output is in p.Stdout and
// p.Stderr, which stay readable after Wait. A non-zero exit is not an error; an exec that ended
// without an exit is, e.g. [IsGone] when the sandbox was terminated under it. Wait may be
// called any number of times.
func (p *Process) Wait() (*api.ExecResult, error) {
	<-p.done
	return p.result, p.err
}

// Poll reports whether the command has finished and, if so, its exit code (-1 when the exec
// ended with an error instead of an exit; Wait returns it).
func (p *Process) Poll() (exitCode int, done bool) {
	select {
	case <-p.done:
		if p.result == nil {
			return -1, true
		}
		return p.result.ExitCode, true
	default:
		return 0, false
	}
}

// Kill sends SIGKILL to the process. See Signal.
func (p *Process) Kill() error { return p.Signal(9) }

// Signal sends signal sig (e.g. 2 SIGINT, 15 SIGTERM) to the process. It returns
// os.ErrProcessDone if the process has already finished. The request keeps the exec context's
// values but not its cancellation, so it also works after a cancel, and gives up after 30 s.
func (p *Process) Signal(sig int) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 30*time.Second)
	defer cancel()
	return p.signal(ctx, sig)
}

func (p *Process) signal(ctx context.Context, sig int) error {
	return p.sb.c.do(ctx, http.MethodPost, p.procPath("/signal"), api.SignalRequest{Signal: sig}, nil)
}

func (p *Process) procPath(suffix string) string {
	return p.sb.path("/processes/" + strconv.Itoa(p.pid) + suffix)
}

// outputBuffer is an in-memory pipe that never blocks its writer: the event reader appends,
// the user reads. Bytes past MaxBufferedOutput unread are dropped.
type outputBuffer struct {
	mu      sync.Mutex
	cond    sync.Cond // L is &mu; signaled on write and close
	buf     bytes.Buffer
	dropped bool
	closed  bool
	err     error // returned once buf is drained after close
}

var _ io.Reader = (*outputBuffer)(nil)

func newOutputBuffer() *outputBuffer {
	b := &outputBuffer{}
	b.cond.L = &b.mu
	return b
}

// write appends s, or drops it (and everything after) when too much is unread; it reports
// whether s was kept.
func (b *outputBuffer) write(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped || b.buf.Len()+len(s) > MaxBufferedOutput {
		b.dropped = true
		b.cond.Broadcast()
		return false
	}
	b.buf.WriteString(s)
	b.cond.Broadcast()
	return true
}

func (b *outputBuffer) close(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed, b.err = true, err
	b.cond.Broadcast()
}

// Read implements io.Reader.
func (b *outputBuffer) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.buf.Len() == 0 && !b.closed && !b.dropped {
		b.cond.Wait()
	}
	switch {
	case b.buf.Len() > 0:
		return b.buf.Read(p)
	case b.dropped:
		return 0, ErrOutputOverflow
	default:
		return 0, b.err
	}
}

// stdinWriter is Process.Stdin. The first Write opens one long-lived POST
// …/processes/{pid}/stdin?eof=true whose chunked body is an io.Pipe: each Write is sent as it
// is made, and Close ends the body, so the daemon closes the process's stdin after the last
// byte. Its request goroutine is owned by the Process, which stops it when the exec ends.
type stdinWriter struct {
	p      *Process
	open   bool // the exec asked for StdinOpen
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the request goroutine

	mu      sync.Mutex
	pw      *io.PipeWriter // nil until the first Write
	closed  bool
	stopped bool // the exec has ended: start no request

	done chan struct{} // closed when the request has finished; err is then set
	err  error
}

var _ io.WriteCloser = (*stdinWriter)(nil)

var errStdinNotOpen = errors.New("airlock: stdin is not open: start the exec with StdinOpen")

// Write implements io.Writer. It returns once the transport has taken b (not once the process
// has read it).
func (w *stdinWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	switch {
	case !w.open:
		w.mu.Unlock()
		return 0, errStdinNotOpen
	case w.closed:
		w.mu.Unlock()
		return 0, os.ErrClosed
	case w.pw == nil:
		if w.stopped {
			w.mu.Unlock()
			return 0, fmt.Errorf("write stdin: process exited: %w", io.ErrClosedPipe)
		}
		w.start()
	}
	pw := w.pw
	w.mu.Unlock()
	n, err := pw.Write(b)
	if err != nil {
		<-w.done
		if w.err != nil && !w.isStopped() {
			return n, fmt.Errorf("write stdin: %w", w.err)
		}
		return n, fmt.Errorf("write stdin: stream ended: %w", io.ErrClosedPipe)
	}
	return n, nil
}

// start opens the streaming request; w.mu is held.
func (w *stdinWriter) start() {
	pr, pw := io.Pipe()
	w.pw, w.done = pw, make(chan struct{})
	w.wg.Go(func() {
		err := w.post(pr, -1)
		pr.CloseWithError(io.ErrClosedPipe) // unblock writers if the request ended early
		w.err = err
		close(w.done)
	})
}

// Close implements io.Closer: it sends end-of-file and waits for the daemon to close the
// process's stdin. Closing after the process exited, or twice, returns nil.
func (w *stdinWriter) Close() error {
	w.mu.Lock()
	if !w.open || w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	pw, stopped := w.pw, w.stopped
	w.mu.Unlock()
	var err error
	if pw == nil {
		if stopped {
			return nil
		}
		err = w.post(http.NoBody, 0) // nothing was written: only close stdin
	} else {
		pw.Close()
		<-w.done
		err = w.err
	}
	if err == nil || IsNotFound(err) || IsGone(err) || w.isStopped() {
		return nil // the process is gone, so is its stdin; Wait says why
	}
	return fmt.Errorf("close stdin: %w", err)
}

func (w *stdinWriter) post(body io.Reader, length int64) error {
	req, err := w.p.sb.c.newRequest(w.ctx, http.MethodPost, w.p.procPath("/stdin"), url.Values{"eof": {"true"}}, body)
	if err != nil {
		return err
	}
	req.ContentLength = length // -1: chunked, sent as written, without the transport probing the body
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := w.p.sb.c.send(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return nil
}

// stop ends an unfinished stdin request (the process is gone) and waits for its goroutine.
func (w *stdinWriter) stop() {
	w.mu.Lock()
	w.stopped = true // no new request goroutine after this, so wg.Wait is final
	w.mu.Unlock()
	w.cancel()
	w.wg.Wait()
}

func (w *stdinWriter) isStopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopped
}
