package modal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// Modal's clients do sb.filesystem.* as execs of fsTool with one JSON argument naming the
// operation (see COMPAT.md §2.9). Airlock serves that convention daemon-side: the exec never
// reaches the sandbox's process table; each operation is the engine's file call of the same
// meaning, so the agent's confinement and the engine's checks apply as to /v1 files. Output
// and failures follow the tool's: results on stdout, a failure is exit 1 with
// {"error_kind","message"} on stderr.

// fsRequest is the tool's argument: exactly one field set.
type fsRequest struct {
	WriteFile     *fsPath  `json:"WriteFile"`
	ReadFile      *fsPath  `json:"ReadFile"`
	ListFiles     *fsPath  `json:"ListFiles"`
	Stat          *fsPath  `json:"Stat"`
	MakeDirectory *fsPath  `json:"MakeDirectory"`
	Remove        *fsPath  `json:"Remove"`
	Watch         *fsWatch `json:"Watch"`
}

type fsPath struct {
	Path      string `json:"path"`
	Parents   *bool  `json:"parents"`
	Recursive bool   `json:"recursive"`
}

type fsWatch struct {
	Path string `json:"path"`
}

// fileInfo is the tool's FileInfo.
type fileInfo struct {
	Name          string  `json:"name"`
	Path          string  `json:"path"`
	Type          string  `json:"type"` // file, directory, symlink
	Size          int64   `json:"size"`
	Mode          uint32  `json:"mode"`
	Permissions   string  `json:"permissions"`
	Owner         string  `json:"owner"`
	Group         string  `json:"group"`
	ModifiedTime  int64   `json:"modified_time"` // Unix seconds
	SymlinkTarget *string `json:"symlink_target"`
}

func toFileInfo(fi api.FileInfo) fileInfo {
	t := fi.Type
	if t == "dir" {
		t = "directory"
	}
	out := fileInfo{Name: fi.Name, Path: fi.Path, Type: t, Size: fi.Size, Mode: fi.Mode,
		Permissions: fs.FileMode(fi.Mode).Perm().String(), ModifiedTime: fi.ModifiedAt.Unix()}
	if fi.SymlinkTarget != "" {
		out.SymlinkTarget = &fi.SymlinkTarget
	}
	return out
}

// fsError is a failure in the tool's shape.
type fsError struct {
	Kind    string `json:"error_kind"`
	Message string `json:"message"`
}

// maxFSRead bounds a file read through the convention (its bytes are held until the client
// reads them): past it, FileTooLarge.
const maxFSRead = 64 << 20

// runFSTool performs one filesystem operation as the execution x.
func (s *Server) runFSTool(b *box, x *execution, args []string) {
	ctx := b.ctx
	fail := func(err error) {
		kind, msg := fsKind(err), api.PublicDetail(err).Message
		var ke *kindError
		if errors.As(err, &ke) {
			msg = ke.msg
		}
		j, _ := json.Marshal(fsError{Kind: kind, Message: msg})
		x.output(1, j)
		x.finish(1, 0)
	}
	var req fsRequest
	if len(args) != 1 || json.Unmarshal([]byte(args[0]), &req) != nil {
		fail(fsErr("InvalidArgument", "modal-sandbox-fs-tools takes one JSON argument"))
		return
	}
	sb, done, err := s.cfg.Engine.Use(ctx, b.id)
	if err != nil {
		fail(err)
		return
	}
	defer done()
	if err := s.fsOp(ctx, sb, x, &req); err != nil {
		fail(err)
		return
	}
	x.finish(0, 0)
}

func (s *Server) fsOp(ctx context.Context, sb *engine.Sandbox, x *execution, req *fsRequest) error {
	switch {
	case req.WriteFile != nil:
		pr, pw := io.Pipe()
		x.started(func(ctx context.Context, b []byte, eof bool) error {
			if len(b) > 0 {
				if _, err := pw.Write(b); err != nil {
					return err
				}
			}
			if eof {
				pw.Close()
			}
			return nil
		})
		// Ends with the sandbox or the server, too: the writer side is then never closed.
		stop := context.AfterFunc(ctx, func() { pr.CloseWithError(ctx.Err()) })
		defer stop()
		_, err := sb.WriteFile(ctx, req.WriteFile.Path, pr, 0o644)
		pr.CloseWithError(errors.New("the write has ended"))
		return err
	case req.ReadFile != nil:
		fi, err := sb.Stat(ctx, req.ReadFile.Path)
		if err != nil {
			return err
		}
		if fi.Type == "dir" {
			return fsErr("IsDirectory", "%s is a directory", req.ReadFile.Path)
		}
		if fi.Size > maxFSRead {
			return fsErr("FileTooLarge", "%s has %d bytes; at most %d are read at once", req.ReadFile.Path, fi.Size, maxFSRead)
		}
		return sb.ReadFile(ctx, req.ReadFile.Path, &execWriter{x: x, fd: 0, left: maxFSRead}, func() {})
	case req.ListFiles != nil:
		fi, err := sb.Stat(ctx, req.ListFiles.Path)
		if err != nil {
			return err
		}
		if fi.Type != "dir" {
			return fsErr("NotDirectory", "%s is not a directory", req.ListFiles.Path)
		}
		list, err := sb.List(ctx, req.ListFiles.Path, 1)
		if err != nil {
			return err
		}
		out := make([]fileInfo, 0, len(list))
		for _, f := range list {
			out = append(out, toFileInfo(f))
		}
		return x.json(out)
	case req.Stat != nil:
		fi, err := sb.Stat(ctx, req.Stat.Path)
		if err != nil {
			return err
		}
		return x.json(toFileInfo(fi))
	case req.MakeDirectory != nil:
		p := req.MakeDirectory.Path
		if par := req.MakeDirectory.Parents; par != nil && !*par {
			if fi, err := sb.Stat(ctx, p); err == nil {
				return fsErr("PathAlreadyExists", "%s exists already (%s)", p, fi.Type)
			}
			if fi, err := sb.Stat(ctx, path.Dir(p)); err != nil {
				return err
			} else if fi.Type != "dir" {
				return fsErr("NotDirectory", "%s is not a directory", path.Dir(p))
			}
		}
		_, err := sb.Mkdir(ctx, p)
		return err
	case req.Remove != nil:
		if _, err := sb.Stat(ctx, req.Remove.Path); err != nil {
			return err
		}
		return sb.Remove(ctx, req.Remove.Path, req.Remove.Recursive)
	case req.Watch != nil:
		return fsErr("NotSupported", "watching files is not supported by Airlock's Modal API")
	}
	return fsErr("InvalidArgument", "unknown modal-sandbox-fs-tools operation")
}

// json writes v as the execution's stdout.
func (x *execution) json(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	x.output(0, b)
	return nil
}

// execWriter appends a file's bytes to an execution's stream, at most left of them.
type execWriter struct {
	x    *execution
	fd   int
	left int64
}

func (w *execWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, fsErr("FileTooLarge", "the file grew past %d bytes while it was read", maxFSRead)
	}
	w.left -= int64(len(p))
	w.x.output(w.fd, p)
	return len(p), nil
}

// kindError is a failure of a named error kind.
type kindError struct{ kind, msg string }

func (e *kindError) Error() string { return e.msg }

func fsErr(kind, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// fsKind is the tool's error kind of err.
func fsKind(err error) string {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.kind
	}
	msg := strings.ToLower(err.Error())
	switch {
	case api.CodeOf(err) == api.CodeNotFound, strings.Contains(msg, "no such file"):
		return "NotFound"
	case strings.Contains(msg, "not a directory"):
		return "NotDirectory"
	case strings.Contains(msg, "is a directory"):
		return "IsDirectory"
	case strings.Contains(msg, "not empty"):
		return "DirectoryNotEmpty"
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "read-only"):
		return "PermissionDenied"
	}
	return "Unknown"
}
