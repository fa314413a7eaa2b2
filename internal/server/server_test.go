package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// blockingRuntime never finishes creating a sandbox until released; it lets tests fill the
// engine's slots without real sandboxes.
type blockingRuntime struct {
	release chan struct{}
	entered chan struct{}
}

func (b *blockingRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return nil, errors.New("fake runtime creates nothing")
}

const testKey = "test-key-0123456789abcdef"

func newTestServer(t *testing.T, keys ...string) (*httptest.Server, *blockingRuntime) {
	t.Helper()
	ts, rt, _ := newTestServerEngine(t, keys...)
	return ts, rt
}

func newTestServerEngine(t *testing.T, keys ...string) (*httptest.Server, *blockingRuntime, *engine.Engine) {
	t.Helper()
	rt := &blockingRuntime{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	e, err := engine.New(engine.Config{Runtime: rt, MaxConcurrent: 1, MaxQueue: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Engine: e, APIKeys: keys, MaxBodyBytes: 1 << 20, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		select {
		case <-rt.release:
		default:
			close(rt.release)
		}
		ts.Close()
	})
	return ts, rt, e
}

func do(t *testing.T, ts *httptest.Server, method, path, body string, hdr map[string]string) (*http.Response, api.ErrorBody) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, ts.URL+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb api.ErrorBody
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(b, &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
			t.Fatalf("%s %s: status %d body %q is not {\"error\":{code,message}}", method, path, resp.StatusCode, b)
		}
	}
	return resp, eb
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	ts, _ := newTestServer(t)
	big := `{"code":"` + strings.Repeat("x", 2<<20) + `"}`
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"malformed JSON", "POST", "/v1/execute", `{"code": "print(1)"`, 400, api.CodeInvalidArgument},
		{"not JSON", "POST", "/v1/execute", `print(1)`, 400, api.CodeInvalidArgument},
		{"empty body", "POST", "/v1/execute", ``, 400, api.CodeInvalidArgument},
		{"trailing data", "POST", "/v1/execute", `{"code":"1"} {"code":"2"}`, 400, api.CodeInvalidArgument},
		{"unknown field", "POST", "/v1/execute", `{"code":"1","evil":true}`, 400, api.CodeInvalidArgument},
		{"wrong type", "POST", "/v1/execute", `{"code":123}`, 400, api.CodeInvalidArgument},
		{"wrong type timeout", "POST", "/v1/execute", `{"code":"1","timeout":"30"}`, 400, api.CodeInvalidArgument},
		{"missing code", "POST", "/v1/execute", `{}`, 400, api.CodeInvalidArgument},
		{"timeout too long", "POST", "/v1/execute", `{"code":"1","timeout":301}`, 400, api.CodeInvalidArgument},
		{"timeout too short", "POST", "/v1/execute", `{"code":"1","timeout":0.5}`, 400, api.CodeInvalidArgument},
		{"negative timeout", "POST", "/v1/execute", `{"code":"1","timeout":-1}`, 400, api.CodeInvalidArgument},
		{"memory too small", "POST", "/v1/execute", `{"code":"1","memory_mb":16}`, 400, api.CodeInvalidArgument},
		{"memory too large", "POST", "/v1/execute", `{"code":"1","memory_mb":99999999}`, 400, api.CodeInvalidArgument},
		{"cpu too large", "POST", "/v1/execute", `{"code":"1","cpu":1000}`, 400, api.CodeInvalidArgument},
		{"unknown language", "POST", "/v1/execute", `{"code":"1","language":"cobol"}`, 400, api.CodeInvalidArgument},
		{"unknown image", "POST", "/v1/execute", `{"code":"1","image":"ubuntu:latest"}`, 400, api.CodeInvalidArgument},
		{"file outside workspace", "POST", "/v1/execute", `{"code":"1","files":{"../../etc/passwd":"x"}}`, 400, api.CodeInvalidArgument},
		{"env with =", "POST", "/v1/execute", `{"code":"1","env":{"A=B":"x"}}`, 400, api.CodeInvalidArgument},
		{"NUL in code", "POST", "/v1/execute", `{"code":"a\u0000b"}`, 400, api.CodeInvalidArgument},
		{"seed route validates too", "POST", "/execute", `{"code":"1","timeout":9999}`, 400, api.CodeInvalidArgument},
		{"body too large", "POST", "/v1/execute", big, 413, api.CodeTooLarge},
		{"network not built", "POST", "/v1/execute", `{"code":"1","allow_network":true}`, 501, api.CodeUnimplemented},
		{"unknown route", "GET", "/v1/nope", ``, 404, api.CodeNotFound},
		{"wrong method", "GET", "/v1/execute", ``, 405, "method_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{"Content-Type": "application/json"}
			resp, eb := do(t, ts, tc.method, tc.path, tc.body, hdr)
			if resp.StatusCode != tc.status || eb.Error.Code != tc.code {
				t.Fatalf("got %d %q (%s), want %d %q", resp.StatusCode, eb.Error.Code, eb.Error.Message, tc.status, tc.code)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	ts, _ := newTestServer(t, testKey)
	for _, tc := range []struct {
		name, auth string
		status     int
	}{
		{"missing", "", 401},
		{"wrong", "Bearer wrong-key-0123456789abcdef", 401},
		{"not bearer", "Basic " + testKey, 401},
		{"right", "Bearer " + testKey, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, eb := do(t, ts, "GET", "/v1/info", "", map[string]string{"Authorization": tc.auth})
			if resp.StatusCode != tc.status {
				t.Fatalf("got %d %v, want %d", resp.StatusCode, eb, tc.status)
			}
		})
	}
	// Health needs no key; execute does.
	if resp, _ := do(t, ts, "GET", "/healthz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
	_, err := airlock.New(ts.URL, "").Execute(t.Context(), api.ExecuteRequest{Code: "1"})
	if !errors.Is(err, api.ErrUnauthenticated) {
		t.Fatalf("SDK without key: got %v, want unauthenticated", err)
	}
	info, err := airlock.New(ts.URL, testKey).Info(t.Context())
	if err != nil || info.Version != "test" || info.Limits.MaxTimeout != 300 {
		t.Fatalf("info: %+v %v", info, err)
	}
}

func TestOverCapacityIs429(t *testing.T) {
	t.Parallel()
	ts, rt, e := newTestServerEngine(t)
	cl := airlock.New(ts.URL, "")
	// One slot and a queue of one: two requests are admitted (one running, one waiting),
	// the third is refused at once.
	errs := make(chan error, 2)
	start := func() {
		go func() {
			_, err := cl.Execute(t.Context(), api.ExecuteRequest{Code: "1"})
			errs <- err
		}()
	}
	start()
	<-rt.entered
	start()
	for e.Waiting() != 1 {
		time.Sleep(time.Millisecond)
	}
	resp, eb := do(t, ts, "POST", "/v1/execute", `{"code":"1"}`, nil)
	if resp.StatusCode != 429 || eb.Error.Code != api.CodeResourceExhausted || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("got %d %v Retry-After=%q, want 429 resource_exhausted with Retry-After", resp.StatusCode, eb, resp.Header.Get("Retry-After"))
	}
	close(rt.release)
	for range 2 {
		if err := <-errs; !errors.Is(err, api.ErrInternal) {
			t.Fatalf("admitted request: got %v, want the fake runtime's internal error", err)
		}
	}
}

func TestInternalErrorsDoNotLeak(t *testing.T) {
	t.Parallel()
	ts, rt := newTestServer(t)
	close(rt.release)
	resp, eb := do(t, ts, "POST", "/v1/execute", `{"code":"1"}`, nil)
	if resp.StatusCode != 500 || strings.Contains(eb.Error.Message, "fake runtime") {
		t.Fatalf("got %d %q; a 5xx must not echo internal errors", resp.StatusCode, eb.Error.Message)
	}
}

func TestCheckListen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		keys []string
		ok   bool
	}{
		{"127.0.0.1:8080", nil, true},
		{"[::1]:8080", nil, true},
		{"localhost:8080", nil, true},
		{"0.0.0.0:8080", nil, false},
		{":8080", nil, false},
		{"10.1.2.3:8080", nil, false},
		{"0.0.0.0:8080", []string{testKey}, true},
	} {
		if err := CheckListen(tc.addr, tc.keys); (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, %d keys) = %v, want ok=%v", tc.addr, len(tc.keys), err, tc.ok)
		}
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	ts, _ := newTestServer(t)
	do(t, ts, "POST", "/v1/execute", `{"code":"1","timeout":9999}`, nil)
	resp, err := ts.Client().Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`airlock_http_requests_total{code="400",route="POST /v1/execute"} 1`, "airlock_sandboxes_live 0", "airlock_admission_waiting 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
