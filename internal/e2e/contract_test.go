package e2e

import (
	"errors"
	"strings"
	"testing"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// TestExecuteContract holds every runtime to the one-shot contract.
func TestExecuteContract(t *testing.T) {
	for _, rt := range []struct {
		name   string
		engine func(testing.TB) *engine.Engine
	}{{native.Name, mustEngine}, {gvisor.Name, mustGvisor}} {
		t.Run(rt.name, func(t *testing.T) { executeContract(t, rt.engine(t)) })
	}
}

func executeContract(t *testing.T, e *engine.Engine) {
	cases := []struct {
		name  string
		req   api.ExecuteRequest
		check func(*api.ExecuteResponse) bool
	}{
		{"success", api.ExecuteRequest{Code: "print(sum(range(100)))"}, func(r *api.ExecuteResponse) bool {
			return r.Success && r.Stdout == "4950\n" && r.ReturnCode == 0 && r.ExecutionTime > 0 && r.CPUTime > 0 && r.PeakMemoryMB > 0
		}},
		{"exit code", api.ExecuteRequest{Code: "import sys; print('x', file=sys.stderr); sys.exit(3)"}, func(r *api.ExecuteResponse) bool {
			return !r.Success && r.ReturnCode == 3 && r.Stderr == "x\n"
		}},
		{"signal is 128+N", api.ExecuteRequest{Code: "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"}, func(r *api.ExecuteResponse) bool {
			return r.ReturnCode == 143 && !r.Success && !r.TimedOut && !r.OOMKilled
		}},
		{"exception", api.ExecuteRequest{Code: "raise ValueError('boom')"}, func(r *api.ExecuteResponse) bool {
			return r.ReturnCode == 1 && strings.Contains(r.Stderr, "ValueError: boom")
		}},
		{"stdin", api.ExecuteRequest{Code: "import sys; print(sys.stdin.read().upper())", Stdin: "hello"}, func(r *api.ExecuteResponse) bool {
			return r.Stdout == "HELLO\n"
		}},
		{"files and env", api.ExecuteRequest{Code: "import os; print(open('data/in.txt').read(), os.environ['GREETING'], os.getcwd())",
			Files: map[string]string{"data/in.txt": "content"}, Env: map[string]string{"GREETING": "hey"}}, func(r *api.ExecuteResponse) bool {
			return r.Stdout == "content hey /workspace\n"
		}},
		{"bash", api.ExecuteRequest{Language: "bash", Code: "echo $((6*7)); whoami"}, func(r *api.ExecuteResponse) bool {
			return r.Stdout == "42\nsandbox\n"
		}},
		{"invalid UTF-8 replaced", api.ExecuteRequest{Code: "import sys; sys.stdout.buffer.write(b'ok\\xff\\xfeend')"}, func(r *api.ExecuteResponse) bool {
			return r.Stdout == "ok\uFFFDend" || r.Stdout == "ok\uFFFD\uFFFDend"
		}},
		{"large program via file", api.ExecuteRequest{Code: "x = 1\n" + strings.Repeat("# padding\n", 20000) + "print(x)"}, func(r *api.ExecuteResponse) bool {
			return r.Stdout == "1\n"
		}},
		{"allocation past the limit", api.ExecuteRequest{MemoryMB: 64, Code: "import resource\nresource.setrlimit(resource.RLIMIT_AS, (2<<30, 2<<30))\nx = bytearray(200 << 20)"}, func(r *api.ExecuteResponse) bool {
			return r.OOMKilled && r.ReturnCode == 137 && !r.Success
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := runOn(t, e, tc.req)
			if !tc.check(resp) {
				t.Fatalf("got %+v", resp)
			}
		})
	}
}

func TestHTTPExecuteThroughSDK(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	c := airlock.New(a.url, "")
	resp, err := c.Execute(t.Context(), api.ExecuteRequest{Code: "print(sum(range(100)))"})
	if err != nil || resp.Stdout != "4950\n" {
		t.Fatalf("execute: %+v %v", resp, err)
	}
	// The seed-compatible route takes the same body.
	var seed api.ExecuteResponse
	if st := a.call("POST", "/execute", strings.NewReader(`{"code":"print(1+1)","timeout":30,"allow_network":false}`), &seed); st != 200 || seed.Stdout != "2\n" || !seed.Success {
		t.Fatalf("seed /execute: %d %+v", st, seed)
	}
	_, err = c.Execute(t.Context(), api.ExecuteRequest{Code: "1", Timeout: 1e9})
	if !errors.Is(err, api.ErrInvalidArgument) {
		t.Fatalf("out of bounds through the SDK: %v", err)
	}
}

func TestWritableAreasBehaveNormally(t *testing.T) {
	// Renames across directories and terminals' ioctls must survive the Landlock layer.
	resp := run(t, api.ExecuteRequest{Language: "bash", Code: `set -e
mkdir -p /workspace/a /workspace/b /tmp/c
echo x > /workspace/a/f && mv /workspace/a/f /workspace/b/f && mv /workspace/b/f /tmp/c/f && ln /tmp/c/f /tmp/c/g
cat /tmp/c/g; python3 -c 'import os; print(os.isatty(0))' </dev/null`})
	if !resp.Success || resp.Stdout != "x\nFalse\n" {
		t.Fatalf("%+v", resp)
	}
}

func TestBatch(t *testing.T) {
	a := newAPIServer(t, engine.Config{MaxConcurrent: 4})
	body := `{"snippets":[{"code":"print(1)"},{"code":"import time; time.sleep(0.3); print(2)"},{"code":"raise SystemExit(3)"},{"code":"print(4)","language":"bash"}],"concurrency":2}`
	var br api.BatchResponse
	if code := a.call("POST", "/v1/execute/batch", strings.NewReader(body), &br); code != 200 || len(br.Results) != 4 {
		t.Fatalf("batch: %d %+v", code, br)
	}
	if br.Results[0].Stdout != "1\n" || br.Results[1].Stdout != "2\n" || br.Results[2].ReturnCode != 3 || br.Results[3].ReturnCode == 0 {
		t.Fatalf("results out of order or wrong: %+v %+v %+v %+v", br.Results[0].ExecuteResponse, br.Results[1].ExecuteResponse, br.Results[2].ExecuteResponse, br.Results[3].ExecuteResponse)
	}
	var eb api.ErrorBody
	for _, bad := range []string{`{"snippets":[]}`, `{"snippets":[{"code":"1"},{"code":""}]}`, `{"snippets":[{"code":"1"}],"concurrency":-1}`} {
		if code := a.call("POST", "/v1/execute/batch", strings.NewReader(bad), &eb); code != 400 {
			t.Fatalf("batch %s: %d", bad, code)
		}
	}
}

func TestBatchOutputBudget(t *testing.T) {
	a := newAPIServer(t, engine.Config{MaxConcurrent: 8})
	var sn []string
	for range 100 {
		sn = append(sn, `{"code":"import sys; sys.stdout.write('x' * 204800)"}`)
	}
	var br api.BatchResponse
	if code := a.call("POST", "/v1/execute/batch", strings.NewReader(`{"snippets":[`+strings.Join(sn, ",")+`]}`), &br); code != 200 {
		t.Fatalf("batch: %d", code)
	}
	for i, r := range br.Results {
		if r.ExecuteResponse == nil || !r.Truncated || len(r.Stdout) != 16<<20/200 {
			t.Fatalf("snippet %d: %+v; each stream's share of the 16 MiB budget is %d bytes", i, r.Error, 16<<20/200)
		}
	}
}
