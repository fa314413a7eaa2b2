package judge

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// codapi (COMPAT.md §7) under /codapi: POST /v1/exec runs files[""] in the language its
// sandbox names (the engine's names and aliases; codapi's "sh" is bash) with the other files
// beside it. A program that fails is still 200 with ok false; every error has the same shape.

type codapiRequest struct {
	Sandbox string            `json:"sandbox"`
	Command string            `json:"command"`
	Files   map[string]string `json:"files"`
}

type codapiResponse struct {
	ID       string `json:"id"`
	OK       bool   `json:"ok"`
	Duration int64  `json:"duration"` // ms
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

func (j *Judge) codapi() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/exec", j.handleCodapiExec)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, codapiResponse{ID: "-", Stderr: "not found"})
	})
	return mux
}

func codapiID(sandbox, command string) string {
	var b [4]byte
	rand.Read(b[:])
	return sandbox + "_" + command + "_" + hex.EncodeToString(b[:])
}

func (j *Judge) handleCodapiExec(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, codapiResponse{ID: "-", Stderr: "method not allowed"})
		return
	}
	ctx, release, err := j.cfg.Authorize(r, bearer(r))
	if err != nil {
		code, msg := publicMessage(err)
		writeJSON(w, httpStatus(code), codapiResponse{ID: "-", Stderr: msg})
		return
	}
	defer release()
	var req codapiRequest
	if err := j.readJSON(w, r, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, codapiResponse{ID: "-", Stderr: err.Error()})
		return
	}
	id := codapiID(req.Sandbox, req.Command)
	fail := func(status int, msg string) {
		writeJSON(w, status, codapiResponse{ID: id, Stderr: msg})
	}
	lang, ok := j.cfg.Engine.Language(ctx, req.Sandbox)
	switch {
	case !ok:
		fail(http.StatusNotFound, "unknown sandbox")
		return
	case req.Command != "run":
		fail(http.StatusNotFound, "unknown command")
		return
	}
	main, ok := req.Files[""]
	if !ok || strings.TrimSpace(main) == "" {
		fail(http.StatusBadRequest, "empty request")
		return
	}
	files := map[string]string{}
	for name, content := range req.Files {
		if name != "" {
			files[name] = content
		}
	}
	var c capture
	res, err := j.cfg.Engine.RunProgram(ctx, engine.Program{Language: lang.Name, Code: main, Files: files,
		Output: func(compile bool, stream int, b []byte) {
			if compile {
				// The compiler's complaints are the program's stderr to a codapi client.
				stream = engine.StreamStderr
			}
			c.add(stream, b)
		}})
	if err != nil {
		j.logInternal(ctx, "codapi", err)
		code, msg := publicMessage(err)
		status := httpStatus(code)
		if code == api.CodeResourceExhausted {
			msg = "busy: try again later"
		}
		fail(status, msg)
		return
	}
	out := codapiResponse{ID: id, Stdout: engine.UTF8(c.stdout.Bytes()), Stderr: engine.UTF8(c.stderr.Bytes())}
	last := res.Run
	if last == nil {
		last = res.Compile
	} else {
		out.OK = last.Success()
	}
	if res.Compile != nil && res.Run != nil {
		out.Duration += res.Compile.Duration.Milliseconds()
	}
	out.Duration += last.Duration.Milliseconds()
	if last.TimedOut {
		out.Stderr += "\nairlock: the program ran past its time limit\n"
	} else if last.OOMKilled {
		out.Stderr += "\nairlock: the program ran past its memory limit\n"
	}
	writeJSON(w, http.StatusOK, out)
}
