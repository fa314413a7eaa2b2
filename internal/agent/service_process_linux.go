package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// processService implements the envd-shaped Process service.
type processService struct{ a *Agent }

var _ agentpbconnect.ProcessHandler = (*processService)(nil)

func (s *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	m := req.Msg
	cfg := m.GetProcess()
	if cfg == nil || cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	if strings.ContainsRune(cfg.GetCmd(), 0) {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("cmd contains a NUL byte"))
	}
	spec := procSpec{
		Cmd: cfg.GetCmd(), Args: cfg.GetArgs(), Env: cfg.GetEnvs(), Dir: cfg.GetCwd(), Tag: m.GetTag(),
		Stdin: m.GetStdinData(), KeepStdin: m.GetKeepStdinOpen() || m.GetStdin(),
		Timeout:     time.Duration(m.GetTimeoutMs()) * time.Millisecond,
		OutputLimit: int64(m.GetOutputLimit()), KillTree: m.GetKillTreeOnExit(),
		UID: int(m.GetUid()), GID: int(m.GetGid()),
	}
	if pty := m.GetPty(); pty != nil {
		sz := pty.GetSize()
		if sz.GetCols() == 0 || sz.GetRows() == 0 || sz.GetCols() > 4096 || sz.GetRows() > 4096 {
			return connect.NewError(connect.CodeInvalidArgument, errors.New("pty size must be 1…4096 columns and rows"))
		}
		spec.PTY = &winSize{Cols: uint16(sz.GetCols()), Rows: uint16(sz.GetRows())}
		spec.KeepStdin = true
	}
	if spec.Tag != "" {
		if _, err := s.a.lookup(0, spec.Tag); err == nil {
			return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("a process with tag %q is running", spec.Tag))
		}
	}
	p, sub, err := s.a.startProc(spec)
	if errors.Is(err, errTooManyProcesses) {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	if err := stream.Send(&pb.StartResponse{Event: startEvent(p.pid)}); err != nil {
		sub.leave()
		return err
	}
	return forward(ctx, sub, func(ev *pb.ProcessEvent) error { return stream.Send(&pb.StartResponse{Event: ev}) })
}

func (s *processService) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := s.a.selected(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	sub, end := p.subscribe()
	if err := stream.Send(&pb.ConnectResponse{Event: startEvent(p.pid)}); err != nil {
		if sub != nil {
			sub.leave()
		}
		return err
	}
	if sub == nil {
		return stream.Send(&pb.ConnectResponse{Event: endEvent(end)})
	}
	return forward(ctx, sub, func(ev *pb.ProcessEvent) error { return stream.Send(&pb.ConnectResponse{Event: ev}) })
}

// forward sends a subscription's events until the end event, or until the caller goes away (the
// process keeps running; it can be re-attached with Connect).
func forward(ctx context.Context, sub *sub, send func(*pb.ProcessEvent) error) error {
	defer sub.leave()
	keepalive := time.NewTicker(30 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case ev, ok := <-sub.ch:
			if !ok {
				return nil
			}
			var pe *pb.ProcessEvent
			switch {
			case ev.End != nil:
				pe = endEvent(ev.End)
			case ev.Stdout != nil:
				pe = dataEvent(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: ev.Stdout}})
			case ev.Pty != nil:
				pe = dataEvent(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Pty{Pty: ev.Pty}})
			default:
				pe = dataEvent(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: ev.Stderr}})
			}
			if err := send(pe); err != nil {
				return err
			}
			if ev.End != nil {
				return nil
			}
		case <-keepalive.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func startEvent(pid int) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: uint32(pid)}}}
}

func dataEvent(d *pb.ProcessEvent_DataEvent) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: d}}
}

func endEvent(e *endInfo) *pb.ProcessEvent {
	ee := &pb.ProcessEvent_EndEvent{
		ExitCode: int32(e.ExitCode), Exited: e.Exited, Status: e.Status,
		TimedOut: e.TimedOut, StdoutTruncated: e.StdoutTruncated, StderrTruncated: e.StderrTruncated,
		Signal: int32(e.Signal), DurationUs: uint64(e.Duration.Microseconds()),
	}
	if e.Err != "" {
		ee.Error = &e.Err
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: ee}}
}

func (a *Agent) selected(sel *pb.ProcessSelector) (*proc, error) {
	if sel == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector is required"))
	}
	p, err := a.lookup(sel.GetPid(), sel.GetTag())
	if err != nil {
		return nil, connect.NewError(connect.CodeNotFound, err)
	}
	return p, nil
}

func (s *processService) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	out := &pb.ListResponse{}
	for _, p := range s.a.procs {
		info := &pb.ProcessInfo{Pid: uint32(p.pid),
			Config: &pb.ProcessConfig{Cmd: p.spec.Cmd, Args: p.spec.Args, Envs: p.spec.Env, Cwd: &p.spec.Dir}}
		if p.spec.Tag != "" {
			info.Tag = &p.spec.Tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (s *processService) Update(ctx context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := s.a.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if pty := req.Msg.GetPty(); pty != nil {
		sz := pty.GetSize()
		if sz.GetCols() == 0 || sz.GetRows() == 0 || sz.GetCols() > 4096 || sz.GetRows() > 4096 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("pty size must be 1…4096 columns and rows"))
		}
		if err := p.resize(winSize{Cols: uint16(sz.GetCols()), Rows: uint16(sz.GetRows())}); err != nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, err)
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

func (s *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *proc
	for stream.Receive() {
		m := stream.Msg()
		if st := m.GetStart(); st != nil {
			var err error
			if p, err = s.a.selected(st.GetProcess()); err != nil {
				return nil, err
			}
			continue
		}
		if d := m.GetData(); d != nil {
			if p == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("stream input must start with a start message"))
			}
			if err := p.writeStdin(inputBytes(d.GetInput())); err != nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, err)
			}
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

func (s *processService) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := s.a.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.writeStdin(inputBytes(req.Msg.GetInput())); err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (s *processService) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := s.a.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	p.closeStdin()
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

func (s *processService) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := s.a.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	sig := syscall.Signal(req.Msg.GetSignal())
	switch sig {
	case syscall.SIGKILL:
		p.kill()
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
		syscall.SIGSTOP, syscall.SIGCONT:
		if err := p.signal(sig); err != nil {
			return nil, connect.NewError(connect.CodeInternal, err)
		}
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("signal %d is not supported", sig))
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// inputBytes is the payload of a ProcessInput, stdin or terminal.
func inputBytes(in *pb.ProcessInput) []byte {
	if b := in.GetPty(); b != nil {
		return b
	}
	return in.GetStdin()
}
