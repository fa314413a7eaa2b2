package e2b

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/airlockhq/airlock/api"
	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
	"github.com/airlockhq/airlock/internal/engine"
)

// connectCode maps an engine error to the Connect code the SDK maps to its error classes
// (COMPAT.md §3.5): an ended sandbox is unavailable (TimeoutError: "not running").
func connectCode(err error) connect.Code {
	var se *statusError
	if errors.As(err, &se) {
		switch se.status {
		case http.StatusUnauthorized:
			return connect.CodeUnauthenticated
		case http.StatusBadGateway:
			return connect.CodeUnavailable
		}
		return connect.CodeUnknown
	}
	switch api.PublicDetail(err).Code {
	case api.CodeInvalidArgument:
		return connect.CodeInvalidArgument
	case api.CodeUnauthenticated:
		return connect.CodeUnauthenticated
	case api.CodeNotFound:
		return connect.CodeNotFound
	case api.CodeConflict:
		return connect.CodeAlreadyExists
	case api.CodeTooLarge, api.CodeResourceExhausted:
		return connect.CodeResourceExhausted
	case api.CodeUnimplemented:
		return connect.CodeUnimplemented
	case api.CodeGone, api.CodeUnavailable:
		return connect.CodeUnavailable
	case api.CodeTimeout:
		return connect.CodeDeadlineExceeded
	}
	return connect.CodeInternal
}

// connectError is err as a Connect error with only what a client may see.
func connectError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var se *statusError
	if !errors.As(err, &se) {
		msg = api.PublicDetail(err).Message
	}
	return connect.NewError(connectCode(err), errors.New(msg))
}

// writeConnectError answers a Connect call refused before its handler (no sandbox, a wrong
// token) with a Connect error body; the status is what E2B's proxy answers.
func writeConnectError(w http.ResponseWriter, err error) {
	status := statusOf(err)
	code := connectCode(err)
	msg := err.Error()
	var se *statusError
	if !errors.As(err, &se) {
		msg = api.PublicDetail(err).Message
	}
	writeJSON(w, status, map[string]string{"code": code.String(), "message": msg})
}

// process serves envd's process.Process over the engine's exec.
type process struct {
	agentpbconnect.UnimplementedProcessHandler
	s *Server
}

// keepaliveInterval is how often an idle stream gets a keepalive event: the client's
// Keepalive-Ping-Interval (seconds), 50 s without one, as envd.
func keepaliveInterval(h http.Header) time.Duration {
	if n, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval")); err == nil && n > 0 && n <= 3600 {
		return time.Duration(n) * time.Second
	}
	return 50 * time.Second
}

// Start runs a process and streams its events: start, data, end (see procs.go for how the
// process outlives the stream).
func (pr *process) Start(ctx context.Context, req *connect.Request[pb.StartRequest], st *connect.ServerStream[pb.StartResponse]) error {
	sb := sandboxOf(ctx)
	cfg := req.Msg.GetProcess()
	if cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	x := engine.ExecSpec{Cmd: append([]string{cfg.GetCmd()}, cfg.GetArgs()...), Env: cfg.GetEnvs(),
		Workdir: cfg.GetCwd(), KeepStdin: req.Msg.GetStdin(), Tag: req.Msg.GetTag()}
	pty := req.Msg.GetPty()
	if pty != nil {
		x.PTY = &api.PTY{Cols: uint16(min(pty.GetSize().GetCols(), 65535)), Rows: uint16(min(pty.GetSize().GetRows(), 65535))}
		x.KeepStdin = true
	}
	first := newSub()
	p := pr.s.start(sb, x, pty != nil, first)
	return stream(ctx, req.Header(), p, first, func(ev *pb.ProcessEvent) error {
		return st.Send(&pb.StartResponse{Event: ev})
	})
}

// Connect streams a running command's events from now on, after a start event with its pid.
func (pr *process) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], st *connect.ServerStream[pb.ConnectResponse]) error {
	pid, err := pidOf(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	p, sub, ok := pr.s.attach(sandboxOf(ctx).ID(), pid)
	if !ok {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("no running process %d started through process.Process/Start", pid))
	}
	send := func(ev *pb.ProcessEvent) error { return st.Send(&pb.ConnectResponse{Event: ev}) }
	if err := send(startEvent(pid)); err != nil {
		p.leave(sub)
		return err
	}
	return stream(ctx, req.Header(), p, sub, send)
}

// endStatus is how envd (Go's os.ProcessState) words an end: "exit status N" or
// "signal: killed".
func endStatus(end *engine.End) string {
	if end.Status != "" {
		return end.Status
	}
	if !end.Exited && end.Signal != 0 {
		return "signal: " + signalName(end.Signal)
	}
	return "exit status " + strconv.Itoa(end.ExitCode)
}

func signalName(sig int) string {
	switch sig {
	case 9:
		return "killed"
	case 15:
		return "terminated"
	case 2:
		return "interrupt"
	}
	return "signal " + strconv.Itoa(sig)
}

// pidOf is the pid a selector names; envd's tags are not tracked here.
func pidOf(sel *pb.ProcessSelector) (int, error) {
	if sel.GetPid() == 0 {
		return 0, connect.NewError(connect.CodeInvalidArgument, errors.New("select the process by pid (tags are not supported)"))
	}
	return int(sel.GetPid()), nil
}

func (*process) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	ps, err := sandboxOf(ctx).Processes(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	out := &pb.ListResponse{Processes: make([]*pb.ProcessInfo, 0, len(ps))}
	for _, p := range ps {
		info := &pb.ProcessInfo{Pid: uint32(p.Pid), Config: &pb.ProcessConfig{Envs: map[string]string{}}}
		if len(p.Cmd) > 0 {
			info.Config.Cmd, info.Config.Args = p.Cmd[0], p.Cmd[1:]
		}
		if p.Tag != "" {
			info.Tag = &p.Tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (*process) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	pid, err := pidOf(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	sig := int(req.Msg.GetSignal())
	if sig != 9 && sig != 15 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM"))
	}
	if err := sandboxOf(ctx).Signal(ctx, pid, sig); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

func (*process) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	pid, err := pidOf(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetInput()
	data := in.GetStdin()
	if data == nil {
		data = in.GetPty()
	}
	if err := sandboxOf(ctx).WriteStdin(ctx, pid, bytes.NewReader(data), false); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (*process) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	pid, err := pidOf(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := sandboxOf(ctx).WriteStdin(ctx, pid, bytes.NewReader(nil), true); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

func (*process) Update(ctx context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	pid, err := pidOf(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if size := req.Msg.GetPty().GetSize(); size != nil {
		err := sandboxOf(ctx).Resize(ctx, pid, uint16(min(size.GetCols(), 65535)), uint16(min(size.GetRows(), 65535)))
		if err != nil {
			return nil, connectError(err)
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

// filesystem serves envd's filesystem.Filesystem over the engine's file calls.
type filesystem struct {
	agentpbconnect.UnimplementedFilesystemHandler
}

// entry is f as envd's EntryInfo.
func entry(f api.FileInfo) *pb.EntryInfo {
	e := &pb.EntryInfo{Name: f.Name, Path: f.Path, Size: f.Size, Mode: f.Mode,
		ModifiedTime: timestamppb.New(f.ModifiedAt)}
	mode := fs.FileMode(f.Mode & 0o7777)
	switch f.Type {
	case api.FileTypeFile:
		e.Type = pb.FileType_FILE_TYPE_FILE
	case api.FileTypeDir:
		e.Type, mode = pb.FileType_FILE_TYPE_DIRECTORY, mode|fs.ModeDir
	case api.FileTypeSymlink:
		e.Type, mode = pb.FileType_FILE_TYPE_SYMLINK, mode|fs.ModeSymlink
		if f.SymlinkTarget != "" {
			e.SymlinkTarget = &f.SymlinkTarget
		}
	}
	e.Permissions = mode.String()
	return e
}

func (filesystem) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	fi, err := sandboxOf(ctx).Stat(ctx, req.Msg.GetPath())
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.StatResponse{Entry: entry(fi)}), nil
}

func (filesystem) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	sb := sandboxOf(ctx)
	// envd answers already_exists for an existing path (the SDK's makeDir then returns false).
	if fi, err := sb.Stat(ctx, req.Msg.GetPath()); err == nil {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s already exists (a %s)", fi.Path, fi.Type))
	}
	fi, err := sb.Mkdir(ctx, req.Msg.GetPath())
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: entry(fi)}), nil
}

func (filesystem) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	depth := int(min(max(req.Msg.GetDepth(), 1), 16))
	list, err := sandboxOf(ctx).List(ctx, req.Msg.GetPath(), depth)
	if err != nil {
		return nil, connectError(err)
	}
	out := &pb.ListDirResponse{Entries: make([]*pb.EntryInfo, 0, len(list))}
	for _, f := range list {
		out.Entries = append(out.Entries, entry(f))
	}
	return connect.NewResponse(out), nil
}

func (filesystem) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	if err := sandboxOf(ctx).Remove(ctx, req.Msg.GetPath(), true); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

// Move renames with the sandbox's own mv: the engine has no rename call, and mv runs with the
// sandbox's confinement like any command.
func (filesystem) Move(ctx context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	sb := sandboxOf(ctx)
	src, dst := req.Msg.GetSource(), req.Msg.GetDestination()
	if src == "" || dst == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("source and destination are required"))
	}
	if _, err := sb.Stat(ctx, src); err != nil {
		return nil, connectError(err)
	}
	var stderr bytes.Buffer
	end, err := sb.Exec(ctx, engine.ExecSpec{Cmd: []string{"mv", "-f", "-T", "--", src, dst}, OutputLimit: 4096},
		func(ev engine.Event) { stderr.Write(ev.Stderr) })
	if err != nil {
		return nil, connectError(err)
	}
	if end.ExitCode != 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("move %s to %s: %s", src, dst, strings.TrimSpace(stderr.String())))
	}
	fi, err := sb.Stat(ctx, dst)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: entry(fi)}), nil
}
