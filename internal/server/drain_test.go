package server

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// TestDrainAndShutdownCause: once shutdown begins /healthz says draining (503), and a call
// whose request context serve ends past the grace period answers with that context's cause —
// a 503 naming the grace period — rather than nothing (the answer used to be dropped as if
// the client had gone away) or a 500 of what the call made of the cancellation.
func TestDrainAndShutdownCause(t *testing.T) {
	rt := &blockingRuntime{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	e, err := engine.New(engine.Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e})
	if err != nil {
		t.Fatal(err)
	}
	base, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.Config.BaseContext = func(net.Listener) context.Context { return base }
	ts.Start()
	defer ts.Close()

	health := func() (int, string) {
		resp, err := ts.Client().Get(ts.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if st, b := health(); st != 200 || b != `{"status":"ok"}` {
		t.Fatalf("healthz before Drain: %d %s, want 200 ok", st, b)
	}
	s.Drain()
	if st, b := health(); st != 503 || b != `{"status":"draining"}` {
		t.Fatalf("healthz after Drain: %d %s, want 503 draining", st, b)
	}

	type answer struct {
		status int
		body   api.ErrorBody
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := ts.Client().Post(ts.URL+"/v1/sandboxes", "application/json", strings.NewReader(`{}`))
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		a := answer{status: resp.StatusCode}
		a.err = json.NewDecoder(resp.Body).Decode(&a.body)
		answered <- a
	}()
	<-rt.entered // the creation is in flight
	const msg = "the daemon is shutting down and this call did not finish within its 1s grace period"
	cancel(api.Errorf(api.ErrUnavailable, msg))
	a := <-answered
	if a.err != nil || a.status != http.StatusServiceUnavailable || a.body.Error.Code != api.CodeUnavailable || a.body.Error.Message != msg {
		t.Fatalf("call ended by the shutdown: %d %+v %v, want 503 %q", a.status, a.body, a.err, msg)
	}
}
