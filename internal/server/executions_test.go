package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
)

// stuckRuntime's sandboxes run every program until they are destroyed, as a stuck job would.
type stuckRuntime struct{ started chan struct{} }

type stuckInstance struct {
	agentInstance
	started chan struct{}
}

type stuckAgent struct {
	*fakeagent.Agent
	i *stuckInstance
}

func (r stuckRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	return &stuckInstance{agentInstance: agentInstance{done: make(chan struct{})}, started: r.started}, nil
}

func (i *stuckInstance) Agent() engine.Agent { return stuckAgent{&i.agent, i} }

func (a stuckAgent) Exec(ctx context.Context, p engine.Process, on func(engine.Event)) (*engine.End, error) {
	a.i.started <- struct{}{}
	select {
	case <-a.i.done:
		return nil, io.ErrUnexpectedEOF // the agent's connection dies with its sandbox
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// TestExecutionsListAndCancel lists a one-shot run in flight and cancels it through the API,
// as an operator finding a stuck job would; another key neither sees nor cancels it.
func TestExecutionsListAndCancel(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	e, err := engine.New(engine.Config{Runtime: stuckRuntime{started}})
	if err != nil {
		t.Fatal(err)
	}
	const keyA, keyB = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
	s, err := New(Config{Engine: e, APIKeys: []string{keyA, keyB}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		e.Close(context.Background())
	})
	call := func(method, path, key, body string, out any) (int, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp.StatusCode, resp.Header
	}

	type answer struct {
		status int
		header http.Header
		res    api.ExecuteResponse
	}
	done := make(chan answer, 1)
	go func() {
		var a answer
		a.status, a.header = call("POST", "/v1/execute", keyA, `{"code":"while True: pass","language":"python"}`, &a.res)
		done <- a
	}()
	<-started // the program runs

	var list api.ExecutionList
	if st, _ := call("GET", "/v1/executions", keyA, "", &list); st != 200 || len(list.Executions) != 1 {
		t.Fatalf("GET /v1/executions: got %d %+v, want 200 and the one run", st, list)
	}
	x := list.Executions[0]
	if x.ID == "" || x.Language != api.LanguagePython || x.Key == "" || x.AgeSeconds < 0 {
		t.Fatalf("listed run: got %+v, want an id, python, a key and an age", x)
	}
	var other api.ExecutionList
	if st, _ := call("GET", "/v1/executions", keyB, "", &other); st != 200 || len(other.Executions) != 0 {
		t.Fatalf("GET /v1/executions with another key: got %d %+v, want 200 and none", st, other)
	}
	var eb api.ErrorBody
	if st, _ := call("DELETE", "/v1/executions/"+x.ID, keyB, "", &eb); st != 404 {
		t.Fatalf("DELETE another key's run: got %d %+v, want 404", st, eb)
	}
	if st, _ := call("DELETE", "/v1/executions/nope", keyA, "", &eb); st != 404 {
		t.Fatalf("DELETE an unknown run: got %d %+v, want 404", st, eb)
	}
	var cancelled api.Execution
	if st, _ := call("DELETE", "/v1/executions/"+x.ID, keyA, "", &cancelled); st != 200 || cancelled.ID != x.ID {
		t.Fatalf("DELETE own run: got %d %+v, want 200 and run %s", st, cancelled, x.ID)
	}

	var a answer
	select {
	case a = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the cancelled run never answered")
	}
	if a.status != 200 || a.res.Success || a.res.ReturnCode != 137 || !strings.Contains(a.res.Stderr, "cancelled") {
		t.Fatalf("cancelled run's answer: got %d %+v, want 200, exit 137 and a stderr saying cancelled", a.status, a.res)
	}
	if got := a.header.Get(api.ExecutionHeader); got != x.ID {
		t.Fatalf("%s header: got %q, want %q", api.ExecutionHeader, got, x.ID)
	}
	if st, _ := call("GET", "/v1/executions", keyA, "", &list); st != 200 || len(list.Executions) != 0 {
		t.Fatalf("GET /v1/executions after the run: got %d %+v, want none", st, list)
	}
}
