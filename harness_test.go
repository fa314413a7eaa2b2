package airlock_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
	"github.com/airlockhq/airlock/internal/server"
)

// The SDK is tested against the real HTTP handler (internal/server) over the real engine, whose
// sandboxes' agents are fakeagent: the contract under test is the server's own, not a copy, and
// no test needs root. See fakeagent.Agent for the commands a sandbox knows.

// daemon is a running test daemon.
type daemon struct {
	URL       string
	rt        *agentRuntime
	ts        *httptest.Server
	e         *engine.Engine
	mu        sync.Mutex
	reqs      []rec
	closeOnce sync.Once
}

// rec is one request as the server received it.
type rec struct {
	Method, Path string
	Query        map[string][]string
	Header       http.Header
	Length       int64 // r.ContentLength: -1 when chunked
	Body         string
}

// agentRuntime creates sandboxes whose agent is a fakeagent.
type agentRuntime struct {
	mu    sync.Mutex
	insts map[string]*agentInstance // by sandbox id
}

type agentInstance struct {
	agent fakeagent.Agent
	done  chan struct{}
	once  sync.Once
}

func (r *agentRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	inst := &agentInstance{done: make(chan struct{})}
	r.mu.Lock()
	r.insts[s.ID] = inst
	r.mu.Unlock()
	return inst, nil
}

func (i *agentInstance) Agent() engine.Agent          { return &i.agent }
func (i *agentInstance) Usage() (engine.Usage, error) { return engine.Usage{}, nil }
func (i *agentInstance) Done() <-chan struct{}        { return i.done }

// Destroy kills the agent with its sandbox, so calls in flight fail as they do on a real one.
func (i *agentInstance) Destroy(context.Context) error {
	i.once.Do(func() {
		i.agent.Stop()
		close(i.done)
	})
	return nil
}

// newDaemon serves the real handler over an engine on agentRuntime, requiring key if set.
func newDaemon(key string) (*daemon, error) {
	d := &daemon{rt: &agentRuntime{insts: map[string]*agentInstance{}}}
	e, err := engine.New(engine.Config{Runtime: d.rt})
	if err != nil {
		return nil, err
	}
	var keys []string
	if key != "" {
		keys = []string{key}
	}
	s, err := server.New(server.Config{Engine: e, APIKeys: keys})
	if err != nil {
		e.Close(context.Background())
		return nil, err
	}
	h := s.Handler()
	d.e = e
	d.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := rec{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone(),
			Length: r.ContentLength}
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			b, _ := io.ReadAll(r.Body)
			rc.Body = string(b)
			r.Body = io.NopCloser(strings.NewReader(rc.Body))
		}
		d.mu.Lock()
		d.reqs = append(d.reqs, rc)
		d.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	d.URL = d.ts.URL
	return d, nil
}

// Close stops the server and the engine.
func (d *daemon) Close() {
	d.closeOnce.Do(func() {
		d.ts.Close()
		d.e.Close(context.Background())
	})
}

// requests returns the requests seen so far whose path ends with suffix.
func (d *daemon) requests(method, suffix string) []rec {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []rec
	for _, r := range d.reqs {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			out = append(out, r)
		}
	}
	return out
}

// agent is the fake agent of sandbox id.
func (d *daemon) agent(id string) *fakeagent.Agent {
	d.rt.mu.Lock()
	defer d.rt.mu.Unlock()
	return &d.rt.insts[id].agent
}
