package airlock

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
)

// Sandbox is a handle on a long-lived sandbox. It holds no connection and no state beyond the
// id, so it is cheap, safe for concurrent use, and stays valid (though every call then fails
// with [IsGone]) after the sandbox ends. A sandbox ends when you call Terminate, when its
// timeout or idle timeout passes, or when it dies; nothing ends it when the handle is dropped.
type Sandbox struct {
	c  *Client
	id string
}

// CreateSandbox starts a sandbox and returns a handle on it. Zero fields of req mean the
// daemon's defaults (a 300 s life, network blocked, workdir /workspace). Call Terminate when
// done, or rely on req.Timeout and req.IdleTimeout to end it.
func (c *Client) CreateSandbox(ctx context.Context, req api.CreateSandboxRequest) (*Sandbox, error) {
	var info api.SandboxInfo
	if err := c.do(ctx, http.MethodPost, "/v1/sandboxes", req, &info); err != nil {
		return nil, err
	}
	return &Sandbox{c: c, id: info.ID}, nil
}

// Sandbox returns a handle on the running sandbox id, checking that it exists: it fails with
// [IsNotFound] for an id the daemon never issued and [IsGone] for one that has ended.
func (c *Client) Sandbox(ctx context.Context, id string) (*Sandbox, error) {
	sb := &Sandbox{c: c, id: id}
	if _, err := sb.Info(ctx); err != nil {
		return nil, err
	}
	return sb, nil
}

// ListSandboxes returns the running sandboxes that carry every tag in tags (all of them when
// tags is empty), oldest first. Tag keys cannot contain ':', which separates key and value on
// the wire.
func (c *Client) ListSandboxes(ctx context.Context, tags map[string]string) ([]api.SandboxInfo, error) {
	q := url.Values{}
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		if k == "" || strings.Contains(k, ":") {
			return nil, &api.Error{Code: api.CodeInvalidArgument, Message: fmt.Sprintf("tag key %q must be non-empty and without ':'", k)}
		}
		q.Add("tag", k+":"+tags[k])
	}
	var list api.SandboxList
	if err := c.doQuery(ctx, http.MethodGet, "/v1/sandboxes", q, nil, &list); err != nil {
		return nil, err
	}
	return list.Sandboxes, nil
}

// ID is the sandbox's id, e.g. "sb-…".
func (s *Sandbox) ID() string { return s.id }

// path is the escaped API path of the sandbox plus suffix.
func (s *Sandbox) path(suffix string) string {
	return "/v1/sandboxes/" + url.PathEscape(s.id) + suffix
}

// Info describes the sandbox now, including its resource usage.
func (s *Sandbox) Info(ctx context.Context) (*api.SandboxInfo, error) {
	var info api.SandboxInfo
	if err := s.c.do(ctx, http.MethodGet, s.path(""), nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// SetTimeout makes the sandbox expire d from now, longer or shorter than before (within the
// daemon's sandbox timeout bounds, else the daemon answers 400), and returns its new
// description. The new expiry survives a daemon restart.
func (s *Sandbox) SetTimeout(ctx context.Context, d time.Duration) (*api.SandboxInfo, error) {
	var info api.SandboxInfo
	if err := s.c.do(ctx, http.MethodPost, s.path("/timeout"), api.SetTimeoutRequest{Timeout: d.Seconds()}, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// Terminate ends the sandbox now, killing its processes and discarding its files. A sandbox
// that has already ended fails with [IsGone].
func (s *Sandbox) Terminate(ctx context.Context) error {
	return s.c.do(ctx, http.MethodDelete, s.path(""), nil, nil)
}

// Snapshot turns the sandbox's writable layer into a new image on top of the sandbox's own
// (Modal's snapshot_filesystem) and returns it; name ("name[:tag]") may be empty, and then
// the image is known by its id alone. The sandbox keeps running. Sandboxes and sessions
// start from the image by passing its name or id as their image.
func (s *Sandbox) Snapshot(ctx context.Context, name string) (*api.ImageInfo, error) {
	var img api.ImageInfo
	if err := s.c.do(ctx, http.MethodPost, s.path("/snapshot"), api.SnapshotRequest{Name: name}, &img); err != nil {
		return nil, err
	}
	return &img, nil
}

// Run runs req.Cmd to completion and returns its collected output (each stream cut at 1 MiB,
// with Truncated set). A non-zero exit is not an error: check ExitCode and TimedOut. Use
// [Sandbox.Exec] to stream output or to write stdin while the process runs.
func (s *Sandbox) Run(ctx context.Context, req api.ExecRequest) (*api.ExecResult, error) {
	req.StdinOpen = false // only meaningful for a streamed exec
	var res api.ExecResult
	if err := s.c.do(ctx, http.MethodPost, s.path("/exec"), req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Processes lists the processes started through the API that are still running.
func (s *Sandbox) Processes(ctx context.Context) ([]api.ProcessInfo, error) {
	var list api.ProcessList
	if err := s.c.do(ctx, http.MethodGet, s.path("/processes"), nil, &list); err != nil {
		return nil, err
	}
	return list.Processes, nil
}
