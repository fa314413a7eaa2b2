// Package api holds Airlock's public wire types and error codes, shared by the server, the Go SDK
// and the CLI. It imports only the standard library.
package api

import (
	"errors"
	"fmt"
)

// Languages accepted by one-shot execution.
const (
	LanguagePython = "python"
	LanguageBash   = "bash"
)

// ExecuteRequest is the body of POST /v1/execute (and the seed-compatible POST /execute).
// Zero values mean the server's defaults.
type ExecuteRequest struct {
	Code         string            `json:"code"`
	Language     string            `json:"language,omitempty"`
	Stdin        string            `json:"stdin,omitempty"`
	Timeout      float64           `json:"timeout,omitempty"`   // seconds
	MemoryMB     int64             `json:"memory_mb,omitempty"` // MiB
	CPU          float64           `json:"cpu,omitempty"`       // cores
	AllowNetwork bool              `json:"allow_network,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
	Files        map[string]string `json:"files,omitempty"` // path → content, written before the run
	Image        string            `json:"image,omitempty"`
}

// ExecuteResponse is what one execution did.
type ExecuteResponse struct {
	Success       bool    `json:"success"`
	Stdout        string  `json:"stdout"`
	Stderr        string  `json:"stderr"`
	ReturnCode    int     `json:"returncode"`
	ExecutionTime float64 `json:"execution_time"` // seconds, wall clock of the program
	TimedOut      bool    `json:"timed_out"`
	OOMKilled     bool    `json:"oom_killed"`
	Truncated     bool    `json:"truncated"`
	CPUTime       float64 `json:"cpu_time"`       // seconds, user+system of the whole sandbox
	PeakMemoryMB  float64 `json:"peak_memory_mb"` // MiB
}

// Info is the body of GET /v1/info.
type Info struct {
	Version   string   `json:"version"`
	Runtimes  []string `json:"runtimes"`
	Languages []string `json:"languages"`
	Cgroup    int      `json:"cgroup_version"`
	Limits    Limits   `json:"limits"`
}

// Limits are the bounds a request must stay within.
type Limits struct {
	MinTimeout     float64 `json:"min_timeout"`
	MaxTimeout     float64 `json:"max_timeout"`
	DefaultTimeout float64 `json:"default_timeout"`
	MinMemoryMB    int64   `json:"min_memory_mb"`
	MaxMemoryMB    int64   `json:"max_memory_mb"`
	DefaultMemory  int64   `json:"default_memory_mb"`
	MaxCPU         float64 `json:"max_cpu"`
	MaxBodyBytes   int64   `json:"max_body_bytes"`
	OutputBytes    int64   `json:"output_limit_bytes"`
	// Admission: one-shot runs at once and queued (in all and per API key), and live long-lived
	// sandboxes and sessions (in all and per API key). Over them a request gets 429.
	MaxConcurrent       int `json:"max_concurrent"`
	MaxConcurrentPerKey int `json:"max_concurrent_per_key"`
	MaxQueue            int `json:"max_queue"`
	MaxQueuePerKey      int `json:"max_queue_per_key"`
	MaxSandboxes        int `json:"max_sandboxes"`
	MaxSandboxesPerKey  int `json:"max_sandboxes_per_key"`
}

// ErrorBody is every error response: {"error":{"code":"…","message":"…"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes. Each maps to exactly one HTTP status in internal/server.
const (
	CodeInvalidArgument   = "invalid_argument"   // 400
	CodeUnauthenticated   = "unauthenticated"    // 401
	CodeNotFound          = "not_found"          // 404
	CodeGone              = "gone"               // 410
	CodeConflict          = "conflict"           // 409
	CodeTooLarge          = "payload_too_large"  // 413
	CodeResourceExhausted = "resource_exhausted" // 429
	CodeTimeout           = "timeout"            // 504
	CodeUnimplemented     = "unimplemented"      // 501
	CodeUnavailable       = "unavailable"        // 503
	CodeInternal          = "internal"           // 500
)

// Sentinel errors for each code. Internal packages wrap these
// (fmt.Errorf("sandbox %q: %w", id, api.ErrNotFound)) and the edges map them once.
var (
	ErrInvalidArgument   = &Error{Code: CodeInvalidArgument, Message: "invalid argument"}
	ErrUnauthenticated   = &Error{Code: CodeUnauthenticated, Message: "missing or invalid API key"}
	ErrNotFound          = &Error{Code: CodeNotFound, Message: "not found"}
	ErrGone              = &Error{Code: CodeGone, Message: "gone"}
	ErrConflict          = &Error{Code: CodeConflict, Message: "conflict"}
	ErrTooLarge          = &Error{Code: CodeTooLarge, Message: "request body too large"}
	ErrResourceExhausted = &Error{Code: CodeResourceExhausted, Message: "over capacity, retry later"}
	ErrTimeout           = &Error{Code: CodeTimeout, Message: "timed out"}
	ErrUnimplemented     = &Error{Code: CodeUnimplemented, Message: "not implemented"}
	ErrUnavailable       = &Error{Code: CodeUnavailable, Message: "unavailable"}
	ErrInternal          = &Error{Code: CodeInternal, Message: "internal error"}
)

// Error is an error with a public code. Two Errors match with errors.Is when their codes match,
// so a wrapped or decoded error still compares equal to the sentinel of its code.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Errorf returns an error with code's sentinel as its cause and a message fit for clients.
func Errorf(sentinel *Error, format string, args ...any) error {
	return &publicError{msg: fmt.Sprintf(format, args...), code: sentinel}
}

// publicError carries a client-facing message and a code sentinel.
type publicError struct {
	msg  string
	code *Error
}

func (e *publicError) Error() string { return e.msg }
func (e *publicError) Unwrap() error { return e.code }

// CodeOf returns the code of err's *Error, or CodeInternal.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// BatchRequest is the body of POST /v1/execute/batch: up to 1000 snippets. A batch runs at most
// half the server's one-shot slots at once (less with Concurrency), takes at most 15 minutes
// (snippets not run by then get a timeout error), and its snippets share a 16 MiB output budget:
// each stream of each snippet is cut at min(1 MiB, 16 MiB / (2 × snippets)), 4 KiB at least.
type BatchRequest struct {
	Snippets    []ExecuteRequest `json:"snippets"`
	Concurrency int              `json:"concurrency,omitempty"`
}

// BatchResponse has one result per snippet, in input order. A snippet that could not run has
// Error set and no result.
type BatchResponse struct {
	Results []BatchResult `json:"results"`
}

// BatchResult is one snippet's outcome: the ExecuteResponse fields, or Error.
type BatchResult struct {
	*ExecuteResponse
	Error *ErrorDetail `json:"error,omitempty"`
}
