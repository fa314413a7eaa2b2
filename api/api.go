// Package api holds Airlock's public wire types and error codes, shared by the server, the Go SDK
// and the CLI. It imports only the standard library.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Languages accepted by one-shot execution. Python and bash always run; the others run where
// the host image carries their toolchain (GET /v1/info lists those that do), each compiled
// language compiled in a fresh sandbox of its own and run in another.
const (
	LanguagePython     = "python"
	LanguageBash       = "bash"
	LanguageC          = "c"          // gcc -O2 -std=gnu17 … -lm
	LanguageCPP        = "cpp"        // g++ -O2 -std=gnu++17 … -lm
	LanguageGo         = "go"         // go build, without cgo
	LanguageJavaScript = "javascript" // node
)

// Languages lists every language, in the order the OpenAPI document gives them.
var Languages = []string{LanguagePython, LanguageBash, LanguageC, LanguageCPP, LanguageGo, LanguageJavaScript}

// ExecuteRequest is the body of POST /v1/execute (and the seed-compatible POST /execute).
// Zero values mean the server's defaults.
type ExecuteRequest struct {
	Code         string            `json:"code"`                    // the program's source; no NUL bytes
	Language     string            `json:"language,omitempty"`      // python (default), bash, c, cpp, go or javascript; GET /v1/info lists those this host runs
	Stdin        string            `json:"stdin,omitempty"`         // the program's whole standard input
	Timeout      float64           `json:"timeout,omitempty"`       // wall-clock limit of the whole process tree, in seconds
	MemoryMB     int64             `json:"memory_mb,omitempty"`     // memory limit of the sandbox, in MiB
	CPU          float64           `json:"cpu,omitempty"`           // CPU cores; at most the host's cores (GET /v1/info, limits.max_cpu)
	AllowNetwork bool              `json:"allow_network,omitempty"` // outbound access to the public internet only (network mode internet); default false
	Network      *Network          `json:"network,omitempty"`       // the run's network policy; overrides the server's default
	Env          map[string]string `json:"env,omitempty"`           // extra environment variables (NAME → value)
	Files        map[string]string `json:"files,omitempty"`         // path → content, written before the run; paths inside /workspace or /tmp
	Image        string            `json:"image,omitempty"`         // root file system: "host" (default) or an image of the daemon's store by name[:tag] or id
	Runtime      string            `json:"runtime,omitempty"`       // sandbox runtime: native or gvisor (GET /v1/info lists those this daemon offers); default the operator's (airlock serve --runtime)
	// OutputFiles are paths or globs (path.Match syntax: *, ?, [...], within one path component)
	// of files to return after the run, relative to /workspace or absolute inside /workspace or
	// /tmp; at most 32. Up to 64 files and 10 MiB in all come back in files.
	OutputFiles []string `json:"output_files,omitempty"`
	// Secrets names the caller's named secrets (POST /v1/secrets) whose variables the program
	// gets in its environment (under env); at most 16.
	Secrets []string `json:"secrets,omitempty"`
}

// OutputFile is one file an execution's output_files matched.
type OutputFile struct {
	Name string `json:"name"` // path relative to /workspace when inside it, else absolute
	Size int64  `json:"size"` // bytes
	MIME string `json:"mime"` // media type guessed from the name's extension; application/octet-stream (or text/plain for UTF-8 text) when unknown
	Data []byte `json:"data"` // the file's content, base64 in JSON
}

// ExecuteResponse is what one execution did.
//
// The v1 API spells the exit status exit_code, as exec, its NDJSON and WebSocket events and
// install do, and like every other multi-word field (timed_out, oom_killed): that is the
// canonical name. The seed API and DESIGN's first contract said returncode, so the answer
// also carries returncode with the same value, a deprecated alias (the OpenAPI document marks
// it so) kept for those clients. MarshalJSON writes both; UnmarshalJSON reads exit_code, or
// returncode from a daemon older than the alias. The Go field keeps the name ReturnCode so Go
// callers do not break.
//
// A struct embedding *ExecuteResponse inherits these methods and with them its whole JSON
// form: give it its own MarshalJSON, as BatchResult does.
type ExecuteResponse struct {
	Success bool   `json:"success"` // exit status 0, no timeout, no OOM kill
	Stdout  string `json:"stdout"`  // UTF-8, invalid bytes replaced; cut at the output limit
	Stderr  string `json:"stderr"`  // UTF-8, invalid bytes replaced; cut at the output limit
	// ReturnCode is the program's exit status, as the CLI's: its own code; 128+N when signal N
	// ended it; 124 on timeout; 137 when the memory limit killed it.
	ReturnCode    int     `json:"exit_code" alias:"returncode"`
	ExecutionTime float64 `json:"execution_time"` // seconds, wall clock of the program
	TimedOut      bool    `json:"timed_out"`      // the timeout killed the process tree (exit_code 124)
	OOMKilled     bool    `json:"oom_killed"`     // the memory limit was hit (exit_code 137)
	Truncated     bool    `json:"truncated"`      // stdout or stderr was cut at the output limit
	CPUTime       float64 `json:"cpu_time"`       // seconds, user+system of the whole sandbox
	PeakMemoryMB  float64 `json:"peak_memory_mb"` // MiB, the sandbox's highest memory use
	// Files are the regular files output_files matched, sorted by name.
	Files []OutputFile `json:"files,omitempty"`
	// FilesTruncated says some matched files were left out: more than 64, or past 10 MiB in all.
	FilesTruncated bool `json:"files_truncated,omitempty"`
}

// executeFields is ExecuteResponse without its JSON methods.
type executeFields ExecuteResponse

// executeJSON is ExecuteResponse on the wire: its fields and the deprecated returncode alias.
// Both pointers are nil for a BatchResult without a result.
type executeJSON struct {
	*executeFields
	ReturnCodeAlias *int `json:"returncode,omitempty"`
}

func newExecuteJSON(r *ExecuteResponse) executeJSON {
	if r == nil {
		return executeJSON{}
	}
	return executeJSON{(*executeFields)(r), &r.ReturnCode}
}

// MarshalJSON writes the fields and the deprecated returncode alias of exit_code.
func (r ExecuteResponse) MarshalJSON() ([]byte, error) {
	return json.Marshal(newExecuteJSON(&r))
}

// UnmarshalJSON reads exit_code, or the returncode alias when exit_code is absent (an older
// daemon).
func (r *ExecuteResponse) UnmarshalJSON(b []byte) error {
	var w struct {
		*executeFields
		ExitCode *int `json:"exit_code"` // shadows the embedded field, to see whether it was sent
		Alias    *int `json:"returncode"`
	}
	w.executeFields = (*executeFields)(r)
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	switch {
	case w.ExitCode != nil:
		r.ReturnCode = *w.ExitCode
	case w.Alias != nil:
		r.ReturnCode = *w.Alias
	}
	return nil
}

// Info is the body of GET /v1/info.
type Info struct {
	Version   string   `json:"version"`        // the daemon's version
	Runtimes  []string `json:"runtimes"`       // sandbox runtimes this daemon offers
	Languages []string `json:"languages"`      // languages of POST /v1/execute
	Cgroup    int      `json:"cgroup_version"` // the host's cgroup version (1 or 2)
	Limits    Limits   `json:"limits"`         // the bounds this daemon checks requests against
	Key       *KeyInfo `json:"key,omitempty"`  // the caller's API key: its id and own limits; absent without keys
}

// KeyInfo is the caller's API key as GET /v1/info shows it: its id and the limits its operator
// set for it (a zero limit is none beyond the daemon's), with what it uses of them now.
type KeyInfo struct {
	ID           string  `json:"id"`            // the key's id, as logs, metrics and the audit log name it
	Rate         float64 `json:"rate"`          // requests per second; 0 = no bound
	Burst        int     `json:"burst"`         // requests at once above the rate
	MaxRuns      int     `json:"max_runs"`      // one-shot runs in flight at once; 0 = the daemon's per-key share only
	MaxSandboxes int     `json:"max_sandboxes"` // live sandboxes; 0 = the daemon's per-key bound only
	MaxSessions  int     `json:"max_sessions"`  // live sessions; 0 = the daemon's per-key bound only
	CPUSeconds   float64 `json:"cpu_seconds"`   // CPU seconds per period; 0 = no bound
	CPUPeriod    float64 `json:"cpu_period"`    // seconds of a CPU period
	CPUUsed      float64 `json:"cpu_used"`      // CPU seconds charged in the current period
	Runs         int     `json:"runs"`          // one-shot runs of the key in flight now (counted only under max_runs)
}

// Limits are the bounds a request must stay within, as this daemon's operator set them (the
// OpenAPI document gives the defaults).
type Limits struct {
	MinTimeout     float64 `json:"min_timeout"`        // seconds, shortest one-shot timeout
	MaxTimeout     float64 `json:"max_timeout"`        // seconds, longest one-shot (and cell) timeout
	DefaultTimeout float64 `json:"default_timeout"`    // seconds, one-shot timeout when none is given
	MinMemoryMB    int64   `json:"min_memory_mb"`      // MiB, smallest memory limit
	MaxMemoryMB    int64   `json:"max_memory_mb"`      // MiB, largest memory limit
	DefaultMemory  int64   `json:"default_memory_mb"`  // MiB, memory limit when none is given
	MaxCPU         float64 `json:"max_cpu"`            // cores, largest CPU limit
	MaxBodyBytes   int64   `json:"max_body_bytes"`     // largest request body; over it, 413
	OutputBytes    int64   `json:"output_limit_bytes"` // bytes kept of each of stdout and stderr
	DefaultCPU     float64 `json:"default_cpu"`        // cores, CPU limit when none is given
	ScratchBytes   int64   `json:"scratch_bytes"`      // writable layer of a sandbox: /workspace, /tmp and /dev/shm together
	// Admission: one-shot runs at once and queued (in all and per API key), and live long-lived
	// sandboxes and sessions (in all and per API key). Over them a request gets 429.
	MaxConcurrent       int `json:"max_concurrent"`         // one-shot runs at once
	MaxConcurrentPerKey int `json:"max_concurrent_per_key"` // one-shot runs at once of one API key
	MaxQueue            int `json:"max_queue"`              // one-shot runs waiting for a slot
	MaxQueuePerKey      int `json:"max_queue_per_key"`      // one-shot runs of one API key waiting for a slot
	MaxSandboxes        int `json:"max_sandboxes"`          // live long-lived sandboxes and sessions
	MaxSandboxesPerKey  int `json:"max_sandboxes_per_key"`  // live long-lived sandboxes and sessions of one API key
	// NetworkModes are the network modes a request may ask for (block always; internet and
	// allowlist where the operator allows them and the host can build them).
	NetworkModes   []string `json:"network_modes"`
	DefaultNetwork Network  `json:"default_network"` // the policy of a request that names none
}

// ErrorBody is every error response: {"error":{"code":"…","message":"…"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"` // what went wrong
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`    // machine-readable; each code has one HTTP status
	Message string `json:"message"` // for people; never internal details
	// RequestID is the request's id (the X-Request-Id header of its answer), to quote when
	// reporting the error: the daemon's log lines and audit records of the request carry it.
	RequestID string `json:"request_id,omitempty"`
}

// RequestIDHeader carries a request's id both ways: a client may send its own (kept when it
// is 1…128 characters of [A-Za-z0-9._:-], replaced otherwise) and every answer carries the
// one the daemon used.
const RequestIDHeader = "X-Request-Id"

// Error codes. Each maps to exactly one HTTP status (HTTPStatus).
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

// Codes lists every public error code (the router adds its own method_not_allowed for a 405).
var Codes = []string{CodeInvalidArgument, CodeUnauthenticated, CodeNotFound, CodeGone, CodeConflict,
	CodeTooLarge, CodeResourceExhausted, CodeTimeout, CodeUnimplemented, CodeUnavailable, CodeInternal}

// HTTPStatus is the one HTTP status of an error code; 500 for any other code.
func HTTPStatus(code string) int {
	switch code {
	case CodeInvalidArgument:
		return http.StatusBadRequest
	case CodeUnauthenticated:
		return http.StatusUnauthorized
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict:
		return http.StatusConflict
	case CodeGone:
		return http.StatusGone
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeResourceExhausted:
		return http.StatusTooManyRequests
	case CodeUnimplemented:
		return http.StatusNotImplemented
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeTimeout:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}

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
	// RequestID is the request's id, in an error the SDK decoded from an answer (ErrorDetail's
	// request_id); "" elsewhere.
	RequestID string
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
	Snippets    []ExecuteRequest `json:"snippets"`              // each run in its own fresh sandbox
	Concurrency int              `json:"concurrency,omitempty"` // snippets at once; 0 = the server's share
}

// BatchResponse has one result per snippet, in input order. A snippet that could not run has
// Error set and no result.
type BatchResponse struct {
	Results []BatchResult `json:"results"` // one per snippet, in input order
}

// BatchResult is one snippet's outcome: the ExecuteResponse fields, or Error.
type BatchResult struct {
	*ExecuteResponse
	Error *ErrorDetail `json:"error,omitempty"` // set when the snippet could not run; then no other field is
}

// MarshalJSON writes the result's fields (with the returncode alias) or only the error; without
// it, the embedded ExecuteResponse's MarshalJSON would drop Error.
func (r BatchResult) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		executeJSON
		Error *ErrorDetail `json:"error,omitempty"`
	}{newExecuteJSON(r.ExecuteResponse), r.Error})
}

// UnmarshalJSON reads a result, leaving ExecuteResponse nil when only an error was sent.
func (r *BatchResult) UnmarshalJSON(b []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return err
	}
	*r = BatchResult{}
	if e, ok := fields["error"]; ok {
		if err := json.Unmarshal(e, &r.Error); err != nil {
			return err
		}
		delete(fields, "error")
	}
	if len(fields) == 0 {
		return nil
	}
	r.ExecuteResponse = new(ExecuteResponse)
	return json.Unmarshal(b, r.ExecuteResponse)
}

// serverFault lists the codes whose HTTP status is a 5xx: the fault is the server's, and an
// error's wrapped internals (paths, stderr of a failed start, a library's text) must not reach
// the client.
var serverFault = map[string]bool{CodeInternal: true, CodeUnimplemented: true, CodeUnavailable: true, CodeTimeout: true}

// PublicDetail is the one place that turns an error into what a client may see — for JSON
// answers, NDJSON and WebSocket error events and batch results alike. A client error (4xx)
// keeps its whole message, which describes the request. A server fault keeps only what was
// written for clients: the message given to Errorf, or else the code's own generic message; an
// internal error says "internal error". A context deadline is a timeout.
func PublicDetail(err error) ErrorDetail {
	code := CodeOf(err)
	if code == CodeInternal && errors.Is(err, context.DeadlineExceeded) {
		code = CodeTimeout
	}
	if !serverFault[code] {
		return ErrorDetail{Code: code, Message: err.Error()}
	}
	var pe *publicError
	var e *Error
	switch {
	case code == CodeInternal:
		return ErrorDetail{Code: code, Message: ErrInternal.Message}
	case errors.As(err, &pe):
		return ErrorDetail{Code: code, Message: pe.msg}
	case errors.As(err, &e):
		return ErrorDetail{Code: code, Message: e.Message}
	}
	return ErrorDetail{Code: code, Message: ErrTimeout.Message}
}
