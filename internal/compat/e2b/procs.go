package e2b

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/engine"
)

// A command started through process.Process/Start runs as envd runs it: apart from the
// stream that started it. The stream's end (Connect-Timeout-Ms, 60 s by default in the SDK, or
// a client that goes away) ends the stream only; the process runs on until it exits, is
// signalled, or its sandbox ends — so a background server outlives the script that started
// it, and Connect reattaches to its output.

// procs is the server's running commands, by sandbox and pid.
type procs struct {
	mu  sync.Mutex        // guards all
	all map[procKey]*proc //
}

type procKey struct {
	sandbox string
	pid     int
}

// proc is one running command and the streams it feeds.
type proc struct {
	mu   sync.Mutex        // guards subs and done
	subs map[*sub]struct{} //
	done bool              // the end (or the failure) has been fanned out
}

// item is one event for a stream, or the failure that ends it.
type item struct {
	ev  *pb.ProcessEvent
	err error
}

// sub is one stream of a command's events. A slow stream holds the command's output back (as
// a pipe would), never another stream's forever: a stream that goes away closes gone.
type sub struct {
	ch   chan item
	gone chan struct{}
}

func newSub() *sub { return &sub{ch: make(chan item, 64), gone: make(chan struct{})} }

// join adds s to p's streams; false once p has ended.
func (p *proc) join(s *sub) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return false
	}
	p.subs[s] = struct{}{}
	return true
}

func (p *proc) leave(s *sub) {
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
	close(s.gone)
}

// send gives it to every stream; last marks the end, after which no stream joins.
func (p *proc) send(it item, last bool) {
	p.mu.Lock()
	subs := slices.Collect(maps.Keys(p.subs))
	p.done = p.done || last
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- it:
		case <-s.gone:
		}
	}
}

// start runs x in sb apart from the calling stream, whose events s receives: start (once the
// agent has the pid), data, end; or a failure.
func (s *Server) start(sb *engine.Sandbox, x engine.ExecSpec, pty bool, first *sub) *proc {
	p := &proc{subs: map[*sub]struct{}{first: {}}}
	key := procKey{sandbox: sb.ID()}
	// The command is the server's: Close ends it, and so does its sandbox's end.
	ctx := s.ctx
	s.wg.Go(func() {
		defer func() {
			if key.pid != 0 {
				s.procs.mu.Lock()
				delete(s.procs.all, key)
				s.procs.mu.Unlock()
			}
		}()
		end, err := sb.Exec(ctx, x, func(ev engine.Event) {
			var out *pb.ProcessEvent_DataEvent
			switch {
			case ev.Pid != 0:
				key.pid = ev.Pid
				s.procs.mu.Lock()
				s.procs.all[key] = p
				s.procs.mu.Unlock()
				p.send(item{ev: startEvent(ev.Pid)}, false)
				return
			case len(ev.Stdout) > 0 && pty:
				out = &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Pty{Pty: ev.Stdout}}
			case len(ev.Stdout) > 0:
				out = &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: ev.Stdout}}
			case len(ev.Stderr) > 0:
				out = &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: ev.Stderr}}
			default:
				return
			}
			p.send(item{ev: &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: out}}}, false)
		})
		if err != nil {
			p.send(item{err: connectError(err)}, true)
			return
		}
		ee := &pb.ProcessEvent_EndEvent{ExitCode: int32(end.ExitCode), Exited: end.Exited, Status: endStatus(end)}
		if end.Err != "" {
			ee.Error = &end.Err
		}
		p.send(item{ev: &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: ee}}}, true)
	})
	return p
}

func startEvent(pid int) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: uint32(pid)}}}
}

// attach returns the running command pid of sandbox id with a new stream of its events.
func (s *Server) attach(id string, pid int) (*proc, *sub, bool) {
	s.procs.mu.Lock()
	p := s.procs.all[procKey{sandbox: id, pid: pid}]
	s.procs.mu.Unlock()
	sb := newSub()
	if p == nil || !p.join(sb) {
		return nil, nil, false
	}
	return p, sb, true
}

// stream sends a command's events from sb to one Connect stream until the end, a failure, or
// the stream's own end; idle, it sends a keepalive every Keepalive-Ping-Interval.
func stream(ctx context.Context, h http.Header, p *proc, sb *sub, send func(*pb.ProcessEvent) error) error {
	defer p.leave(sb)
	t := time.NewTicker(keepaliveInterval(h))
	defer t.Stop()
	for {
		select {
		case it := <-sb.ch:
			if it.err != nil {
				return it.err
			}
			if err := send(it.ev); err != nil {
				return err
			}
			if it.ev.GetEnd() != nil {
				return nil
			}
		case <-t.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the command's stream reached its timeout (the command runs on)"))
			}
			return connect.NewError(connect.CodeCanceled, fmt.Errorf("stream ended: %w", context.Cause(ctx)))
		}
	}
}
