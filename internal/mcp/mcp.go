// Package mcp is Airlock's Model Context Protocol server: tools that run code, keep Python
// sessions, and drive sandboxes, built on the public Go SDK (package airlock) against a daemon.
// The same tools are served over stdio (`airlock mcp`) and streamable HTTP (`/mcp` of `airlock
// serve`); the daemon's API key decides, as for every API call, which sandboxes and sessions a
// caller sees.
package mcp

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

// Bounds on what one tool result carries, so a chatty program cannot flood the model's context.
const (
	maxText      = 32 << 10  // bytes of each stdout, stderr or result text
	maxFileBytes = 256 << 10 // bytes read_file returns
	maxEntries   = 500       // entries list_files returns
	maxImages    = 8         // images one cell returns
)

// sessionTag names, on a session the MCP server created, the name the caller gave it: reuse by
// name is a tag query, which the daemon answers with the caller's own sessions only.
const sessionTag = "mcp.session"

// New returns an MCP server whose tools act through c, with c's API key.
func New(c *airlock.Client, version string) *mcp.Server {
	return newServer(c, "", version, nil, new(nameLocks))
}

// newServer is New with a cache of the tools' schemas and the session-name locks shared by
// the servers made per request; key (c's) tells one caller's names from another's in locks.
func newServer(c *airlock.Client, key, version string, cache *mcp.SchemaCache, locks *nameLocks) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "airlock", Title: "Airlock sandboxes", Version: version}, &mcp.ServerOptions{
		SchemaCache: cache,
		Instructions: "Airlock runs untrusted code in isolated Linux sandboxes. Use run_code for a one-off program, " +
			"python_run for stateful Python (variables, imports and plots persist within a named session), " +
			"and sandbox_create/exec/read_file/write_file/list_files for a long-lived sandbox. " +
			"Network access is off unless you ask for it.",
	})
	t := &tools{c: c, key: key, locks: locks}
	mcp.AddTool(s, &mcp.Tool{Name: "run_code", Description: "Run a program once in a fresh sandbox that is destroyed afterwards. " +
		"Returns its stdout, stderr and exit code (each stream cut at 32 KiB, with a note when cut). " +
		"State does not persist between calls: use python_run for that."}, t.runCode)
	mcp.AddTool(s, &mcp.Tool{Name: "python_session", Description: "Create a stateful Python session under a name, or reuse the running one of that name. " +
		"Returns the session's id, which also names its sandbox for exec and the file tools."}, t.session)
	mcp.AddTool(s, &mcp.Tool{Name: "python_run", Description: "Run a cell of Python in the named session (created on first use), like a notebook: " +
		"variables and imports persist across calls. Returns printed text, the value of the last expression, " +
		"the exception if one was raised, and matplotlib figures as images."}, t.pythonRun)
	mcp.AddTool(s, &mcp.Tool{Name: "install_package", Description: "pip-install packages into a named Python session " +
		"(created on first use). Needs the session to have network access to a package index."}, t.install)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_create", Description: "Create a long-lived sandbox for exec and the file tools; it ends at its timeout or with sandbox_terminate."}, t.create)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_list", Description: "List your running sandboxes and sessions with their resource usage."}, t.list)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_terminate", Description: "End a sandbox or session now, discarding its files and processes."}, t.terminate)
	mcp.AddTool(s, &mcp.Tool{Name: "exec", Description: "Run a shell command (sh -c) in a sandbox or session and wait for it. " +
		"Returns stdout, stderr and exit code, each stream cut at 32 KiB."}, t.exec)
	mcp.AddTool(s, &mcp.Tool{Name: "read_file", Description: "Read a file from a sandbox or session (at most 256 KiB; longer files are cut, with a note). " +
		"Images come back as image content."}, t.readFile)
	mcp.AddTool(s, &mcp.Tool{Name: "write_file", Description: "Create or replace a file in a sandbox or session (parent directories are created)."}, t.writeFile)
	mcp.AddTool(s, &mcp.Tool{Name: "list_files", Description: "List a directory of a sandbox or session."}, t.listFiles)
	return s
}

type tools struct {
	c     *airlock.Client
	key   string
	locks *nameLocks
}

// nameLocks serialize finding-or-creating a session by name, so that two calls with a new
// name at once make one session, not two. Striped, so memory stays fixed whatever the names.
type nameLocks [64]sync.Mutex

func (l *nameLocks) lock(key, name string) func() {
	h := fnv.New32a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(name))
	mu := &l[h.Sum32()%uint32(len(l))]
	mu.Lock()
	return mu.Unlock
}

// RunCodeInput is run_code's arguments.
type RunCodeInput struct {
	Language string   `json:"language,omitempty" jsonschema:"python (default) or bash"`
	Code     string   `json:"code" jsonschema:"the program's source"`
	Timeout  float64  `json:"timeout,omitempty" jsonschema:"seconds the program may run; default 30"`
	MemoryMB int64    `json:"memory_mb,omitempty" jsonschema:"memory limit in MiB; default the daemon's"`
	Network  bool     `json:"network,omitempty" jsonschema:"allow outbound access to the public internet; default no network"`
	Allow    []string `json:"allow,omitempty" jsonschema:"instead of the whole internet, only these hosts (DNS names, *.wildcards or IPv4 CIDRs, optionally :PORT)"`
}

func network(on bool, allow []string) *api.Network {
	switch {
	case len(allow) > 0:
		return &api.Network{Mode: api.NetworkAllowlist, Allow: allow}
	case on:
		return &api.Network{Mode: api.NetworkInternet}
	}
	return nil
}

func (t *tools) runCode(ctx context.Context, _ *mcp.CallToolRequest, in RunCodeInput) (*mcp.CallToolResult, any, error) {
	if in.Timeout == 0 {
		in.Timeout = 30
	}
	res, err := t.c.Execute(ctx, api.ExecuteRequest{Language: in.Language, Code: in.Code, Timeout: in.Timeout,
		MemoryMB: in.MemoryMB, Network: network(in.Network, in.Allow)})
	if err != nil {
		return nil, nil, err
	}
	var b report
	b.status(res.ReturnCode, res.TimedOut, res.Truncated)
	if res.OOMKilled {
		b.line("The memory limit killed the program.")
	}
	b.stream("stdout", res.Stdout)
	b.stream("stderr", res.Stderr)
	return b.result(!res.Success), nil, nil
}

// SessionInput names a Python session.
type SessionInput struct {
	Name     string   `json:"name" jsonschema:"your name for the session; the same name reaches the same session while it runs"`
	MemoryMB int64    `json:"memory_mb,omitempty" jsonschema:"memory limit in MiB, when the session is created"`
	Network  bool     `json:"network,omitempty" jsonschema:"internet access, when the session is created (needed by install_package from PyPI)"`
	Allow    []string `json:"allow,omitempty" jsonschema:"instead of the whole internet, only these hosts, when the session is created"`
}

// session returns the caller's running session named in, creating it if there is none.
func (t *tools) openSession(ctx context.Context, in SessionInput) (*airlock.Session, bool, error) {
	if in.Name == "" {
		return nil, false, errors.New("a session name is required")
	}
	defer t.locks.lock(t.key, in.Name)()
	list, err := t.c.ListSandboxes(ctx, map[string]string{sessionTag: in.Name})
	if err != nil {
		return nil, false, err
	}
	for _, sb := range list {
		if sb.Status == "running" {
			return t.c.Session(sb.ID), false, nil
		}
	}
	s, err := t.c.CreateSession(ctx, api.CreateSessionRequest{MemoryMB: in.MemoryMB, Network: network(in.Network, in.Allow),
		Tags: map[string]string{sessionTag: in.Name}})
	return s, true, err
}

func (t *tools) session(ctx context.Context, _ *mcp.CallToolRequest, in SessionInput) (*mcp.CallToolResult, any, error) {
	s, created, err := t.openSession(ctx, in)
	if err != nil {
		return nil, nil, err
	}
	verb := "Reusing the running"
	if created {
		verb = "Created"
	}
	return text(fmt.Sprintf("%s session %q: id %s.", verb, in.Name, s.ID())), nil, nil
}

// PythonRunInput is python_run's arguments.
type PythonRunInput struct {
	Session string  `json:"session" jsonschema:"the session's name (created on first use)"`
	Code    string  `json:"code" jsonschema:"Python source of the cell; the value of a trailing expression is returned"`
	Timeout float64 `json:"timeout,omitempty" jsonschema:"seconds for this cell; default 30; the cell is interrupted at it and the state kept"`
}

func (t *tools) pythonRun(ctx context.Context, _ *mcp.CallToolRequest, in PythonRunInput) (*mcp.CallToolResult, any, error) {
	s, _, err := t.openSession(ctx, SessionInput{Name: in.Session})
	if err != nil {
		return nil, nil, err
	}
	res, err := s.Run(ctx, api.RunRequest{Code: in.Code, Timeout: in.Timeout})
	if err != nil {
		return nil, nil, err
	}
	var b report
	if res.Restarted {
		b.line("The interpreter was restarted (" + res.RestartReason + "): every variable is gone.")
	}
	if res.TimedOut {
		b.line("The cell's timeout interrupted it; the session's state is kept.")
	}
	if res.Truncated {
		b.line("The cell's output was cut at the daemon's limit.")
	}
	b.stream("stdout", res.Stdout)
	b.stream("stderr", res.Stderr)
	if res.Result != nil {
		b.stream("result", *res.Result)
	}
	if e := res.Error; e != nil {
		b.stream("error", strings.Join(e.Traceback, "\n"))
		if len(e.Traceback) == 0 {
			b.stream("error", e.Name+": "+e.Value)
		}
	}
	images := 0
	for _, d := range res.Display {
		switch {
		case strings.HasPrefix(d.MIME, "image/") && d.MIME != "image/svg+xml":
			raw, err := base64.StdEncoding.DecodeString(d.Data)
			if err != nil {
				continue
			}
			if images++; images > maxImages {
				b.line(fmt.Sprintf("(more than %d images: the rest are left out)", maxImages))
				continue
			}
			b.content = append(b.content, &mcp.ImageContent{Data: raw, MIMEType: d.MIME})
		default:
			b.stream(d.MIME, d.Data)
		}
	}
	if b.empty() {
		b.line("(no output)")
	}
	return b.result(!res.Success), nil, nil
}

// InstallInput is install_package's arguments.
type InstallInput struct {
	Session  string   `json:"session" jsonschema:"the session's name (created on first use)"`
	Packages []string `json:"packages" jsonschema:"pip requirements, e.g. numpy==2.1.0"`
}

func (t *tools) install(ctx context.Context, _ *mcp.CallToolRequest, in InstallInput) (*mcp.CallToolResult, any, error) {
	s, _, err := t.openSession(ctx, SessionInput{Name: in.Session})
	if err != nil {
		return nil, nil, err
	}
	res, err := s.Install(ctx, api.InstallRequest{Packages: in.Packages})
	if err != nil {
		return nil, nil, err
	}
	var b report
	b.status(res.ExitCode, res.TimedOut, false)
	b.stream("pip", res.Output)
	return b.result(!res.Success), nil, nil
}

// CreateInput is sandbox_create's arguments.
type CreateInput struct {
	Image    string   `json:"image,omitempty" jsonschema:"root file system: host (default) or an image of the daemon's store"`
	Timeout  float64  `json:"timeout,omitempty" jsonschema:"seconds of life; default 300"`
	MemoryMB int64    `json:"memory_mb,omitempty" jsonschema:"memory limit in MiB"`
	Network  bool     `json:"network,omitempty" jsonschema:"internet access; default no network"`
	Allow    []string `json:"allow,omitempty" jsonschema:"instead of the whole internet, only these hosts"`
}

func (t *tools) create(ctx context.Context, _ *mcp.CallToolRequest, in CreateInput) (*mcp.CallToolResult, any, error) {
	sb, err := t.c.CreateSandbox(ctx, api.CreateSandboxRequest{Image: in.Image, Timeout: in.Timeout, MemoryMB: in.MemoryMB,
		Network: network(in.Network, in.Allow)})
	if err != nil {
		return nil, nil, err
	}
	info, err := sb.Info(ctx)
	if err != nil {
		return nil, nil, err
	}
	return text(fmt.Sprintf("Created sandbox %s (workdir %s, network %s, expires %s).", info.ID, info.Workdir,
		info.Network.Mode, info.ExpiresAt.Format("15:04:05 MST"))), nil, nil
}

func (t *tools) list(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
	list, err := t.c.ListSandboxes(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	if len(list) == 0 {
		return text("No running sandboxes."), nil, nil
	}
	var b strings.Builder
	for _, sb := range list {
		kind := "sandbox"
		if sb.Tags["airlock.session"] != "" {
			kind = "session"
			if n := sb.Tags[sessionTag]; n != "" {
				kind += " " + fmt.Sprintf("%q", n)
			}
		}
		fmt.Fprintf(&b, "%s  %s  image %s  network %s  expires %s", sb.ID, kind, sb.Image, sb.Network.Mode, sb.ExpiresAt.Format("15:04:05 MST"))
		if u := sb.Usage; u != nil {
			fmt.Fprintf(&b, "  cpu %.2fs  memory %.1f MiB", u.CPUTime, u.MemoryMB)
		}
		b.WriteByte('\n')
	}
	return text(b.String()), nil, nil
}

// SandboxInput names a sandbox.
type SandboxInput struct {
	Sandbox string `json:"sandbox" jsonschema:"a sandbox id (sb-…), or the name of one of your python sessions"`
}

// sandbox resolves a sandbox id or a session name to a sandbox handle.
func (t *tools) sandbox(ctx context.Context, ref string) (*airlock.Sandbox, error) {
	if ref == "" {
		return nil, errors.New("a sandbox id or session name is required")
	}
	if !strings.HasPrefix(ref, "sb-") {
		list, err := t.c.ListSandboxes(ctx, map[string]string{sessionTag: ref})
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(list, func(sb api.SandboxInfo) bool { return sb.Status == "running" })
		if i < 0 {
			return nil, fmt.Errorf("no sandbox id or running session named %q", ref)
		}
		ref = list[i].ID
	}
	return t.c.Sandbox(ctx, ref)
}

func (t *tools) terminate(ctx context.Context, _ *mcp.CallToolRequest, in SandboxInput) (*mcp.CallToolResult, any, error) {
	sb, err := t.sandbox(ctx, in.Sandbox)
	if err != nil {
		return nil, nil, err
	}
	if err := sb.Terminate(ctx); err != nil {
		return nil, nil, err
	}
	return text("Terminated " + sb.ID() + "."), nil, nil
}

// ExecInput is exec's arguments.
type ExecInput struct {
	Sandbox string  `json:"sandbox" jsonschema:"a sandbox id (sb-…), or the name of one of your python sessions"`
	Command string  `json:"command" jsonschema:"a shell command line, run with sh -c"`
	Workdir string  `json:"workdir,omitempty" jsonschema:"working directory; default the sandbox's"`
	Timeout float64 `json:"timeout,omitempty" jsonschema:"seconds; default 60; the process tree is killed at it"`
}

func (t *tools) exec(ctx context.Context, _ *mcp.CallToolRequest, in ExecInput) (*mcp.CallToolResult, any, error) {
	sb, err := t.sandbox(ctx, in.Sandbox)
	if err != nil {
		return nil, nil, err
	}
	if in.Timeout == 0 {
		in.Timeout = 60
	}
	res, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"/bin/sh", "-c", in.Command}, Workdir: in.Workdir, Timeout: in.Timeout})
	if err != nil {
		return nil, nil, err
	}
	var b report
	b.status(res.ExitCode, res.TimedOut, res.Truncated)
	b.stream("stdout", res.Stdout)
	b.stream("stderr", res.Stderr)
	return b.result(res.ExitCode != 0), nil, nil
}

// PathInput names a file of a sandbox.
type PathInput struct {
	Sandbox string `json:"sandbox" jsonschema:"a sandbox id (sb-…), or the name of one of your python sessions"`
	Path    string `json:"path" jsonschema:"absolute, or relative to the sandbox's workdir"`
}

func (t *tools) readFile(ctx context.Context, _ *mcp.CallToolRequest, in PathInput) (*mcp.CallToolResult, any, error) {
	sb, err := t.sandbox(ctx, in.Sandbox)
	if err != nil {
		return nil, nil, err
	}
	rc, err := sb.OpenFile(ctx, in.Path)
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxFileBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", in.Path, err)
	}
	cut := len(data) > maxFileBytes
	data = data[:min(len(data), maxFileBytes)]
	if mt := imageType(data); mt != "" && !cut {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.ImageContent{Data: data, MIMEType: mt}}}, nil, nil
	}
	var b report
	if cut {
		b.line(fmt.Sprintf("(only the first %d bytes of the file)", maxFileBytes))
	}
	if utf8.Valid(data) || cut && utf8.Valid(data[:max(0, len(data)-utf8.UTFMax)]) {
		b.line(strings.ToValidUTF8(string(data), "\uFFFD"))
	} else {
		b.line(fmt.Sprintf("(binary, %d bytes, base64:)\n%s", len(data), base64.StdEncoding.EncodeToString(data)))
	}
	return b.result(false), nil, nil
}

// imageType is the MIME type of a PNG, JPEG or GIF, by its magic bytes.
func imageType(b []byte) string {
	switch {
	case len(b) > 8 && string(b[:8]) == "\x89PNG\r\n\x1a\n":
		return "image/png"
	case len(b) > 3 && string(b[:3]) == "\xff\xd8\xff":
		return "image/jpeg"
	case len(b) > 6 && (string(b[:6]) == "GIF87a" || string(b[:6]) == "GIF89a"):
		return "image/gif"
	}
	return ""
}

// WriteFileInput is write_file's arguments.
type WriteFileInput struct {
	Sandbox string `json:"sandbox" jsonschema:"a sandbox id (sb-…), or the name of one of your python sessions"`
	Path    string `json:"path" jsonschema:"absolute, or relative to the sandbox's workdir"`
	Content string `json:"content" jsonschema:"the file's new content (text)"`
}

func (t *tools) writeFile(ctx context.Context, _ *mcp.CallToolRequest, in WriteFileInput) (*mcp.CallToolResult, any, error) {
	sb, err := t.sandbox(ctx, in.Sandbox)
	if err != nil {
		return nil, nil, err
	}
	if err := sb.WriteFile(ctx, in.Path, strings.NewReader(in.Content)); err != nil {
		return nil, nil, err
	}
	return text(fmt.Sprintf("Wrote %d bytes to %s.", len(in.Content), in.Path)), nil, nil
}

func (t *tools) listFiles(ctx context.Context, _ *mcp.CallToolRequest, in PathInput) (*mcp.CallToolResult, any, error) {
	sb, err := t.sandbox(ctx, in.Sandbox)
	if err != nil {
		return nil, nil, err
	}
	if in.Path == "" {
		in.Path = "."
	}
	list, err := sb.List(ctx, in.Path)
	if err != nil {
		return nil, nil, err
	}
	var b strings.Builder
	for i, f := range list {
		if i == maxEntries {
			fmt.Fprintf(&b, "(%d more entries left out)\n", len(list)-maxEntries)
			break
		}
		name := f.Path
		if f.Type == "dir" {
			name += "/"
		}
		fmt.Fprintf(&b, "%s  %s  %d bytes  %04o\n", name, f.Type, f.Size, f.Mode)
	}
	if len(list) == 0 {
		b.WriteString("(empty directory)")
	}
	return text(b.String()), nil, nil
}

func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

// report builds a tool result from labelled, bounded parts.
type report struct {
	sb      strings.Builder
	content []mcp.Content
}

func (r *report) line(s string) {
	r.sb.WriteString(s)
	if !strings.HasSuffix(s, "\n") {
		r.sb.WriteByte('\n')
	}
}

// status says how a process ended.
func (r *report) status(exit int, timedOut, truncated bool) {
	r.line(fmt.Sprintf("exit code %d", exit))
	if timedOut {
		r.line("The timeout killed the process.")
	}
	if truncated {
		r.line("The output was cut at the daemon's limit.")
	}
}

// stream adds one labelled output, cut at maxText with a note saying how much was left out.
func (r *report) stream(label, s string) {
	if s == "" {
		return
	}
	fmt.Fprintf(&r.sb, "--- %s ---\n", label)
	if len(s) > maxText {
		cut := maxText
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		r.line(s[:cut])
		r.line(fmt.Sprintf("[truncated: %d of %d bytes left out]", len(s)-cut, len(s)))
		return
	}
	r.line(s)
}

func (r *report) empty() bool { return r.sb.Len() == 0 && len(r.content) == 0 }

func (r *report) result(isErr bool) *mcp.CallToolResult {
	c := append([]mcp.Content{&mcp.TextContent{Text: r.sb.String()}}, r.content...)
	return &mcp.CallToolResult{Content: c, IsError: isErr}
}
