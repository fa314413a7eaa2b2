package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
	"github.com/airlockhq/airlock/internal/repl"
)

// replService hosts the sandbox's one long-lived Python interpreter (a session).
type replService struct {
	a *Agent

	mu     sync.Mutex // guards interp
	interp *repl.Interp
}

var _ agentpbconnect.ReplHandler = (*replService)(nil)

// spawnReaped starts cmd under the reaper, so PID 1's wait4(-1) hands the interpreter's exit
// status to the REPL instead of losing it.
func (a *Agent) spawnReaped(cmd *exec.Cmd) (func() (syscall.WaitStatus, error), error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	a.intoUserCgroup(cmd.SysProcAttr)
	_, exitc, err := a.reaper.spawn(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		return nil, err
	}
	return func() (syscall.WaitStatus, error) {
		info := <-exitc
		return syscall.WaitStatus(info.status), nil
	}, nil
}

func (s *replService) Start(ctx context.Context, req *connect.Request[pb.ReplStartRequest]) (*connect.Response[pb.ReplStartResponse], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.interp != nil {
		return nil, connect.NewError(connect.CodeAlreadyExists, errors.New("the session's interpreter is already running"))
	}
	env := s.a.baseEnv()
	for k, v := range req.Msg.GetEnv() {
		env[k] = v
	}
	envv := make([]string, 0, len(env))
	for k, v := range env {
		envv = append(envv, k+"="+v)
	}
	dir := req.Msg.GetCwd()
	if dir == "" {
		dir = "/workspace"
	}
	python := req.Msg.GetPython()
	if python == "" {
		python = "/usr/bin/python3"
	}
	in, err := repl.Start(ctx, repl.Config{
		Python: python, Env: envv, Dir: dir, Logger: s.a.cfg.Logger,
		SysProcAttr: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(s.a.cfg.UID), Gid: uint32(s.a.cfg.GID), Groups: []uint32{}},
			Setsid:     true,
		},
		Spawn: s.a.spawnReaped,
	})
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("start interpreter: %w", err))
	}
	s.interp = in
	return connect.NewResponse(&pb.ReplStartResponse{Pid: uint32(in.Pid())}), nil
}

func (s *replService) get() (*repl.Interp, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.interp == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the session has no interpreter; call Start"))
	}
	return s.interp, nil
}

func (s *replService) Run(ctx context.Context, req *connect.Request[pb.ReplRunRequest]) (*connect.Response[pb.ReplRunResponse], error) {
	in, err := s.get()
	if err != nil {
		return nil, err
	}
	res, err := in.Run(ctx, req.Msg.GetCode(), time.Duration(req.Msg.GetTimeoutMs())*time.Millisecond)
	if res == nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("run cell: %w", err))
	}
	out := &pb.ReplRunResponse{
		Stdout: res.Stdout, Stderr: res.Stderr, Result: res.Result, HasResult: res.HasResult,
		ExecutionTimeUs: uint64(res.ExecutionTime.Microseconds()),
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
		Interrupted: res.Interrupted, Restarted: res.Restarted, RestartReason: res.RestartReason,
		TimedOut: res.TimedOut,
	}
	for _, d := range res.Display {
		out.Display = append(out.Display, &pb.Display{Mime: d.MIME, Data: d.Data})
	}
	if res.DisplayDropped > 0 {
		// The protocol has no field for it: one item without a MIME type says outputs were
		// dropped (the note is on stderr); the daemon counts it as dropped and flags the answer.
		out.Display = append(out.Display, &pb.Display{})
	}
	if e := res.Error; e != nil {
		out.Error = &pb.ReplError{Name: e.Name, Value: e.Value, Traceback: e.Traceback}
	}
	return connect.NewResponse(out), nil
}

func (s *replService) Interrupt(ctx context.Context, req *connect.Request[pb.ReplInterruptRequest]) (*connect.Response[pb.ReplInterruptResponse], error) {
	in, err := s.get()
	if err != nil {
		return nil, err
	}
	interrupted, restarted, err := in.Interrupt()
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return connect.NewResponse(&pb.ReplInterruptResponse{Interrupted: interrupted, Restarted: restarted}), nil
}

// Install runs pip as the sandbox user into its user site (~/.local under /workspace), never
// into the image. Without network it can only install from a local wheel directory (find_links);
// the daemon decides which sources a session's policy allows. The live interpreter then gets
// the user site on sys.path, so the next cell can import the package.
func (s *replService) Install(ctx context.Context, req *connect.Request[pb.ReplInstallRequest]) (*connect.Response[pb.ReplInstallResponse], error) {
	m := req.Msg
	if len(m.GetPackages()) == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("no packages to install"))
	}
	args := []string{"-m", "pip", "install", "--user", "--break-system-packages", "--no-input",
		"--disable-pip-version-check", "--no-warn-script-location", "--progress-bar", "off"}
	if m.GetFindLinks() != "" {
		args = append(args, "--find-links", m.GetFindLinks())
	}
	switch {
	case !m.GetAllowNetwork():
		args = append(args, "--no-index")
	case m.GetIndexUrl() != "":
		args = append(args, "--index-url", m.GetIndexUrl())
		// pip refuses a plain-http index unless its host is trusted; the operator named it.
		if u, err := url.Parse(m.GetIndexUrl()); err == nil && u.Scheme == "http" {
			args = append(args, "--trusted-host", u.Hostname())
		}
	}
	for _, p := range m.GetPackages() {
		if p == "" || p[0] == '-' {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("package %q is not a requirement", p))
		}
	}
	args = append(args, "--")
	args = append(args, m.GetPackages()...)
	timeout := time.Duration(m.GetTimeoutMs()) * time.Millisecond
	if timeout == 0 {
		timeout = 120 * time.Second
	}
	_, sub, err := s.a.startProc(procSpec{Cmd: "/usr/bin/python3", Args: args, Timeout: timeout,
		OutputLimit: 256 << 10, Env: map[string]string{"PIP_NO_CACHE_DIR": "1"}})
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	var out []byte
	end, err := drain(ctx, sub, func(ev event) {
		out = append(out, ev.Stdout...)
		out = append(out, ev.Stderr...)
	})
	if err != nil {
		return nil, err
	}
	if end.ExitCode == 0 {
		if in, err := s.get(); err == nil {
			in.Run(ctx, "import site as _s, importlib as _i\n_s.addsitedir(_s.getusersitepackages()); _i.invalidate_caches(); del _s, _i", 10*time.Second)
		}
	}
	return connect.NewResponse(&pb.ReplInstallResponse{ExitCode: int32(end.ExitCode), Output: out, TimedOut: end.TimedOut}), nil
}
