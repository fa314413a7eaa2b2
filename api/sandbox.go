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

// CreateSandboxRequest is the body of POST /v1/sandboxes. Zero values mean defaults.
type CreateSandboxRequest struct {
	Image        string            `json:"image,omitempty"`
	Timeout      float64           `json:"timeout,omitempty"`      // seconds of life; default 300
	IdleTimeout  float64           `json:"idle_timeout,omitempty"` // seconds without API activity; 0 = none
	CPU          float64           `json:"cpu,omitempty"`
	MemoryMB     int64             `json:"memory_mb,omitempty"`
	Workdir      string            `json:"workdir,omitempty"`       // default /workspace; created if missing
	BlockNetwork *bool             `json:"block_network,omitempty"` // default true
	Env          map[string]string `json:"env,omitempty"`           // for every exec; at most 128 KiB of NAME=value
	Tags         map[string]string `json:"tags,omitempty"`
}

// SandboxInfo describes a sandbox.
type SandboxInfo struct {
	ID           string            `json:"id"`
	Status       string            `json:"status"`
	Image        string            `json:"image"`
	CreatedAt    time.Time         `json:"created_at"`
	ExpiresAt    time.Time         `json:"expires_at"`
	LastActiveAt time.Time         `json:"last_active_at"`
	IdleTimeout  float64           `json:"idle_timeout,omitempty"`
	CPU          float64           `json:"cpu"`
	MemoryMB     int64             `json:"memory_mb"`
	Workdir      string            `json:"workdir"`
	BlockNetwork bool              `json:"block_network"`
	Tags         map[string]string `json:"tags,omitempty"`
	Usage        *Usage            `json:"usage,omitempty"`
	EndReason    string            `json:"end_reason,omitempty"` // terminated, expired, idle, died
}

// Usage is a sandbox's resource consumption so far.
type Usage struct {
	CPUTime      float64 `json:"cpu_time"`       // seconds
	MemoryMB     float64 `json:"memory_mb"`      // current
	PeakMemoryMB float64 `json:"peak_memory_mb"` // highest so far
	Processes    int     `json:"processes"`
}

// SandboxList is the body of GET /v1/sandboxes.
type SandboxList struct {
	Sandboxes []SandboxInfo `json:"sandboxes"`
}

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec and the first WebSocket message.
type ExecRequest struct {
	Cmd     []string          `json:"cmd"`
	Stdin   string            `json:"stdin,omitempty"`   // written, then stdin is closed (unless StdinOpen)
	Timeout float64           `json:"timeout,omitempty"` // seconds; 0 = until the sandbox ends
	Workdir string            `json:"workdir,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	// StdinOpen keeps stdin open after Stdin for .../processes/{pid}/stdin (NDJSON mode).
	StdinOpen bool   `json:"stdin_open,omitempty"`
	Tag       string `json:"tag,omitempty"`
	PTY       *PTY   `json:"pty,omitempty"` // WebSocket only: run on a terminal of this size
}

// PTY is a terminal size.
type PTY struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// ExecResult is the JSON answer of an exec. Output past the cap (1 MiB per stream) is cut and
// Truncated set.
type ExecResult struct {
	Stdout        string  `json:"stdout"`
	Stderr        string  `json:"stderr"`
	ExitCode      int     `json:"exit_code"` // 128+N for signal N; 124 on timeout
	ExecutionTime float64 `json:"execution_time"`
	TimedOut      bool    `json:"timed_out"`
	Truncated     bool    `json:"truncated"`
	Pid           int     `json:"pid"`
}

// ExecEvent is one NDJSON line of a streamed exec (also the text frames of the WebSocket).
type ExecEvent struct {
	Type string `json:"type"` // start, stdout, stderr, exit, error
	Pid  int    `json:"pid,omitempty"`
	// Data is the output chunk for stdout/stderr, as UTF-8 (invalid bytes replaced).
	Data          string  `json:"data,omitempty"`
	ExitCode      *int    `json:"exit_code,omitempty"`
	TimedOut      bool    `json:"timed_out,omitempty"`
	ExecutionTime float64 `json:"execution_time,omitempty"`
	// Error is set on type "error": the exec ended without an exit, e.g. the sandbox was
	// terminated (code "gone").
	Error *ErrorDetail `json:"error,omitempty"`
}

// Exec event types.
const (
	EventStart  = "start"
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventExit   = "exit"
	EventError  = "error"
)

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

// SignalRequest is the body of POST .../processes/{pid}/signal.
type SignalRequest struct {
	Signal int `json:"signal"` // e.g. 2 (SIGINT), 9 (SIGKILL), 15 (SIGTERM)
}

// ProcessInfo is a running process started through the API.
type ProcessInfo struct {
	Pid int      `json:"pid"`
	Cmd []string `json:"cmd"`
	Tag string   `json:"tag,omitempty"`
}

// ProcessList is the body of GET .../processes.
type ProcessList struct {
	Processes []ProcessInfo `json:"processes"`
}

// FileInfo describes a file in a sandbox.
type FileInfo struct {
	Name          string    `json:"name"`
	Path          string    `json:"path"`
	Type          string    `json:"type"` // file, dir, symlink
	Size          int64     `json:"size"`
	Mode          uint32    `json:"mode"`
	ModifiedAt    time.Time `json:"modified_at"`
	SymlinkTarget string    `json:"symlink_target,omitempty"`
}

// FileList is the body of GET .../files/list.
type FileList struct {
	Entries []FileInfo `json:"entries"`
}
