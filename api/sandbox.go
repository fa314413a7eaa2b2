package api

import "time"

// Long-lived sandbox routes (all JSON unless noted; errors as ErrorBody):
//
//	POST   /v1/sandboxes                                  CreateSandboxRequest → SandboxInfo (201)
//	GET    /v1/sandboxes[?tag=k:v&tag=k2:v2]              → SandboxList (sandboxes having all tags)
//	GET    /v1/sandboxes/{id}                             → SandboxInfo (404 unknown, 410 ended)
//	DELETE /v1/sandboxes/{id}                             → SandboxInfo with status "terminated"
//	POST   /v1/sandboxes/{id}/exec                        ExecRequest → ExecResult, or with
//	                                                      Accept: application/x-ndjson a stream of
//	                                                      ExecEvent lines (start, stdout, stderr, exit|error)
//	GET    /v1/sandboxes/{id}/exec/ws                     WebSocket; see ExecWS* below
//	GET    /v1/sandboxes/{id}/processes                   → ProcessList
//	POST   /v1/sandboxes/{id}/processes/{pid}/stdin       raw body streamed to the process's stdin;
//	                                                      ?eof=true closes stdin after it
//	POST   /v1/sandboxes/{id}/processes/{pid}/signal      SignalRequest
//	GET    /v1/sandboxes/{id}/files?path=P                raw bytes (application/octet-stream)
//	PUT    /v1/sandboxes/{id}/files?path=P[&mode=0644]    raw body → FileInfo (parents created)
//	DELETE /v1/sandboxes/{id}/files?path=P[&recursive=true]
//	GET    /v1/sandboxes/{id}/files/list?path=P[&depth=N] → FileList
//	GET    /v1/sandboxes/{id}/files/stat?path=P           → FileInfo
//	POST   /v1/sandboxes/{id}/files/mkdir?path=P          → FileInfo (like mkdir -p)
//
// Relative paths are relative to the sandbox's workdir. Paths are confined to the sandbox: the
// file API acts with the sandbox user's own permissions, never follows /proc magic links and
// refuses /proc, /dev and /sys.

// Sandbox statuses.
const (
	StatusRunning    = "running"
	StatusTerminated = "terminated"
)

// Statuses lists every sandbox status.
var Statuses = []string{StatusRunning, StatusTerminated}

// CreateSandboxRequest is the body of POST /v1/sandboxes. Zero values mean defaults.
type CreateSandboxRequest struct {
	Image        string            `json:"image,omitempty"`         // root file system: "host" (default) or an image of the daemon's store by name[:tag] or id
	Runtime      string            `json:"runtime,omitempty"`       // sandbox runtime: native or gvisor (GET /v1/info lists those this daemon offers); default the operator's (airlock serve --runtime)
	Timeout      float64           `json:"timeout,omitempty"`       // seconds of life; default 300
	IdleTimeout  float64           `json:"idle_timeout,omitempty"`  // seconds without API activity before it ends; 0 = none; at most the timeout
	CPU          float64           `json:"cpu,omitempty"`           // CPU cores; at most the host's cores (GET /v1/info, limits.max_cpu)
	MemoryMB     int64             `json:"memory_mb,omitempty"`     // memory limit of the sandbox, in MiB
	Workdir      string            `json:"workdir,omitempty"`       // clean absolute path; default /workspace; created if missing
	BlockNetwork *bool             `json:"block_network,omitempty"` // no network at all; default true; false means network mode internet
	Network      *Network          `json:"network,omitempty"`       // the sandbox's network policy; overrides the server's default
	Env          map[string]string `json:"env,omitempty"`           // for every exec; at most 128 KiB of NAME=value
	Tags         map[string]string `json:"tags,omitempty"`          // at most 32; keys without ':' and not starting with "airlock."
	// Ports are exposed with a token each (SandboxInfo.Ports), for callers without the API key;
	// the key reaches every port anyway. At most 32 with UnauthenticatedPorts.
	Ports []int `json:"ports,omitempty"`
	// UnauthenticatedPorts are reachable without any credential; refused (400) unless the
	// daemon's operator allows public ports (airlock serve --public-ports).
	UnauthenticatedPorts []int `json:"unauthenticated_ports,omitempty"`
	// Secrets names the caller's named secrets (POST /v1/secrets) whose variables every exec
	// gets in its environment (under env and the exec's own); at most 16.
	Secrets []string `json:"secrets,omitempty"`
}

// SandboxInfo describes a sandbox.
type SandboxInfo struct {
	ID           string            `json:"id"`                     // the sandbox's id in every /v1/sandboxes/{id} route
	Status       string            `json:"status"`                 // running until it ends, then terminated
	Image        string            `json:"image"`                  // root file system, as the request named it
	ImageID      string            `json:"image_id,omitempty"`     // the image's id (sha256:…) it resolved to at creation; absent for the host image
	Runtime      string            `json:"runtime,omitempty"`      // the runtime the request named; absent for the daemon's default
	CreatedAt    time.Time         `json:"created_at"`             // when it started
	ExpiresAt    time.Time         `json:"expires_at"`             // when its timeout ends it
	LastActiveAt time.Time         `json:"last_active_at"`         // the last API call that used it (idle_timeout counts from here)
	IdleTimeout  float64           `json:"idle_timeout,omitempty"` // seconds without API activity before it ends; absent = none
	CPU          float64           `json:"cpu"`                    // CPU cores
	MemoryMB     int64             `json:"memory_mb"`              // memory limit, in MiB
	Workdir      string            `json:"workdir"`                // default working directory of exec and of relative file paths
	BlockNetwork bool              `json:"block_network"`          // true when it has no network at all (network mode block)
	Network      Network           `json:"network"`                // its network policy
	Tags         map[string]string `json:"tags,omitempty"`         // the caller's tags, and the airlock.* tags the server sets
	Usage        *Usage            `json:"usage,omitempty"`        // resource use so far, while it runs
	EndReason    string            `json:"end_reason,omitempty"`   // why it ended: terminated, expired, idle, died, failed, shutdown
	// Ports are the exposed ports with their tokens (see CreateSandboxRequest.Ports).
	Ports []PortInfo `json:"ports,omitempty"`
}

// Usage is a sandbox's resource consumption so far.
type Usage struct {
	CPUTime      float64 `json:"cpu_time"`       // seconds, user+system of every process
	MemoryMB     float64 `json:"memory_mb"`      // MiB in use now
	PeakMemoryMB float64 `json:"peak_memory_mb"` // MiB, highest so far
	Processes    int     `json:"processes"`      // processes and threads now
}

// SandboxList is the body of GET /v1/sandboxes.
type SandboxList struct {
	Sandboxes []SandboxInfo `json:"sandboxes"` // the caller's live sandboxes (and sessions) having every requested tag
}

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec and the first WebSocket message.
type ExecRequest struct {
	Cmd     []string          `json:"cmd"`               // program and arguments, run without a shell; no NUL bytes
	Stdin   string            `json:"stdin,omitempty"`   // written, then stdin is closed (unless stdin_open)
	Timeout float64           `json:"timeout,omitempty"` // seconds; 0 = until the sandbox ends; the process tree is killed at it (exit_code 124)
	Workdir string            `json:"workdir,omitempty"` // working directory; default the sandbox's workdir
	Env     map[string]string `json:"env,omitempty"`     // environment variables added to the sandbox's
	// StdinOpen keeps stdin open after stdin, for .../processes/{pid}/stdin (NDJSON mode).
	StdinOpen bool   `json:"stdin_open,omitempty"`
	Tag       string `json:"tag,omitempty"` // a label shown in the process list
	PTY       *PTY   `json:"pty,omitempty"` // WebSocket only: run on a terminal of this size
}

// PTY is a terminal size.
type PTY struct {
	Cols uint16 `json:"cols"` // columns, 1…4096
	Rows uint16 `json:"rows"` // rows, 1…4096
}

// ExecResult is the JSON answer of an exec. Output past the cap (1 MiB per stream) is cut and
// Truncated set.
type ExecResult struct {
	Stdout        string  `json:"stdout"`         // UTF-8, invalid bytes replaced; cut at the output limit
	Stderr        string  `json:"stderr"`         // UTF-8, invalid bytes replaced; cut at the output limit
	ExitCode      int     `json:"exit_code"`      // the exit status: 128+N for signal N; 124 on timeout
	ExecutionTime float64 `json:"execution_time"` // seconds, wall clock
	TimedOut      bool    `json:"timed_out"`      // the timeout killed the process tree
	Truncated     bool    `json:"truncated"`      // stdout or stderr was cut at the output limit
	Pid           int     `json:"pid"`            // the process's id inside the sandbox
}

// ExecEvent is one NDJSON line of a streamed exec (also the text frames of the WebSocket).
type ExecEvent struct {
	Type string `json:"type"`          // start, stdout, stderr, exit, error
	Pid  int    `json:"pid,omitempty"` // on start: the process's id, for .../processes/{pid}/…
	// Data is the output chunk for stdout/stderr, as UTF-8 (invalid bytes replaced).
	Data          string  `json:"data,omitempty"`
	ExitCode      *int    `json:"exit_code,omitempty"`      // on exit: the exit status, as in ExecResult
	TimedOut      bool    `json:"timed_out,omitempty"`      // on exit: the timeout killed the process tree
	ExecutionTime float64 `json:"execution_time,omitempty"` // on exit: seconds, wall clock
	// Error is set on type "error": the exec ended without an exit, e.g. the sandbox was
	// terminated (code "gone").
	Error *ErrorDetail `json:"error,omitempty"`
	// Result is set on type "result", the last event of a streamed one-shot (POST /v1/execute
	// with Accept: application/x-ndjson): the whole answer, as the JSON route gives it.
	Result *ExecuteResponse `json:"result,omitempty"`
}

// Exec event types.
const (
	EventStart  = "start"
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventExit   = "exit"
	EventError  = "error"
	EventResult = "result" // a streamed one-shot's last event, with its whole answer
)

// EventTypes lists every exec event type.
var EventTypes = []string{EventStart, EventStdout, EventStderr, EventExit, EventError, EventResult}

// WebSocket protocol of /v1/sandboxes/{id}/exec/ws:
//
//	client → server  first a text frame with ExecRequest JSON; then binary frames of raw stdin
//	                 bytes (terminal input with a PTY) and text frames with WSControl JSON.
//	server → client  text frames with ExecEvent JSON (start, exit, error); binary frames of
//	                 output, whose first byte says the stream (WSStdout, WSStderr; PTY output is
//	                 WSStdout) and the rest is the raw bytes.
//
// The process belongs to its WebSocket: when the connection closes or fails before the process
// has ended, the process is killed with its process group (SIGKILL).
const (
	WSStdout byte = 1
	WSStderr byte = 2
)

// WSControl is a client control message on the WebSocket.
type WSControl struct {
	Type   string `json:"type"` // eof, kill, signal, resize
	Signal int    `json:"signal,omitempty"`
	Cols   uint16 `json:"cols,omitempty"`
	Rows   uint16 `json:"rows,omitempty"`
}

// SetTimeoutRequest is the body of POST /v1/sandboxes/{id}/timeout.
type SetTimeoutRequest struct {
	Timeout float64 `json:"timeout"` // seconds from now until the sandbox expires, within the daemon's sandbox timeout bounds (1 s … --max-sandbox-timeout)
}

// SignalRequest is the body of POST .../processes/{pid}/signal.
type SignalRequest struct {
	Signal int `json:"signal"` // the Linux signal number, e.g. 2 (SIGINT), 9 (SIGKILL), 15 (SIGTERM)
}

// ProcessInfo is a running process started through the API.
type ProcessInfo struct {
	Pid int      `json:"pid"`           // its id inside the sandbox
	Cmd []string `json:"cmd"`           // its program and arguments
	Tag string   `json:"tag,omitempty"` // the tag of its exec request
}

// ProcessList is the body of GET .../processes.
type ProcessList struct {
	Processes []ProcessInfo `json:"processes"` // running processes started through the API
}

// File types.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
)

// FileTypes lists every file type.
var FileTypes = []string{FileTypeFile, FileTypeDir, FileTypeSymlink}

// FileInfo describes a file in a sandbox.
type FileInfo struct {
	Name          string    `json:"name"`                     // base name
	Path          string    `json:"path"`                     // absolute path inside the sandbox
	Type          string    `json:"type"`                     // file, dir, symlink
	Size          int64     `json:"size"`                     // bytes
	Mode          uint32    `json:"mode"`                     // permission bits, e.g. 420 (0644)
	ModifiedAt    time.Time `json:"modified_at"`              // last modification
	SymlinkTarget string    `json:"symlink_target,omitempty"` // for a symlink: where it points (not followed)
}

// FileList is the body of GET .../files/list.
type FileList struct {
	Entries []FileInfo `json:"entries"` // the directory's entries, down to the requested depth
}
