package engine

import (
	"context"
	"io"
	"math"
	"path"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
)

// ExecOptions are how the caller consumes an exec.
type ExecOptions struct {
	OutputLimit int64 // per stream; 0 = unlimited (streaming)
	KeepStdin   bool
}

// Exec runs req in sb, calling on for each event (start, output) until the process ends.
func (e *Engine) Exec(ctx context.Context, sb *Sandbox, req api.ExecRequest, o ExecOptions, on func(Event)) (*End, error) {
	x, err := e.execRequest(sb, req)
	if err != nil {
		return nil, err
	}
	x.OutputLimit, x.KeepStdin = o.OutputLimit, o.KeepStdin || req.StdinOpen
	end, err := sb.client.Exec(ctx, x, on)
	if err != nil {
		return nil, e.endedError(sb, err)
	}
	return end, nil
}

func (e *Engine) execRequest(sb *Sandbox, req api.ExecRequest) (Process, error) {
	if len(req.Cmd) == 0 || req.Cmd[0] == "" {
		return Process{}, invalid("cmd is required")
	}
	for _, a := range req.Cmd {
		if strings.ContainsRune(a, 0) {
			return Process{}, invalid("cmd contains a NUL byte")
		}
	}
	var timeout time.Duration
	if req.Timeout != 0 {
		if math.IsNaN(req.Timeout) || req.Timeout < 0 || req.Timeout > e.cfg.MaxSandboxTimeout.Seconds() {
			return Process{}, invalid("timeout %v s is outside 0…%v s", req.Timeout, e.cfg.MaxSandboxTimeout.Seconds())
		}
		// The agent counts in milliseconds, with 0 meaning no limit: a positive timeout below
		// that resolution rounds up to 1 ms rather than vanish.
		timeout = max(time.Duration(req.Timeout*float64(time.Second)), time.Millisecond)
	}
	if err := validateEnv(req.Env); err != nil {
		return Process{}, err
	}
	env := map[string]string{}
	for k, v := range sb.req.Env {
		env[k] = v
	}
	for k, v := range req.Env {
		env[k] = v
	}
	dir := req.Workdir
	if dir == "" {
		dir = sb.req.Workdir
	} else if !path.IsAbs(dir) {
		dir = path.Join(sb.req.Workdir, dir)
	}
	if strings.ContainsRune(dir, 0) || len(req.Tag) > 128 {
		return Process{}, invalid("workdir or tag is invalid")
	}
	if p := req.PTY; p != nil && (p.Cols == 0 || p.Rows == 0 || p.Cols > 4096 || p.Rows > 4096) {
		return Process{}, invalid("pty size must be 1…4096 columns and rows")
	}
	return Process{Cmd: req.Cmd[0], Args: req.Cmd[1:], Env: env, Dir: dir, Tag: req.Tag,
		Stdin: []byte(req.Stdin), Timeout: timeout, PTY: req.PTY}, nil
}

// Resize changes the terminal size of a PTY process.
func (e *Engine) Resize(ctx context.Context, sb *Sandbox, pid int, cols, rows uint16) error {
	return e.endedError(sb, sb.client.Resize(ctx, pid, cols, rows))
}

// Signal sends sig to a process the API started in sb.
func (e *Engine) Signal(ctx context.Context, sb *Sandbox, pid, sig int) error {
	return e.endedError(sb, sb.client.Signal(ctx, pid, sig))
}

// WriteStdin streams r to a process's stdin, closing stdin afterwards if eof.
func (e *Engine) WriteStdin(ctx context.Context, sb *Sandbox, pid int, r io.Reader, eof bool) error {
	return e.endedError(sb, sb.client.WriteStdin(ctx, pid, r, eof))
}

// Processes lists processes started through the API that are still running.
func (e *Engine) Processes(ctx context.Context, sb *Sandbox) ([]api.ProcessInfo, error) {
	ps, err := sb.client.Processes(ctx)
	return ps, e.endedError(sb, err)
}

// ReadFile streams the file p of sb into w; started runs before the first byte is written.
func (e *Engine) ReadFile(ctx context.Context, sb *Sandbox, p string, w io.Writer, started func()) error {
	return e.endedError(sb, sb.client.ReadFile(ctx, sb.resolve(p), w, started))
}

// WriteFile streams r into p.
func (e *Engine) WriteFile(ctx context.Context, sb *Sandbox, p string, r io.Reader, mode uint32) (api.FileInfo, error) {
	p = sb.resolve(p)
	if err := sb.client.WriteFile(ctx, p, r, mode); err != nil {
		return api.FileInfo{}, e.endedError(sb, err)
	}
	return e.Stat(ctx, sb, p)
}

// Stat describes p.
func (e *Engine) Stat(ctx context.Context, sb *Sandbox, p string) (api.FileInfo, error) {
	fi, err := sb.client.Stat(ctx, sb.resolve(p))
	return fi, e.endedError(sb, err)
}

// List lists the directory p to depth (1 = its entries only).
func (e *Engine) List(ctx context.Context, sb *Sandbox, p string, depth int) ([]api.FileInfo, error) {
	if depth < 1 || depth > 16 {
		return nil, invalid("depth %d is outside 1…16", depth)
	}
	l, err := sb.client.List(ctx, sb.resolve(p), depth)
	return l, e.endedError(sb, err)
}

// Mkdir creates p and its parents.
func (e *Engine) Mkdir(ctx context.Context, sb *Sandbox, p string) (api.FileInfo, error) {
	fi, err := sb.client.MakeDir(ctx, sb.resolve(p))
	return fi, e.endedError(sb, err)
}

// Remove deletes p; a non-empty directory only when recursive.
func (e *Engine) Remove(ctx context.Context, sb *Sandbox, p string, recursive bool) error {
	return e.endedError(sb, sb.client.Remove(ctx, sb.resolve(p), recursive))
}

// resolve makes a relative path relative to the workdir; the agent confines the result.
func (sb *Sandbox) resolve(p string) string {
	if p != "" && !path.IsAbs(p) {
		return path.Join(sb.req.Workdir, p)
	}
	return p
}
