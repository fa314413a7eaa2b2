package agentclient

import (
	"context"
	"time"

	"connectrpc.com/connect"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
)

// Cell is the agent's answer to one REPL cell, as the agent sent it: the engine re-checks it,
// since the agent shares its sandbox with the code that produced it.
type Cell struct {
	Stdout, Stderr                   []byte
	StdoutTruncated, StderrTruncated bool
	Result                           *string // the value of the last expression, if any
	Display                          []Display
	Error                            *CellError
	ExecutionTime                    time.Duration
	TimedOut, Interrupted, Restarted bool
	RestartReason                    string
}

// Display is one rich output of a cell; an empty MIME marks one the agent dropped.
type Display struct {
	MIME string
	Data []byte
}

// CellError is the exception a cell raised.
type CellError struct {
	Name, Value string
	Traceback   []string
}

// Installed is the outcome of a package install.
type Installed struct {
	ExitCode int
	TimedOut bool
	Output   []byte
}

// ReplStart starts the sandbox's interpreter with env in cwd.
func (c *Client) ReplStart(ctx context.Context, env map[string]string, cwd string) error {
	_, err := c.repl.Start(ctx, connect.NewRequest(&pb.ReplStartRequest{Env: env, Cwd: cwd}))
	return apiError(err)
}

// ReplRun runs code as one cell, within timeout and outputLimit bytes per stream. Its answer is
// charged to ctx's AnswerBudget, if any (WithAnswerBudget).
func (c *Client) ReplRun(ctx context.Context, code string, timeout time.Duration, outputLimit int64) (*Cell, error) {
	resp, err := c.repl.Run(ctx, connect.NewRequest(&pb.ReplRunRequest{Code: code,
		TimeoutMs: Millis(timeout), OutputLimit: uint64(outputLimit)}))
	if err != nil {
		return nil, apiError(err)
	}
	return cell(resp.Msg), nil
}

// cell converts m, sharing its byte slices; each display item of m is released once converted,
// so that the answer is not held twice.
func cell(m *pb.ReplRunResponse) *Cell {
	c := &Cell{
		Stdout: m.GetStdout(), Stderr: m.GetStderr(),
		StdoutTruncated: m.GetStdoutTruncated(), StderrTruncated: m.GetStderrTruncated(),
		ExecutionTime: time.Duration(m.GetExecutionTimeUs()) * time.Microsecond,
		TimedOut:      m.GetTimedOut(), Interrupted: m.GetInterrupted(),
		Restarted: m.GetRestarted(), RestartReason: m.GetRestartReason(),
		Display: make([]Display, 0, len(m.Display)),
	}
	if m.GetHasResult() {
		res := m.GetResult()
		c.Result = &res
	}
	for i, d := range m.Display {
		m.Display[i] = nil
		c.Display = append(c.Display, Display{MIME: d.GetMime(), Data: d.GetData()})
	}
	if e := m.GetError(); e != nil {
		c.Error = &CellError{Name: e.GetName(), Value: e.GetValue(), Traceback: e.GetTraceback()}
	}
	return c
}

// ReplInterrupt stops the running cell; restarted says the interpreter had to be restarted.
func (c *Client) ReplInterrupt(ctx context.Context) (interrupted, restarted bool, err error) {
	resp, err := c.repl.Interrupt(ctx, connect.NewRequest(&pb.ReplInterruptRequest{}))
	if err != nil {
		return false, false, apiError(err)
	}
	return resp.Msg.GetInterrupted(), resp.Msg.GetRestarted(), nil
}

// InstallSource is where an install finds packages.
type InstallSource struct {
	FindLinks string // a directory of wheels inside the sandbox; "" for none
	Online    bool   // the package index may be used (the sandbox's network reaches it)
	IndexURL  string // with Online: the index; "" for pip's default
}

// ReplInstall pip-installs packages into the interpreter's user site, from src.
func (c *Client) ReplInstall(ctx context.Context, packages []string, src InstallSource, timeout time.Duration) (*Installed, error) {
	resp, err := c.repl.Install(ctx, connect.NewRequest(&pb.ReplInstallRequest{Packages: packages,
		FindLinks: src.FindLinks, AllowNetwork: src.Online, IndexUrl: src.IndexURL, TimeoutMs: Millis(timeout)}))
	if err != nil {
		return nil, apiError(err)
	}
	m := resp.Msg
	return &Installed{ExitCode: int(m.GetExitCode()), TimedOut: m.GetTimedOut(), Output: m.GetOutput()}, nil
}
