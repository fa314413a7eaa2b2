package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// Client is the daemon's side of the agent protocol.
type Client struct {
	Process agentpbconnect.ProcessClient
	Agent   agentpbconnect.AgentClient
	FS      agentpbconnect.FilesystemClient
	Repl    agentpbconnect.ReplClient
}

// NewClient returns a client over hc, which must reach the agent (any URL host works).
//
// Every message from the agent is bounded (MaxMessage): the agent runs inside the sandbox, next
// to code that may try to make it answer with more than the daemon should hold.
func NewClient(hc *http.Client) *Client {
	const base = "http://agent"
	opt := connect.WithReadMaxBytes(MaxMessage)
	c := *hc
	c.Transport = budgetTransport{base: hc.Transport}
	hc = &c
	return &Client{
		Process: agentpbconnect.NewProcessClient(hc, base, opt),
		Agent:   agentpbconnect.NewAgentClient(hc, base, opt),
		FS:      agentpbconnect.NewFilesystemClient(hc, base, opt),
		Repl:    agentpbconnect.NewReplClient(hc, base, opt),
	}
}

// MaxMessage is the largest single message the daemon accepts from an agent: a REPL cell's
// rich outputs (16 MiB) and output (2 × 1 MiB) with room to spare.
const MaxMessage = 24 << 20

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
	PTY         *api.PTY // run on a terminal; its output arrives as Stdout
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
		TimeoutMs:   Millis(req.Timeout),
		OutputLimit: uint64(req.OutputLimit), KillTreeOnExit: req.KillTree,
		StdinData: req.Stdin, KeepStdinOpen: req.KeepStdin,
	}
	if req.Dir != "" {
		sr.Process.Cwd = &req.Dir
	}
	if req.Tag != "" {
		sr.Tag = &req.Tag
	}
	if req.PTY != nil {
		sr.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: uint32(req.PTY.Cols), Rows: uint32(req.PTY.Rows)}}
	}
	stream, err := c.Process.Start(ctx, connect.NewRequest(sr))
	// The request has been sent: stdin (up to the body limit) must not stay referenced for the
	// life of the process.
	sr.StdinData, req.Stdin = nil, nil
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

// Millis converts d to the protocol's milliseconds, where 0 means no limit: a positive duration
// rounds up, so that below a millisecond it becomes 1 ms, never "unlimited"; past the field's
// range it saturates.
func Millis(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	return uint32(min((d+time.Millisecond-1)/time.Millisecond, math.MaxUint32))
}

// Apply delivers one protocol event to on and returns the end, if this was it.
func Apply(ev *pb.ProcessEvent, on func(Event)) *End {
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

// WriteFile streams r into path in the sandbox, creating parent directories.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, mode uint32) error {
	stream := c.Agent.WriteFile(ctx)
	first := &pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Header{Header: &pb.WriteFileHeader{
		Path: path, Mode: mode, CreateParents: true}}}
	return sendStream(stream, first, r, 256<<10, func(b []byte) *pb.WriteFileRequest {
		return &pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Data{Data: b}}
	})
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

// Signal sends sig to the process group of pid.
func (c *Client) Signal(ctx context.Context, pid, sig int) error {
	_, err := c.Process.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: uint32(pid)}}, Signal: pb.Signal(sig)}))
	return err
}

// WriteStdin streams r to pid's stdin; with eof, stdin is closed afterwards.
func (c *Client) WriteStdin(ctx context.Context, pid int, r io.Reader, eof bool) error {
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: uint32(pid)}}
	first := &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}}
	err := sendStream(c.Process.StreamInput(ctx), first, r, 64<<10, func(b []byte) *pb.StreamInputRequest {
		return &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{
			Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: b}}}}}
	})
	if err != nil {
		return err
	}
	if eof {
		_, err := c.Process.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel}))
		return err
	}
	return nil
}

// Processes lists running processes started through the agent.
func (c *Client) Processes(ctx context.Context) ([]api.ProcessInfo, error) {
	resp, err := c.Process.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		return nil, err
	}
	out := []api.ProcessInfo{}
	for _, p := range resp.Msg.GetProcesses() {
		out = append(out, api.ProcessInfo{Pid: int(p.GetPid()), Tag: p.GetTag(),
			Cmd: append([]string{p.GetConfig().GetCmd()}, p.GetConfig().GetArgs()...)})
	}
	return out, nil
}

// ReadFile streams the file at path into w. started runs once the agent has opened the file,
// before the first byte is written, so callers can still report an error cleanly until then.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer, started func()) error {
	stream, err := c.Agent.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{Path: path}))
	if err != nil {
		return err
	}
	defer stream.Close()
	first := true
	for stream.Receive() {
		if first && started != nil {
			started()
		}
		first = false
		if _, err := w.Write(stream.Msg().GetData()); err != nil {
			return err
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	if first && started != nil {
		started() // empty file
	}
	return nil
}

// Stat describes path.
func (c *Client) Stat(ctx context.Context, path string) (api.FileInfo, error) {
	resp, err := c.FS.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: path}))
	if err != nil {
		return api.FileInfo{}, err
	}
	return FileInfo(resp.Msg.GetEntry()), nil
}

// MakeDir creates path and its parents.
func (c *Client) MakeDir(ctx context.Context, path string) (api.FileInfo, error) {
	resp, err := c.FS.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: path}))
	if err != nil {
		return api.FileInfo{}, err
	}
	return FileInfo(resp.Msg.GetEntry()), nil
}

// List lists a directory to depth.
func (c *Client) List(ctx context.Context, path string, depth int) ([]api.FileInfo, error) {
	resp, err := c.FS.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: path, Depth: uint32(depth)}))
	if err != nil {
		return nil, err
	}
	out := make([]api.FileInfo, 0, len(resp.Msg.GetEntries()))
	for _, e := range resp.Msg.GetEntries() {
		out = append(out, FileInfo(e))
	}
	return out, nil
}

// Remove deletes path (recursively unless told otherwise).
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := c.FS.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: path, NoRecursive: !recursive}))
	return err
}

// FileInfo converts a protocol entry to the API's.
func FileInfo(e *pb.EntryInfo) api.FileInfo {
	fi := api.FileInfo{Name: e.GetName(), Path: e.GetPath(), Size: e.GetSize(), Mode: e.GetMode(),
		SymlinkTarget: e.GetSymlinkTarget()}
	if t := e.GetModifiedTime(); t != nil {
		fi.ModifiedAt = t.AsTime()
	}
	switch e.GetType() {
	case pb.FileType_FILE_TYPE_DIRECTORY:
		fi.Type = "dir"
	case pb.FileType_FILE_TYPE_SYMLINK:
		fi.Type = "symlink"
	default:
		fi.Type = "file"
	}
	return fi
}

// Resize changes the terminal size of a PTY process.
func (c *Client) Resize(ctx context.Context, pid int, cols, rows uint16) error {
	_, err := c.Process.Update(ctx, connect.NewRequest(&pb.UpdateRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: uint32(pid)}},
		Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: uint32(cols), Rows: uint32(rows)}}}))
	return err
}

// AnswerBudget bounds the daemon memory that agent answers take while the daemon reads and uses
// them (see WithAnswerBudget).
type AnswerBudget interface {
	// Reserve is called before the first byte of an answer is read, with the most the answer may
	// take on the wire (MaxMessage). It blocks until that much is available or fails, and then the
	// read fails with its error.
	Reserve(ctx context.Context, n int64) error
	// Settle is called once the whole answer has been read, with its size on the wire, so that
	// the part of the reservation it did not use can be given back.
	Settle(n int64)
}

type budgetKey struct{}

// WithAnswerBudget charges the answers of the agent calls made with ctx to b. Use it for unary
// calls only: the reservation is made when the answer starts, which for a unary call is when the
// work is done, but for a stream would be for the stream's whole life.
func WithAnswerBudget(ctx context.Context, b AnswerBudget) context.Context {
	return context.WithValue(ctx, budgetKey{}, b)
}

// budgetTransport charges answer bodies to the request context's AnswerBudget, if any.
type budgetTransport struct{ base http.RoundTripper }

func (t budgetTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if b, ok := req.Context().Value(budgetKey{}).(AnswerBudget); ok {
		resp.Body = &chargedBody{ReadCloser: resp.Body, ctx: req.Context(), b: b}
	}
	return resp, nil
}

// chargedBody reserves budget before its first byte is read, so that the reader's buffers
// (which grow as bytes arrive) never outrun it.
type chargedBody struct {
	io.ReadCloser
	ctx               context.Context
	b                 AnswerBudget
	reserved, settled bool
	n                 int64
}

func (c *chargedBody) Read(p []byte) (int, error) {
	if !c.reserved {
		if err := c.b.Reserve(c.ctx, MaxMessage); err != nil {
			return 0, err
		}
		c.reserved = true
	}
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	if errors.Is(err, io.EOF) && !c.settled {
		c.settled = true
		c.b.Settle(c.n)
	}
	return n, err
}

// CloseIdleConnections forwards to the wrapped transport, so http.Client.CloseIdleConnections
// still works through the wrapper.
func (t budgetTransport) CloseIdleConnections() {
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}
