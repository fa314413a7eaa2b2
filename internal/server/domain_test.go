package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// countingRuntime is agentRuntime counting the sandboxes it was asked for.
type countingRuntime struct {
	agentRuntime
	created atomic.Int64
}

func (r *countingRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	r.created.Add(1)
	return r.agentRuntime.Create(ctx, s)
}

// newCountingServer is newAgentServer that also returns its engine and runtime.
func newCountingServer(t *testing.T) (*httptest.Server, *engine.Engine, *countingRuntime) {
	t.Helper()
	rt := &countingRuntime{}
	ts, e := newRuntimeServer(t, rt)
	return ts, e, rt
}

// errorCode POSTs body to url and returns the status and the error code of the answer.
func errorCode(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error api.ErrorDetail `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error.Code
}

// TestShutdownRefusesNewSandboxes: a request that arrives while the daemon shuts down (the
// engine is closed) gets 503 and creates nothing, rather than a sandbox nobody will destroy.
func TestShutdownRefusesNewSandboxes(t *testing.T) {
	t.Parallel()
	ts, e, rt := newCountingServer(t)
	if err := e.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, path, body string }{
		{"sandbox", "/v1/sandboxes", `{}`},
		{"session", "/v1/sessions", `{}`},
		{"execute", "/v1/execute", `{"code":"print(1)"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, code := errorCode(t, ts.URL+c.path, c.body)
			if status != http.StatusServiceUnavailable || code != api.CodeUnavailable {
				t.Errorf("POST %s after Close: got %d %q, want 503 %q", c.path, status, code, api.CodeUnavailable)
			}
		})
	}
	if n := rt.created.Load(); n != 0 {
		t.Fatalf("the runtime was asked for %d sandboxes after Close, want 0", n)
	}
}

// TestExecuteEnvIsBoundLikeExec: a one-shot's environment meets the same rule as an exec's
// (one env check): over MaxEnvBytes it is a 400 before any sandbox exists, not an exec that
// fails inside one with E2BIG.
func TestExecuteEnvIsBoundLikeExec(t *testing.T) {
	t.Parallel()
	ts, _, rt := newCountingServer(t)
	big := strings.Repeat("x", engine.MaxEnvBytes)
	body := `{"code":"print(1)","env":{"BIG":"` + big + `"}}`
	if status, code := errorCode(t, ts.URL+"/v1/execute", body); status != http.StatusBadRequest || code != api.CodeInvalidArgument {
		t.Fatalf("execute with a %d-byte env: got %d %q, want 400 %q", len(big), status, code, api.CodeInvalidArgument)
	}
	if n := rt.created.Load(); n != 0 {
		t.Fatalf("an invalid request created %d sandboxes", n)
	}
}
