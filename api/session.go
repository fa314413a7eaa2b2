package api

// Stateful Python sessions (the REPL):
//
//	POST   /v1/sessions                      CreateSessionRequest → SessionInfo (201)
//	GET    /v1/sessions/{id}                 → SessionInfo (404 unknown, 410 ended)
//	POST   /v1/sessions/{id}/run             RunRequest → RunResult
//	POST   /v1/sessions/{id}/install         InstallRequest → InstallResult
//	POST   /v1/sessions/{id}/interrupt       → InterruptResult
//	DELETE /v1/sessions/{id}                 → SessionInfo
//	POST   /repl/execute                     {session_id, code} → RunResult (seed-compatible;
//	                                         creates the session on first use)
//	POST   /repl/install?session_id=…&package=…  → InstallResult (seed-compatible)
//
// A session is a sandbox: its files are under /v1/sandboxes/{id}/files with the same id.

// CreateSessionRequest is the body of POST /v1/sessions. Zero values mean defaults.
type CreateSessionRequest struct {
	Timeout     float64           `json:"timeout,omitempty"`      // lifetime in seconds; default 3600
	IdleTimeout float64           `json:"idle_timeout,omitempty"` // seconds without a call before it ends; default 300 (or the timeout, if shorter); at most the timeout
	MemoryMB    int64             `json:"memory_mb,omitempty"`    // memory limit of the session's sandbox, in MiB
	CPU         float64           `json:"cpu,omitempty"`          // CPU cores; at most the host's cores (GET /v1/info, limits.max_cpu)
	Image       string            `json:"image,omitempty"`        // root file system: "host" (default) or an image of the daemon's store by name[:tag] or id; it needs python3
	Runtime     string            `json:"runtime,omitempty"`      // sandbox runtime: native or gvisor (GET /v1/info lists those this daemon offers); default the operator's (airlock serve --runtime)
	Env         map[string]string `json:"env,omitempty"`          // environment variables of the interpreter
	Network     *Network          `json:"network,omitempty"`      // the session's network policy (installs use it); overrides the server's default
	Tags        map[string]string `json:"tags,omitempty"`         // as a sandbox's tags; keys may not start with "airlock."
	Secrets     []string          `json:"secrets,omitempty"`      // the caller's named secrets (POST /v1/secrets) whose variables the interpreter gets (under env); at most 16
}

// SessionInfo is the answer of the session routes that describe one (create, get, delete).
// A session is a long-lived sandbox running a Python interpreter, so the answer is exactly a
// SandboxInfo, on the wire as in Go (the alias keeps one schema, SandboxInfo, in the OpenAPI
// document): id is the session's id, which is also its sandbox id under
// /v1/sandboxes/{id}/files; image and image_id are its image; block_network and network are the
// session's network policy; expires_at and idle_timeout are the session's life and idle bounds; tags hold the
// caller's tags plus "airlock.session": "1" (and "airlock.seed_session": its name, for a seed-route session), by
// which the server tells a session from a plain sandbox; status and end_reason are as for any
// sandbox.
type SessionInfo = SandboxInfo

// RunRequest is the body of POST /v1/sessions/{id}/run.
type RunRequest struct {
	Code    string  `json:"code"`              // Python source of the cell; no NUL bytes
	Timeout float64 `json:"timeout,omitempty"` // seconds for this cell; default 30; at the timeout the cell is interrupted
}

// RunResult is what one cell did, like a notebook shows it.
type RunResult struct {
	Success       bool       `json:"success"`        // no exception, not interrupted
	Stdout        string     `json:"stdout"`         // what the cell printed; cut at the output limit
	Stderr        string     `json:"stderr"`         // what the cell wrote to stderr (and notes of the server); cut at the output limit
	Result        *string    `json:"result"`         // repr of the trailing expression; null if none
	Display       []Display  `json:"display"`        // rich outputs, in order
	Error         *CellError `json:"error"`          // the exception the cell raised; null if none
	ExecutionTime float64    `json:"execution_time"` // seconds, wall clock
	Truncated     bool       `json:"truncated"`      // output was cut at the limit
	TimedOut      bool       `json:"timed_out"`      // the cell's timeout interrupted it
	Interrupted   bool       `json:"interrupted"`    // stopped, state kept
	// Restarted says the interpreter was lost (it exited, crashed, or could not be
	// interrupted) and a fresh one now serves the session: every variable is gone.
	Restarted     bool   `json:"restarted"`
	RestartReason string `json:"restart_reason,omitempty"` // with restarted: why the interpreter was lost
}

// Display is a rich output: image/* data is base64; text types are the text itself.
type Display struct {
	MIME string `json:"mime"` // any MIME type; text/* and *json are text, others (image/png, …) base64
	Data string `json:"data"` // the text itself, or base64 of the bytes
}

// CellError is an exception raised by a cell.
type CellError struct {
	Name      string   `json:"name"`      // the exception's class, e.g. ValueError
	Value     string   `json:"value"`     // str() of the exception
	Traceback []string `json:"traceback"` // the formatted traceback, one entry per line
}

// InstallRequest is the body of POST /v1/sessions/{id}/install.
type InstallRequest struct {
	Packages []string `json:"packages"`          // 1…50 pip requirements, e.g. "numpy==2.1.0"
	Timeout  float64  `json:"timeout,omitempty"` // seconds, 1…600; default 120
}

// InstallResult is pip's outcome.
type InstallResult struct {
	Success  bool   `json:"success"`   // pip exited 0
	Output   string `json:"output"`    // pip's stdout and stderr
	ExitCode int    `json:"exit_code"` // pip's exit status; 124 on timeout
	TimedOut bool   `json:"timed_out"` // the timeout killed pip
}

// InterruptResult says what an interrupt did.
type InterruptResult struct {
	Interrupted bool `json:"interrupted"` // a running cell was stopped, state kept
	Restarted   bool `json:"restarted"`   // it could not be stopped; the interpreter was restarted
}

// SeedREPLRequest is the body of the seed-compatible POST /repl/execute.
type SeedREPLRequest struct {
	SessionID string `json:"session_id"` // the caller's name for the session: 1…128 characters of [A-Za-z0-9._:-]
	Code      string `json:"code"`       // Python source of the cell
}
