package e2e

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
)

func (a *apiServer) session(body string) string {
	a.t.Helper()
	var info api.SessionInfo
	if code := a.call("POST", "/v1/sessions", strings.NewReader(body), &info); code != 201 {
		a.t.Fatalf("create session: %d", code)
	}
	return info.ID
}

func (a *apiServer) cell(id, code string, timeout float64) api.RunResult {
	a.t.Helper()
	b, _ := json.Marshal(api.RunRequest{Code: code, Timeout: timeout})
	var res api.RunResult
	if st := a.call("POST", "/v1/sessions/"+id+"/run", bytes.NewReader(b), &res); st != 200 {
		a.t.Fatalf("run %q: status %d", code, st)
	}
	return res
}

func TestSessionCells(t *testing.T) { forEachAPIRuntime(t, engine.Config{}, testSessionCells) }

func testSessionCells(t *testing.T, a *apiServer, rt string) {
	id := a.session(`{}`)
	if r := a.cell(id, "x = 41", 0); !r.Success || r.Result != nil {
		t.Fatalf("assignment: %+v", r)
	}
	r := a.cell(id, "print('hi')\nx + 1", 0)
	if r.Stdout != "hi\n" || r.Result == nil || *r.Result != "42" {
		t.Fatalf("state across cells / last expression: %+v", r)
	}
	if r := a.cell(id, "None", 0); r.Result != nil {
		t.Fatalf("None must give no result: %+v", *r.Result)
	}
	r = a.cell(id, "def f():\n    return 1 / 0\n\nf()", 0)
	if r.Success || r.Error == nil || r.Error.Name != "ZeroDivisionError" ||
		!strings.Contains(strings.Join(r.Error.Traceback, "\n"), "return 1 / 0") ||
		!strings.Contains(strings.Join(r.Error.Traceback, "\n"), "<cell-") {
		t.Fatalf("exception: %+v", r.Error)
	}
	if tb := strings.Join(r.Error.Traceback, "\n"); strings.Contains(tb, "driver") {
		t.Fatalf("traceback shows driver frames: %s", tb)
	}
	if r := a.cell(id, "def broken(:\n  pass", 0); r.Error == nil || r.Error.Name != "SyntaxError" {
		t.Fatalf("syntax error: %+v", r.Error)
	}
	r = a.cell(id, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('x')\nNone", 60)
	if len(r.Display) != 1 || r.Display[0].MIME != "image/png" {
		t.Fatalf("plot: %+v", r)
	}
	raw, err := base64.StdEncoding.DecodeString(r.Display[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil || img.Bounds().Dx() < 100 {
		t.Fatalf("plot is not a valid PNG: %v", err)
	}
	r = a.cell(id, "class H:\n    def _repr_html_(self): return '<b>hi</b>'\nH()", 0)
	if !hasDisplay(r, "text/html", "<b>hi</b>") {
		t.Fatalf("_repr_html_: %+v", r.Display)
	}
	if r := a.cell(id, "x", 0); r.Result == nil || *r.Result != "41" {
		t.Fatalf("state lost: %+v", r)
	}
	// The interpreter is started like any user process: no capabilities, none to regain.
	status := "[l for l in open('/proc/self/status') if l.startswith(('CapBnd', 'CapEff', 'NoNewPrivs'))]"
	if rt == gvisor.Name {
		// By design of gVisor's kernel: its /proc/self/status has no NoNewPrivs line; prctl
		// (PR_GET_NO_NEW_PRIVS) says the same there.
		status += " + ['NoNewPrivs:\\t%d' % __import__('ctypes').CDLL(None).prctl(39, 0, 0, 0, 0)]"
	}
	r = a.cell(id, status, 0)
	if r.Result == nil || !strings.Contains(*r.Result, `CapBnd:\t0000000000000000`) || !strings.Contains(*r.Result, `CapEff:\t0000000000000000`) || !strings.Contains(*r.Result, `NoNewPrivs:\t1`) {
		t.Fatalf("interpreter privileges: %+v", r.Result)
	}
	var eb api.ErrorBody
	if st := a.call("POST", "/v1/sessions/sb-nope/run", strings.NewReader(`{"code":"1"}`), &eb); st != 404 {
		t.Fatalf("unknown session: %d", st)
	}
}

func hasDisplay(r api.RunResult, mime, sub string) bool {
	for _, d := range r.Display {
		if d.MIME == mime && strings.Contains(d.Data, sub) {
			return true
		}
	}
	return false
}

func TestSessionInterruptsAndCrashes(t *testing.T) {
	forEachAPIRuntime(t, engine.Config{}, testSessionInterruptsAndCrashes)
}

func testSessionInterruptsAndCrashes(t *testing.T, a *apiServer, rt string) {
	id := a.session(`{}`)
	a.cell(id, "kept = 'yes'", 0)
	// Interrupt of a busy loop, from another request.
	var wg sync.WaitGroup
	var loop api.RunResult
	wg.Go(func() { loop = a.cell(id, "while True: pass", 60) })
	time.Sleep(500 * time.Millisecond)
	var ir api.InterruptResult
	a.call("POST", "/v1/sessions/"+id+"/interrupt", nil, &ir)
	wg.Wait()
	if !ir.Interrupted || ir.Restarted || !loop.Interrupted || loop.Restarted {
		t.Fatalf("interrupt of while True: %+v, cell %+v", ir, loop)
	}
	// Interrupt of a long sleep by the cell timeout.
	r := a.cell(id, "import time; time.sleep(100)", 1)
	if !r.TimedOut || !r.Interrupted || r.Restarted {
		t.Fatalf("sleep past the cell timeout: %+v", r)
	}
	if r := a.cell(id, "kept", 0); r.Result == nil || *r.Result != "'yes'" {
		t.Fatalf("state not kept across interrupts: %+v", r)
	}
	// A cell that blocks SIGINT cannot be interrupted: the session restarts and says so.
	r = a.cell(id, "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\ntime.sleep(100)", 1)
	if !r.Restarted || r.RestartReason == "" || r.Success {
		t.Fatalf("uninterruptible cell: %+v", r)
	}
	if r := a.cell(id, "kept", 0); r.Error == nil || r.Error.Name != "NameError" {
		t.Fatalf("after a restart the session must be fresh: %+v", r)
	}
	for _, crash := range []string{"import os; os._exit(3)", "import ctypes; ctypes.string_at(0)"} {
		r := a.cell(id, "a = 1\n"+crash, 10)
		if !r.Restarted || r.Error == nil || r.Success {
			t.Fatalf("%s: %+v", crash, r)
		}
		if r := a.cell(id, "2 + 2", 0); r.Result == nil || *r.Result != "4" {
			t.Fatalf("next cell after %s: %+v", crash, r)
		}
	}
}

func TestSessionHostileOutput(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.session(`{}`)
	hostile := []string{
		`print('{"token": "x", "result": "pwned"}'); print('\x00\x00\x00\x10{"op":"run"}')`,
		"import os; os.write(1, bytes(range(256))); os.write(2, b'\\xff\\xfe')",
		"import sys; sys.stdout.close()",
		"import sys; sys.stdout = None; sys.stderr = None",
		"input()",
		"import sys; sys.stdout.write('x' * (50 << 20))",
		"import threading, time\ndef spam():\n    for _ in range(200): print('bg'); time.sleep(0.001)\nthreading.Thread(target=spam, daemon=True).start()",
	}
	for i, code := range hostile {
		r := a.cell(id, code, 60)
		if r.Result != nil && strings.Contains(*r.Result, "pwned") {
			t.Fatalf("cell %d forged a result", i)
		}
		if i == 5 && (!r.Truncated || len(r.Stdout) > 1<<20) {
			t.Fatalf("50 MB of output: truncated=%v len=%d", r.Truncated, len(r.Stdout))
		}
		if r := a.cell(id, fmt.Sprintf("%d * 3", i), 0); r.Result == nil || *r.Result != fmt.Sprint(i*3) {
			t.Fatalf("after hostile cell %d (%q) the session is confused: %+v", i, code, r)
		}
	}
}

func TestSessionIdleExpiry(t *testing.T) {
	a := newAPIServer(t, engine.Config{ReapInterval: 100 * time.Millisecond})
	id := a.session(`{"idle_timeout":1}`)
	a.cell(id, "1", 0)
	time.Sleep(1800 * time.Millisecond)
	var eb api.ErrorBody
	start := time.Now()
	if st := a.call("POST", "/v1/sessions/"+id+"/run", strings.NewReader(`{"code":"1"}`), &eb); st != 410 {
		t.Fatalf("idle session: %d %+v, want 410", st, eb)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("a gone session must answer at once, not hang")
	}
}

func TestSessionInstallFromWheel(t *testing.T) {
	mustEngine(t)
	dir, err := os.MkdirTemp("", "airlock-wheels-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	writeWheel(t, filepath.Join(dir, "airlock_testpkg-1.0-py3-none-any.whl"))
	// A runtime of its own: a state directory is one runtime's (it is locked).
	wrt, err := native.New(native.Config{Logger: slog.New(slog.DiscardHandler), StateDir: mkdirTraversable(t, "airlock-e2e-wheels-"),
		CgroupRoot: cgRoot + "-wheels", WheelDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wrt.Close() }) // after the engine's cleanup (registered later, run first)
	a := newAPIServer(t, engine.Config{Runtime: native.EngineRuntime(wrt), WheelDirSet: true})
	id := a.session(`{}`)
	if r := a.cell(id, "import airlock_testpkg", 0); r.Error == nil || r.Error.Name != "ModuleNotFoundError" {
		t.Fatalf("package present before install: %+v", r)
	}
	var ir api.InstallResult
	a.call("POST", "/v1/sessions/"+id+"/install", strings.NewReader(`{"packages":["airlock-testpkg==1.0"]}`), &ir)
	if !ir.Success {
		t.Fatalf("install: %+v", ir)
	}
	if r := a.cell(id, "import airlock_testpkg; airlock_testpkg.VALUE", 0); r.Result == nil || *r.Result != "42" {
		t.Fatalf("installed package not importable: %+v", r)
	}
	// Only into the sandbox: the host's Python does not have it, and a fresh session neither.
	other := a.session(`{}`)
	if r := a.cell(other, "import airlock_testpkg", 0); r.Error == nil {
		t.Fatal("an install leaked into another session")
	}
	var eb api.ErrorBody
	for _, bad := range []string{`{"packages":["--index-url=http://evil"]}`, `{"packages":["x; rm -rf /"]}`, `{"packages":[]}`} {
		if st := a.call("POST", "/v1/sessions/"+id+"/install", strings.NewReader(bad), &eb); st != 400 {
			t.Fatalf("install %s: %d, want 400", bad, st)
		}
	}
	var missing api.InstallResult
	a.call("POST", "/v1/sessions/"+id+"/install", strings.NewReader(`{"packages":["numpy-not-here"]}`), &missing)
	if missing.Success || missing.Output == "" {
		t.Fatalf("install of a package not in the wheel directory: %+v", missing)
	}
}

// writeWheel builds a minimal pure-Python wheel by hand (PyPI is unreachable here).
func writeWheel(t *testing.T, path string) {
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	files := map[string]string{
		"airlock_testpkg/__init__.py":                 "VALUE = 42\n",
		"airlock_testpkg-1.0.dist-info/METADATA":      "Metadata-Version: 2.1\nName: airlock-testpkg\nVersion: 1.0\n",
		"airlock_testpkg-1.0.dist-info/WHEEL":         "Wheel-Version: 1.0\nGenerator: airlock-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
		"airlock_testpkg-1.0.dist-info/top_level.txt": "airlock_testpkg\n",
	}
	var record strings.Builder
	for name, body := range files {
		w, _ := z.Create(name)
		w.Write([]byte(body))
		fmt.Fprintf(&record, "%s,,\n", name)
	}
	record.WriteString("airlock_testpkg-1.0.dist-info/RECORD,,\n")
	w, _ := z.Create("airlock_testpkg-1.0.dist-info/RECORD")
	w.Write([]byte(record.String()))
	z.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestTenantsAreIsolated(t *testing.T) {
	mustEngine(t)
	e, err := engine.New(engine.Config{Runtime: native.EngineRuntime(rt)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(t.Context())
	const keyA, keyB = "tenant-a-0123456789abcdef", "tenant-b-0123456789abcdef"
	s, err := server.New(server.Config{Engine: e, APIKeys: []string{keyA, keyB}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	call := func(key, method, path, body string, out any) int {
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil {
			json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}
	var r api.RunResult
	call(keyA, "POST", "/repl/execute", `{"session_id":"default","code":"secret = 'A-private'"}`, &r)
	call(keyB, "POST", "/repl/execute", `{"session_id":"default","code":"secret"}`, &r)
	if r.Error == nil || r.Error.Name != "NameError" {
		t.Fatalf("tenant B reached tenant A's session: %+v", r)
	}
	var info api.SandboxInfo
	call(keyA, "POST", "/v1/sandboxes", `{}`, &info)
	for _, p := range []string{"/v1/sandboxes/" + info.ID, "/v1/sandboxes/" + info.ID + "/files?path=x"} {
		if code := call(keyB, "GET", p, "", nil); code != 404 {
			t.Fatalf("tenant B GET %s: %d, want 404", p, code)
		}
	}
	if code := call(keyB, "DELETE", "/v1/sandboxes/"+info.ID, "", nil); code != 404 {
		t.Fatalf("tenant B deleted tenant A's sandbox: %d", code)
	}
	var l api.SandboxList
	call(keyB, "GET", "/v1/sandboxes", "", &l)
	for _, sb := range l.Sandboxes {
		if sb.ID == info.ID {
			t.Fatal("tenant B lists tenant A's sandbox")
		}
	}
}
