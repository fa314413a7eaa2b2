package modal

import (
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"time"

	pb "github.com/modal-labs/modal-client/go/proto/modal_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/airlockhq/airlock/internal/engine"
)

// router serves modal.task_command_router.TaskCommandRouter: executions in one sandbox, the
// one its caller's router token names. A call for another task is PERMISSION_DENIED.
type router struct {
	pb.UnimplementedTaskCommandRouterServer
	s *Server
}

var _ pb.TaskCommandRouterServer = (*router)(nil)

// fsTool is the argv[0] by which Modal's clients do sb.filesystem.* (see fstools.go).
const fsTool = "/__modal/.bin/modal-sandbox-fs-tools"

// task returns the box of the task (our sandbox id) a router call names, checked against
// the caller's token.
func (r *router) task(ctx context.Context, taskID string) (*box, error) {
	c := callerOf(ctx)
	if taskID != c.sandbox {
		return nil, errorf(codes.PermissionDenied, "this router token is for task %s, not %s", c.sandbox, taskID)
	}
	b, err := r.s.box(ctx, taskID)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// execution returns the execution execID of the task.
func (r *router) execution(ctx context.Context, taskID, execID string) (*execution, error) {
	b, err := r.task(ctx, taskID)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	x, ok := b.execs[execID]
	if !ok {
		return nil, errorf(codes.NotFound, "no exec %s in task %s", execID, taskID)
	}
	return x, nil
}

func (r *router) TaskExecStart(ctx context.Context, req *pb.TaskExecStartRequest) (*pb.TaskExecStartResponse, error) {
	b, err := r.task(ctx, req.GetTaskId())
	if err != nil {
		return nil, err
	}
	args := req.GetCommandArgs()
	if len(args) == 0 {
		return nil, errorf(codes.InvalidArgument, "command_args is empty")
	}
	if n := argBytes(args); n > maxArgBytes {
		return nil, errorf(codes.InvalidArgument, "command_args has %d bytes; at most %d (the kernel's own bound is near)", n, maxArgBytes)
	}
	if req.HasPtyInfo() {
		return nil, errorf(codes.InvalidArgument, "pty execs are not supported by Airlock's Modal API")
	}
	env := maps.Clone(req.GetEnv())
	if env == nil {
		env = map[string]string{}
	}
	if len(req.GetSecretIds()) > 0 || len(req.GetSecretSources()) > 0 {
		if err := r.s.secretEnv(ctx, req.GetSecretIds(), req.GetSecretSources(), env); err != nil {
			return nil, err
		}
	}
	spec := engine.ExecSpec{Cmd: args, Env: env, Workdir: req.GetWorkdir()}
	if req.HasTimeoutSecs() && req.GetTimeoutSecs() > 0 {
		spec.Timeout = time.Duration(req.GetTimeoutSecs()) * time.Second
	}
	// stdout_config and stderr_config are not honoured: DEVNULL is their zero value, which a
	// client that never sets them would send, so output is always kept.
	x, fresh, err := b.addExec(req.GetExecId())
	if err != nil || !fresh {
		// A retry of a start already made: never start it twice.
		return &pb.TaskExecStartResponse{}, err
	}
	if args[0] == fsTool {
		r.s.start(x, func() { r.s.runFSTool(b, x, args[1:]) })
	} else {
		r.s.start(x, func() { r.s.runProcess(b, x, spec) })
	}
	return &pb.TaskExecStartResponse{}, nil
}

// maxArgBytes bounds a command's arguments together: under execve's ARG_MAX.
const maxArgBytes = 1 << 20

func argBytes(args []string) int {
	n := 0
	for _, a := range args {
		n += len(a) + 1
	}
	return n
}

// addExec registers a new execution under id; fresh is false if id exists already.
func (b *box) addExec(id string) (x *execution, fresh bool, err error) {
	if id == "" || len(id) > 128 {
		return nil, false, errorf(codes.InvalidArgument, "exec_id must be 1…128 characters")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if x, ok := b.execs[id]; ok {
		return x, false, nil
	}
	// Forget the oldest finished executions while too many are kept or their output fills
	// half the budget; if all are running at the count's bound, refuse.
	for i := 0; i < len(b.order) && (len(b.order) >= maxExecs || b.retained.Load() > maxRetained/2); {
		old := b.execs[b.order[i]]
		if _, _, done := old.exit(); !done {
			i++
			continue
		}
		b.retained.Add(-old.size())
		delete(b.execs, b.order[i])
		b.order = slices.Delete(b.order, i, i+1)
	}
	if len(b.order) >= maxExecs {
		return nil, false, errorf(codes.ResourceExhausted, "%d commands are running in this sandbox already", maxExecs)
	}
	x = newExecution(&b.retained)
	b.execs[id] = x
	b.order = append(b.order, id)
	return x, true, nil
}

func (r *router) TaskExecStdioRead(req *pb.TaskExecStdioReadRequest, ss grpc.ServerStreamingServer[pb.TaskExecStdioReadResponse]) error {
	ctx := ss.Context()
	x, err := r.execution(ctx, req.GetTaskId(), req.GetExecId())
	if err != nil {
		return err
	}
	fd := 0
	if req.GetFileDescriptor() == pb.TaskExecStdioFileDescriptor_TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR {
		fd = 1
	}
	return x.read(ctx, fd, req.GetOffset(), func(b []byte) error {
		return ss.Send(pb.TaskExecStdioReadResponse_builder{Data: b}.Build())
	})
}

// waitSlice bounds one TaskExecWait: the client's deadline is 60 s and it retries, so the
// server answers within it rather than let the call die at the client.
const waitSlice = 50 * time.Second

func (r *router) TaskExecWait(ctx context.Context, req *pb.TaskExecWaitRequest) (*pb.TaskExecWaitResponse, error) {
	x, err := r.execution(ctx, req.GetTaskId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, waitSlice)
	defer cancel()
	code, sig, err := x.wait(wctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, errorf(codes.DeadlineExceeded, "the command is still running")
	}
	return exitStatus[pb.TaskExecWaitResponse](code, sig, true), nil
}

func (r *router) TaskExecPoll(ctx context.Context, req *pb.TaskExecPollRequest) (*pb.TaskExecPollResponse, error) {
	x, err := r.execution(ctx, req.GetTaskId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	code, sig, done := x.exit()
	return exitStatus[pb.TaskExecPollResponse](code, sig, done), nil
}

// exitStatus builds a wait or poll answer: code, even 0, or signal; neither while running.
func exitStatus[T pb.TaskExecWaitResponse | pb.TaskExecPollResponse, PT interface {
	*T
	SetCode(int32)
	SetSignal(int32)
}](code, sig int32, done bool) *T {
	out := PT(new(T))
	switch {
	case !done:
	case sig != 0:
		out.SetSignal(sig)
	default:
		out.SetCode(code)
	}
	return out
}

func (r *router) TaskExecStdinWrite(ctx context.Context, req *pb.TaskExecStdinWriteRequest) (*pb.TaskExecStdinWriteResponse, error) {
	x, err := r.execution(ctx, req.GetTaskId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	return &pb.TaskExecStdinWriteResponse{}, x.writeStdin(ctx, req.GetOffset(), req.GetData(), req.GetEof())
}

func (r *router) TaskExecStdinWriteStream(ss grpc.ClientStreamingServer[pb.TaskExecStdinWriteStreamRequest, pb.TaskExecStdinWriteStreamResponse]) error {
	ctx := ss.Context()
	first, err := ss.Recv()
	if err != nil {
		return err
	}
	st := first.GetStart()
	if st == nil {
		return errorf(codes.InvalidArgument, "the first message of TaskExecStdinWriteStream must be start")
	}
	x, err := r.execution(ctx, st.GetTaskId(), st.GetExecId())
	if err != nil {
		return err
	}
	offset := st.GetOffset()
	for {
		m, err := ss.Recv()
		if errors.Is(err, io.EOF) {
			// The client half-closed without end: stdin stays open for another stream.
			return ss.SendAndClose(&pb.TaskExecStdinWriteStreamResponse{})
		}
		if err != nil {
			return err
		}
		if m.HasEnd() {
			if err := x.writeStdin(ctx, offset, nil, true); err != nil {
				return err
			}
			return ss.SendAndClose(&pb.TaskExecStdinWriteStreamResponse{})
		}
		d := m.GetData()
		if err := x.writeStdin(ctx, offset, d, false); err != nil {
			return err
		}
		offset += uint64(len(d))
	}
}

func (r *router) TaskExecStdinStatus(ctx context.Context, req *pb.TaskExecStdinStatusRequest) (*pb.TaskExecStdinStatusResponse, error) {
	x, err := r.execution(ctx, req.GetTaskId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	n, closed := x.stdinStatus()
	return pb.TaskExecStdinStatusResponse_builder{NumBytesWritten: n, Closed: closed}.Build(), nil
}

// entry returns the entrypoint of the task; a sandbox without one has empty stdio.
func (r *router) entry(ctx context.Context, taskID string) (*execution, error) {
	b, err := r.task(ctx, taskID)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entry == nil {
		return nil, errorf(codes.FailedPrecondition, "sandbox %s has no entrypoint command, so no stdio of its own", taskID)
	}
	return b.entry, nil
}

func (r *router) SandboxStdioReadV2(req *pb.SandboxStdioReadV2Request, ss grpc.ServerStreamingServer[pb.SandboxStdioReadV2Response]) error {
	ctx := ss.Context()
	x, err := r.entry(ctx, req.GetTaskId())
	if code(err) == codes.FailedPrecondition {
		return nil // no entrypoint: its stdio is empty, and ended
	}
	if err != nil {
		return err
	}
	fd := 0
	if req.GetFileDescriptor() == pb.SandboxStdioFileDescriptor_SANDBOX_STDIO_FILE_DESCRIPTOR_STDERR {
		fd = 1
	}
	offset := req.GetOffset()
	return x.read(ctx, fd, offset, func(b []byte) error {
		m := pb.SandboxStdioReadV2Response_builder{Data: b, StartingOffset: offset}.Build()
		offset += uint64(len(b))
		return ss.Send(m)
	})
}

func (r *router) SandboxStdinWriteV2(ctx context.Context, req *pb.SandboxStdinWriteV2Request) (*pb.SandboxStdinWriteV2Response, error) {
	x, err := r.entry(ctx, req.GetTaskId())
	if err != nil {
		return nil, err
	}
	return &pb.SandboxStdinWriteV2Response{}, x.writeStdin(ctx, req.GetOffset(), req.GetData(), req.GetEof())
}
