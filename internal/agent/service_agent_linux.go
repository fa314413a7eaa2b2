package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// agentService implements Airlock's own Agent service: health and streamed file transfer.
type agentService struct{ a *Agent }

var _ agentpbconnect.AgentHandler = (*agentService)(nil)

func (s *agentService) Health(ctx context.Context, req *connect.Request[pb.HealthRequest]) (*connect.Response[pb.HealthResponse], error) {
	s.a.mu.Lock()
	n := len(s.a.procs)
	s.a.mu.Unlock()
	return connect.NewResponse(&pb.HealthResponse{UptimeUs: uint64(time.Since(s.a.started).Microseconds()), PidCount: uint32(n)}), nil
}

func (s *agentService) Shutdown(ctx context.Context, req *connect.Request[pb.ShutdownRequest]) (*connect.Response[pb.ShutdownResponse], error) {
	// Killing everything else ends the sandbox's work; the daemon then destroys the sandbox.
	unix.Kill(-1, unix.SIGKILL)
	return connect.NewResponse(&pb.ShutdownResponse{}), nil
}

// fileError maps a file-system error to a Connect code the daemon can turn into an API error.
func fileError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, os.ErrPermission), errors.Is(err, unix.EROFS), errors.Is(err, errPseudoFS):
		return connect.NewError(connect.CodePermissionDenied, err)
	case full(err):
		// The daemon answers 413 for it; the sandbox stays usable (deleting files frees it).
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("the sandbox's disk is full: %w", err))
	case errors.Is(err, unix.EISDIR), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP),
		errors.Is(err, unix.EXDEV), errors.Is(err, unix.EINVAL):
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	return connect.NewError(connect.CodeInvalidArgument, err)
}

func (s *agentService) ReadFile(ctx context.Context, req *connect.Request[pb.ReadFileRequest], stream *connect.ServerStream[pb.FileChunk]) error {
	f, err := s.a.openFile(ctx, req.Msg.GetPath(), unix.O_RDONLY, 0, false)
	if err != nil {
		return fileError(err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		return fileError(unix.EISDIR)
	}
	var r io.Reader = f
	if off := req.Msg.GetOffset(); off > 0 {
		if _, err := f.Seek(int64(off), io.SeekStart); err != nil {
			return fileError(err)
		}
	}
	if lim := req.Msg.GetLimit(); lim > 0 {
		r = io.LimitReader(f, int64(lim))
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := stream.Send(&pb.FileChunk{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fileError(err)
		}
	}
}

func (s *agentService) WriteFile(ctx context.Context, stream *connect.ClientStream[pb.WriteFileRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, err
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty write stream"))
	}
	h := stream.Msg().GetHeader()
	if h == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("write stream must start with a header"))
	}
	flags := unix.O_WRONLY | unix.O_CREAT
	if h.GetAppend() {
		flags |= unix.O_APPEND
	} else {
		flags |= unix.O_TRUNC
	}
	mode := h.GetMode() & 0o777
	if mode == 0 {
		mode = 0o644
	}
	f, err := s.a.openFile(ctx, h.GetPath(), flags, mode, h.GetCreateParents())
	if err != nil {
		return nil, fileError(err)
	}
	defer f.Close()
	size, err := receiveInto(f, stream)
	if err != nil {
		if full(err) {
			// Take back what this write added, so a 413 does not leave the scratch full. The
			// caller's ctx may be ending with the stream: the undo must still run.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if derr := s.a.discard(ctx, f); derr != nil {
				s.a.cfg.Logger.WarnContext(ctx, "undo a write that filled the scratch", "path", f.Name(), "err", derr)
			}
		}
		return nil, err
	}
	return connect.NewResponse(&pb.WriteFileResponse{Path: f.Name(), Size: size}), nil
}

// receiveInto writes the data of stream to f. Errors of f are mapped by fileError; those of the
// stream are returned as they are. (tmpfs reports a full scratch at write, not at close.)
func receiveInto(f *openedFile, stream *connect.ClientStream[pb.WriteFileRequest]) (int64, error) {
	var size int64
	for stream.Receive() {
		n, err := f.Write(stream.Msg().GetData())
		size += int64(n)
		if err != nil {
			return size, fileError(err)
		}
	}
	return size, stream.Err()
}

// full reports whether err is the scratch (or a file-size limit) running out: the 413 path.
func full(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EFBIG)
}
