package agentclient

import (
	"context"
	"io"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
)

// WriteFile streams r into path in the sandbox, creating parent directories.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, mode uint32) error {
	first := &pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Header{Header: &pb.WriteFileHeader{
		Path: path, Mode: mode, CreateParents: true}}}
	return apiError(sendStream(c.agent.WriteFile(ctx), first, r, 256<<10, func(b []byte) *pb.WriteFileRequest {
		return &pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Data{Data: b}}
	}))
}

// ReadFile streams the file at path into w. started runs once the agent has opened the file,
// before the first byte is written, so callers can still report an error cleanly until then.
// An error of w is returned as it is.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer, started func()) error {
	stream, err := c.agent.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{Path: path}))
	if err != nil {
		return apiError(err)
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
		return apiError(err)
	}
	if first && started != nil {
		started() // empty file
	}
	return nil
}

// Stat describes path.
func (c *Client) Stat(ctx context.Context, path string) (api.FileInfo, error) {
	resp, err := c.fs.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: path}))
	if err != nil {
		return api.FileInfo{}, apiError(err)
	}
	return fileInfo(resp.Msg.GetEntry()), nil
}

// MakeDir creates path and its parents.
func (c *Client) MakeDir(ctx context.Context, path string) (api.FileInfo, error) {
	resp, err := c.fs.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: path}))
	if err != nil {
		return api.FileInfo{}, apiError(err)
	}
	return fileInfo(resp.Msg.GetEntry()), nil
}

// List lists a directory to depth.
func (c *Client) List(ctx context.Context, path string, depth int) ([]api.FileInfo, error) {
	resp, err := c.fs.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: path, Depth: uint32(depth)}))
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.FileInfo, 0, len(resp.Msg.GetEntries()))
	for _, e := range resp.Msg.GetEntries() {
		out = append(out, fileInfo(e))
	}
	return out, nil
}

// Remove deletes path (recursively unless told otherwise).
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := c.fs.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: path, NoRecursive: !recursive}))
	return apiError(err)
}

// fileInfo converts a protocol entry to the API's.
func fileInfo(e *pb.EntryInfo) api.FileInfo {
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
