package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// routeDoc documents one route for the OpenAPI document. Every registered route has one; a test
// checks both ways and that api/openapi.json is what openAPI generates.
type routeDoc struct {
	pattern  string // as registered, "METHOD /path/{param}"
	summary  string // one line
	desc     string // what a client must know beyond the summary: defaults, errors, streaming
	req      any    // request body type, nil for none
	resp     any    // 2xx JSON body type, nil for none
	status   int    // success status; 200 if zero
	raw      string // a non-JSON body: "request" (octet-stream upload) or "response" (download)
	query    []string
	noAuth   bool
	ndjson   bool // also answers application/x-ndjson
	upgrades bool // WebSocket
	// proxy: forwarded to a program in a sandbox, which answers what it likes (a WebSocket
	// upgrade included); streamed both ways under the progress deadlines.
	proxy bool
}

var routeDocs = []routeDoc{
	{pattern: "GET /healthz", summary: "Liveness: {\"status\":\"ok\"} and nothing about the tenants", noAuth: true,
		desc: "Answers 200 while the daemon serves; needs no API key and says nothing about sandboxes."},
	{pattern: "GET /v1/info", summary: "Version, runtimes, languages and limits", resp: api.Info{},
		desc: "The limits are this daemon's, as its operator set them; the bounds in this document are the defaults."},
	{pattern: "GET /v1/openapi.json", summary: "This document", noAuth: true,
		desc: "The OpenAPI 3.1 document of this API, with the default limits as bounds."},
	{pattern: "GET /metrics", summary: "Prometheus metrics (text exposition format): counters of the whole daemon, to any API key",
		desc: "Counters and gauges of the whole daemon (runs, timeouts, OOM kills, live sandboxes, queue), in the Prometheus text format."},
	{pattern: "POST /v1/execute", summary: "Run code once in a fresh sandbox; JSON answer, or NDJSON events with Accept: application/x-ndjson", req: api.ExecuteRequest{}, resp: api.ExecuteResponse{}, ndjson: true,
		desc: "Runs the code in a sandbox of its own, destroyed after the answer. A program that fails, times out or is OOM-killed is still a 200: see success, exit_code, timed_out and oom_killed. With Accept: application/x-ndjson, streams ExecEvent lines: stdout and stderr chunks as the program writes them, then one result event carrying the whole answer (or an error event). Over capacity: 429 with Retry-After."},
	{pattern: "POST /execute", summary: "Seed-compatible alias of /v1/execute", req: api.ExecuteRequest{}, resp: api.ExecuteResponse{},
		desc: "The same as POST /v1/execute, kept for clients of the seed API (which read returncode)."},
	{pattern: "POST /v1/execute/batch", summary: "Run many snippets, each in a fresh sandbox, with bounded concurrency; results in input order", req: api.BatchRequest{}, resp: api.BatchResponse{},
		desc: "A snippet that cannot run has an error in its result and does not fail the batch; an invalid snippet fails the whole request with 400."},
	{pattern: "POST /v1/batches", summary: "Queue an async batch of up to 10,000 snippets; answers 202 with its id at once", req: api.SubmitBatchRequest{}, resp: api.BatchStatus{}, status: 202,
		desc: "The snippets go on a JetStream work queue (in cluster mode, airlock serve --cluster, the cluster's; else one embedded in the daemon, stored in its state directory) and every node runs them as it has room, each exactly as POST /v1/execute (same limits, per-key bounds, audit). A snippet whose node dies is run by another; each result is stored and reported once. With webhook, each completion and then a batch.done event is POSTed to webhook.url as a WebhookEvent, signed (X-Airlock-Signature: t=<unix>,v1=<hex HMAC-SHA256 of \"<t>.<body>\"> with webhook.secret, or the webhook_secret this answer returns), with X-Airlock-Delivery <batch>/<index> (or <batch>/done) to de-duplicate, retried with back-off for 10 minutes. 400 for no snippets, more than 10,000, a bad retention, or a webhook URL that is not http(s) or names a loopback, private or link-local address (unless the operator allows them)."},
	{pattern: "GET /v1/batches/{id}", summary: "An async batch's status, counts and results in the batch's order (paged with after and limit)", resp: api.BatchStatus{}, query: []string{"after", "limit"},
		desc: "Results of indexes after+1 … after+limit (after default -1, limit default 100, at most 1000; 0 for counts only) that have one, in index order; next is the after of the next page. 404 for an unknown id, another key's batch, or one past its retention."},
	{pattern: "GET /v1/batches/{id}/results", summary: "An async batch's results as NDJSON BatchItem lines in completion order; with stream=1, until the batch is complete", resp: api.BatchItem{}, query: []string{"stream"},
		desc: "The answer is application/x-ndjson, one BatchItem per line: the results stored now, and with stream=1 each one as it completes, ending when every snippet has a result. 404 for an unknown id or another key's batch."},
	{pattern: "DELETE /v1/batches/{id}", summary: "Cancel an async batch's snippets not started yet", resp: api.BatchStatus{},
		desc: "Snippets not started get a result with error code canceled (no webhook event each; batch.done follows once every snippet has a result); those running finish. Answers the batch's status."},
	{pattern: "GET /v1/executions", summary: "List the caller's one-shot runs in flight", resp: api.ExecutionList{},
		desc: "Each run of POST /v1/execute while it runs, with its id (the X-Airlock-Execution header of its answer), key, age, language and usage so far; another key's runs are not listed."},
	{pattern: "DELETE /v1/executions/{id}", summary: "Cancel a one-shot run in flight", resp: api.Execution{},
		desc: "Destroys the run's sandbox; the run answers exit_code 137 with a line on stderr saying it was cancelled. 404 for an id not in flight or another key's."},
	{pattern: "GET /v1/images", summary: "List the images in the daemon's store", resp: api.ImageList{},
		desc: "Every image of the daemon's image store, newest first. Images are the daemon's, shared by every API key."},
	{pattern: "POST /v1/images", summary: "Build an image from a spec (Modal-style steps, each cached by hash of parent and step)", req: api.BuildImageRequest{}, resp: api.BuildImageEvent{}, ndjson: true,
		desc: "Streams NDJSON BuildImageEvents: step (with cached), log lines, done, then image or error. A bad spec is a 400 and a missing base a 404 before the stream begins; a failing step is the stream's error event."},
	{pattern: "POST /v1/images/pull", summary: "Pull an image from a registry", req: api.PullImageRequest{}, resp: api.ImageInfo{},
		desc: "Fetches the image (a multi-arch index resolves to linux on the daemon's architecture), checks every blob against its digest and unpacks its layers; the answer comes when it is in the store. 404 when the registry has no such image; 400 for refused credentials or content that does not match its digest; 413 past the store's disk budget or the layer limits; 501 when the daemon has no image store."},
	{pattern: "GET /v1/images/{ref...}", summary: "Describe an image", resp: api.ImageInfo{},
		desc: "ref is name[:tag], name@sha256:…, the image id or at least 12 hex digits of it. 404 for an image not in the store."},
	{pattern: "DELETE /v1/images/{ref...}", summary: "Remove an image name, or an image", status: 204,
		desc: "By a name the image has others besides, only that name goes; otherwise the image, and its layers no other image uses. 409 for an image a live sandbox uses (by a name, the name goes and the image stays until a prune after)."},
	{pattern: "POST /v1/sandboxes", summary: "Create a long-lived sandbox", req: api.CreateSandboxRequest{}, resp: api.SandboxInfo{}, status: 201,
		desc: "The sandbox lives until its timeout, its idle timeout, or DELETE. Over the sandbox limits: 429."},
	{pattern: "GET /v1/sandboxes", summary: "List sandboxes (filter with tag=key:value, repeatable)", resp: api.SandboxList{}, query: []string{"tag"},
		desc: "The caller's live sandboxes and sessions; with tag parameters only those having all of them."},
	{pattern: "GET /v1/sandboxes/{id}", summary: "Describe a sandbox", resp: api.SandboxInfo{},
		desc: "404 for an unknown id, 410 for one that has ended (for an hour after)."},
	{pattern: "DELETE /v1/sandboxes/{id}", summary: "Terminate a sandbox", resp: api.SandboxInfo{},
		desc: "Kills every process of the sandbox and answers its description with status terminated."},
	{pattern: "POST /v1/sandboxes/{id}/timeout", summary: "Set a sandbox's expiry to now + timeout", req: api.SetTimeoutRequest{}, resp: api.SandboxInfo{},
		desc: "Extends (or shortens) a running sandbox's life; 400 outside the daemon's sandbox timeout bounds. The new expiry survives a daemon restart."},
	{pattern: "POST /v1/sandboxes/{id}/snapshot", summary: "Turn a sandbox's writable layer into a new image", req: api.SnapshotRequest{}, resp: api.ImageInfo{}, status: 201,
		desc: "Commits the files the sandbox changed, as one layer on top of its image, to the daemon's image store, and answers the new image: sandboxes and sessions start from it by its name or id. The sandbox keeps running. The body is optional. 400 for a sandbox of the host image (it has no writable layer to capture); 501 without an image store; 413 when the store's disk budget refuses it."},
	{pattern: "POST /v1/sandboxes/{id}/exec", summary: "Run a command; JSON result, or NDJSON ExecEvents with Accept: application/x-ndjson", req: api.ExecRequest{}, resp: api.ExecResult{}, ndjson: true,
		desc: "Without Accept: application/x-ndjson, waits for the exit and answers an ExecResult. With it, streams ExecEvent lines: start (with the pid), stdout and stderr chunks, then exit or error."},
	{pattern: "GET /v1/sandboxes/{id}/exec/ws", summary: "Interactive exec over a WebSocket (see api.WSControl)", upgrades: true,
		desc: "The first text frame is an ExecRequest (pty for a terminal); then binary frames are stdin and text frames are controls {type: eof|kill|signal|resize}. The server sends ExecEvent text frames and binary output frames whose first byte is the stream (1 stdout, 2 stderr). Closing the socket kills the process."},
	{pattern: "GET /v1/sandboxes/{id}/processes", summary: "Running processes started through the API", resp: api.ProcessList{},
		desc: "Processes of exec requests still running, with their pid and tag."},
	{pattern: "POST /v1/sandboxes/{id}/processes/{pid}/stdin", summary: "Stream the body to a process's stdin", raw: "request", query: []string{"eof"}, status: 204,
		desc: "For a process started with stdin_open; eof=true closes its stdin after the body."},
	{pattern: "POST /v1/sandboxes/{id}/processes/{pid}/signal", summary: "Signal a process", req: api.SignalRequest{}, status: 204,
		desc: "Sends the signal to the process; 404 when it has already exited."},
	{pattern: "GET /v1/sandboxes/{id}/files", summary: "Download a file", raw: "response", query: []string{"path"},
		desc: "The file's bytes, read with the sandbox user's permissions."},
	{pattern: "PUT /v1/sandboxes/{id}/files", summary: "Upload a file (streamed; parents created)", raw: "request", resp: api.FileInfo{}, query: []string{"path", "mode"},
		desc: "Writes the body to the path (replacing a file there), creating parent directories; over the sandbox's disk quota: 413."},
	{pattern: "DELETE /v1/sandboxes/{id}/files", summary: "Remove a file or directory", query: []string{"path", "recursive"}, status: 204,
		desc: "A non-empty directory needs recursive=true."},
	{pattern: "GET /v1/sandboxes/{id}/files/list", summary: "List a directory", resp: api.FileList{}, query: []string{"path", "depth"},
		desc: "Entries of the directory, down to depth levels (1…16, default 1); symlinks are listed, not followed."},
	{pattern: "GET /v1/sandboxes/{id}/files/stat", summary: "Describe a file", resp: api.FileInfo{}, query: []string{"path"},
		desc: "The file's type, size, mode and modification time; a symlink is described, not followed."},
	{pattern: "POST /v1/sandboxes/{id}/files/mkdir", summary: "Create a directory and its parents", resp: api.FileInfo{}, query: []string{"path"},
		desc: "Like mkdir -p: an existing directory is not an error."},
	{pattern: "GET /v1/sandboxes/{id}/files/archive", summary: "Download a directory as a tar stream", raw: "response", query: []string{"path"},
		desc: "A tar (PAX) of the directory's regular files, directories and symlinks (as symlinks, never followed) with their modes, named relative to it. An error after the first byte aborts the stream."},
	{pattern: "PUT /v1/sandboxes/{id}/files/archive", summary: "Unpack a tar stream into a directory", raw: "request", resp: api.FileInfo{}, query: []string{"path"},
		desc: "Creates the directory and unpacks regular files (permission bits kept) and directories into it. Absolute names, names with .., symlinks, hard links and device nodes are refused with 400; entries before a refused one stay unpacked. Bounded by the sandbox's writable space."},
	{pattern: "GET /v1/sandboxes/{id}/ports/{port}/{rest...}", summary: "Reach an HTTP server in the sandbox (WebSocket upgrades included)", proxy: true, noAuth: true,
		desc: portAuthDoc + " The prefix up to the port is stripped; the program sees Host localhost:PORT and X-Forwarded-For, -Host, -Proto and -Prefix. HEAD too."},
	{pattern: "POST /v1/sandboxes/{id}/ports/{port}/{rest...}", summary: "Reach an HTTP server in the sandbox", proxy: true, noAuth: true, desc: portAuthDoc},
	{pattern: "PUT /v1/sandboxes/{id}/ports/{port}/{rest...}", summary: "Reach an HTTP server in the sandbox", proxy: true, noAuth: true, desc: portAuthDoc},
	{pattern: "PATCH /v1/sandboxes/{id}/ports/{port}/{rest...}", summary: "Reach an HTTP server in the sandbox", proxy: true, noAuth: true, desc: portAuthDoc},
	{pattern: "DELETE /v1/sandboxes/{id}/ports/{port}/{rest...}", summary: "Reach an HTTP server in the sandbox", proxy: true, noAuth: true, desc: portAuthDoc},
	{pattern: "OPTIONS /v1/sandboxes/{id}/ports/{port}/{rest...}", summary: "Reach an HTTP server in the sandbox", proxy: true, noAuth: true, desc: portAuthDoc},
	{pattern: "GET /v1/sandboxes/{id}/ports/{port}", summary: "Redirect to the port's root path (with a trailing slash)", status: 301, noAuth: true,
		desc: "Answers 301 to /v1/sandboxes/{id}/ports/{port}/, whoever asks; nothing is forwarded."},
	{pattern: "GET /v1/sandboxes/{id}/tunnels/{port}", summary: "A TCP connection to a port in the sandbox (port-forward)", upgrades: true, noAuth: true,
		desc: portAuthDoc + " Upgrade: airlock-tcp (HTTP/1.1) answers 101 and then carries the connection's bytes as they are; Upgrade: websocket carries them as binary messages. A port nothing listens on is 503 before the upgrade."},
	{pattern: "POST /v1/agent/runs", summary: "Run the LLM code agent on a task", req: api.AgentRunRequest{}, resp: api.AgentRun{},
		desc: "The daemon's configured model (airlock serve --llm-base-url, --llm-model) writes a Python program for the task, which runs in a sandbox under the caller's key; on an error the model sees the output and repairs the program, up to max_attempts runs. The answer holds every attempt and the final answer. The task is passed to the model as untrusted data between markers; the LLM key never enters a sandbox. 501 when no LLM is configured; 503 when the LLM endpoint fails."},
	{pattern: "POST /v1/sessions", summary: "Create a stateful Python session", req: api.CreateSessionRequest{}, resp: api.SessionInfo{}, status: 201,
		desc: "Starts a sandbox with a Python interpreter whose variables persist across cells. The answer is the session's sandbox description (see SessionInfo in the Go API)."},
	{pattern: "GET /v1/sessions/{id}", summary: "Describe a session", resp: api.SessionInfo{},
		desc: "404 for an unknown id or a plain sandbox, 410 for an ended session."},
	{pattern: "DELETE /v1/sessions/{id}", summary: "End a session", resp: api.SessionInfo{},
		desc: "Kills the interpreter and its sandbox; the answer has status terminated."},
	{pattern: "POST /v1/sessions/{id}/run", summary: "Run a cell", req: api.RunRequest{}, resp: api.RunResult{},
		desc: "Runs the code in the session's interpreter and answers like a notebook: output, the trailing expression's repr, rich displays and any exception. One cell runs at a time; a second gets 409."},
	{pattern: "POST /v1/sessions/{id}/install", summary: "pip-install packages into the session", req: api.InstallRequest{}, resp: api.InstallResult{},
		desc: "Runs pip in the session's sandbox; a failed install is a 200 with success false and pip's output."},
	{pattern: "POST /v1/sessions/{id}/interrupt", summary: "Interrupt the running cell", resp: api.InterruptResult{},
		desc: "Sends SIGINT to the running cell; an interpreter that does not stop is restarted (its state is lost)."},
	{pattern: "POST /repl/execute", summary: "Seed-compatible: run code in the named session, created on first use", req: api.SeedREPLRequest{}, resp: api.RunResult{},
		desc: "The seed API's REPL: session_id is the caller's own name for the session, created on first use."},
	{pattern: "POST /repl/install", summary: "Seed-compatible: install a package into the named session", resp: api.InstallResult{}, query: []string{"session_id", "package"},
		desc: "The seed API's install: one package into the named session, created on first use."},
	{pattern: "POST /v1/secrets", summary: "Store a named secret (environment variables) for the caller's key", req: api.CreateSecretRequest{}, resp: api.SecretInfo{}, status: 201,
		desc: "Stores the variables encrypted at rest (AES-256-GCM under the operator's key) for this API key, replacing a secret of the same name; runs, sandboxes and sessions that name it in secrets get them in their environment. The answer names the variables, never their values. 501 when the daemon has no secrets key (airlock serve --secrets-key-file)."},
	{pattern: "GET /v1/secrets", summary: "List the caller's named secrets (variable names only)", resp: api.SecretList{},
		desc: "The caller's secrets with the names of their variables; values are never answered. Another key's secrets are not listed."},
	{pattern: "DELETE /v1/secrets/{name}", summary: "Delete a named secret", status: 204,
		desc: "Later runs naming it fail with 404; sandboxes and sessions already created with it keep its variables until they end."},
}

// portAuthDoc is how the port routes authenticate.
const portAuthDoc = "Authenticated by the owner's API key (Bearer), or the port's token (X-Airlock-Port-Token header or airlock_token query parameter, removed before forwarding; it opens only its own port of its own sandbox), or nothing for an unauthenticated port. Neither Authorization, the token nor any airlock_* cookie reaches the program. A port nothing listens on is 503."

// paramDocs describes every path and query parameter by name; the generator refuses a
// parameter missing here.
var paramDocs = map[string]string{
	"id":         "The sandbox's (or session's, or async batch's) id.",
	"after":      "Async batch results: only indexes after this one; default -1 (from the first).",
	"limit":      "Async batch results: at most this many indexes, 0…1000; default 100, 0 for counts only.",
	"stream":     "1 follows the batch: each result as it completes, until every snippet has one.",
	"ref":        "An image: name[:tag], name@sha256:…, its id, or at least 12 hex digits of its id (slashes included, unescaped).",
	"pid":        "The process's id inside the sandbox, from the exec's start event or the process list.",
	"tag":        "key:value; only sandboxes having this tag. Repeatable: all must match.",
	"eof":        "true closes the process's stdin after the body.",
	"path":       "A path inside the sandbox; relative paths are relative to its workdir. /proc, /dev and /sys are refused.",
	"mode":       "Octal permission bits of a new file, e.g. 0644 (the default).",
	"recursive":  "true removes a directory with its contents.",
	"depth":      "Levels to list, 1…16; default 1.",
	"session_id": "The caller's name for the session (seed API).",
	"name":       "The secret's name.",
	"package":    "A pip requirement (seed API).",
	"port":       "A TCP port a program in the sandbox listens on, 1…65535 (on 127.0.0.1 or any address).",
	"rest":       "The rest of the path, passed to the program in the sandbox (after the prefix up to the port).",
}

// fieldRule is what a field's Go type cannot say: its allowed values and bounds. The bounds come
// from the engine's defaults (the limits a daemon checks unless its operator changed them) and
// the engine's exported constants, never from copied numbers.
type fieldRule struct {
	enum             []string
	def              any
	minimum, maximum *float64
	exclusiveMinimum *float64
	minItems         *int
	maxItems         *int
}

// fieldRules are keyed by "Schema.json_name"; every key must match a property (openAPI fails
// otherwise, so a renamed field cannot leave a rule behind).
func fieldRules(lim api.Limits) map[string]fieldRule {
	f := func(v float64) *float64 { return &v }
	n := func(v int) *int { return &v }
	timeout := fieldRule{minimum: f(lim.MinTimeout), maximum: f(lim.MaxTimeout), def: lim.DefaultTimeout}
	memory := fieldRule{minimum: f(float64(lim.MinMemoryMB)), maximum: f(float64(lim.MaxMemoryMB)), def: lim.DefaultMemory}
	// The CPU bound is the host's cores (limits.max_cpu of GET /v1/info), unknowable here; the
	// engine's lower bounds of CPU and of sandbox, session and install timeouts are unexported
	// literals, so these say only "positive".
	positive := fieldRule{exclusiveMinimum: f(0)}
	rules := map[string]fieldRule{
		"ExecuteRequest.language":            {enum: api.Languages, def: api.LanguagePython},
		"ExecuteRequest.timeout":             timeout,
		"BatchRequest.snippets":              {minItems: n(1), maxItems: n(engine.MaxBatch)},
		"BatchRequest.concurrency":           {minimum: f(0)},
		"CreateSandboxRequest.timeout":       positive,
		"CreateSandboxRequest.idle_timeout":  {minimum: f(0)},
		"CreateSandboxRequest.block_network": {def: true},
		"SandboxInfo.status":                 {enum: api.Statuses},
		"ExecRequest.cmd":                    {minItems: n(1)},
		"ExecRequest.timeout":                {minimum: f(0)},
		"ExecEvent.type":                     {enum: api.EventTypes},
		"FileInfo.type":                      {enum: api.FileTypes},
		"CreateSessionRequest.timeout":       positive,
		"CreateSessionRequest.idle_timeout":  positive,
		"RunRequest.timeout":                 {exclusiveMinimum: f(0), maximum: f(lim.MaxTimeout)},
		"InstallRequest.packages":            {minItems: n(1)},
		"InstallRequest.timeout":             positive,
		"ErrorDetail.code":                   {enum: errorCodes()},
	}
	// Every request that sizes a sandbox is checked against the same memory and CPU bounds.
	for _, schema := range []string{"ExecuteRequest", "CreateSandboxRequest", "CreateSessionRequest"} {
		rules[schema+".memory_mb"] = memory
		rules[schema+".cpu"] = positive
	}
	return rules
}

// apply adds the rule's keywords to a property schema.
func (r fieldRule) apply(p map[string]any) {
	if r.enum != nil {
		p["enum"] = r.enum
	}
	if r.def != nil {
		p["default"] = r.def
	}
	for k, v := range map[string]*float64{"minimum": r.minimum, "maximum": r.maximum, "exclusiveMinimum": r.exclusiveMinimum} {
		if v != nil {
			p[k] = *v
		}
	}
	for k, v := range map[string]*int{"minItems": r.minItems, "maxItems": r.maxItems} {
		if v != nil {
			p[k] = *v
		}
	}
}

// noRuntime lets the generator build an engine of the default configuration: its limits are
// the bounds the document gives.
type noRuntime struct{}

func (noRuntime) Create(context.Context, engine.Spec) (engine.Instance, error) {
	return nil, errors.New("openapi: no runtime")
}

// defaultLimits are the engine's limits when the operator sets none.
func defaultLimits() (api.Limits, error) {
	e, err := engine.New(engine.Config{Runtime: noRuntime{}})
	if err != nil {
		return api.Limits{}, fmt.Errorf("default engine: %w", err)
	}
	return e.Limits(), nil
}

// generator holds what building the document needs.
type generator struct {
	docs    map[string]string
	rules   map[string]fieldRule
	used    map[string]bool // rules applied, to refuse stale ones
	schemas map[string]any
}

// openAPI builds the OpenAPI 3.1 document of the API from routeDocs, the api types, docs (the
// doc comments of the api package's source, keyed "Type" and "Type.Field"; the test reads them
// with go/parser, which so stays out of the daemon), and fieldRules over the engine's default
// limits. It fails on an undocumented type or parameter and on a rule that matches no field.
func openAPI(docs map[string]string) ([]byte, error) {
	lim, err := defaultLimits()
	if err != nil {
		return nil, err
	}
	g := &generator{docs: docs, rules: fieldRules(lim), used: map[string]bool{}, schemas: map[string]any{}}
	paths := map[string]map[string]any{}
	var problems []string
	for _, d := range routeDocs {
		method, path, _ := strings.Cut(d.pattern, " ")
		path = strings.ReplaceAll(path, "...}", "}") // a trailing wildcard is one parameter in OpenAPI
		if d.summary == "" || d.desc == "" {
			problems = append(problems, d.pattern+": no summary or description")
		}
		op := map[string]any{"summary": d.summary, "description": d.desc, "operationId": opID(method, path)}
		var params []any
		param := func(name, in string, required bool) {
			desc, ok := paramDocs[name]
			if !ok {
				problems = append(problems, d.pattern+": parameter "+name+" is not in paramDocs")
			}
			params = append(params, map[string]any{"name": name, "in": in, "required": required, "description": desc, "schema": map[string]any{"type": "string"}})
		}
		// A trailing {name...} (the rest of the path) is {name} to OpenAPI.
		path = strings.ReplaceAll(path, "...}", "}")
		for _, seg := range strings.Split(path, "/") {
			if strings.HasPrefix(seg, "{") {
				param(strings.Trim(seg, "{}"), "path", true)
			}
		}
		for _, q := range d.query {
			param(q, "query", false)
		}
		if params != nil {
			op["parameters"] = params
		}
		if d.req != nil {
			op["requestBody"] = map[string]any{"required": true, "description": g.docs[reflect.TypeOf(d.req).Name()],
				"content": map[string]any{"application/json": map[string]any{"schema": g.schemaRef(reflect.TypeOf(d.req))}}}
		} else if d.raw == "request" {
			op["requestBody"] = map[string]any{"description": "The raw bytes.", "content": map[string]any{"application/octet-stream": map[string]any{}}}
		}
		status := d.status
		if status == 0 {
			status = http.StatusOK
		}
		ok := map[string]any{"description": http.StatusText(status)}
		content := map[string]any{}
		if d.resp != nil {
			content["application/json"] = map[string]any{"schema": g.schemaRef(reflect.TypeOf(d.resp))}
		}
		if d.raw == "response" {
			content["application/octet-stream"] = map[string]any{}
		}
		if d.ndjson {
			content["application/x-ndjson"] = map[string]any{"schema": g.schemaRef(reflect.TypeOf(api.ExecEvent{}))}
		}
		if len(content) > 0 {
			ok["content"] = content
		}
		responses := map[string]any{strconv.Itoa(status): ok}
		if d.upgrades {
			responses = map[string]any{"101": map[string]any{"description": "Switching Protocols (WebSocket)"}}
		}
		if d.proxy {
			responses = map[string]any{"default": map[string]any{"description": "Whatever the program in the sandbox answers (101 for a WebSocket it accepts)"}}
		}
		for class, desc := range errorResponses() {
			responses[class] = map[string]any{"description": desc,
				"content": map[string]any{"application/json": map[string]any{"schema": g.schemaRef(reflect.TypeOf(api.ErrorBody{}))}}}
		}
		op["responses"] = responses
		if d.noAuth {
			op["security"] = []any{}
		}
		if paths[path] == nil {
			paths[path] = map[string]any{}
		}
		paths[path][strings.ToLower(method)] = op
	}
	for name, s := range g.schemas {
		if s.(map[string]any)["description"] == "" {
			problems = append(problems, "schema "+name+" has no doc comment")
		}
	}
	for key := range g.rules {
		if !g.used[key] {
			problems = append(problems, "fieldRules["+key+"] matches no property")
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, fmt.Errorf("openapi: %s", strings.Join(problems, "; "))
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "Airlock", "version": "1", "description": "Run untrusted code safely and fast. Errors are {\"error\":{\"code\",\"message\"}}. " +
			"Bounds and defaults are the engine's defaults; a daemon's own are in GET /v1/info. Request bodies with unknown fields are refused (400)."},
		"paths": paths,
		// Relative: the daemon that serves this document at /v1/openapi.json.
		"servers": []any{map[string]any{"url": "/", "description": "The Airlock daemon serving this document (airlock serve; 127.0.0.1:8080 by default)."}},
		"components": map[string]any{
			"schemas":         g.schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer", "description": "An API key: Authorization: Bearer KEY."}},
		},
		"security": []any{map[string]any{"bearer": []any{}}},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	return append(b, '\n'), err
}

// errorCodes are the codes an error body may carry: the public ones and the router's 405.
func errorCodes() []string {
	return append(slices.Clone(api.Codes), errMethod.Code)
}

// errorResponses describes the 4XX and 5XX answers by the codes statusOf maps into each.
func errorResponses() map[string]string {
	classes := map[string][]string{}
	for _, code := range errorCodes() {
		status := statusOf(code)
		class := strconv.Itoa(status/100) + "XX"
		classes[class] = append(classes[class], fmt.Sprintf("%s (%d)", code, status))
	}
	return map[string]string{
		"4XX": "The request was refused; nothing was run or changed unless the code says so. Codes: " + strings.Join(classes["4XX"], ", ") + ". A 429 carries Retry-After.",
		"5XX": "The server could not do it; the message never carries internal detail. Codes: " + strings.Join(classes["5XX"], ", ") + ".",
	}
}

func opID(method, path string) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(method))
	for _, seg := range strings.FieldsFunc(path, func(r rune) bool { return r == '/' || r == '{' || r == '}' || r == '.' || r == '_' }) {
		b.WriteString(strings.ToUpper(seg[:1]) + seg[1:])
	}
	return b.String()
}

// schemaRef returns a JSON Schema for t, registering named structs under components.schemas.
func (g *generator) schemaRef(t reflect.Type) map[string]any {
	if t == reflect.TypeOf(time.Time{}) {
		return map[string]any{"type": "string", "format": "date-time"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.schemaRef(t.Elem())
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int32, reflect.Int64:
		return map[string]any{"type": "integer"}
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		s := map[string]any{"type": "integer", "minimum": 0}
		if t.Bits() < 64 {
			s["maximum"] = uint64(1)<<t.Bits() - 1
		}
		return s
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": g.schemaRef(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.schemaRef(t.Elem())}
	case reflect.Struct:
		name := t.Name()
		if _, done := g.schemas[name]; !done {
			g.schemas[name] = nil // placeholder against recursion
			props := map[string]any{}
			required := []string{}
			g.structProps(t, t.Name(), false, props, &required)
			slices.Sort(required)
			g.schemas[name] = map[string]any{"type": "object", "description": g.docs[name], "properties": props,
				"required": required, "additionalProperties": false}
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return map[string]any{}
}

// structProps adds t's JSON fields to props, flattening untagged embedded structs as
// encoding/json does. A field is required when it is always on the wire: no omitempty, and not
// promoted from an embedded pointer (absent when nil). A pointer that is always there is
// nullable. schema names the rules' owner, the outer struct.
func (g *generator) structProps(t reflect.Type, schema string, viaPointer bool, props map[string]any, required *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && tag == "" && ft.Kind() == reflect.Struct {
			g.structProps(ft, schema, viaPointer || f.Type.Kind() == reflect.Pointer, props, required)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		always := !viaPointer && !strings.Contains(opts, "omitempty")
		p := g.schemaRef(f.Type)
		if f.Type.Kind() == reflect.Pointer && always {
			p = map[string]any{"anyOf": []any{p, map[string]any{"type": "null"}}}
		}
		desc := g.docs[t.Name()+"."+f.Name]
		if desc == "" {
			desc = g.docs[schema+"."+f.Name]
		}
		// A comment naming the Go field names the wire field instead (not an acronym: "CPU cores").
		if rest, ok := strings.CutPrefix(desc, f.Name+" "); ok && f.Name != strings.ToUpper(f.Name) {
			desc = tag + " " + rest
		}
		p["description"] = desc
		if r, ok := g.rules[schema+"."+tag]; ok {
			r.apply(p)
			g.used[schema+"."+tag] = true
		}
		props[tag] = p
		if always {
			*required = append(*required, tag)
		}
		// A deprecated alias is written with the same value by the type's MarshalJSON (a test
		// in api checks it) and documented so generated clients know to read the canonical name.
		if alias := f.Tag.Get("alias"); alias != "" {
			a := maps.Clone(p)
			a["deprecated"] = true
			a["description"] = "Deprecated alias of " + tag + ", with the same value: still emitted for clients of the seed API and of the first v1 contract. Read " + tag + "."
			props[alias] = a
		}
	}
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Write(api.OpenAPI)
	return nil
}
