package e2b

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
)

// The real engine over sandboxes whose agent is a fakeagent, and the real front end over
// httptest: the wire shapes the E2B SDK parses, without root.

type fakeRuntime struct{}

type fakeInstance struct {
	agent fakeagent.Agent
	done  chan struct{}
	once  sync.Once
}

func (fakeRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	return &fakeInstance{done: make(chan struct{})}, nil
}

func (i *fakeInstance) Agent() engine.Agent          { return &i.agent }
func (i *fakeInstance) Usage() (engine.Usage, error) { return engine.Usage{}, nil }
func (i *fakeInstance) Done() <-chan struct{}        { return i.done }
func (i *fakeInstance) Destroy(context.Context) error {
	i.once.Do(func() { close(i.done) })
	return nil
}

const (
	key1 = "unit-key-000000000001"
	key2 = "unit-key-000000000002"
)

// newServer serves the front end (keys key1 and key2, owners "o1" and "o2") with max requests
// in flight per key; everything else answers 418.
func newServer(t *testing.T, max int) string {
	t.Helper()
	base, _ := newServerEngine(t, max)
	return base
}

// newServerEngine is newServer that also returns the engine under it.
func newServerEngine(t *testing.T, max int, opts ...func(*Config)) (string, *engine.Engine) {
	t.Helper()
	e, err := engine.New(engine.Config{Runtime: fakeRuntime{}})
	if err != nil {
		t.Fatal(err)
	}
	auth := func(key string) (string, bool) {
		switch key {
		case key1:
			return "o1", true
		case key2:
			return "o2", true
		}
		return "", false
	}
	cfg := Config{Engine: e, Authenticate: auth, MaxRequestsPerKey: max}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})))
	t.Cleanup(func() {
		ts.Close()
		s.Close()
		e.Close(context.Background())
	})
	return ts.URL, e
}

// call makes one control-plane request and returns the status, the headers and the body.
func call(t *testing.T, method, url, key, body string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("X-API-KEY", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func create(t *testing.T, base, key, body string) createdJSON {
	t.Helper()
	code, _, b := call(t, "POST", base+"/e2b/v2/sandboxes", key, body)
	var c createdJSON
	if code != http.StatusCreated || json.Unmarshal(b, &c) != nil || c.EnvdAccessToken == "" {
		t.Fatalf("create %s: %d %s; want 201 with a token", body, code, b)
	}
	return c
}

// data makes one data-plane request to sb's port and returns the status and the body.
func data(t *testing.T, base string, sb createdJSON, port, method, path, ct string, body io.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, base+SandboxPrefix+path, body)
	req.Header.Set("E2b-Sandbox-Id", sb.SandboxID)
	req.Header.Set("E2b-Sandbox-Port", port)
	req.Header.Set("X-Access-Token", sb.EnvdAccessToken)
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestControlPlane(t *testing.T) {
	t.Parallel()
	base := newServer(t, 0)
	sb := create(t, base, key1, `{"templateID":"base","timeout":60,"metadata":{"k":"v"}}`)
	if sb.TemplateID != "base" || sb.EnvdVersion != envdVersion || sb.TrafficAccessToken != sb.EnvdAccessToken {
		t.Errorf("create: got %+v", sb)
	}
	other := create(t, base, key2, `{}`)

	tests := []struct {
		name, method, path, key, body string
		wantStatus                    int
		wantBody                      string // a substring
	}{
		{"no key", "GET", "/e2b/v2/sandboxes", "", "", 401, `{"code":401,"message":"missing X-API-KEY`},
		{"wrong key", "GET", "/e2b/v2/sandboxes", "nope", "", 401, `"code":401`},
		{"get", "GET", "/e2b/sandboxes/" + sb.SandboxID, key1, "", 200, `"metadata":{"k":"v"},"state":"running"`},
		{"get another key's", "GET", "/e2b/sandboxes/" + other.SandboxID, key1, "", 404, `{"code":404,`},
		{"list", "GET", "/e2b/v2/sandboxes", key1, "", 200, `"sandboxID":"` + sb.SandboxID},
		{"list by metadata", "GET", "/e2b/v2/sandboxes?metadata=k%3Dw", key1, "", 200, `[]`},
		{"list paused", "GET", "/e2b/v2/sandboxes?state=paused", key1, "", 200, `[]`},
		{"list bad limit", "GET", "/e2b/v2/sandboxes?limit=0", key1, "", 400, `"code":400`},
		{"set timeout", "POST", "/e2b/sandboxes/" + sb.SandboxID + "/timeout", key1, `{"timeout":30}`, 204, ""},
		{"set timeout past the max", "POST", "/e2b/sandboxes/" + sb.SandboxID + "/timeout", key1, `{"timeout":99999999}`, 400, `"code":400`},
		{"set timeout of another key's", "POST", "/e2b/sandboxes/" + other.SandboxID + "/timeout", key1, `{"timeout":30}`, 404, `"code":404`},
		{"metrics", "GET", "/e2b/sandboxes/" + sb.SandboxID + "/metrics", key1, "", 200, `"cpuCount":1`},
		{"connect", "POST", "/e2b/v2/sandboxes/" + sb.SandboxID + "/connect", key1, `{"timeout":10}`, 200, `"envdAccessToken":"` + sb.EnvdAccessToken},
		{"connect another key's", "POST", "/e2b/v2/sandboxes/" + other.SandboxID + "/connect", key1, `{}`, 404, `"code":404`},
		{"pause", "POST", "/e2b/sandboxes/" + sb.SandboxID + "/pause", key1, "", 501, `does not pause`},
		// With an image store an unknown template is a 404 naming it (e2e); without one, a 400 saying so.
		{"template without an image store", "POST", "/e2b/v2/sandboxes", key1, `{"templateID":"nope"}`, 400, `no image store`},
		{"autoPause", "POST", "/e2b/v2/sandboxes", key1, `{"autoPause":true}`, 400, `autoPause`},
		{"reserved metadata", "POST", "/e2b/v2/sandboxes", key1, `{"metadata":{"airlock.kind":"x"}}`, 400, `reserved`},
		{"bad JSON", "POST", "/e2b/v2/sandboxes", key1, `{`, 400, `"code":400`},
		{"denyOut", "POST", "/e2b/v2/sandboxes", key1, `{"network":{"denyOut":["1.1.1.1"]}}`, 400, `allowlist`},
		{"unknown route", "GET", "/e2b/templates", key1, "", 404, `"code":404`},
		{"kill another key's", "DELETE", "/e2b/sandboxes/" + other.SandboxID, key1, "", 404, `{"code":404,`},
		{"kill", "DELETE", "/e2b/sandboxes/" + sb.SandboxID, key1, "", 204, ""},
		{"kill again", "DELETE", "/e2b/sandboxes/" + sb.SandboxID, key1, "", 404, `{"code":404,`},
		{"get killed", "GET", "/e2b/sandboxes/" + sb.SandboxID, key1, "", 404, `"code":404`},
		{"not E2B's", "GET", "/v1/info", key1, "", 418, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, h, b := call(t, tc.method, base+tc.path, tc.key, tc.body)
			if code != tc.wantStatus || !strings.Contains(string(b), tc.wantBody) {
				t.Errorf("%s %s: got %d %s, want %d containing %s", tc.method, tc.path, code, b, tc.wantStatus, tc.wantBody)
			}
			// openapi-fetch parses every 2xx but a 204 (or Content-Length 0) as JSON.
			if code < 300 && code != 204 && h.Get("Content-Length") == "" {
				t.Errorf("%s %s: a %d without Content-Length", tc.method, tc.path, code)
			}
		})
	}
}

func TestListPages(t *testing.T) {
	t.Parallel()
	base := newServer(t, 0)
	var ids []string
	for _, tmpl := range []string{"base", "code-interpreter-v1", "base"} {
		ids = append(ids, create(t, base, key1, `{"templateID":"`+tmpl+`"}`).SandboxID)
	}
	// pages walks every page of query, limit 2, and returns the ids in order.
	pages := func(query string) []string {
		t.Helper()
		var got []string
		next := ""
		for page := 0; page < 5; page++ {
			code, h, b := call(t, "GET", base+"/e2b/v2/sandboxes?limit=2&"+query+"&nextToken="+next, key1, "")
			var list []sandboxJSON
			if code != 200 || json.Unmarshal(b, &list) != nil {
				t.Fatalf("%s, page %d: %d %s", query, page, code, b)
			}
			for _, s := range list {
				got = append(got, s.SandboxID)
			}
			if next = h.Get("X-Next-Token"); next == "" {
				break
			}
		}
		return got
	}
	tests := []struct {
		query string
		want  []string
	}{
		{"", ids},
		{"order=desc", []string{ids[2], ids[1], ids[0]}},
		{"template=code-interpreter-v1", ids[1:2]},
		{"startedAfter=2999-01-01T00:00:00Z", nil},
	}
	for _, tc := range tests {
		if got := pages(tc.query); strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: got %v, want %v", tc.query, got, tc.want)
		}
	}
	for _, q := range []string{"order=up", "nextToken=x", "startedAfter=yesterday"} {
		if code, _, b := call(t, "GET", base+"/e2b/v2/sandboxes?"+q, key1, ""); code != 400 {
			t.Errorf("%s: got %d %s, want 400", q, code, b)
		}
	}
}

// dataHeaders is a Connect client option that sends E2B's data-plane headers for sandbox id
// with access token tok ("" for none), on unary and streaming calls.
func dataHeaders(id, tok string) connect.ClientOption {
	return connect.WithInterceptors(headerInterceptor{id: id, tok: tok})
}

type headerInterceptor struct{ id, tok string }

func (h headerInterceptor) set(hdr http.Header) {
	hdr.Set("E2b-Sandbox-Id", h.id)
	hdr.Set("E2b-Sandbox-Port", envdPort)
	if h.tok != "" {
		hdr.Set("X-Access-Token", h.tok)
	}
}

func (h headerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		h.set(req.Header())
		return next(ctx, req)
	}
}

func (h headerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		h.set(conn.RequestHeader())
		return conn
	}
}

func (h headerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func TestDataPlaneAuth(t *testing.T) {
	t.Parallel()
	base := newServer(t, 0)
	a := create(t, base, key1, `{}`)
	b := create(t, base, key2, `{}`)
	tests := []struct {
		name     string
		id, tok  string
		wantCode connect.Code
	}{
		{"own token", a.SandboxID, a.EnvdAccessToken, 0},
		{"another sandbox's token", a.SandboxID, b.EnvdAccessToken, connect.CodeUnauthenticated},
		{"no token", a.SandboxID, "", connect.CodeUnauthenticated},
		{"an API key as the token", a.SandboxID, key1, connect.CodeUnauthenticated},
		{"unknown sandbox", "sb-nope", a.EnvdAccessToken, connect.CodeUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := agentpbconnect.NewFilesystemClient(http.DefaultClient, base+SandboxPrefix, connect.WithProtoJSON(), dataHeaders(tc.id, tc.tok))
			_, err := fs.Stat(t.Context(), connect.NewRequest(&pb.StatRequest{Path: "/"}))
			if got := connect.CodeOf(err); (err == nil) != (tc.wantCode == 0) || (err != nil && got != tc.wantCode) {
				t.Errorf("stat: got %v (%v), want code %v", err, got, tc.wantCode)
			}
		})
	}
	// A killed sandbox is not running: 502 on every route, its token dead.
	if code, _, body := call(t, "DELETE", base+"/e2b/sandboxes/"+a.SandboxID, key1, ""); code != 204 {
		t.Fatalf("kill: %d %s", code, body)
	}
	if code, _ := data(t, base, a, envdPort, "GET", "/health", "", nil); code != http.StatusBadGateway {
		t.Errorf("health of a killed sandbox: %d, want 502", code)
	}
}

func TestEnvd(t *testing.T) {
	t.Parallel()
	base := newServer(t, 0)
	sb := create(t, base, key1, `{}`)
	opts := []connect.ClientOption{connect.WithProtoJSON(), dataHeaders(sb.SandboxID, sb.EnvdAccessToken)}
	proc := agentpbconnect.NewProcessClient(http.DefaultClient, base+SandboxPrefix, opts...)
	fs := agentpbconnect.NewFilesystemClient(http.DefaultClient, base+SandboxPrefix, opts...)
	ctx := t.Context()

	t.Run("start streams start, data, end", func(t *testing.T) {
		st, err := proc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sh", Args: []string{"-c", "echo hi; exit 3"}}}))
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		var out bytes.Buffer
		var end *pb.ProcessEvent_EndEvent
		for st.Receive() {
			switch ev := st.Msg().GetEvent().GetEvent().(type) {
			case *pb.ProcessEvent_Start:
				kinds = append(kinds, "start")
			case *pb.ProcessEvent_Data:
				kinds = append(kinds, "data")
				out.Write(ev.Data.GetStdout())
			case *pb.ProcessEvent_End:
				kinds = append(kinds, "end")
				end = ev.End
			}
		}
		if err := st.Err(); err != nil {
			t.Fatal(err)
		}
		if kinds[0] != "start" || kinds[len(kinds)-1] != "end" || out.String() != "hi\n" ||
			end.GetExitCode() != 3 || end.GetStatus() != "exit status 3" {
			t.Errorf("events %v, stdout %q, end %v; want start…end, hi, exit status 3", kinds, out.String(), end)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		st, err := proc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{}}))
		if err == nil {
			for st.Receive() {
			}
			err = st.Err()
		}
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("start without a cmd: got %v, want invalid_argument", err)
		}
		for _, c := range []struct{ name, path, body, want string }{
			{"malformed JSON", "/filesystem.Filesystem/Stat", `{"path":`, `"code":"invalid_argument"`},
			{"oversized message", "/process.Process/SendInput", `{"input":{"stdin":"` + strings.Repeat("A", 17<<20) + `"}}`, `"code":"resource_exhausted"`},
			{"unknown method", "/process.Process/Nope", `{}`, "not found"}, // the SDK reads a bare 404 as unimplemented
		} {
			code, got := data(t, base, sb, envdPort, "POST", c.path, "application/json", strings.NewReader(c.body))
			if code >= 500 || !strings.Contains(got, c.want) {
				t.Errorf("%s: got %d %.200s, want a 4xx with %s", c.name, code, got, c.want)
			}
		}
	})
	t.Run("signal of no process", func(t *testing.T) {
		_, err := proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: 4242}}, Signal: pb.Signal_SIGNAL_SIGKILL}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("got %v, want not_found (the SDK's kill → false)", err)
		}
	})
	t.Run("makeDir twice", func(t *testing.T) {
		if _, err := fs.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: "/workspace/d/e"})); err != nil {
			t.Fatal(err)
		}
		_, err := fs.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: "/workspace/d/e"}))
		if connect.CodeOf(err) != connect.CodeAlreadyExists {
			t.Errorf("second makeDir: got %v, want already_exists (the SDK's makeDir → false)", err)
		}
		l, err := fs.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: "/workspace/d", Depth: 1}))
		if err != nil || len(l.Msg.Entries) != 1 || l.Msg.Entries[0].GetType() != pb.FileType_FILE_TYPE_DIRECTORY ||
			l.Msg.Entries[0].GetPermissions()[0] != 'd' {
			t.Errorf("list: got %v, %v; want the one directory", l, err)
		}
	})
	t.Run("stat of nothing", func(t *testing.T) {
		_, err := fs.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: "/workspace/none"}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("got %v, want not_found", err)
		}
	})

	rest := func(method, path, ct string, body io.Reader) (int, string) {
		t.Helper()
		return data(t, base, sb, envdPort, method, path, ct, body)
	}
	t.Run("multipart upload keeps the whole filename", func(t *testing.T) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for _, f := range []struct{ path, data string }{{"/workspace/up/a.txt", "A"}, {"/workspace/up/deeper/b.txt", "B"}} {
			w, _ := mw.CreateFormFile("file", f.path)
			w.Write([]byte(f.data))
		}
		mw.Close()
		code, got := rest("POST", "/files", mw.FormDataContentType(), &body)
		want := `[{"name":"a.txt","type":"file","path":"/workspace/up/a.txt"},{"name":"b.txt","type":"file","path":"/workspace/up/deeper/b.txt"}]`
		if code != 200 || got != want {
			t.Errorf("upload: got %d %s, want 200 %s", code, got, want)
		}
		if code, got := rest("GET", "/files?path=/workspace/up/deeper/b.txt", "", nil); code != 200 || got != "B" {
			t.Errorf("download: got %d %q, want 200 B", code, got)
		}
	})
	t.Run("octet-stream upload", func(t *testing.T) {
		if code, got := rest("POST", "/files?path=/workspace/raw.bin", "application/octet-stream", strings.NewReader("raw")); code != 200 || !strings.Contains(got, `"path":"/workspace/raw.bin"`) {
			t.Errorf("upload: got %d %s", code, got)
		}
	})
	t.Run("download of nothing", func(t *testing.T) {
		if code, got := rest("GET", "/files?path=/workspace/none", "", nil); code != 404 || !strings.Contains(got, `"code":404`) {
			t.Errorf("got %d %s, want 404 (FileNotFoundError)", code, got)
		}
	})
	t.Run("no interpreter in a base sandbox", func(t *testing.T) {
		if code, _ := data(t, base, sb, interpreterPort, "POST", "/execute", "", strings.NewReader(`{"code":"1"}`)); code != http.StatusBadGateway {
			t.Errorf("got %d, want 502 (nothing listens on 49999)", code)
		}
	})
}

func TestExecuteNDJSON(t *testing.T) {
	t.Parallel()
	base := newServer(t, 0)
	sb := create(t, base, key1, `{"templateID":"code-interpreter-v1"}`)
	code, b := data(t, base, sb, interpreterPort, "POST", "/execute", "application/json", strings.NewReader(`{"code":"x"}`))
	lines := strings.Split(strings.TrimSuffix(b, "\n"), "\n")
	var types []string
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q is not JSON (the SDK parses every line): %v", l, err)
		}
		types = append(types, m["type"].(string))
	}
	if got, want := strings.Join(types, ","), "stdout,result,result,end_of_execution"; code != 200 || got != want {
		t.Errorf("got %d %s, want 200 with %s", code, b, want)
	}
}

func TestCellLines(t *testing.T) {
	t.Parallel()
	res := "4"
	r := &engine.CellResult{Stdout: "o", Result: &res, Error: &engine.CellError{Name: "ValueError", Value: "v", Traceback: []string{"t", "b"}},
		Display: []engine.CellOutput{
			{MIME: "image/png", Data: []byte{0x89, 'P'}},
			{MIME: "text/html", Data: []byte("<b>"), Text: true},
			{MIME: "image/png", Data: []byte{1}}, // a second display
			{MIME: "application/json", Data: []byte(`{"a":1}`), Text: true},
			{MIME: "application/x-thing", Data: []byte("t"), Text: true},
		}}
	var got []string
	for _, l := range cellLines(r, time.UnixMicro(7)) {
		b, _ := json.Marshal(l)
		got = append(got, string(b))
	}
	want := []string{
		`{"text":"o","timestamp":7,"type":"stdout"}`,
		`{"html":"\u003cb\u003e","is_main_result":false,"png":"iVA=","type":"result"}`,
		`{"application/x-thing":"t","is_main_result":false,"json":{"a":1},"png":"AQ==","type":"result"}`,
		`{"is_main_result":true,"text":"4","type":"result"}`,
		`{"name":"ValueError","traceback":"t\nb","type":"error","value":"v"}`,
		`{"type":"end_of_execution"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

func TestRequestsPerKey(t *testing.T) {
	t.Parallel()
	base := newServer(t, 1)
	sb := create(t, base, key1, `{}`)
	// A command holds key1's one slot; key1's next request is refused with 429, key2's is not.
	req, _ := http.NewRequestWithContext(t.Context(), "POST", base+SandboxPrefix+"/process.Process/Start",
		bytes.NewReader(append([]byte{0, 0, 0, 0, byte(len(startSleep))}, startSleep...)))
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("E2b-Sandbox-Id", sb.SandboxID)
	req.Header.Set("X-Access-Token", sb.EnvdAccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The start event has arrived once the first envelope can be read.
	if _, err := resp.Body.Read(make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if code, _, b := call(t, "GET", base+"/e2b/v2/sandboxes", key1, ""); code != 429 || !strings.Contains(string(b), `"code":429`) {
		t.Errorf("key1 with its slot taken: got %d %s, want 429 (RateLimitError)", code, b)
	}
	if code, _, _ := call(t, "GET", base+"/e2b/v2/sandboxes", key2, ""); code != 200 {
		t.Errorf("key2: got %d, want 200", code)
	}
}

const startSleep = `{"process":{"cmd":"sleep","args":["30"]}}`

// TestV1SandboxConnect: a sandbox made through the engine as /v1 makes it is reachable through
// E2B's connect by its owner only, and its commands reattach.
func TestV1SandboxConnect(t *testing.T) {
	t.Parallel()
	base, e := newServerEngine(t, 0)
	sb, err := e.CreateSandbox(engine.WithOwner(t.Context(), "o1"), engine.SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if code, _, b := call(t, "POST", base+"/e2b/v2/sandboxes/"+sb.ID()+"/connect", key2, `{}`); code != 404 {
		t.Errorf("connect with another key: %d %s, want 404", code, b)
	}
	code, _, b := call(t, "POST", base+"/e2b/v2/sandboxes/"+sb.ID()+"/connect", key1, `{"timeout":60}`)
	var c createdJSON
	if code != 200 || json.Unmarshal(b, &c) != nil || c.EnvdAccessToken == "" || c.TemplateID != templateBase {
		t.Fatalf("connect: %d %s", code, b)
	}
	proc := agentpbconnect.NewProcessClient(http.DefaultClient, base+SandboxPrefix, connect.WithProtoJSON(), dataHeaders(c.SandboxID, c.EnvdAccessToken))
	ctx, cancel := context.WithCancel(t.Context())
	st, err := proc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"30"}}}))
	if err != nil || !st.Receive() || st.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("start: %v %v", err, st.Err())
	}
	pid := st.Msg().GetEvent().GetStart().GetPid()
	cancel() // the first stream goes; the command stays
	st.Close()
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	again, err := proc.Connect(t.Context(), connect.NewRequest(&pb.ConnectRequest{Process: sel}))
	if err != nil || !again.Receive() || again.Msg().GetEvent().GetStart().GetPid() != pid {
		t.Fatalf("connect to %d: %v %v", pid, err, again.Err())
	}
	if _, err := proc.SendSignal(t.Context(), connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	var end *pb.ProcessEvent_EndEvent
	for again.Receive() {
		if e := again.Msg().GetEvent().GetEnd(); e != nil {
			end = e
		}
	}
	if end == nil || end.GetExited() || end.GetStatus() != "signal: killed" {
		t.Errorf("end after the kill: %v (%v), want not exited, signal: killed", end, again.Err())
	}
	gone, err := proc.Connect(t.Context(), connect.NewRequest(&pb.ConnectRequest{Process: sel}))
	if err == nil {
		if gone.Receive() {
			t.Errorf("connect to an ended command: got %v, want not_found", gone.Msg())
		}
		err = gone.Err()
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("connect to an ended command: got %v, want not_found", err)
	}
}

// TestHoldCreateRefusal: a create the key's quotas refuse (Config.HoldCreate, the REST API's
// live-sandbox and CPU quotas) is a 429 in E2B's shape, and nothing is created; a code
// interpreter is held as a session.
func TestHoldCreateRefusal(t *testing.T) {
	var asked []bool
	base, e := newServerEngine(t, 0, func(c *Config) {
		c.HoldCreate = func(ctx context.Context, owner string, session bool) (func(), error) {
			asked = append(asked, session)
			return nil, api.Errorf(api.ErrResourceExhausted, "this API key has 1 live sandboxes, its limit; end some first")
		}
	})
	for _, body := range []string{`{"templateID":"base"}`, `{"templateID":"code-interpreter-v1"}`} {
		code, _, b := call(t, "POST", base+"/e2b/v2/sandboxes", key1, body)
		if code != http.StatusTooManyRequests || !strings.Contains(string(b), "limit") {
			t.Errorf("create %s past the key's quota: %d %s, want 429 naming the limit", body, code, b)
		}
	}
	if len(asked) != 2 || asked[0] || !asked[1] {
		t.Errorf("held as sessions: %v, want [false true]", asked)
	}
	if n := len(e.ListSandboxes(engine.WithOwner(t.Context(), "o1"))); n != 0 {
		t.Errorf("%d sandboxes made past the quota, want 0", n)
	}
}
