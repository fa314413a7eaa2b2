package e2b

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// defaultContext is the id of a sandbox's one interpreter, as the code interpreter's contexts
// name it.
const defaultContext = "default"

func (s *Server) interpreterRoutes() {
	s.interp.HandleFunc("POST /execute", s.handleExecute)
	s.interp.HandleFunc("GET /contexts", func(w http.ResponseWriter, r *http.Request) {
		sb, err := session(r)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, []contextJSON{{ID: defaultContext, Language: "python", Cwd: sb.Spec().Workdir}})
	})
	unsupported := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.ErrUnimplemented, "an Airlock sandbox has one Python interpreter (context %q): more contexts, and restarting one, are not supported", defaultContext))
	}
	s.interp.HandleFunc("POST /contexts", unsupported)
	s.interp.HandleFunc("DELETE /contexts/{id}", unsupported)
	s.interp.HandleFunc("POST /contexts/{id}/restart", unsupported)
	s.interp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.ErrNotFound, "the code interpreter has no route %s %s", r.Method, r.URL.Path))
	})
}

// contextJSON is a code-interpreter context.
type contextJSON struct {
	ID       string `json:"id"`
	Language string `json:"language"`
	Cwd      string `json:"cwd"`
}

// session is the data-plane request's sandbox if it runs an interpreter. Nothing listens on
// 49999 in any other sandbox, which E2B answers 502.
func session(r *http.Request) (*engine.Sandbox, error) {
	sb := sandboxOf(r.Context())
	if !sb.Kind().IsSession() {
		return nil, &statusError{status: http.StatusBadGateway, msg: "sandbox " + sb.ID() +
			" runs no code interpreter: create it with template " + templateInterpreter + " (@e2b/code-interpreter's Sandbox)"}
	}
	return sb, nil
}

// executeRequest is the body of POST /execute.
type executeRequest struct {
	Code      string            `json:"code"`
	ContextID string            `json:"context_id"`
	Language  string            `json:"language"`
	EnvVars   map[string]string `json:"env_vars"`
}

// handleExecute runs one cell in the sandbox's interpreter and answers E2B's NDJSON: stdout
// and stderr, the results (rich outputs, then the value of the last expression), an error,
// the end. The headers go out at once (the SDK's request timeout runs until them); the lines
// come when the cell has run, since the engine answers a cell whole.
func (s *Server) handleExecute(w http.ResponseWriter, r *http.Request) {
	sb, err := session(r)
	if err != nil {
		writeError(w, err)
		return
	}
	var req executeRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	switch {
	case req.Language != "" && req.Language != "python" && req.Language != "python3":
		writeError(w, api.Errorf(api.ErrInvalidArgument, "language %q: Airlock's code interpreter runs Python only", req.Language))
		return
	case req.ContextID != "" && req.ContextID != defaultContext:
		writeError(w, api.Errorf(api.ErrNotFound, "context %s not found (a sandbox has the one context %q)", req.ContextID, defaultContext))
		return
	case len(req.EnvVars) > 0:
		writeError(w, api.Errorf(api.ErrInvalidArgument, "env_vars: a cell runs with its sandbox's environment; set envs when creating the sandbox"))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	ctx := r.Context()
	// The cell may run as long as the daemon lets a cell run; the SDK's timeoutMs is its own.
	timeout := time.Duration(s.cfg.Engine.Limits().MaxTimeout * float64(time.Second))
	res, release, err := sb.RunCellHeld(ctx, req.Code, timeout)
	enc := json.NewEncoder(w) // one object a line, no blank lines
	if err != nil {
		if ctx.Err() != nil {
			// The client went away: stop the cell, as E2B interrupts the kernel.
			ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			sb.Interrupt(ictx)
			cancel()
			return
		}
		d := api.PublicDetail(err)
		enc.Encode(map[string]string{"type": "error", "name": "SandboxError", "value": d.Message, "traceback": ""})
		enc.Encode(map[string]string{"type": "end_of_execution"})
		return
	}
	defer release()
	for _, line := range cellLines(res, time.Now()) {
		if enc.Encode(line) != nil {
			return
		}
	}
	rc.Flush()
}

// mimeKeys are the result fields of E2B's MIME types; any other MIME is sent under its own
// name and lands in the SDK's result.extra.
var mimeKeys = map[string]string{
	"text/plain": "text", "text/html": "html", "text/markdown": "markdown", "image/svg+xml": "svg",
	"image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf", "text/latex": "latex",
	"application/json": "json", "application/javascript": "javascript",
}

// cellLines are the NDJSON lines of a cell's answer.
func cellLines(res *engine.CellResult, now time.Time) []map[string]any {
	ts := now.UnixMicro()
	var lines []map[string]any
	if res.Stdout != "" {
		lines = append(lines, map[string]any{"type": "stdout", "text": res.Stdout, "timestamp": ts})
	}
	if res.Stderr != "" {
		lines = append(lines, map[string]any{"type": "stderr", "text": res.Stderr, "timestamp": ts})
	}
	// Airlock lists a cell's rich outputs one MIME each, text/plain left out; E2B bundles the
	// MIMEs of one display in one result: a MIME seen again starts the next.
	var cur map[string]any
	for _, d := range res.Display {
		key, ok := mimeKeys[d.MIME]
		if !ok {
			key = d.MIME
		}
		if cur != nil && cur[key] != nil {
			lines, cur = append(lines, cur), nil
		}
		if cur == nil {
			cur = map[string]any{"type": "result", "is_main_result": false}
		}
		switch {
		case key == "json":
			var v any
			if json.Unmarshal(d.Data, &v) == nil {
				cur[key] = v
			} else {
				cur[key] = string(d.Data)
			}
		case d.Text:
			cur[key] = string(d.Data)
		default:
			cur[key] = base64.StdEncoding.EncodeToString(d.Data)
		}
	}
	if cur != nil {
		lines = append(lines, cur)
	}
	if res.Result != nil {
		lines = append(lines, map[string]any{"type": "result", "text": *res.Result, "is_main_result": true})
	}
	switch e := res.Error; {
	case e != nil:
		lines = append(lines, map[string]any{"type": "error", "name": e.Name, "value": e.Value, "traceback": strings.Join(e.Traceback, "\n")})
	case res.TimedOut:
		lines = append(lines, map[string]any{"type": "error", "name": "TimeoutError", "value": "the cell ran past the daemon's cell timeout and was interrupted", "traceback": ""})
	case res.Interrupted:
		lines = append(lines, map[string]any{"type": "error", "name": "KeyboardInterrupt", "value": "the cell was interrupted", "traceback": ""})
	}
	if res.Restarted {
		lines = append(lines, map[string]any{"type": "stderr", "text": "[airlock] the interpreter was restarted: " + res.RestartReason + "\n", "timestamp": ts})
	}
	return append(lines, map[string]any{"type": "end_of_execution"})
}
