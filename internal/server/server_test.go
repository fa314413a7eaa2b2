package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
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
		{"network mode unknown", "POST", "/v1/execute", `{"code":"1","network":{"mode":"open"}}`, 400, api.CodeInvalidArgument},
		{"network flag conflicts", "POST", "/v1/execute", `{"code":"1","allow_network":true,"network":{"mode":"block"}}`, 400, api.CodeInvalidArgument},
		{"network allow without allowlist", "POST", "/v1/execute", `{"code":"1","network":{"mode":"internet","allow":["pypi.org"]}}`, 400, api.CodeInvalidArgument},
		{"network rule bad", "POST", "/v1/execute", `{"code":"1","network":{"mode":"allowlist","allow":["[::1]:80"]}}`, 400, api.CodeInvalidArgument},
		{"block_network conflicts", "POST", "/v1/sandboxes", `{"block_network":true,"network":{"mode":"internet"}}`, 400, api.CodeInvalidArgument},
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

// TestValidationIsUpFront is L3 of the December review: values the sandbox could never use are
// refused with 400 at creation, never a 500 from setup and never accepted only to fail every
// later exec or silently clamped.
func TestValidationIsUpFront(t *testing.T) {
	t.Parallel()
	ts, rt := newTestServer(t)
	close(rt.release) // a request that gets past validation fails in the fake runtime (500)
	longPath := ("/workspace" + strings.Repeat("/"+strings.Repeat("d", 200), 21))[:4081]
	cases := []struct{ name, path, body string }{
		{"workdir component over 255 bytes", "/v1/sandboxes", `{"workdir":"/` + strings.Repeat("b", 300) + `"}`},
		{"workdir of 4081 bytes", "/v1/sandboxes", `{"workdir":"` + longPath + `"}`},
		{"session idle_timeout past its default life", "/v1/sessions", `{"idle_timeout":1e9}`},
		{"session idle_timeout past its timeout", "/v1/sessions", `{"timeout":60,"idle_timeout":61}`},
		{"env value too large for execve", "/v1/sandboxes", `{"env":{"A":"` + strings.Repeat("x", 200<<10) + `"}}`},
		{"env too large in total", "/v1/sandboxes", `{"env":{` + manyVars(40, 8<<10) + `}}`},
		{"session env too large", "/v1/sessions", `{"env":{"A":"` + strings.Repeat("x", 200<<10) + `"}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, eb := do(t, ts, "POST", tc.path, tc.body, nil)
			if resp.StatusCode != 400 || eb.Error.Code != api.CodeInvalidArgument {
				t.Fatalf("got %d %q (%s), want 400 invalid_argument", resp.StatusCode, eb.Error.Code, eb.Error.Message)
			}
		})
	}
	// Through the SDK too: the 400 arrives as api.ErrInvalidArgument.
	_, err := airlock.New(ts.URL, "").CreateSandbox(t.Context(), api.CreateSandboxRequest{Workdir: "/" + strings.Repeat("b", 300)})
	if !errors.Is(err, api.ErrInvalidArgument) {
		t.Fatalf("SDK create with a 300-byte workdir component: got %v, want invalid_argument", err)
	}
}

// manyVars is n JSON env entries of size bytes each.
func manyVars(n, size int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"V%d":"%s"`, i, strings.Repeat("v", size))
	}
	return b.String()
}

// TestHealthzSaysNothingOfTenants is L7: the unauthenticated health answer carries no counts.
func TestHealthzSaysNothingOfTenants(t *testing.T) {
	t.Parallel()
	ts, _ := newTestServer(t, testKey)
	resp, err := ts.Client().Get(ts.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if len(body) != 1 || body["status"] != "ok" {
		t.Fatalf("GET /healthz without a key: got %v, want only {\"status\":\"ok\"}", body)
	}
}

// TestUnauthenticatedConnectionIsClosed is part of H5: a 401 does not leave the client a
// keep-alive connection to hold.
func TestUnauthenticatedConnectionIsClosed(t *testing.T) {
	t.Parallel()
	ts, _ := newTestServer(t, testKey)
	c, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !resp.Close {
		t.Fatalf("got %d with Connection %q, want 401 with Connection: close", resp.StatusCode, resp.Header.Get("Connection"))
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the 401, reading the connection: got %v, want EOF (closed by the server)", err)
	}
}
