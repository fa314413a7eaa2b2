package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"connectrpc.com/connect"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// Client is the daemon's side of the agent protocol.
type Client struct {
	Process agentpbconnect.ProcessClient
	Agent   agentpbconnect.AgentClient
	FS      agentpbconnect.FilesystemClient
}

// NewClient returns a client over hc, which must reach the agent (any URL host works).
func NewClient(hc *http.Client) *Client {
	const base = "http://agent"
	return &Client{
		Process: agentpbconnect.NewProcessClient(hc, base),
		Agent:   agentpbconnect.NewAgentClient(hc, base),
		FS:      agentpbconnect.NewFilesystemClient(hc, base),
	}
}

// ExecRequest is one process to run.
type ExecRequest struct {
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
}

// Event is output from a running process; one of the fields is set.
type Event struct {
	Pid            int
	Stdout, Stderr []byte
}

// End is how a process ended.
type End = endInfo

// Exec starts req and calls on for each event until the process ends.
func (c *Client) Exec(ctx context.Context, req ExecRequest, on func(Event)) (*End, error) {
	sr := &pb.StartRequest{
		Process:     &pb.ProcessConfig{Cmd: req.Cmd, Args: req.Args, Envs: req.Env},
		TimeoutMs:   uint32(req.Timeout.Milliseconds()),
		OutputLimit: uint64(req.OutputLimit), KillTreeOnExit: req.KillTree,
		StdinData: req.Stdin, KeepStdinOpen: req.KeepStdin,
	}
	if req.Dir != "" {
		sr.Process.Cwd = &req.Dir
	}
	if req.Tag != "" {
		sr.Tag = &req.Tag
	}
	stream, err := c.Process.Start(ctx, connect.NewRequest(sr))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	for stream.Receive() {
		if end := Apply(stream.Msg().GetEvent(), on); end != nil {
			return end, nil
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("agent closed the process stream without an end event")
}

// Apply delivers one protocol event to on and returns the end, if this was it.
func Apply(ev *pb.ProcessEvent, on func(Event)) *End {
	switch {
	case ev.GetStart() != nil:
		on(Event{Pid: int(ev.GetStart().GetPid())})
	case ev.GetData() != nil:
		d := ev.GetData()
		on(Event{Stdout: d.GetStdout(), Stderr: d.GetStderr()})
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

// WriteFile streams r into path in the sandbox, creating parent directories.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, mode uint32) error {
	stream := c.Agent.WriteFile(ctx)
	if err := stream.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Header{Header: &pb.WriteFileHeader{
		Path: path, Mode: mode, CreateParents: true}}}); err != nil {
		_, cerr := stream.CloseAndReceive()
		return errors.Join(err, cerr)
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := stream.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Data{Data: buf[:n]}}); serr != nil {
				_, cerr := stream.CloseAndReceive()
				if cerr != nil {
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
			return fmt.Errorf("read upload: %w", err)
		}
	}
	_, err := stream.CloseAndReceive()
	return err
}
