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
	IdleTimeout float64           `json:"idle_timeout,omitempty"` // default 300 (or the timeout, if shorter); at most the timeout
	MemoryMB    int64             `json:"memory_mb,omitempty"`
	CPU         float64           `json:"cpu,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
}

// SessionInfo describes a session (its sandbox).
type SessionInfo = SandboxInfo

// RunRequest is the body of POST /v1/sessions/{id}/run.
type RunRequest struct {
	Code    string  `json:"code"`
	Timeout float64 `json:"timeout,omitempty"` // seconds for this cell; default 30
}

// RunResult is what one cell did, like a notebook shows it.
type RunResult struct {
	Success       bool       `json:"success"` // no exception, not interrupted
	Stdout        string     `json:"stdout"`
	Stderr        string     `json:"stderr"`
	Result        *string    `json:"result"` // repr of the trailing expression; null if none
	Display       []Display  `json:"display"`
	Error         *CellError `json:"error"`
	ExecutionTime float64    `json:"execution_time"`
	Truncated     bool       `json:"truncated"`
	TimedOut      bool       `json:"timed_out"`
	Interrupted   bool       `json:"interrupted"` // stopped, state kept
	// Restarted says the interpreter was lost (it exited, crashed, or could not be
	// interrupted) and a fresh one now serves the session: every variable is gone.
	Restarted     bool   `json:"restarted"`
	RestartReason string `json:"restart_reason,omitempty"`
}

// Display is a rich output: image/* data is base64; text types are the text itself.
type Display struct {
	MIME string `json:"mime"`
	Data string `json:"data"`
}

// CellError is an exception raised by a cell.
type CellError struct {
	Name      string   `json:"name"`
	Value     string   `json:"value"`
	Traceback []string `json:"traceback"`
}

// InstallRequest is the body of POST /v1/sessions/{id}/install.
type InstallRequest struct {
	Packages []string `json:"packages"`
	Timeout  float64  `json:"timeout,omitempty"` // seconds; default 120
}

// InstallResult is pip's outcome.
type InstallResult struct {
	Success  bool   `json:"success"`
	Output   string `json:"output"`
	ExitCode int    `json:"exit_code"`
	TimedOut bool   `json:"timed_out"`
}

// InterruptResult says what an interrupt did.
type InterruptResult struct {
	Interrupted bool `json:"interrupted"` // a running cell was stopped, state kept
	Restarted   bool `json:"restarted"`   // it could not be stopped; the interpreter was restarted
}

// SeedREPLRequest is the body of the seed-compatible POST /repl/execute.
type SeedREPLRequest struct {
	SessionID string `json:"session_id"`
	Code      string `json:"code"`
}
