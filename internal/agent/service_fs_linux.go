package agent

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// fsService implements the envd-shaped Filesystem service. Every operation runs as the sandbox
// user on one of the agent's file-system threads (see fsPool), on paths checked by sandboxPath,
// resolved once (see files_linux.go).
type fsService struct {
	a *Agent
	agentpbconnect.UnimplementedFilesystemHandler
}

var _ agentpbconnect.FilesystemHandler = (*fsService)(nil)

// inUserFS runs fn as the sandbox user on a checked path.
func (s *fsService) inUserFS(ctx context.Context, p string, fn func(p string) error) error {
	p, err := sandboxPath(p)
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	if err := s.a.asUser(ctx, func() error { return fn(p) }); err != nil {
		return fileError(err)
	}
	return nil
}

// inParent runs fn with a descriptor of p's directory and p's name in it.
func inParent(p string, create bool, fn func(dirfd int, name string) error) error {
	dirfd, name, err := openParent(p, create)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	return fn(dirfd, name)
}

func (s *fsService) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	var e *pb.EntryInfo
	err := s.inUserFS(ctx, req.Msg.GetPath(), func(p string) error {
		return inParent(p, false, func(dirfd int, name string) (err error) {
			e, err = entryAt(dirfd, name, p)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

func (s *fsService) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	var e *pb.EntryInfo
	err := s.inUserFS(ctx, req.Msg.GetPath(), func(p string) error {
		fd, err := mkdirAll(p)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		_, name := splitPath(p)
		if p == "/" {
			name = "/"
		}
		e = entryOf(&st, name, p)
		return nil
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
	err = s.inUserFS(ctx, req.Msg.GetSource(), func(src string) error {
		return inParent(src, false, func(srcfd int, srcName string) error {
			return inParent(dst, false, func(dstfd int, dstName string) (err error) {
				if err := unix.Renameat2(srcfd, srcName, dstfd, dstName, 0); err != nil {
					return fmt.Errorf("rename %s to %s: %w", src, dst, err)
				}
				e, err = entryAt(dstfd, dstName, dst)
				return err
			})
		})
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: e}), nil
}

// A listing is bounded in entries and bytes, so a directory that code in the sandbox filled
// with millions of files or long symlinks cannot balloon the agent's or the daemon's memory.
// listCost estimates the heap an entry takes in the agent (the message, its strings and its
// timestamp), so maxListBytes is close to real memory.
//
// The bound holds in aggregate too: a listing reserves maxListBytes of listBudget before it
// starts, so listBudget/maxListBytes listings run at once and the rest wait (on their ctx).
// Each answer is then the same whatever else runs: a full listing, or 413 if the directory
// itself is too large. 150 concurrent listings of one planted directory, each bounded alone,
// made the agent allocate ~400 MB and get OOM-killed (review H2).
const (
	maxListEntries = 100000
	maxListBytes   = 16 << 20
	listBudget     = 2 * maxListBytes
	maxListDepth   = 16
	listEntryCost  = 320
)

// listCost is what an entry adds beyond its name, which walk charges when it reads it.
func listCost(e *pb.EntryInfo) int {
	return listEntryCost - nameCost + len(e.Path) + len(e.GetSymlinkTarget())
}

// nameCost is the overhead of one name read from a directory (a string header in names).
const nameCost = 16

var errTooMany = connect.NewError(connect.CodeResourceExhausted, errors.New("directory listing exceeds 100000 entries or 16 MiB; list a subdirectory or lower depth"))

func (s *fsService) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	if depth > maxListDepth {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("depth %d is over %d", depth, maxListDepth))
	}
	if err := s.a.files.lists.Acquire(ctx, maxListBytes); err != nil {
		return nil, err
	}
	defer s.a.files.lists.Release(maxListBytes)
	l := &lister{depth: depth}
	err := s.inUserFS(ctx, req.Msg.GetPath(), func(root string) error {
		// The root itself may be a link the user made: follow it, then never again below.
		fd, err := openDirAt(unix.AT_FDCWD, root, unix.O_RDONLY, 0)
		if err != nil {
			return fmt.Errorf("list %s: %w", root, err)
		}
		defer unix.Close(fd)
		return l.walk(fd, root, 1)
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.ListDirResponse{Entries: l.entries}), nil
}

// lister walks a directory tree through descriptors, in the order filepath.WalkDir would.
type lister struct {
	depth   int
	entries []*pb.EntryInfo
	size    int // estimated bytes held: names read, and listCost of their entries
}

// walk lists dirfd (at path dir, level levels below the root) and what is below it to l.depth.
// Entries that vanish while it runs are left out, as are directories it cannot open or that
// are on a pseudo file system.
func (l *lister) walk(dirfd int, dir string, level int) error {
	var names []string
	buf := make([]byte, 32<<10)
	for {
		before := len(names)
		var err error
		if names, err = readNames(dirfd, buf, names); err != nil {
			return fmt.Errorf("list %s: %w", dir, err)
		}
		if len(names) == before {
			break
		}
		// Charged as they are read: the names of one directory are all held before its
		// entries are built (to sort them, as WalkDir did).
		for _, n := range names[before:] {
			l.size += len(n) + nameCost
		}
		if l.size > maxListBytes || len(l.entries)+len(names) > maxListEntries {
			return errTooMany
		}
	}
	slices.Sort(names)
	for _, name := range names {
		e, err := entryAt(dirfd, name, path.Join(dir, name))
		if err != nil {
			continue
		}
		if l.size += listCost(e); l.size > maxListBytes || len(l.entries) >= maxListEntries {
			return errTooMany
		}
		l.entries = append(l.entries, e)
		if e.Type != pb.FileType_FILE_TYPE_DIRECTORY || level >= l.depth {
			continue
		}
		// Without following symlinks: one swapped in since entryAt is not followed.
		sub, err := openDirAt(dirfd, name, unix.O_RDONLY, unix.RESOLVE_NO_SYMLINKS)
		if err != nil {
			continue
		}
		err = l.walk(sub, e.Path, level+1)
		unix.Close(sub)
		if errors.Is(err, errTooMany) {
			return err
		}
	}
	return nil
}

// removeTimeout bounds one Remove: it holds one of the agent's file workers while it runs.
const removeTimeout = time.Minute

func (s *fsService) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	ctx, cancel := context.WithTimeoutCause(ctx, removeTimeout, errors.New("the remove took longer than a minute (is something recreating the tree?)"))
	defer cancel()
	err := s.inUserFS(ctx, req.Msg.GetPath(), func(p string) error {
		if p == "/" || p == "/workspace" || p == "/tmp" {
			return connect.NewError(connect.CodeInvalidArgument, errors.New(p+" cannot be removed"))
		}
		return inParent(p, false, func(dirfd int, name string) error {
			if err := removeAt(ctx, dirfd, name, !req.Msg.GetNoRecursive()); err != nil {
				return fmt.Errorf("remove %s: %w", p, err)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}
