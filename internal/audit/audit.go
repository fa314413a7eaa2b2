// Package audit writes the daemon's audit log: one JSON line per execution and lifecycle event
// (who, through which request, ran what, where, with which limits, and how it ended). It also
// carries the request id and the API key id in a context, and stamps them on every log line
// of that request (LogHandler), so that a log line, an audit record and an error body of one
// request can be matched.
//
// An audit record never holds code, environment values, secrets or an API key: code is
// recorded as its SHA-256 and size, secrets by name, the caller by its key id.
package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Record is one audit line. Empty fields are left out.
type Record struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id,omitempty"`
	KeyID     string    `json:"key_id,omitempty"`
	// Event names what happened: run, batch_item, sandbox.create, sandbox.exec,
	// sandbox.destroy, session.create, session.cell, session.install, session.destroy,
	// file.write, image.build_step, image.pull, image.build, secret.create, secret.delete.
	Event     string   `json:"event"`
	SandboxID string   `json:"sandbox_id,omitempty"`
	Kind      string   `json:"kind,omitempty"` // the sandbox's kind: one-shot, sandbox, session, seed-session
	Image     string   `json:"image,omitempty"`
	Language  string   `json:"language,omitempty"`
	Limits    *Limits  `json:"limits,omitempty"`
	Network   *Network `json:"network,omitempty"`
	// CodeSHA256 and CodeBytes describe the code run (a one-shot's program, a cell, an exec's
	// command line joined by NUL bytes), never the code itself.
	CodeSHA256 string   `json:"code_sha256,omitempty"`
	CodeBytes  int      `json:"code_bytes,omitempty"`
	Secrets    []string `json:"secrets,omitempty"`  // names of the named secrets injected
	Packages   int      `json:"packages,omitempty"` // session.install: how many requirements
	Path       string   `json:"path,omitempty"`     // file.write
	// Outcome: ok, error (with ErrorCode), or what ended the program.
	Outcome     string   `json:"outcome,omitempty"`
	ErrorCode   string   `json:"error_code,omitempty"`
	ExitCode    *int     `json:"exit_code,omitempty"`
	TimedOut    bool     `json:"timed_out,omitempty"`
	OOMKilled   bool     `json:"oom_killed,omitempty"`
	Reason      string   `json:"reason,omitempty"` // why a sandbox ended
	DurationMS  float64  `json:"duration_ms"`      // the whole event, as the engine saw it
	RunMS       *float64 `json:"run_ms,omitempty"` // the program alone, as the agent measured it
	CPUSeconds  float64  `json:"cpu_seconds,omitempty"`
	PeakMemory  int64    `json:"peak_memory_bytes,omitempty"`
	OutputBytes int64    `json:"output_bytes,omitempty"` // stdout and stderr (and rich outputs) returned
	Bytes       int64    `json:"bytes,omitempty"`        // file.write: bytes written

	// Owner is the engine's owner of the event (a hash of the key), for in-process consumers
	// such as per-key CPU accounting; never written (KeyID is).
	Owner string `json:"-"`
}

// Limits are the resource limits an event ran under.
type Limits struct {
	MemoryBytes int64   `json:"memory_bytes,omitempty"`
	CPU         float64 `json:"cpu,omitempty"`
	TimeoutS    float64 `json:"timeout_s,omitempty"`
	Pids        int64   `json:"pids,omitempty"`
}

// Network is the network policy an event ran under.
type Network struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"`
}

// Sum returns the hex SHA-256 and the size of code, as a record holds them.
func Sum(code []byte) (string, int) {
	s := sha256.Sum256(code)
	return hex.EncodeToString(s[:]), len(code)
}

// Sink receives audit records. The engine calls it for every event it audits, on the
// event's goroutine: a sink must not block.
type Sink interface {
	Record(ctx context.Context, r Record)
}

// Log writes records as JSON lines. Safe for concurrent use: each record is one write(2) of a
// whole line, so lines never interleave, even with other writers of an O_APPEND file.
type Log struct {
	mu     sync.Mutex // guards w and err
	w      io.Writer
	closer io.Closer // the file Open opened; nil for stdout
	err    error     // the first write error, reported by Close
}

var _ Sink = (*Log)(nil)

// Open opens the audit log at path: "-" is standard output; any other path is a file opened
// for appending (created 0600: an audit log tells who ran what).
func Open(path string) (*Log, error) {
	if path == "-" {
		return &Log{w: os.Stdout}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &Log{w: f, closer: f}, nil
}

// New returns a log writing to w (for tests and embedders).
func New(w io.Writer) *Log { return &Log{w: w} }

// Record writes r as one line, with its time, request id and key id filled from ctx where r
// lacks them. A failed write is kept for Close and does not fail the event it records.
func (l *Log) Record(ctx context.Context, r Record) {
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	if r.RequestID == "" {
		r.RequestID = RequestID(ctx)
	}
	if r.KeyID == "" {
		r.KeyID = KeyID(ctx)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return // a Record always encodes; nothing to write
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(b); err != nil && l.err == nil {
		l.err = fmt.Errorf("write audit log: %w", err)
	}
}

// Close closes the file and reports the first write error.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closer != nil {
		if err := l.closer.Close(); err != nil && l.err == nil {
			l.err = err
		}
		l.closer = nil
	}
	return l.err
}

// Fanout is a sink whose sinks are added after it is handed out: the engine is built before
// the server that also consumes its records (per-key CPU accounting, metrics). The zero value
// is ready to use.
type Fanout struct {
	mu    sync.RWMutex // guards sinks
	sinks []Sink
}

var _ Sink = (*Fanout)(nil)

// Add makes s receive every later record.
func (f *Fanout) Add(s Sink) {
	if s == nil {
		return
	}
	f.mu.Lock()
	f.sinks = append(f.sinks, s)
	f.mu.Unlock()
}

// Record hands r to every sink added so far.
func (f *Fanout) Record(ctx context.Context, r Record) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, s := range f.sinks {
		s.Record(ctx, r)
	}
}
