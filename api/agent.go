package api

// The LLM code agent:
//
//	POST /v1/agent/runs    AgentRunRequest → AgentRun (501 when the daemon has no LLM configured)

// Agent run modes: where the agent's code runs.
const (
	AgentModeExecute = "execute" // every attempt in a fresh one-shot sandbox (the default)
	AgentModeSession = "session" // every attempt a cell of one Python session, ended with the run
)

// AgentRunRequest is the body of POST /v1/agent/runs.
type AgentRunRequest struct {
	// Task says what the agent should compute, in plain language. It is untrusted data: the
	// agent hands it to the model between markers, as data to act on, never as instructions
	// that change the agent's rules.
	Task        string   `json:"task"`
	MaxAttempts int      `json:"max_attempts,omitempty"` // code runs the agent may make, 1…10; default 3
	Mode        string   `json:"mode,omitempty"`         // execute (default) or session
	Timeout     float64  `json:"timeout,omitempty"`      // seconds each attempt's code may run; default 30
	MemoryMB    int64    `json:"memory_mb,omitempty"`    // memory limit of the code's sandbox, in MiB
	Network     *Network `json:"network,omitempty"`      // the code's network policy; default the server's (blocked)
}

// AgentAttempt is one program the model wrote and what running it did.
type AgentAttempt struct {
	Code          string  `json:"code"`           // the Python program, as run
	Success       bool    `json:"success"`        // it ran without an error
	Stdout        string  `json:"stdout"`         // what it printed, cut at 64 KiB
	Stderr        string  `json:"stderr"`         // its errors (a traceback for a session cell), cut at 64 KiB
	ExitCode      int     `json:"exit_code"`      // its exit status (execute mode); 0 or 1 for a cell
	TimedOut      bool    `json:"timed_out"`      // the timeout stopped it
	ExecutionTime float64 `json:"execution_time"` // seconds, wall clock
}

// AgentRun is what the agent did: every attempt in order, and its answer.
type AgentRun struct {
	Success  bool           `json:"success"`  // the last attempt ran without an error and the model gave an answer
	Answer   string         `json:"answer"`   // the model's final answer; the last successful output when it gave none
	Model    string         `json:"model"`    // the model that wrote the code
	Attempts []AgentAttempt `json:"attempts"` // every attempt, oldest first
	// Reason says why the run ended without success: attempts (every attempt failed) or
	// no_code (the model answered without writing code); empty on success.
	Reason string `json:"reason,omitempty"`
}
