package e2e

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/internal/server"
)

const judgeKey = "judge-key-0123456789abcdef"

// judgeServer serves the shared engine with one API key.
var warmGo sync.Once

// warmGoToolchain builds a Go program once on the host, outside any sandbox and its limits,
// before the tests that judge Go programs. The sandboxes' root is the host's, so this reads
// the toolchain (≈ 300 MiB of compiler, linker and standard library) into the page cache. The
// first Go compile of a fresh machine reads it from disk; during the suite, beside the image
// tests' writeback, that took over the 10 s compile limit, which those tests do not measure.
func warmGoToolchain(t testing.TB) {
	warmGo.Do(func() {
		dir := t.TempDir()
		src := filepath.Join(dir, "main.go")
		if err := os.WriteFile(src, []byte("package main\nimport \"fmt\"\nfunc main(){fmt.Println(1)}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// The sandboxes' go (Debian's golang-go), not the one that builds this suite.
		cmd := exec.Command("/usr/bin/go", "build", "-o", filepath.Join(dir, "main"), src)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off", "GOCACHE="+filepath.Join(dir, "cache"),
			"GOFLAGS=-buildvcs=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("warm the Go toolchain: %v: %s", err, out)
		}
	})
}

func judgeServer(t testing.TB) *httptest.Server {
	t.Helper()
	warmGoToolchain(t)
	e := mustEngine(t)
	s, err := server.New(server.Config{Engine: e, APIKeys: []string{judgeKey}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts
}

// call sends body to ts with headers and returns the status and the raw answer.
func call(t *testing.T, ts *httptest.Server, method, path, body string, headers map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

var j0Auth = map[string]string{"X-Auth-Token": judgeKey, "Content-Type": "application/json"}

// C programs that end each way a judge tells apart.
const (
	cLoop = "int main(void){for(;;);}"
	// Not a null pointer or a division by zero: on some hypervisors (Firecracker here) page 0
	// reads and writes and x/0 gives 0 without a fault, even on the host.
	cSegfault = "int main(void){volatile int *p = (volatile int *)0xdead000; *p = 1; return 0;}"
	cFPE      = "#include <limits.h>\nint main(void){volatile int a = INT_MIN, b = -1; return a / b;}"
	cAbort    = "#include <stdlib.h>\nint main(void){abort();}"
	cBroken   = "int main( {"
	cMemBomb  = "#include <stdlib.h>\n#include <string.h>\nint main(void){for(;;){char *p = malloc(1<<20); if(!p) return 3; memset(p, 1, 1<<20);}}"
)

// TestJudge0Statuses produces every Judge0 status with a real program, through
// POST /submissions?wait=true as Judge0's documentation sends it.
func TestJudge0Statuses(t *testing.T) {
	ts := judgeServer(t)
	for _, tc := range []struct {
		name   string
		sub    map[string]any
		status int
		check  func(t *testing.T, got map[string]any)
	}{
		{"accepted", map[string]any{"language_id": 71, "source_code": "print(int(input()) * 2)", "stdin": "21",
			"expected_output": "42"}, 3, func(t *testing.T, got map[string]any) {
			if got["stdout"] != "42\n" {
				t.Errorf("stdout %q", got["stdout"])
			}
			if tm, _ := got["time"].(string); tm == "" {
				t.Errorf("time %v is not a string of seconds", got["time"])
			}
			if mem, _ := got["memory"].(float64); mem <= 0 {
				t.Errorf("memory %v KB", got["memory"])
			}
		}},
		{"wrong answer", map[string]any{"language_id": 71, "source_code": "print(int(input()) * 2)", "stdin": "21",
			"expected_output": "43"}, 4, nil},
		{"time limit", map[string]any{"language_id": 50, "source_code": cLoop, "cpu_time_limit": 0.5,
			"cpu_extra_time": 0, "wall_time_limit": 1}, 5, nil},
		{"compilation error", map[string]any{"language_id": 50, "source_code": cBroken}, 6,
			func(t *testing.T, got map[string]any) {
				if out, _ := got["compile_output"].(string); !strings.Contains(out, "error") {
					t.Errorf("compile_output %q", got["compile_output"])
				}
			}},
		{"segfault", map[string]any{"language_id": 50, "source_code": cSegfault}, 7, nil},
		{"output flood", map[string]any{"language_id": 71, "source_code": "import sys\nsys.stdout.write('x' * (3 << 20))"}, 8, nil},
		{"fpe", map[string]any{"language_id": 54, "source_code": cFPE}, 9, nil},
		{"abort", map[string]any{"language_id": 50, "source_code": cAbort}, 10, nil},
		{"nonzero exit", map[string]any{"language_id": 71, "source_code": "1/0"}, 11, func(t *testing.T, got map[string]any) {
			if got["exit_code"] != 1.0 || !strings.Contains(got["stderr"].(string), "ZeroDivisionError") {
				t.Errorf("exit_code %v, stderr %q", got["exit_code"], got["stderr"])
			}
		}},
		{"memory bomb", map[string]any{"language_id": 50, "source_code": cMemBomb, "memory_limit": 65536}, 12, nil},
		{"go", map[string]any{"language_id": 60, "source_code": "package main\nimport \"fmt\"\nfunc main(){fmt.Println(6*7)}",
			"expected_output": "42\n"}, 3, nil},
		{"javascript args", map[string]any{"language_id": 63, "source_code": "console.log(process.argv.slice(2).join('|'))",
			"command_line_arguments": `a "b c"`, "expected_output": "a|b c"}, 3, nil},
		{"bash stderr redirected", map[string]any{"language_id": 46, "source_code": "echo out; echo err >&2",
			"redirect_stderr_to_stdout": true, "expected_output": "out\nerr\n"}, 3, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body, _ := json.Marshal(tc.sub)
			code, b := call(t, ts, "POST", "/judge0/submissions?base64_encoded=false&wait=true&fields=*", string(body), j0Auth)
			if code != http.StatusCreated {
				t.Fatalf("got %d %s, want 201", code, b)
			}
			var got map[string]any
			mustUnmarshal(t, b, &got)
			st, _ := got["status"].(map[string]any)
			if id, _ := st["id"].(float64); int(id) != tc.status {
				t.Fatalf("got status %v, want %d: %s", st, tc.status, b)
			}
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

// TestJudge0Protocol covers what is not a status: fields, base64 in both directions, token
// polling, batches, 422s and keys.
func TestJudge0Protocol(t *testing.T) {
	ts := judgeServer(t)
	t.Run("default and chosen fields", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			query string
			want  []string
		}{
			{"", []string{"compile_output", "memory", "message", "status", "stderr", "stdout", "time", "token"}},
			{"&fields=stdout,stderr,status,exit_code", []string{"exit_code", "status", "stderr", "stdout"}},
		} {
			code, b := call(t, ts, "POST", "/judge0/submissions?base64_encoded=false&wait=true"+tc.query,
				`{"language_id":71,"source_code":"print(1)"}`, j0Auth)
			var got map[string]any
			mustUnmarshal(t, b, &got)
			var keys []string
			for k := range got {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if code != 201 || !slices.Equal(keys, tc.want) {
				t.Errorf("fields %q: got %d %v, want 201 %v", tc.query, code, keys, tc.want)
			}
		}
	})
	t.Run("base64 round trip", func(t *testing.T) {
		t.Parallel()
		src := "import sys\nsys.stdout.buffer.write(bytes([0xff, 0xfe]) + sys.stdin.buffer.read())"
		body, _ := json.Marshal(map[string]any{"language_id": 71, "source_code": base64.StdEncoding.EncodeToString([]byte(src)),
			"stdin": base64.StdEncoding.EncodeToString([]byte("é\n"))})
		code, b := call(t, ts, "POST", "/judge0/submissions?base64_encoded=true&wait=true", string(body), j0Auth)
		var got map[string]any
		mustUnmarshal(t, b, &got)
		out, _ := base64.StdEncoding.DecodeString(got["stdout"].(string))
		if want := "\xff\xfeé\n"; code != 201 || string(out) != want {
			t.Fatalf("got %d stdout %q, want 201 %q", code, out, want)
		}
		// The same output is not UTF-8: without base64, Judge0's 400.
		code, b = call(t, ts, "GET", "/judge0/submissions/"+got["token"].(string)+"?base64_encoded=false", "", j0Auth)
		if code != 400 || !strings.Contains(string(b), "base64_encoded=true") {
			t.Fatalf("got %d %s, want 400 asking for base64", code, b)
		}
	})
	t.Run("token then poll", func(t *testing.T) {
		t.Parallel()
		code, b := call(t, ts, "POST", "/judge0/submissions?base64_encoded=false&wait=false",
			`{"language_id":50,"source_code":"#include <stdio.h>\nint main(void){puts(\"hi\");}"}`, j0Auth)
		var tok map[string]any
		mustUnmarshal(t, b, &tok)
		if code != 201 || len(tok) != 1 || tok["token"] == "" {
			t.Fatalf("got %d %s, want 201 with only a token", code, b)
		}
		var got map[string]any
		waitFor(t, "the submission to finish", func() bool {
			_, b := call(t, ts, "GET", "/judge0/submissions/"+tok["token"].(string)+"?base64_encoded=false&fields=stdout,status", "", j0Auth)
			mustUnmarshal(t, b, &got)
			return got["status"].(map[string]any)["id"].(float64) > 2
		})
		if got["stdout"] != "hi\n" || got["status"].(map[string]any)["id"] != 3.0 {
			t.Fatalf("got %v", got)
		}
		// Another key's token is not found.
		if code, _ := call(t, ts, "GET", "/judge0/submissions/00000000-0000-4000-8000-000000000000", "", j0Auth); code != 404 {
			t.Fatalf("unknown token: %d", code)
		}
	})
	t.Run("batch", func(t *testing.T) {
		t.Parallel()
		code, b := call(t, ts, "POST", "/judge0/submissions/batch?base64_encoded=false",
			`{"submissions":[{"language_id":71,"source_code":"print('a')"},{"language_id":150000,"source_code":"x"},`+
				`{"language_id":46,"source_code":"echo b"}]}`, j0Auth)
		var items []map[string]any
		mustUnmarshal(t, b, &items)
		if code != 201 || len(items) != 3 || items[0]["token"] == nil || items[1]["language_id"] == nil || items[2]["token"] == nil {
			t.Fatalf("got %d %s", code, b)
		}
		tokens := items[2]["token"].(string) + "," + items[0]["token"].(string)
		var got struct{ Submissions []map[string]any }
		waitFor(t, "the batch to finish", func() bool {
			_, b := call(t, ts, "GET", "/judge0/submissions/batch?tokens="+tokens+"&base64_encoded=false&fields=token,stdout,status", "", j0Auth)
			mustUnmarshal(t, b, &got)
			for _, s := range got.Submissions {
				if s["status"].(map[string]any)["id"].(float64) <= 2 {
					return false
				}
			}
			return true
		})
		if got.Submissions[0]["stdout"] != "b\n" || got.Submissions[1]["stdout"] != "a\n" {
			t.Fatalf("batch out of token order: %v", got.Submissions)
		}
	})
	t.Run("422", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct{ body, field, msg string }{
			{`{"source_code":"print(1)"}`, "language_id", "can't be blank"},
			{`{"language_id":150000,"source_code":"print(1)"}`, "language_id", "language with id 150000 doesn't exist"},
			{`{"language_id":71}`, "source_code", "can't be blank"},
			{`{"language_id":71,"source_code":"1","cpu_time_limit":100}`, "cpu_time_limit", "must be less than or equal to 15"},
			{`{"language_id":71,"source_code":"1","enable_network":true}`, "enable_network", "enabling network is not allowed"},
		} {
			code, b := call(t, ts, "POST", "/judge0/submissions?wait=true", tc.body, j0Auth)
			var got map[string][]string
			mustUnmarshal(t, b, &got)
			if code != 422 || !slices.Contains(got[tc.field], tc.msg) {
				t.Errorf("%s: got %d %s, want 422 %s: %s", tc.body, code, b, tc.field, tc.msg)
			}
		}
	})
	t.Run("keys", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name    string
			headers map[string]string
			status  int
		}{
			{"none", nil, 401},
			{"wrong", map[string]string{"X-Auth-Token": "wrong-key-0123456789abcdef"}, 401},
			{"x-auth-token", map[string]string{"X-Auth-Token": judgeKey}, 200},
			{"bearer", map[string]string{"Authorization": "Bearer " + judgeKey}, 200},
		} {
			code, b := call(t, ts, "GET", "/judge0/languages", "", tc.headers)
			if code != tc.status || (code == 401 && len(b) != 0) {
				t.Errorf("%s: got %d %q, want %d (401 with an empty body)", tc.name, code, b, tc.status)
			}
			if code == 200 && !strings.Contains(string(b), `{"id":71,"name":"Python (`) {
				t.Errorf("languages: %s", b)
			}
		}
		code, b := call(t, ts, "GET", "/judge0/statuses", "", j0Auth)
		var st []map[string]any
		mustUnmarshal(t, b, &st)
		if code != 200 || len(st) != 14 || st[13]["description"] != "Exec Format Error" {
			t.Errorf("statuses: %d %s", code, b)
		}
	})
}

var gjAuth = map[string]string{"Authorization": "Bearer " + judgeKey, "Content-Type": "application/json"}

type gjResult struct {
	Status     string
	ExitStatus int
	Error      string
	Time       int64
	Memory     int64
	RunTime    int64
	Files      map[string]string
	FileIDs    map[string]string
	FileError  []map[string]any
}

// gjCmd is a go-judge cmd as its README writes one: stdin content, stdout and stderr
// collectors, limits in ns and bytes.
func gjCmd(args []string, copyIn map[string]string, extra map[string]any) map[string]any {
	in := map[string]any{}
	for k, v := range copyIn {
		in[k] = map[string]string{"content": v}
	}
	c := map[string]any{"args": args, "env": []string{"PATH=/usr/bin:/bin", "JUDGE=yes"},
		"files":    []any{map[string]string{"content": ""}, map[string]any{"name": "stdout", "max": 10240}, map[string]any{"name": "stderr", "max": 10240}},
		"cpuLimit": 10_000_000_000, "clockLimit": 20_000_000_000, "memoryLimit": 268435456, "procLimit": 50, "copyIn": in}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func gjRun(t *testing.T, ts *httptest.Server, cmds ...map[string]any) []gjResult {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"cmd": cmds})
	code, b := call(t, ts, "POST", "/gojudge/run", string(body), gjAuth)
	var out []gjResult
	if code != 200 {
		t.Fatalf("got %d %s", code, b)
	}
	mustUnmarshal(t, b, &out)
	return out
}

// TestGojudgeRun produces every go-judge status with a real program, and the compile-then-run
// flow through copyOutCached and fileId.
func TestGojudgeRun(t *testing.T) {
	ts := judgeServer(t)
	py := func(code string) []string { return []string{"/usr/bin/env", "python3", "-c", code} }
	for _, tc := range []struct {
		name   string
		cmd    map[string]any
		status string
		check  func(t *testing.T, r gjResult)
	}{
		{"accepted", gjCmd([]string{"/usr/bin/env", "python3", "main.py"}, map[string]string{"main.py": "import os\nprint(sum(range(100)), os.environ['JUDGE'])"}, nil),
			"Accepted", func(t *testing.T, r gjResult) {
				if r.Files["stdout"] != "4950 yes\n" || r.Memory <= 0 || r.Time <= 0 || r.RunTime <= 0 {
					t.Errorf("got %+v", r)
				}
			}},
		{"nonzero", gjCmd(py("import sys; sys.exit(3)"), nil, nil), "Nonzero Exit Status", func(t *testing.T, r gjResult) {
			if r.ExitStatus != 3 {
				t.Errorf("exitStatus %d", r.ExitStatus)
			}
		}},
		{"time limit", gjCmd(py("while True: pass"), nil, map[string]any{"cpuLimit": 500_000_000, "clockLimit": 1_000_000_000}), "Time Limit Exceeded", nil},
		{"memory limit", gjCmd(py("b = bytearray(400 << 20)"), nil, map[string]any{"memoryLimit": 64 << 20}), "Memory Limit Exceeded", nil},
		{"output limit", gjCmd(py("print('x' * 100000)"), nil, nil), "Output Limit Exceeded", func(t *testing.T, r gjResult) {
			if len(r.Files["stdout"]) != 10240 {
				t.Errorf("stdout kept %d bytes, want the collector's max 10240", len(r.Files["stdout"]))
			}
		}},
		{"signalled", gjCmd([]string{"/bin/bash", "-c", "kill -SEGV $$"}, nil, nil), "Signalled", func(t *testing.T, r gjResult) {
			if r.ExitStatus != 11 {
				t.Errorf("exitStatus %d, want 11", r.ExitStatus)
			}
		}},
		{"copy out", gjCmd([]string{"/bin/bash", "-c", "echo data > out.txt"}, nil, map[string]any{"copyOut": []string{"stdout", "out.txt", "missing.txt?"}}),
			"Accepted", func(t *testing.T, r gjResult) {
				if r.Files["out.txt"] != "data\n" || len(r.Files) != 3 {
					t.Errorf("files %v", r.Files)
				}
			}},
		{"copy out missing", gjCmd([]string{"/bin/true"}, nil, map[string]any{"copyOut": []string{"nothing.txt"}}), "File Error", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res := gjRun(t, ts, tc.cmd)
			if len(res) != 1 || res[0].Status != tc.status {
				t.Fatalf("got %+v, want status %q", res, tc.status)
			}
			if tc.check != nil {
				tc.check(t, res[0])
			}
		})
	}
	t.Run("compile then run", func(t *testing.T) {
		t.Parallel()
		res := gjRun(t, ts, gjCmd([]string{"/usr/bin/g++", "a.cc", "-o", "a"},
			map[string]string{"a.cc": "#include <iostream>\nint main(){int a, b; std::cin >> a >> b; std::cout << a + b << std::endl;}"},
			map[string]any{"copyOut": []string{"stdout", "stderr"}, "copyOutCached": []string{"a"}}))
		if res[0].Status != "Accepted" || res[0].FileIDs["a"] == "" {
			t.Fatalf("compile: %+v", res[0])
		}
		run := gjCmd([]string{"a"}, nil, nil)
		run["files"].([]any)[0] = map[string]string{"content": "1 2"}
		run["copyIn"] = map[string]any{"a": map[string]string{"fileId": res[0].FileIDs["a"]}}
		res = gjRun(t, ts, run)
		if res[0].Status != "Accepted" || res[0].Files["stdout"] != "3\n" {
			t.Fatalf("run: %+v", res[0])
		}
	})
	t.Run("errors", func(t *testing.T) {
		t.Parallel()
		code, b := call(t, ts, "POST", "/gojudge/run", `{"cmd":[]}`, gjAuth)
		var msg string
		mustUnmarshal(t, b, &msg)
		if code != 400 || msg != "no cmd provided" {
			t.Errorf("empty cmd: got %d %s", code, b)
		}
		if code, _ := call(t, ts, "POST", "/gojudge/run", `{"cmd":[{"args":["/bin/true"]}]}`, nil); code != 401 {
			t.Errorf("no key: got %d, want 401", code)
		}
		body, _ := json.Marshal(map[string]any{"cmd": []any{gjCmd([]string{"/bin/true"}, nil, map[string]any{"copyIn": map[string]any{"x": map[string]string{"src": "/etc/shadow"}}})}})
		if code, b := call(t, ts, "POST", "/gojudge/run", string(body), gjAuth); code != 400 {
			t.Errorf("copyIn src of a host file: got %d %s, want 400", code, b)
		}
	})
}

// TestCodapiExec runs codapi's request shape: the main file beside a module it imports, a
// failing program (200, ok false), and codapi's error statuses.
func TestCodapiExec(t *testing.T) {
	ts := judgeServer(t)
	auth := gjAuth
	type answer struct {
		ID       string
		OK       bool
		Duration int64
		Stdout   string
		Stderr   string
	}
	for _, tc := range []struct {
		name, method, body string
		headers            map[string]string
		status             int
		ok                 bool
		stdout, stderr     string
	}{
		{"import beside", "POST", `{"sandbox":"python","command":"run","files":{"":"import util\nprint(util.x)","util.py":"x = 42"}}`, auth, 200, true, "42\n", ""},
		{"failure", "POST", `{"sandbox":"python","command":"run","files":{"":"print(1)\nraise SystemExit('boom')"}}`, auth, 200, false, "1\n", "boom"},
		{"c", "POST", `{"sandbox":"c","command":"run","files":{"":"#include <stdio.h>\nint main(void){puts(\"c\");}"}}`, auth, 200, true, "c\n", ""},
		{"compile error", "POST", `{"sandbox":"cpp","command":"run","files":{"":"int main( {"}}`, auth, 200, false, "", "error"},
		{"unknown sandbox", "POST", `{"sandbox":"cobol","command":"run","files":{"":"x"}}`, auth, 404, false, "", "unknown sandbox"},
		{"unknown command", "POST", `{"sandbox":"python","command":"fly","files":{"":"x"}}`, auth, 404, false, "", "unknown command"},
		{"malformed", "POST", `{"sandbox":`, auth, 400, false, "", "malformed"},
		{"method", "GET", "", auth, 405, false, "", "method"},
		{"no key", "POST", `{"sandbox":"python","command":"run","files":{"":"print(1)"}}`, nil, 401, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, b := call(t, ts, tc.method, "/codapi/v1/exec", tc.body, tc.headers)
			var got answer
			mustUnmarshal(t, b, &got)
			if code != tc.status || got.OK != tc.ok || got.ID == "" || got.Stdout != tc.stdout || !strings.Contains(got.Stderr, tc.stderr) {
				t.Fatalf("got %d %s, want %d ok=%v stdout %q stderr containing %q", code, b, tc.status, tc.ok, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestPistonHTTP sends Piston v2 requests as the npm client does (a text/plain JSON body)
// and as other clients do (a bearer), without the client itself (judge_piston_test.go uses
// it).
func TestPistonHTTP(t *testing.T) {
	ts := judgeServer(t)
	basic := map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("anyuser:"+judgeKey)),
		"Content-Type": "text/plain;charset=UTF-8"}
	code, b := call(t, ts, "GET", "/piston/api/v2/runtimes", "", basic)
	var rts []struct {
		Language, Version string
		Aliases           []string
	}
	mustUnmarshal(t, b, &rts)
	names := map[string]string{}
	for _, r := range rts {
		names[r.Language] = r.Version
	}
	for _, want := range []string{"python", "bash", "c", "c++", "go", "javascript"} {
		if names[want] == "" {
			t.Errorf("runtimes lack %s: %d %s", want, code, b)
		}
	}
	type stage struct {
		Stdout, Stderr, Output string
		Code                   *int
		Signal, Status         *string
	}
	type answer struct {
		Language, Version string
		Run               stage
		Compile           *stage
		Message           string
	}
	for _, tc := range []struct {
		name, body string
		headers    map[string]string
		status     int
		check      func(t *testing.T, a answer)
	}{
		{"c run", `{"language":"c","version":"*","files":[{"name":"m.c","content":"#include <stdio.h>\nint main(int c, char **v){printf(\"%s\\n\", v[1]); fprintf(stderr, \"e\\n\"); return 2;}"}],` +
			`"args":["1","2","3"],"compile_timeout":10000,"run_timeout":3000,"compile_memory_limit":-1,"run_memory_limit":-1}`, basic, 200,
			func(t *testing.T, a answer) {
				if a.Compile == nil || a.Run.Stdout != "1\n" || (a.Run.Output != "1\ne\n" && a.Run.Output != "e\n1\n") || a.Run.Code == nil || *a.Run.Code != 2 || *a.Run.Status != "RE" {
					t.Errorf("got %+v", a)
				}
			}},
		{"compile error", `{"language":"c++","version":"*","files":[{"content":"int main( {"}]}`, basic, 200, func(t *testing.T, a answer) {
			if a.Compile == nil || a.Compile.Code == nil || *a.Compile.Code == 0 || a.Run.Stderr != a.Compile.Stderr {
				t.Errorf("got %+v", a)
			}
		}},
		{"timeout keeps output", `{"language":"python","version":"*","files":[{"content":"print('so far', flush=True)\nwhile True: pass"}],"run_timeout":1000}`,
			map[string]string{"Authorization": "Bearer " + judgeKey}, 200, func(t *testing.T, a answer) {
				if a.Run.Stdout != "so far\n" || a.Run.Status == nil || *a.Run.Status != "TO" || *a.Run.Signal != "SIGKILL" || a.Run.Code != nil {
					t.Errorf("got %+v", a)
				}
			}},
		{"signal", `{"language":"bash","version":"*","files":[{"content":"kill -SEGV $$"}]}`, basic, 200, func(t *testing.T, a answer) {
			if a.Run.Signal == nil || *a.Run.Signal != "SIGSEGV" || *a.Run.Status != "SG" || a.Run.Code != nil {
				t.Errorf("got %+v", a)
			}
		}},
		{"unknown runtime", `{"language":"cobol","version":"1.0","files":[{"content":"x"}]}`, basic, 400, func(t *testing.T, a answer) {
			if a.Message != "cobol-1.0 runtime is unknown" {
				t.Errorf("got %+v", a)
			}
		}},
		{"wrong key", `{"language":"python","version":"*","files":[{"content":"print(1)"}]}`,
			map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("u:wrong-key-0123456789abcdef"))}, 401, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, b := call(t, ts, "POST", "/piston/api/v2/execute", tc.body, tc.headers)
			var a answer
			mustUnmarshal(t, b, &a)
			if code != tc.status {
				t.Fatalf("got %d %s, want %d", code, b, tc.status)
			}
			if tc.check != nil {
				tc.check(t, a)
			}
		})
	}
}
