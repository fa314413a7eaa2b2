package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
)

// Process is one process to run.
type Process struct {
	Cmd         string
	Args        []string
	Env         map[string]string
	Dir         string
	Tag         string
	Stdin       []byte
	KeepStdin   bool
	Timeout     time.Duration
	OutputLimit int64
	KillTree    bool
	PTY         *api.PTY // run on a terminal; its output arrives as Stdout
}

// Event is output from a running process; one of the fields is set.
type Event struct {
	Pid            int
	Stdout, Stderr []byte
}

// End is how a process ended.
type End struct {
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

// Exec starts p and calls on for each event until the process ends.
func (c *Client) Exec(ctx context.Context, p Process, on func(Event)) (*End, error) {
	end, err := c.exec(ctx, p, on)
	return end, apiError(err)
}

func (c *Client) exec(ctx context.Context, p Process, on func(Event)) (*End, error) {
	sr := &pb.StartRequest{
		Process:     &pb.ProcessConfig{Cmd: p.Cmd, Args: p.Args, Envs: p.Env},
		TimeoutMs:   Millis(p.Timeout),
		OutputLimit: uint64(p.OutputLimit), KillTreeOnExit: p.KillTree,
		StdinData: p.Stdin, KeepStdinOpen: p.KeepStdin,
	}
	if p.Dir != "" {
		sr.Process.Cwd = &p.Dir
	}
	if p.Tag != "" {
		sr.Tag = &p.Tag
	}
	if p.PTY != nil {
		sr.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: uint32(p.PTY.Cols), Rows: uint32(p.PTY.Rows)}}
	}
	stream, err := c.process.Start(ctx, connect.NewRequest(sr))
	// The request has been sent: stdin (up to the body limit) must not stay referenced for the
	// life of the process.
	sr.StdinData, p.Stdin = nil, nil
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	for stream.Receive() {
		if end := apply(stream.Msg().GetEvent(), on); end != nil {
			return end, nil
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("agent closed the process stream without an end event")
}

// apply delivers one protocol event to on and returns the end, if this was it.
func apply(ev *pb.ProcessEvent, on func(Event)) *End {
	switch {
	case ev.GetStart() != nil:
		on(Event{Pid: int(ev.GetStart().GetPid())})
	case ev.GetData() != nil:
		d := ev.GetData()
		out := d.GetStdout()
		if p := d.GetPty(); p != nil {
			out = p
		}
		on(Event{Stdout: out, Stderr: d.GetStderr()})
	case ev.GetEnd() != nil:
		e := ev.GetEnd()
		return &End{
			ExitCode: int(e.GetExitCode()), Exited: e.GetExited(), Status: e.GetStatus(),
			Signal: int(e.GetSignal()), TimedOut: e.GetTimedOut(),
			StdoutTruncated: e.GetStdoutTruncated(), StderrTruncated: e.GetStderrTruncated(),
			Duration: time.Duration(e.GetDurationUs()) * time.Microsecond, Err: e.GetError(),
		}
	}
	return nil
}

func selector(pid int) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: uint32(pid)}}
}

// Signal sends sig to the process group of pid.
func (c *Client) Signal(ctx context.Context, pid, sig int) error {
	_, err := c.process.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: selector(pid), Signal: pb.Signal(sig)}))
	return apiError(err)
}

// WriteStdin streams r to pid's stdin; with eof, stdin is closed afterwards.
func (c *Client) WriteStdin(ctx context.Context, pid int, r io.Reader, eof bool) error {
	first := &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: selector(pid)}}}
	err := sendStream(c.process.StreamInput(ctx), first, r, 64<<10, func(b []byte) *pb.StreamInputRequest {
		return &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{
			Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: b}}}}}
	})
	if err != nil {
		return apiError(err)
	}
	if eof {
		_, err := c.process.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: selector(pid)}))
		return apiError(err)
	}
	return nil
}

// Processes lists running processes started through the agent.
func (c *Client) Processes(ctx context.Context) ([]api.ProcessInfo, error) {
	resp, err := c.process.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		return nil, apiError(err)
	}
	out := []api.ProcessInfo{}
	for _, p := range resp.Msg.GetProcesses() {
		out = append(out, api.ProcessInfo{Pid: int(p.GetPid()), Tag: p.GetTag(),
			Cmd: append([]string{p.GetConfig().GetCmd()}, p.GetConfig().GetArgs()...)})
	}
	return out, nil
}

// Resize changes the terminal size of a PTY process.
func (c *Client) Resize(ctx context.Context, pid int, cols, rows uint16) error {
	_, err := c.process.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: selector(pid),
		Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: uint32(cols), Rows: uint32(rows)}}}))
	return apiError(err)
}

// clientStream is the part of a Connect client stream sendStream uses.
type clientStream[Req, Res any] interface {
	Send(*Req) error
	CloseAndReceive() (*connect.Response[Res], error)
}

// sendStream sends first, then r in chunks of size wrapped by wrap, then closes the stream.
// The agent's answer (CloseAndReceive) explains a failed Send, so it is preferred as the error.
func sendStream[Req, Res any](stream clientStream[Req, Res], first *Req, r io.Reader, size int, wrap func([]byte) *Req) error {
	if err := stream.Send(first); err != nil {
		_, cerr := stream.CloseAndReceive()
		return errors.Join(err, cerr)
	}
	buf := make([]byte, size)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := stream.Send(wrap(buf[:n])); serr != nil {
				if _, cerr := stream.CloseAndReceive(); cerr != nil {
					return cerr
				}
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			stream.CloseAndReceive()
			return fmt.Errorf("read input: %w", err)
		}
	}
	_, err := stream.CloseAndReceive()
	return err
}
