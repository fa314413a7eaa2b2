package engine

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
)

// Agent is a sandbox's agent as the engine uses it: processes, files and the REPL. Every error
// an agent refuses a call with is an api sentinel (api.ErrNotFound, api.ErrInvalidArgument, …);
// any other error means the agent could not be reached or the caller gave up.
//
// The data types are the agent client's (aliased below), so that agentclient.Client implements
// Agent as it is; the engine itself never sees the protocol (connect codes, protobuf).
type Agent interface {
	// Exec starts p and calls on for each event until the process ends.
	Exec(ctx context.Context, p Process, on func(Event)) (*End, error)
	WriteStdin(ctx context.Context, pid int, r io.Reader, eof bool) error
	Signal(ctx context.Context, pid, sig int) error
	Resize(ctx context.Context, pid int, cols, rows uint16) error
	Processes(ctx context.Context) ([]api.ProcessInfo, error)

	// ReadFile streams path into w; started runs before the first byte is written.
	ReadFile(ctx context.Context, path string, w io.Writer, started func()) error
	// WriteFile streams r into path, creating parent directories.
	WriteFile(ctx context.Context, path string, r io.Reader, mode uint32) error
	Stat(ctx context.Context, path string) (api.FileInfo, error)
	List(ctx context.Context, path string, depth int) ([]api.FileInfo, error)
	MakeDir(ctx context.Context, path string) (api.FileInfo, error)
	Remove(ctx context.Context, path string, recursive bool) error

	ReplStart(ctx context.Context, env map[string]string, cwd string) error
	// ReplRun runs one cell; its answer is charged to the ctx's answer budget (withAnswerBudget).
	ReplRun(ctx context.Context, code string, timeout time.Duration, outputLimit int64) (*Cell, error)
	ReplInterrupt(ctx context.Context) (interrupted, restarted bool, err error)
	ReplInstall(ctx context.Context, packages []string, src InstallSource, timeout time.Duration) (*Installed, error)

	// DialPort connects to port on the sandbox's loopback; ctx bounds the dial only. Nothing
	// listening is api.ErrUnavailable.
	DialPort(ctx context.Context, port int) (net.Conn, error)
}

// The engine's names for what an Agent takes and gives.
type (
	// Process is one process to start in a sandbox.
	Process = agentclient.Process
	// Event is output from a running process; one of its fields is set.
	Event = agentclient.Event
	// End is how a process ended.
	End = agentclient.End
	// InstallSource is where a session's install finds packages.
	InstallSource = agentclient.InstallSource
	// Cell is an agent's answer to one REPL cell, before the engine re-checks it.
	Cell = agentclient.Cell
	// CellError is the exception a cell raised.
	CellError = agentclient.CellError
	// Installed is the outcome of a package install.
	Installed = agentclient.Installed
)
