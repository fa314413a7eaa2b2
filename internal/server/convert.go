package server

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math"
	"mime"
	"path"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// The conversions between the API's wire types and the engine's own, in both directions: the
// engine's domain model is not the HTTP one, and this file is the only place that knows both.

// Seconds converts an API duration in seconds. Values no duration can hold saturate (the
// engine's bounds then refuse them), and a nonzero value below a nanosecond keeps its sign
// rather than becoming 0, which means "the default" to the engine. NaN cannot arrive in JSON;
// it becomes the most negative duration, outside every bound.
func Seconds(v float64) time.Duration {
	const most = float64(math.MaxInt64) / float64(time.Second)
	switch {
	case v == 0:
		return 0
	case math.IsNaN(v) || v <= -most:
		return math.MinInt64
	case v >= most:
		return math.MaxInt64
	}
	d := time.Duration(v * float64(time.Second))
	if d == 0 {
		d = time.Duration(math.Copysign(1, v))
	}
	return d
}

// mebibytes converts an API size in MiB to bytes, saturating where bytes overflow.
func mebibytes(v int64) int64 {
	switch {
	case v > math.MaxInt64>>20:
		return math.MaxInt64
	case v < math.MinInt64>>20:
		return math.MinInt64
	}
	return v << 20
}

// mib converts bytes to MiB with two decimals, as the API reports memory use.
func mib(b int64) float64 { return math.Round(float64(b)/(1<<20)*100) / 100 }

// OneShot converts an execute request (also for the CLI's embedded engine). A request whose
// allow_network and network disagree becomes a policy the engine refuses (see netPolicy).
func OneShot(r api.ExecuteRequest) engine.OneShot {
	var legacy *netpolicy.Mode
	if r.AllowNetwork {
		legacy = new(netpolicy.Internet)
	}
	return engine.OneShot{Language: r.Language, Code: r.Code, Stdin: r.Stdin, Files: r.Files, Env: r.Env,
		Timeout: Seconds(r.Timeout), MemoryBytes: mebibytes(r.MemoryMB), CPU: r.CPU, Image: r.Image, Runtime: r.Runtime,
		Network: netPolicy(r.Network, legacy, "allow_network: true"), OutputFiles: r.OutputFiles, Secrets: r.Secrets}
}

// netPolicy converts a request's network object and the older boolean that implies mode legacy
// (nil when the boolean was not given, or given as its default). When both are given and
// disagree the result names the conflict as its mode, which the engine refuses as unknown: the
// caller learns which fields clash, in the one place policies are checked.
func netPolicy(n *api.Network, legacy *netpolicy.Mode, legacyField string) netpolicy.Policy {
	switch {
	case n == nil && legacy == nil:
		return netpolicy.Policy{} // the server's default
	case n == nil:
		return netpolicy.Policy{Mode: *legacy}
	}
	p := netpolicy.Policy{Mode: netpolicy.Mode(n.Mode), Allow: n.Allow}
	if legacy != nil && (*legacy == netpolicy.Block) != (p.Normalize().Mode == netpolicy.Block) {
		p.Mode = netpolicy.Mode(fmt.Sprintf("%s (conflicts with %s)", p.Normalize().Mode, legacyField))
	}
	return p
}

// ExecuteResponse converts a one-shot's result.
func ExecuteResponse(r *engine.Result) *api.ExecuteResponse {
	return &api.ExecuteResponse{Success: r.Success(), Stdout: r.Stdout, Stderr: r.Stderr,
		ReturnCode: r.ExitCode, ExecutionTime: r.Duration.Seconds(), TimedOut: r.TimedOut,
		OOMKilled: r.OOMKilled, Truncated: r.Truncated, CPUTime: r.CPUTime.Seconds(),
		PeakMemoryMB: mib(r.PeakMemory), Files: outputFiles(r.Files), FilesTruncated: r.FilesTruncated}
}

// outputFiles converts a one-shot's output files, naming each one's media type.
func outputFiles(fs []engine.OutputFile) []api.OutputFile {
	if len(fs) == 0 {
		return nil
	}
	out := make([]api.OutputFile, len(fs))
	for i, f := range fs {
		out[i] = api.OutputFile{Name: f.Name, Size: int64(len(f.Data)), MIME: mediaType(f.Name, f.Data), Data: f.Data}
	}
	return out
}

// mediaType guesses a file's media type from its extension (the stdlib's table, which also
// reads the host's mime.types), else calls valid UTF-8 text/plain and the rest octet-stream.
func mediaType(name string, data []byte) string {
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	if utf8.Valid(data) && !bytes.ContainsRune(data, 0) {
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
}

func batch(r api.BatchRequest) engine.Batch {
	b := engine.Batch{Runs: make([]engine.OneShot, len(r.Snippets)), Concurrency: r.Concurrency}
	for i, s := range r.Snippets {
		b.Runs[i] = OneShot(s)
	}
	return b
}

func batchResponse(items []engine.BatchItem) *api.BatchResponse {
	out := &api.BatchResponse{Results: make([]api.BatchResult, len(items))}
	for i, it := range items {
		if it.Err != nil {
			d := api.PublicDetail(it.Err)
			out.Results[i].Error = &d
			continue
		}
		out.Results[i].ExecuteResponse = ExecuteResponse(it.Result)
	}
	return out
}

func sandboxSpec(r api.CreateSandboxRequest) engine.SandboxSpec {
	return engine.SandboxSpec{Timeout: Seconds(r.Timeout), IdleTimeout: Seconds(r.IdleTimeout),
		MemoryBytes: mebibytes(r.MemoryMB), CPU: r.CPU, Image: r.Image, Runtime: r.Runtime, Workdir: r.Workdir,
		Network: blockNetwork(r.BlockNetwork, r.Network), Env: r.Env, Tags: r.Tags,
		Ports: exposedPorts(r.Ports, r.UnauthenticatedPorts), Secrets: r.Secrets}
}

// blockNetwork converts Modal's block_network (true: block; false: internet) with a network
// object; an explicit true keeps the sandbox blocked whatever the server's default.
func blockNetwork(block *bool, n *api.Network) netpolicy.Policy {
	if block == nil {
		return netPolicy(n, nil, "")
	}
	m := netpolicy.Internet
	if *block {
		m = netpolicy.Block
	}
	return netPolicy(n, &m, fmt.Sprintf("block_network: %v", *block))
}

// SessionSpec converts a session request.
func SessionSpec(r api.CreateSessionRequest) engine.SessionSpec {
	return engine.SessionSpec{Timeout: Seconds(r.Timeout), IdleTimeout: Seconds(r.IdleTimeout),
		MemoryBytes: mebibytes(r.MemoryMB), CPU: r.CPU, Image: r.Image, Runtime: r.Runtime, Env: r.Env, Tags: r.Tags,
		Network: netPolicy(r.Network, nil, ""), Secrets: r.Secrets}
}

// execSpec converts an exec request; how its output is consumed (the limit, a kept stdin) is
// the route's to add.
func execSpec(r api.ExecRequest) engine.ExecSpec {
	return engine.ExecSpec{Cmd: r.Cmd, Env: r.Env, Workdir: r.Workdir, Stdin: []byte(r.Stdin),
		KeepStdin: r.StdinOpen, Tag: r.Tag, Timeout: Seconds(r.Timeout), PTY: r.PTY}
}

// The tags by which the API shows a sandbox's kind: a session carries airlock.session=1, a
// seed route's session also airlock.seed_session=<its session_id>. Callers may filter on them.
const (
	sessionTag     = engine.ReservedTagPrefix + "session"
	seedSessionTag = engine.ReservedTagPrefix + "seed_session"
)

// wireTags are a sandbox's tags as the API shows them: the caller's, and those of its kind.
func wireTags(kind engine.Kind, seed string, tags map[string]string) map[string]string {
	if !kind.IsSession() {
		return tags
	}
	out := make(map[string]string, len(tags)+2)
	for k, v := range tags {
		out[k] = v
	}
	out[sessionTag] = "1"
	if kind == engine.KindSeedSession {
		out[seedSessionTag] = seed
	}
	return out
}

func sandboxInfo(i engine.Info) api.SandboxInfo {
	s := i.Spec
	out := api.SandboxInfo{ID: i.ID, Status: api.StatusRunning, Image: s.Image, ImageID: s.ImageID, Runtime: s.Runtime, CreatedAt: i.Created,
		ExpiresAt: i.Expires, LastActiveAt: i.LastActive, IdleTimeout: s.IdleTimeout.Seconds(),
		CPU: s.CPU, MemoryMB: s.MemoryBytes >> 20, Workdir: s.Workdir, BlockNetwork: !s.Network.Enabled(),
		Network: api.Network{Mode: string(s.Network.Normalize().Mode), Allow: s.Network.Allow},
		Tags:    wireTags(i.Kind, i.SeedName, s.Tags), EndReason: i.Ended}
	if i.Ended != "" {
		out.Status = api.StatusTerminated
		return out
	}
	out.Ports = portInfos(i.ID, s.Ports)
	if u := i.Usage; u != nil {
		out.Usage = &api.Usage{CPUTime: u.CPUTime.Seconds(), MemoryMB: mib(u.Memory),
			PeakMemoryMB: mib(u.PeakMemory), Processes: u.Processes}
	}
	return out
}

// RunResult converts a cell's result, binary rich outputs as base64. Each output of r is
// released once converted, so that the answer is not held twice.
func RunResult(r *engine.CellResult) *api.RunResult {
	out := &api.RunResult{Success: r.Success(), Stdout: r.Stdout, Stderr: r.Stderr, Result: r.Result,
		Display: make([]api.Display, 0, len(r.Display)), ExecutionTime: r.Duration.Seconds(),
		Truncated: r.Truncated, TimedOut: r.TimedOut, Interrupted: r.Interrupted,
		Restarted: r.Restarted, RestartReason: r.RestartReason}
	for i, d := range r.Display {
		r.Display[i] = engine.CellOutput{}
		data := string(d.Data)
		if !d.Text {
			data = base64.StdEncoding.EncodeToString(d.Data)
		}
		out.Display = append(out.Display, api.Display{MIME: d.MIME, Data: data})
	}
	if e := r.Error; e != nil {
		out.Error = &api.CellError{Name: e.Name, Value: e.Value, Traceback: e.Traceback}
	}
	return out
}

func installResult(r *engine.InstallResult) *api.InstallResult {
	return &api.InstallResult{Success: r.Success(), Output: r.Output, ExitCode: r.ExitCode, TimedOut: r.TimedOut}
}
