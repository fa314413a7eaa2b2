package e2e

import (
	"bytes"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	airlockmcp "github.com/airlockhq/airlock/internal/mcp"
	"github.com/airlockhq/airlock/internal/server"
	"github.com/airlockhq/airlock/internal/testutil"
)

const (
	mcpKeyA = "mcp-key-a-0123456789abcdef"
	mcpKeyB = "mcp-key-b-0123456789abcdef"
)

// startMCPDaemon starts a daemon with keys A and B and no warm pool, stopped (draining) at the
// test's end.
func startMCPDaemon(t *testing.T, name string, opts ...func(*exec.Cmd)) *daemon {
	t.Helper()
	testutil.MustHaveRoot(t)
	state, err := os.MkdirTemp("", "airlock-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-%s-%d", name, os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	d := startDaemon(t, state, cg, freeAddr(t), append([]func(*exec.Cmd){noPool, withKeys(mcpKeyA, mcpKeyB)}, opts...)...)
	t.Cleanup(d.stop)
	return d
}

// bearer adds an API key to every request.
type bearer struct{ key string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return http.DefaultTransport.RoundTrip(r)
}

func mcpHTTP(t *testing.T, d *daemon, key string) (*mcp.ClientSession, error) {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil)
	cs, err := c.Connect(t.Context(), &mcp.StreamableClientTransport{Endpoint: d.url + "/mcp",
		HTTPClient: &http.Client{Transport: bearer{key}}, DisableStandaloneSSE: true}, nil)
	if err == nil {
		t.Cleanup(func() { cs.Close() })
	}
	return cs, err
}

// mcpStdio starts `airlock mcp` (this test binary re-executed as the CLI) against d with key.
func mcpStdio(t *testing.T, d *daemon, key string) *mcp.ClientSession {
	t.Helper()
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=mcp --server "+d.url, "AIRLOCK_API_KEY="+key)
	logf, _ := os.Create(filepath.Join(t.TempDir(), "mcp.log"))
	cmd.Stderr = logf
	c := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil)
	cs, err := c.Connect(t.Context(), &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("connect to airlock mcp over stdio: %v\n%s", err, b)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// call calls a tool and returns its text and images; a protocol error fails the test.
func mcpCall(t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any) (text string, images [][]byte, isErr bool) {
	t.Helper()
	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	var b strings.Builder
	for _, c := range res.Content {
		switch c := c.(type) {
		case *mcp.TextContent:
			b.WriteString(c.Text)
		case *mcp.ImageContent:
			images = append(images, c.Data)
		}
	}
	return b.String(), images, res.IsError
}

func mustCall(t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any, want string) string {
	t.Helper()
	text, _, isErr := mcpCall(t, cs, tool, args)
	if isErr || !strings.Contains(text, want) {
		t.Fatalf("%s %v: got (error %v)\n%s\nwant it to contain %q", tool, args, isErr, text, want)
	}
	return text
}

// TestMCP drives /mcp over streamable HTTP and `airlock mcp` over stdio with the Go SDK's own
// MCP client: the tools are listed with schemas, code runs, a session keeps its state across
// calls (and transports, under one key), a plot comes back as image content, long output is cut
// with a note, one key cannot see another's session, and a wrong key is refused.
func TestMCP(t *testing.T) {
	testutil.MustHaveRoot(t)
	wheels, err := os.MkdirTemp("", "airlock-mcp-wheels-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(wheels) })
	os.Chmod(wheels, 0o755)
	writeWheel(t, filepath.Join(wheels, "airlock_testpkg-1.0-py3-none-any.whl"))
	d := startMCPDaemon(t, "mcp", func(c *exec.Cmd) { c.Env = append(c.Env, "AIRLOCK_WHEEL_DIR="+wheels) })
	cs, err := mcpHTTP(t, d, mcpKeyA)
	if err != nil {
		t.Fatalf("connect over HTTP: %v", err)
	}
	t.Run("list tools", func(t *testing.T) {
		res, err := cs.ListTools(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tl := range res.Tools {
			names = append(names, tl.Name)
			if tl.Description == "" || tl.InputSchema == nil {
				t.Errorf("%s: no description or input schema", tl.Name)
			}
		}
		for _, want := range []string{"run_code", "python_session", "python_run", "install_package", "sandbox_create",
			"sandbox_list", "sandbox_terminate", "exec", "read_file", "write_file", "list_files"} {
			if !slices.Contains(names, want) {
				t.Errorf("tools %v lack %s", names, want)
			}
		}
	})
	t.Run("run code", func(t *testing.T) {
		mustCall(t, cs, "run_code", map[string]any{"code": "print(6*7)"}, "42")
		mustCall(t, cs, "run_code", map[string]any{"language": "bash", "code": "echo $((6*7))"}, "42")
		text, _, isErr := mcpCall(t, cs, "run_code", map[string]any{"code": "raise SystemExit(3)"})
		if !isErr || !strings.Contains(text, "exit code 3") {
			t.Fatalf("a failing program: error %v\n%s", isErr, text)
		}
		text = mustCall(t, cs, "run_code", map[string]any{"code": "print('x' * 100000)"}, "[truncated:")
		if len(text) > 40<<10 {
			t.Fatalf("100 kB of output came back as %d bytes", len(text))
		}
	})
	t.Run("session state and plot", func(t *testing.T) {
		mustCall(t, cs, "python_session", map[string]any{"name": "s1"}, "Created session")
		mustCall(t, cs, "python_session", map[string]any{"name": "s1"}, "Reusing")
		mustCall(t, cs, "python_run", map[string]any{"session": "s1", "code": "x = 41"}, "")
		mustCall(t, cs, "python_run", map[string]any{"session": "s1", "code": "x + 1"}, "42")
		text, _, isErr := mcpCall(t, cs, "python_run", map[string]any{"session": "s1", "code": "1/0"})
		if !isErr || !strings.Contains(text, "ZeroDivisionError") {
			t.Fatalf("an exception: error %v\n%s", isErr, text)
		}
		_, images, isErr := mcpCall(t, cs, "python_run", map[string]any{"session": "s1", "timeout": 60,
			"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nNone"})
		if isErr || len(images) != 1 {
			t.Fatalf("plot: error %v, %d images", isErr, len(images))
		}
		if img, err := png.Decode(bytes.NewReader(images[0])); err != nil || img.Bounds().Dx() < 100 {
			t.Fatalf("the plot is not a PNG image: %v", err)
		}
	})
	t.Run("one session per name under concurrent first use", func(t *testing.T) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "python_run", Arguments: map[string]any{"session": "race", "code": "1"}})
				if err != nil || res.IsError {
					t.Errorf("python_run: %v %+v", err, res)
				}
			})
		}
		wg.Wait()
		list, err := airlock.New(d.url, mcpKeyA).ListSandboxes(t.Context(), map[string]string{"mcp.session": "race"})
		if err != nil || len(list) != 1 {
			t.Fatalf("sessions named race: %v, %d, want 1", err, len(list))
		}
	})
	t.Run("install package", func(t *testing.T) {
		mustCall(t, cs, "install_package", map[string]any{"session": "pkg", "packages": []string{"airlock-testpkg==1.0"}}, "exit code 0")
		mustCall(t, cs, "python_run", map[string]any{"session": "pkg", "code": "import airlock_testpkg; airlock_testpkg.VALUE"}, "42")
		if text, _, isErr := mcpCall(t, cs, "install_package", map[string]any{"session": "pkg", "packages": []string{"--index-url=http://evil"}}); !isErr {
			t.Fatalf("a pip option as a package was accepted:\n%s", text)
		}
	})
	t.Run("files and exec in a session's sandbox", func(t *testing.T) {
		mustCall(t, cs, "write_file", map[string]any{"sandbox": "s1", "path": "notes/a.txt", "content": "hello"}, "Wrote 5 bytes")
		mustCall(t, cs, "list_files", map[string]any{"sandbox": "s1", "path": "notes"}, "a.txt")
		mustCall(t, cs, "read_file", map[string]any{"sandbox": "s1", "path": "notes/a.txt"}, "hello")
		mustCall(t, cs, "exec", map[string]any{"sandbox": "s1", "command": "cat notes/a.txt | tr a-z A-Z"}, "HELLO")
		mustCall(t, cs, "python_run", map[string]any{"session": "s1", "code": "open('notes/a.txt').read()"}, "'hello'")
	})
	t.Run("sandbox lifecycle", func(t *testing.T) {
		text := mustCall(t, cs, "sandbox_create", map[string]any{"timeout": 60}, "Created sandbox sb-")
		id := strings.Fields(strings.TrimPrefix(text, "Created sandbox "))[0]
		mustCall(t, cs, "sandbox_list", nil, id)
		if text, _, isErr := mcpCall(t, cs, "exec", map[string]any{"sandbox": id, "command": "echo hi >&2; exit 2"}); !isErr ||
			!strings.Contains(text, "exit code 2") || !strings.Contains(text, "hi") {
			t.Fatalf("a failing command: error %v\n%s", isErr, text)
		}
		mustCall(t, cs, "sandbox_terminate", map[string]any{"sandbox": id}, "Terminated")
		if text, _, _ := mcpCall(t, cs, "sandbox_list", nil); strings.Contains(text, id) {
			t.Fatalf("terminated sandbox still listed:\n%s", text)
		}
	})
	t.Run("another key sees none of it", func(t *testing.T) {
		csB, err := mcpHTTP(t, d, mcpKeyB)
		if err != nil {
			t.Fatal(err)
		}
		text, _, isErr := mcpCall(t, csB, "python_run", map[string]any{"session": "s1", "code": "x"})
		if !isErr || !strings.Contains(text, "NameError") {
			t.Fatalf("key B's session s1 knows key A's x: error %v\n%s", isErr, text)
		}
		textA, _, _ := mcpCall(t, cs, "sandbox_list", nil)
		textB, _, _ := mcpCall(t, csB, "sandbox_list", nil)
		for _, line := range strings.Split(strings.TrimSpace(textA), "\n") {
			if id := strings.Fields(line)[0]; strings.Contains(textB, id) {
				t.Fatalf("key B lists key A's %s:\n%s", id, textB)
			}
		}
	})
	t.Run("wrong key refused", func(t *testing.T) {
		for _, key := range []string{"wrong-key-0123456789abcdef", ""} {
			if _, err := mcpHTTP(t, d, key); err == nil {
				t.Errorf("key %q: connected", key)
			}
			req, _ := http.NewRequest(http.MethodPost, d.url+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("key %q: status %d, want 401", key, resp.StatusCode)
			}
		}
	})
	t.Run("stdio", func(t *testing.T) {
		st := mcpStdio(t, d, mcpKeyA)
		res, err := st.ListTools(t.Context(), nil)
		if err != nil || len(res.Tools) < 11 {
			t.Fatalf("list tools over stdio: %v, %d tools", err, len(res.Tools))
		}
		mustCall(t, st, "run_code", map[string]any{"code": "print(sum(range(10)))"}, "45")
		// The same key reaches the session the HTTP client made: its state is the daemon's.
		mustCall(t, st, "python_run", map[string]any{"session": "s1", "code": "x * 2"}, "82")
		mustCall(t, st, "python_run", map[string]any{"session": "s2", "code": "y = 'kept'"}, "")
		mustCall(t, st, "python_run", map[string]any{"session": "s2", "code": "y"}, "'kept'")
		_, images, isErr := mcpCall(t, st, "python_run", map[string]any{"session": "s2", "timeout": 60,
			"code": "import matplotlib.pyplot as plt\nplt.bar([1, 2], [3, 4])\nNone"})
		if isErr || len(images) != 1 {
			t.Fatalf("plot over stdio: error %v, %d images", isErr, len(images))
		}
		bad := mcpStdio(t, d, "wrong-key-0123456789abcdef")
		text, _, isErr := mcpCall(t, bad, "run_code", map[string]any{"code": "print(1)"})
		if !isErr || !strings.Contains(strings.ToLower(text), "key") {
			t.Fatalf("wrong key over stdio: error %v\n%s", isErr, text)
		}
	})
}

// mcpBench serves the API and /mcp (as airlock serve mounts it) on one test server and returns
// an SDK client and an MCP client session, both with no key.
func mcpBench(b *testing.B) (*airlock.Client, *mcp.ClientSession) {
	a := newAPIServer(b, engine.Config{})
	mux := http.NewServeMux()
	ts := httptest.NewServer(mux)
	b.Cleanup(ts.Close)
	s, err := server.New(server.Config{Engine: a.e})
	if err != nil {
		b.Fatal(err)
	}
	mux.Handle("/", s.Handler())
	mux.Handle("/mcp", airlockmcp.Handler(airlockmcp.HandlerConfig{Base: ts.URL}))
	c := mcp.NewClient(&mcp.Implementation{Name: "bench", Version: "1"}, nil)
	cs, err := c.Connect(b.Context(), &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp", DisableStandaloneSSE: true}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cs.Close() })
	return airlock.New(ts.URL, ""), cs
}

func benchCall(b *testing.B, cs *mcp.ClientSession, tool string, args map[string]any) {
	res, err := cs.CallTool(b.Context(), &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil || res.IsError {
		b.Fatalf("%s: %v %+v", tool, err, res)
	}
}

// BenchmarkMCPRunCode: run_code print(1) over /mcp, against the SDK's Execute of the same.
func BenchmarkMCPRunCode(b *testing.B) {
	c, cs := mcpBench(b)
	samples(b, func() {
		if _, err := c.Execute(b.Context(), api.ExecuteRequest{Code: "print(1)"}); err != nil {
			b.Fatal(err)
		}
	}, func() { benchCall(b, cs, "run_code", map[string]any{"code": "print(1)"}) })
}

// BenchmarkMCPPythonRun: a python_run cell 1+1 over /mcp (the session found by name each
// call), against the SDK's Session.Run of the same cell.
func BenchmarkMCPPythonRun(b *testing.B) {
	c, cs := mcpBench(b)
	s, err := c.CreateSession(b.Context(), api.CreateSessionRequest{})
	if err != nil {
		b.Fatal(err)
	}
	benchCall(b, cs, "python_run", map[string]any{"session": "bench", "code": "1+1"})
	samples(b, func() {
		if _, err := s.Run(b.Context(), api.RunRequest{Code: "1+1"}); err != nil {
			b.Fatal(err)
		}
	}, func() { benchCall(b, cs, "python_run", map[string]any{"session": "bench", "code": "1+1"}) })
}
