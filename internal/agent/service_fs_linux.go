package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// fsService implements the envd-shaped Filesystem service. Every operation runs as the sandbox
// user (see asUser) on paths checked by sandboxPath.
type fsService struct {
	a *Agent
	agentpbconnect.UnimplementedFilesystemHandler
}

var _ agentpbconnect.FilesystemHandler = (*fsService)(nil)

// entryInfo describes p without following a final symlink.
func entryInfo(p string) (*pb.EntryInfo, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	st, _ := fi.Sys().(*unix.Stat_t)
	if st == nil {
		var s unix.Stat_t
		unix.Lstat(p, &s)
		st = &s
	}
	e := &pb.EntryInfo{
		Name: fi.Name(), Path: p, Size: fi.Size(), Mode: uint32(fi.Mode().Perm()),
		Permissions: fi.Mode().String(), ModifiedTime: timestamppb.New(fi.ModTime()),
		Uid: st.Uid, Gid: st.Gid, Owner: ownerName(st.Uid), Group: ownerName(st.Gid),
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = pb.FileType_FILE_TYPE_SYMLINK
		if t, err := os.Readlink(p); err == nil {
			e.SymlinkTarget = &t
		}
	case fi.IsDir():
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	default:
		e.Type = pb.FileType_FILE_TYPE_FILE
	}
	return e, nil
}

func ownerName(id uint32) string {
	switch id {
	case 0:
		return "root"
	case 1000:
		return "sandbox"
	}
	return "nobody"
}

// inUserFS runs fn as the sandbox user on a checked path.
func (s *fsService) inUserFS(p string, fn func(p string) error) error {
	p, err := sandboxPath(p)
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	if err := s.a.asUser(func() error { return fn(p) }); err != nil {
		return fileError(err)
	}
	return nil
}

func (s *fsService) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	var e *pb.EntryInfo
	err := s.inUserFS(req.Msg.GetPath(), func(p string) (err error) {
		// Lstat resolves the parents: they must not lead into /proc (the agent's own entries).
		if err := checkOrdinaryPath(path.Dir(p)); err != nil {
			return err
		}
		e, err = entryInfo(p)
		return err
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

func (s *fsService) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	var e *pb.EntryInfo
	err := s.inUserFS(req.Msg.GetPath(), func(p string) error {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		var err error
		e, err = entryInfo(p)
		return err
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: e}), nil
}

func (s *fsService) Move(ctx context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	dst, err := sandboxPath(req.Msg.GetDestination())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	var e *pb.EntryInfo
	err = s.inUserFS(req.Msg.GetSource(), func(src string) error {
		if err := os.Rename(src, dst); err != nil {
			return err
		}
		var err error
		e, err = entryInfo(dst)
		return err
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: e}), nil
}

// A listing is bounded in entries and bytes, so a directory that code in the sandbox filled
// with millions of files or long symlinks cannot balloon the agent's or the daemon's memory.
const (
	maxListEntries = 100000
	maxListBytes   = 16 << 20
	maxLinkTarget  = 4096
)

func (s *fsService) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	out := &pb.ListDirResponse{}
	err := s.inUserFS(req.Msg.GetPath(), func(root string) error {
		fi, err := os.Stat(root)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return unix.ENOTDIR
		}
		// WalkDir does not follow symlinks below root, so a planted link cannot take the
		// listing elsewhere; root itself may be a link the user made.
		real, err := filepath.EvalSymlinks(root)
		if err != nil {
			return err
		}
		if err := checkOrdinaryPath(real); err != nil {
			return err
		}
		size := 0
		return filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if p == real {
					return err
				}
				return nil
			}
			if p == real {
				return nil
			}
			rel, _ := filepath.Rel(real, p)
			level := strings.Count(rel, "/") + 1
			if len(out.Entries) >= maxListEntries {
				return errTooMany
			}
			e, err := entryInfo(p)
			if err == nil {
				e.Path = path.Join(root, rel)
				if t := e.GetSymlinkTarget(); len(t) > maxLinkTarget {
					t = t[:maxLinkTarget]
					e.SymlinkTarget = &t
				}
				if size += len(e.Path) + len(e.GetSymlinkTarget()) + 128; size > maxListBytes {
					return errTooMany
				}
				out.Entries = append(out.Entries, e)
			}
			if d.IsDir() && level >= depth {
				return filepath.SkipDir
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

var errTooMany = connect.NewError(connect.CodeResourceExhausted, errors.New("directory listing exceeds 100000 entries or 16 MiB; list a subdirectory or lower depth"))

func (s *fsService) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	err := s.inUserFS(req.Msg.GetPath(), func(p string) error {
		if p == "/" || p == "/workspace" || p == "/tmp" {
			return connect.NewError(connect.CodeInvalidArgument, errors.New(p+" cannot be removed"))
		}
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		if req.Msg.GetNoRecursive() {
			return os.Remove(p)
		}
		return os.RemoveAll(p)
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}
