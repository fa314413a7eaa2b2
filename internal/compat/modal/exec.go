package modal

import (
	"bytes"
	"context"
	"errors"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// execution is one command started through the router (TaskExecStart) or a sandbox's
// entrypoint: its output kept offset-addressable (clients read lazily, after the exit too,
// and reopen at the byte count they have), its stdin, and its end.
type execution struct {
	mu      sync.Mutex    // guards everything below
	out     [2][]byte     // stdout, stderr; capped at the engine's output limit by the agent
	changed chan struct{} // closed and replaced whenever out or done changes
	done    bool
	code    int32
	signal  int32 // set instead of code when a signal ended it
	// stdin: write sends bytes to the process (nil until it has started); written counts the
	// bytes taken, closed says eof was sent.
	write      func(ctx context.Context, b []byte, eof bool) error
	ready      chan struct{} // closed once write is set or the start failed
	written    uint64
	closed     bool
	stdinMu    sync.Mutex // serializes stdin writes, so offsets stay in order; guards stdinIndex
	stdinIndex uint32     // the last V1 SandboxStdinWrite index taken

	budget *atomic.Int64 // the sandbox's retained output, which out counts in
}

func newExecution(budget *atomic.Int64) *execution {
	return &execution{changed: make(chan struct{}), ready: make(chan struct{}), budget: budget}
}

// notify wakes the readers and waiters. x.mu must be held.
func (x *execution) notify() {
	close(x.changed)
	x.changed = make(chan struct{})
}

// output appends b to stream fd (0 stdout, 1 stderr), or drops it past the sandbox's budget.
func (x *execution) output(fd int, b []byte) {
	if n := int64(len(b)); x.budget.Add(n) > maxRetained {
		x.budget.Add(-n)
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.out[fd] = append(x.out[fd], b...)
	x.notify()
}

// started makes stdin writable through write.
func (x *execution) started(write func(ctx context.Context, b []byte, eof bool) error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.write == nil {
		x.write = write
		close(x.ready)
	}
}

// hasStarted reports whether the process started.
func (x *execution) hasStarted() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.write != nil
}

// finish records the end; a process that never started gets no stdin.
func (x *execution) finish(code, signal int32) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.done {
		return
	}
	x.done, x.code, x.signal = true, code, signal
	if x.write == nil {
		x.write = func(context.Context, []byte, bool) error {
			return errorf(codes.FailedPrecondition, "the command has exited; its stdin is closed")
		}
		close(x.ready)
	}
	x.notify()
}

// size is the output x holds.
func (x *execution) size() int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return int64(len(x.out[0]) + len(x.out[1]))
}

// exit returns the end, if it has come.
func (x *execution) exit() (code, signal int32, done bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.code, x.signal, x.done
}

// wait blocks until the execution ends or ctx does.
func (x *execution) wait(ctx context.Context) (code, signal int32, err error) {
	for {
		x.mu.Lock()
		done, ch := x.done, x.changed
		code, signal = x.code, x.signal
		x.mu.Unlock()
		if done {
			return code, signal, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
}

// read calls send with the output of fd from offset on, as it arrives, until the execution
// has ended and everything was sent, or ctx ends.
func (x *execution) read(ctx context.Context, fd int, offset uint64, send func([]byte) error) error {
	const chunk = 1 << 20
	for {
		x.mu.Lock()
		buf, done, ch := x.out[fd], x.done, x.changed
		x.mu.Unlock()
		if offset < uint64(len(buf)) {
			b := buf[offset:min(uint64(len(buf)), offset+chunk)]
			if err := send(b); err != nil {
				return err
			}
			offset += uint64(len(b))
			continue
		}
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// writeStdin sends the part of data past what was already written (retries resend the
// same offset), closing stdin after it if eof.
func (x *execution) writeStdin(ctx context.Context, offset uint64, data []byte, eof bool) error {
	select {
	case <-x.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	x.stdinMu.Lock()
	defer x.stdinMu.Unlock()
	return x.writeStdinLocked(ctx, offset, data, eof)
}

// writeStdinLocked is writeStdin with x.stdinMu held and the process started.
func (x *execution) writeStdinLocked(ctx context.Context, offset uint64, data []byte, eof bool) error {
	x.mu.Lock()
	written, closed, write := x.written, x.closed, x.write
	x.mu.Unlock()
	if offset > written {
		return errorf(codes.InvalidArgument, "stdin offset %d is past the %d bytes written", offset, written)
	}
	if skip := written - offset; skip < uint64(len(data)) {
		data = data[skip:]
	} else {
		data = nil
	}
	if closed {
		if len(data) > 0 {
			return errorf(codes.FailedPrecondition, "stdin is closed")
		}
		return nil
	}
	if len(data) == 0 && !eof {
		return nil
	}
	if err := write(ctx, data, eof); err != nil {
		return err
	}
	x.mu.Lock()
	x.written += uint64(len(data))
	x.closed = eof
	x.mu.Unlock()
	return nil
}

// stdinStatus is how many stdin bytes were taken and whether stdin is closed.
func (x *execution) stdinStatus() (uint64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.written, x.closed
}

// start runs fn, which drives x, on a goroutine the server waits for; a panic in it fails x
// rather than end the daemon.
func (s *Server) start(x *execution, fn func()) {
	s.wg.Go(func() {
		defer func() {
			if p := recover(); p != nil {
				s.cfg.Logger.Error("modal: execution panicked", "panic", p, "stack", string(debug.Stack()))
				x.finish(137, 0)
			}
		}()
		fn()
	})
}

// runProcess runs spec in b's sandbox as x, until it ends; the sandbox counts as active
// meanwhile, so an idle timeout never ends it under a running command.
func (s *Server) runProcess(b *box, x *execution, spec engine.ExecSpec) {
	ctx := b.ctx
	sb, done, err := s.cfg.Engine.Use(ctx, b.id)
	if err != nil {
		x.output(1, []byte(err.Error()+"\n"))
		x.finish(127, 0)
		return
	}
	defer done()
	spec.KeepStdin = true
	spec.OutputLimit = s.cfg.Engine.Limits().OutputBytes
	end, err := sb.Exec(ctx, spec, func(ev engine.Event) {
		switch {
		case ev.Pid != 0:
			pid := ev.Pid
			x.started(func(ctx context.Context, p []byte, eof bool) error {
				return sb.WriteStdin(ctx, pid, bytes.NewReader(p), eof)
			})
		case len(ev.Stdout) > 0:
			x.output(0, ev.Stdout)
		case len(ev.Stderr) > 0:
			x.output(1, ev.Stderr)
		}
	})
	switch {
	case err != nil && !x.hasStarted() && !errors.Is(err, api.ErrGone):
		// The agent refused to start it (not in PATH, say): what a shell would answer.
		x.output(1, []byte(api.PublicDetail(err).Message+"\n"))
		x.finish(127, 0)
	case err != nil:
		s.cfg.Logger.WarnContext(ctx, "modal exec", "sandbox", b.id, "err", err)
		x.output(1, []byte(api.PublicDetail(err).Message+"\n"))
		x.finish(137, 0)
	case !end.Exited && end.Signal != 0 && !end.TimedOut:
		x.finish(0, int32(end.Signal))
	default:
		x.finish(int32(end.ExitCode), 0)
	}
}
