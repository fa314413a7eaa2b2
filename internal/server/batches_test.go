package server

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// fakeQueue records the owners and arguments the routes pass, and knows one batch, "b1".
type fakeQueue struct {
	mu     sync.Mutex
	owners []string
	after  int
	limit  int
	follow bool
}

func (f *fakeQueue) saw(owner string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.owners = append(f.owners, owner)
}

func (f *fakeQueue) Submit(_ context.Context, owner string, req api.SubmitBatchRequest) (*api.BatchStatus, error) {
	f.saw(owner)
	return &api.BatchStatus{ID: "b1", Status: api.BatchRunning, Total: len(req.Snippets)}, nil
}

func (f *fakeQueue) Status(_ context.Context, owner, id string, after, limit int) (*api.BatchStatus, error) {
	f.saw(owner)
	f.mu.Lock()
	f.after, f.limit = after, limit
	f.mu.Unlock()
	if id != "b1" {
		return nil, api.Errorf(api.ErrNotFound, "no batch %s", id)
	}
	return &api.BatchStatus{ID: id}, nil
}

func (f *fakeQueue) Results(_ context.Context, owner, id string, follow bool, emit func(api.BatchItem) error) error {
	f.saw(owner)
	f.mu.Lock()
	f.follow = follow
	f.mu.Unlock()
	for i := range 3 {
		if err := emit(api.BatchItem{Index: i, Result: api.BatchResult{ExecuteResponse: &api.ExecuteResponse{Stdout: "x"}}}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeQueue) Cancel(_ context.Context, owner, id string) (*api.BatchStatus, error) {
	f.saw(owner)
	return &api.BatchStatus{ID: id}, nil
}

// TestBatchRoutes: the routes pass the caller's owner and the query through, refuse bad query
// values with 400, answer NDJSON results, and are 501 on a daemon without a queue.
func TestBatchRoutes(t *testing.T) {
	e, err := engine.New(engine.Config{Runtime: &blockingRuntime{release: make(chan struct{})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.WithoutCancel(t.Context())) })
	q := &fakeQueue{}
	const key = "batch-routes-key-0123456789"
	s, err := New(Config{Engine: e, APIKeys: []string{key}, Batches: q})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	auth := map[string]string{"Authorization": "Bearer " + key}
	for _, tt := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/v1/batches", `{"snippets":[{"code":"1"}]}`, 202},
		{"POST", "/v1/batches", `{"snippets":[{"code":"1"}],"nope":1}`, 400},
		{"GET", "/v1/batches/b1", "", 200},
		{"GET", "/v1/batches/b1?after=-2", "", 400},
		{"GET", "/v1/batches/b1?limit=1001", "", 400},
		{"GET", "/v1/batches/b1?limit=x", "", 400},
		{"GET", "/v1/batches/nope", "", 404},
		{"GET", "/v1/batches/b1/results?stream=maybe", "", 400},
		{"GET", "/v1/batches/nope/results", "", 404},
		{"DELETE", "/v1/batches/b1", "", 200},
	} {
		resp, eb := do(t, ts, tt.method, tt.path, tt.body, auth)
		if resp.StatusCode != tt.want {
			t.Errorf("%s %s: %d %+v, want %d", tt.method, tt.path, resp.StatusCode, eb, tt.want)
		}
	}
	if resp, _ := do(t, ts, "GET", "/v1/batches/b1", "", nil); resp.StatusCode != 401 {
		t.Errorf("no key: %d, want 401", resp.StatusCode)
	}
	do(t, ts, "GET", "/v1/batches/b1?after=4&limit=7", "", auth)
	if q.after != 4 || q.limit != 7 {
		t.Errorf("the queue got after %d limit %d, want 4 and 7", q.after, q.limit)
	}
	want := newKeyState(PlainKey(key)).owner
	for _, o := range q.owners {
		if o != want {
			t.Fatalf("the queue got owner %q, want the key's %q", o, want)
		}
	}

	req, _ := http.NewRequest("GET", ts.URL+"/v1/batches/b1/results?stream=1", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/x-ndjson" || strings.Count(string(b), "\n") != 3 || !q.follow {
		t.Errorf("results: %d %s %q (follow %v), want 200 NDJSON with 3 lines, followed", resp.StatusCode, ct, b, q.follow)
	}

	s2, err := New(Config{Engine: e})
	if err != nil {
		t.Fatal(err)
	}
	ts2 := httptest.NewServer(s2.Handler())
	defer ts2.Close()
	if resp, eb := do(t, ts2, "POST", "/v1/batches", `{"snippets":[{"code":"1"}]}`, nil); resp.StatusCode != 501 {
		t.Errorf("without a queue: %d %+v, want 501", resp.StatusCode, eb)
	}
}
