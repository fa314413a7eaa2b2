package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
)

// agentRuntime creates sandboxes whose agent is a fakeagent: the real engine and server run
// above it, without root.
type agentRuntime struct{}

type agentInstance struct {
	agent fakeagent.Agent
	done  chan struct{}
	once  sync.Once
}

func (agentRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	return &agentInstance{done: make(chan struct{})}, nil
}

func (i *agentInstance) Agent() engine.Agent          { return &i.agent }
func (i *agentInstance) Usage() (engine.Usage, error) { return engine.Usage{}, nil }
func (i *agentInstance) Done() <-chan struct{}        { return i.done }
func (i *agentInstance) Destroy(context.Context) error {
	i.once.Do(func() { close(i.done) })
	return nil
}

// newAgentServer serves the real handler over an engine on agentRuntime.
func newAgentServer(t *testing.T) *httptest.Server {
	t.Helper()
	ts, _ := newRuntimeServer(t, agentRuntime{})
	return ts
}

// newRuntimeServer serves the real handler over an engine on rt; both close with the test.
func newRuntimeServer(t *testing.T, rt engine.Runtime) (*httptest.Server, *engine.Engine) {
	t.Helper()
	e, err := engine.New(engine.Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		e.Close(context.Background())
	})
	return ts, e
}

// TestSDKThroughFakeAgent drives execute, exec (buffered and streamed), files and a session
// cell through the SDK, the HTTP handler and the engine, down to the fake agent.
func TestSDKThroughFakeAgent(t *testing.T) {
	t.Parallel()
	ts := newAgentServer(t)
	c := airlock.New(ts.URL, "")
	ctx := t.Context()

	r, err := c.Execute(ctx, api.ExecuteRequest{Code: "print(1)", Files: map[string]string{"in.txt": "x"}})
	if err != nil || !r.Success || r.Stdout != "print(1)" || r.ReturnCode != 0 {
		t.Fatalf("execute: got %+v, %v; want success printing the program", r, err)
	}
	// What the agent refuses in a one-shot is the caller's error, not the daemon's.
	_, err = c.Execute(ctx, api.ExecuteRequest{Code: "1", Files: map[string]string{"d": "f", "d/e": "g"}})
	if got, want := api.CodeOf(err), api.CodeInvalidArgument; got != want {
		t.Fatalf("execute with a file beneath a file: got %q (%v), want %q", got, err, want)
	}

	sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"echo", "hi"}})
	if err != nil || res.Stdout != "hi\n" || res.ExitCode != 0 || res.Pid == 0 {
		t.Fatalf("run: got %+v, %v; want hi, exit 0, a pid", res, err)
	}
	if res, err := sb.Run(ctx, api.ExecRequest{Cmd: []string{"exit", "3"}}); err != nil || res.ExitCode != 3 {
		t.Fatalf("run exit 3: got %+v, %v; want exit 3", res, err)
	}
	p, err := sb.Exec(ctx, "cat")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(p.Stdin, "streamed")
	p.Stdin.Close()
	out, _ := io.ReadAll(p.Stdout)
	if w, err := p.Wait(); err != nil || string(out) != "streamed" || w.ExitCode != 0 {
		t.Fatalf("streamed exec: got %q, %+v, %v; want \"streamed\", exit 0", out, w, err)
	}

	if err := sb.WriteFile(ctx, "dir/a.txt", strings.NewReader("content")); err != nil {
		t.Fatal(err)
	}
	if b, err := sb.ReadFile(ctx, "dir/a.txt"); err != nil || string(b) != "content" {
		t.Fatalf("read back: got %q, %v; want \"content\"", b, err)
	}
	if fi, err := sb.Stat(ctx, "/workspace/dir/a.txt"); err != nil || fi.Size != 7 {
		t.Fatalf("stat: got %+v, %v; want 7 bytes", fi, err)
	}
	if err := sb.Remove(ctx, "dir", true); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.ReadFile(ctx, "dir/a.txt"); !airlock.IsNotFound(err) {
		t.Fatalf("read after remove: got %v, want not found", err)
	}
	if err := sb.Terminate(ctx); err != nil {
		t.Fatal(err)
	}

	// Sessions have no SDK calls yet: plain HTTP.
	var info api.SandboxInfo
	post(t, ts.URL+"/v1/sessions", `{}`, http.StatusCreated, &info)
	var cell api.RunResult
	for i, want := range []string{"1", "2"} {
		post(t, ts.URL+"/v1/sessions/"+info.ID+"/run", `{"code":"x = 1"}`, http.StatusOK, &cell)
		if !cell.Success || cell.Stdout != "x = 1" || cell.Result == nil || *cell.Result != want {
			t.Fatalf("cell %d: got %+v; want success, result %s", i, cell, want)
		}
	}
}

// post sends body to url and decodes the answer into out, which must have status want.
func post(t *testing.T, url, body string, want int, out any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: got %d %s, want %d", url, resp.StatusCode, b, want)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
}

// The session routes answer only for sessions: a plain sandbox's id is 404 there, as the review
// found GET /v1/sessions/{id} and interrupt answering for any sandbox.
func TestSessionRoutesAreForSessions(t *testing.T) {
	ts := newAgentServer(t)
	var sb api.SandboxInfo
	post(t, ts.URL+"/v1/sandboxes", `{}`, 201, &sb)
	resp, err := http.Get(ts.URL + "/v1/sessions/" + sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET /v1/sessions/{a sandbox's id}: got %d, want 404", resp.StatusCode)
	}
	var eb api.ErrorBody
	post(t, ts.URL+"/v1/sessions/"+sb.ID+"/interrupt", ``, 404, &eb)
	var ss api.SessionInfo
	post(t, ts.URL+"/v1/sessions", `{}`, 201, &ss)
	resp, err = http.Get(ts.URL + "/v1/sessions/" + ss.ID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /v1/sessions/{a session's id}: got %d, want 200", resp.StatusCode)
	}
}
