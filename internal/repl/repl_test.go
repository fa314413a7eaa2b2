//go:build linux

package repl

import (
	"bytes"
	"errors"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// testPython is the interpreter under test: /usr/bin/python3, or $AIRLOCK_TEST_PYTHON to run the
// suite against another version.
func testPython(t testing.TB) string {
	t.Helper()
	py := os.Getenv("AIRLOCK_TEST_PYTHON")
	if py == "" {
		py = defaultPython
	}
	if _, err := os.Stat(py); err != nil {
		if testutil.Strict() {
			t.Fatalf("AIRLOCK_TEST_STRICT=1 and no Python at %s: %v", py, err)
		}
		t.Skipf("no Python at %s: %v", py, err)
	}
	return py
}

// start starts an interpreter that is closed when the test ends.
func start(t testing.TB, cfg Config) *Interp {
	t.Helper()
	cfg.Python = testPython(t)
	ip, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := ip.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ip
}

// run runs one cell with a generous timeout and fails the test on a Go error.
func run(t testing.TB, ip *Interp, code string) *Result {
	t.Helper()
	res, err := ip.Run(t.Context(), code, 60*time.Second)
	if err != nil {
		t.Fatalf("Run(%q): %v", code, err)
	}
	return res
}

func errName(res *Result) string {
	if res.Error == nil {
		return ""
	}
	return res.Error.Name
}

// step is one cell and what it must produce. Stdout and stderr are compared exactly; an empty
// result means the cell must have none; an empty errName means it must not fail.
type step struct {
	code     string
	stdout   string
	stderr   string
	result   string
	errName  string
	errValue string   // substring of Error.Value
	tbHas    []string // substrings of the joined traceback
}

func (s step) check(t *testing.T, res *Result) {
	t.Helper()
	if got := string(res.Stdout); got != s.stdout {
		t.Errorf("cell %q: stdout = %q, want %q", s.code, got, s.stdout)
	}
	if got := string(res.Stderr); got != s.stderr {
		t.Errorf("cell %q: stderr = %q, want %q", s.code, got, s.stderr)
	}
	if s.result == "" && res.HasResult {
		t.Errorf("cell %q: result = %q, want none", s.code, res.Result)
	}
	if s.result != "" && (!res.HasResult || res.Result != s.result) {
		t.Errorf("cell %q: result = %q (has %v), want %q", s.code, res.Result, res.HasResult, s.result)
	}
	if got := errName(res); got != s.errName {
		t.Errorf("cell %q: error = %q (%+v), want %q", s.code, got, res.Error, s.errName)
	}
	if res.Error != nil {
		if !strings.Contains(res.Error.Value, s.errValue) {
			t.Errorf("cell %q: error value = %q, want it to contain %q", s.code, res.Error.Value, s.errValue)
		}
		tb := strings.Join(res.Error.Traceback, "\n")
		for _, want := range s.tbHas {
			if !strings.Contains(tb, want) {
				t.Errorf("cell %q: traceback\n%s\nlacks %q", s.code, tb, want)
			}
		}
		if strings.Contains(tb, "airlock-driver") {
			t.Errorf("cell %q: traceback shows driver frames:\n%s", s.code, tb)
		}
	}
	if res.Restarted || res.Interrupted {
		t.Errorf("cell %q: restarted=%v (%s) interrupted=%v, want neither", s.code, res.Restarted, res.RestartReason, res.Interrupted)
	}
}

// runSteps runs the steps in order on one fresh interpreter.
func runSteps(t *testing.T, cfg Config, steps []step) {
	t.Helper()
	ip := start(t, cfg)
	pid := ip.Pid()
	for _, s := range steps {
		s.check(t, run(t, ip, s.code))
	}
	if got := ip.Pid(); got != pid {
		t.Errorf("pid = %d after the cells, want %d (the interpreter was replaced)", got, pid)
	}
}

func TestCells(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		steps []step
	}{
		{"state and last expression", []step{
			{code: "x = 41"},
			{code: "x + 1", result: "42"},
			{code: "print('hi')\nx * 2", stdout: "hi\n", result: "82"},
		}},
		{"None and statements give no result", []step{
			{code: "None"},
			{code: "print('p')", stdout: "p\n"},
			{code: "def f():\n    pass\nf()"},
			{code: "for i in range(2):\n    i"},
			{code: "1 + 1;"},
		}},
		{"exception", []step{
			{code: "def divide(a):\n    return a / 0\n"},
			{code: "y = 2\ndivide(y)", errName: "ZeroDivisionError", errValue: "division by zero",
				tbHas: []string{"Traceback (most recent call last):", `File "<cell-2>", line 2`, "divide(y)", `File "<cell-1>", line 2, in divide`, "return a / 0"}},
			{code: "y", result: "2"},
		}},
		{"syntax error keeps state", []step{
			{code: "z = 'kept'"},
			{code: "z = = 1", errName: "SyntaxError", errValue: "invalid syntax", tbHas: []string{`File "<cell-2>", line 1`, "z = = 1"}},
			{code: "z", result: "'kept'"},
		}},
		{"stderr, C-level writes and subprocesses are captured", []step{
			{code: "import sys; print('e', file=sys.stderr)", stderr: "e\n"},
			{code: "import os; os.write(1, b'raw\\n'); n = os.write(2, b'rawerr\\n')", stdout: "raw\n", stderr: "rawerr\n"},
			{code: "import subprocess; subprocess.run(['echo', 'sub']).returncode", stdout: "sub\n", result: "0"},
			{code: "print('no newline', end='')", stdout: "no newline"},
		}},
		{"stdin is at EOF", []step{
			{code: "input()", errName: "EOFError", tbHas: []string{"input()"}},
			{code: "import sys; sys.stdin.read()", result: "''"},
		}},
		{"module namespace", []step{
			{code: "__name__", result: "'__main__'"},
			{code: "import sys; sys.modules['__main__'].__dict__ is globals()", result: "True"},
			{code: "import os; os.environ['MPLBACKEND']", result: "'Agg'"},
		}},
		{"exit and KeyboardInterrupt raised by the cell are errors", []step{
			{code: "exit(3)", errName: "SystemExit", errValue: "3"},
			{code: "raise KeyboardInterrupt", errName: "KeyboardInterrupt"},
			{code: "1", result: "1"},
		}},
		{"top-level await", []step{
			{code: "import asyncio\nawait asyncio.sleep(0)\nasync def f():\n    return 42\nawait f()", result: "42"},
		}},
		{"unicode", []step{
			{code: "print('héllo ✓')", stdout: "héllo ✓\n"},
			{code: "print('\\udcff')", stdout: "\\udcff\n"},
			{code: "'✓'", result: "'✓'"},
		}},
		{"multiprocessing finds functions of __main__", []step{
			{code: "def sq(x):\n    return x * x\nfrom multiprocessing import Pool\nwith Pool(2) as pool:\n    r = pool.map(sq, range(4))\nr", result: "[0, 1, 4, 9]"},
		}},
		{"warnings go to stderr", []step{
			{code: "import warnings; warnings.warn('careful')", stderr: "<cell-1>:1: UserWarning: careful\n  import warnings; warnings.warn('careful')\n"},
		}},
		{"repr failure", []step{
			{code: "class R:\n    def __repr__(self):\n        raise ValueError('no')\nR()", result: "<repr() failed: ValueError: no>"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runSteps(t, Config{}, tt.steps)
		})
	}
}

// TestHostileOutput runs cells that attack the output framing; each must leave the session
// working, on the same interpreter.
func TestHostileOutput(t *testing.T) {
	t.Parallel()
	fake := markerPrefix + strings.Repeat("ab", tokenLen/2) + markerSuffix
	runSteps(t, Config{}, []step{
		{code: "print(" + pyBytesLit(fake) + ".decode())", stdout: fake + "\n"},
		{code: "import sys, json, struct\n" +
			"b = json.dumps({'op': 'done', 'token': 'ab' * 16, 'marked': [True, True], 'result': 'pwned'}).encode()\n" +
			"sys.stdout.buffer.write(struct.pack('>I', len(b)) + b)\nsys.stdout.flush()\n" +
			"print(json.dumps({'op': 'started'}))",
			stdout: "\x00\x00\x00\x66" + `{"op": "done", "token": "abababababababababababababababab", "marked": [true, true], "result": "pwned"}` + `{"op": "started"}` + "\n"},
		{code: "1 + 1", result: "2"},
		{code: "import os; n = os.write(1, bytes(range(256)))", stdout: string(byteRange())},
		{code: "import sys; sys.stdout.close()"},
		{code: "print('after close')", stdout: "after close\n"},
		{code: "import sys; sys.stdout = None; print('lost')"},
		{code: "print('after None')", stdout: "after None\n"},
		{code: "import sys; sys.stderr = None; sys.stdout = open('/dev/null', 'w')"},
		{code: "import sys; print('after replace'); print('e', file=sys.stderr)", stdout: "after replace\n", stderr: "e\n"},
		{code: "import os; os.close(1); os.close(2)"},
		{code: "print('fd 1 restored')", stdout: "fd 1 restored\n"},
		{code: "import os; fd = os.open('/dev/null', os.O_WRONLY); os.dup2(fd, 1); os.close(fd)"},
		{code: "import os; n = os.write(1, b'dup2 undone\\n')", stdout: "dup2 undone\n"},
		{code: "import os; os.set_blocking(1, False); os.set_blocking(2, False)"},
		{code: "print('blocking again')", stdout: "blocking again\n"},
		{code: "import os\nfor fd in (3, 4, 5):\n    try:\n        os.write(fd, b'\\0\\0\\0\\2{}')\n    except OSError:\n        pass"},
		{code: "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); 'handler replaced'", result: "'handler replaced'"},
		{code: "import sys; sys.stdin.close()"},
		{code: "input()", errName: "EOFError"},
		{code: "print('still fine')", stdout: "still fine\n"},
	})
}

func pyBytesLit(s string) string {
	var b strings.Builder
	b.WriteString("b'")
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "\\x%02x", s[i])
	}
	b.WriteString("'")
	return b.String()
}

func byteRange() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// TestThreadOutput checks that output of a thread that outlives its cell is neither lost nor
// duplicated: what the next cell does not get, the cell that started the thread got.
func TestThreadOutput(t *testing.T) {
	t.Parallel()
	ip := start(t, Config{})
	a := run(t, ip, "import threading, time\n"+
		"def spam():\n    for i in range(300):\n        print('thread', i)\n        time.sleep(0.0002)\n"+
		"t = threading.Thread(target=spam)\nt.start()\ntime.sleep(0.01)")
	b := run(t, ip, "t.join()")
	var want strings.Builder
	for i := range 300 {
		fmt.Fprintf(&want, "thread %d\n", i)
	}
	if got := string(a.Stdout) + string(b.Stdout); got != want.String() {
		t.Errorf("thread output over two cells = %q + %q, want %q", a.Stdout, b.Stdout, want.String())
	}
	if len(a.Stdout) == 0 {
		t.Errorf("first cell got no thread output; the test did not exercise a running thread")
	}
}

func TestPlot(t *testing.T) {
	t.Parallel()
	py := testPython(t)
	if err := exec.Command(py, "-c", "import matplotlib").Run(); err != nil {
		if testutil.Strict() {
			t.Fatalf("AIRLOCK_TEST_STRICT=1 and matplotlib is not importable by %s: %v", py, err)
		}
		t.Skipf("matplotlib is not importable by %s: %v", py, err)
	}
	ip := start(t, Config{})
	tests := []struct {
		name    string
		code    string
		pngs    int
		result  string
		backend bool
	}{
		{"open figure at cell end", "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\n_ = plt.title('t')", 1, "", false},
		{"figures were closed", "x = 1", 0, "", false},
		{"show displays and closes", "plt.plot([1]); plt.show()\nplt.plot([2]); plt.show()", 2, "", false},
		{"two figures", "plt.figure(); plt.plot([1]); plt.figure(); plt.plot([2]);", 2, "", false},
		{"figure as last expression is shown once", "fig = plt.figure(); fig.gca().plot([3])\nfig", 1, "<Figure size 640x480 with 1 Axes>", false},
		{"display(fig) is shown once", "fig, ax = plt.subplots(); ax.plot([4]); display(fig)", 1, "", false},
		{"backend", "import matplotlib; matplotlib.get_backend().lower()", 0, "'agg'", true},
	}
	for _, tt := range tests {
		res := run(t, ip, tt.code)
		if res.Error != nil {
			t.Fatalf("%s: error %+v", tt.name, res.Error)
		}
		if tt.result != "" && res.Result != tt.result {
			t.Errorf("%s: result = %q, want %q", tt.name, res.Result, tt.result)
		}
		var pngs int
		for _, d := range res.Display {
			if d.MIME != "image/png" {
				t.Errorf("%s: display %s, want only image/png", tt.name, d.MIME)
				continue
			}
			pngs++
			if !bytes.HasPrefix(d.Data, []byte("\x89PNG\r\n\x1a\n")) {
				t.Errorf("%s: image/png data starts %q, not with the PNG signature", tt.name, d.Data[:min(8, len(d.Data))])
			}
			img, err := png.Decode(bytes.NewReader(d.Data))
			if err != nil {
				t.Errorf("%s: png.Decode: %v", tt.name, err)
				continue
			}
			if b := img.Bounds(); b.Dx() != 640 || b.Dy() != 480 {
				t.Errorf("%s: image is %dx%d, want 640x480", tt.name, b.Dx(), b.Dy())
			}
		}
		if pngs != tt.pngs {
			t.Errorf("%s: %d PNGs, want %d", tt.name, pngs, tt.pngs)
		}
		if len(res.Stderr) > 0 {
			t.Errorf("%s: stderr %q", tt.name, res.Stderr)
		}
	}
}

func TestRichRepr(t *testing.T) {
	t.Parallel()
	ip := start(t, Config{})
	run(t, ip, `
class HTML:
    def _repr_html_(self):
        return '<b>bold</b>'
    def __repr__(self):
        return 'HTML()'

class Many:
    def _repr_png_(self):
        return b'\x89PNG fake'
    def _repr_svg_(self):
        return '<svg/>'
    def _repr_markdown_(self):
        return ('# md', {'meta': 1})
    def _repr_json_(self):
        return {'a': [1, 2]}

class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {'text/plain': 'ignored', 'text/html': '<i>b</i>', 'image/png': 'aGk='}

class Broken:
    def _repr_html_(self):
        raise RuntimeError('boom')
`)
	type disp struct{ mime, data string }
	tests := []struct {
		name   string
		code   string
		result string
		want   []disp
		stderr string
	}{
		{"html", "HTML()", "HTML()", []disp{{"text/html", "<b>bold</b>"}}, ""},
		{"none for plain values", "[1, 2]", "[1, 2]", nil, ""},
		{"many", "m = Many()\nm", "", []disp{{"image/png", "\x89PNG fake"}, {"image/svg+xml", "<svg/>"}, {"text/markdown", "# md"}, {"application/json", `{"a": [1, 2]}`}}, ""},
		{"mimebundle", "Bundle()", "", []disp{{"text/html", "<i>b</i>"}, {"image/png", "hi"}}, ""},
		{"classes are not rendered", "HTML", "<class '__main__.HTML'>", nil, ""},
		{"display builtin", "display(HTML(), 'text')\ndisplay(Many(), raw=False) if False else None", "", []disp{{"text/html", "<b>bold</b>"}, {"text/plain", "'text'"}}, ""},
		{"display raw", "display({'text/html': '<p>raw</p>', 'image/png': b'PNGDATA'}, raw=True)", "", []disp{{"text/html", "<p>raw</p>"}, {"image/png", "PNGDATA"}}, ""},
		{"broken repr method", "Broken()", "", nil, "airlock: _repr_html_ failed: RuntimeError: boom\n"},
	}
	for _, tt := range tests {
		res := run(t, ip, tt.code)
		if res.Error != nil {
			t.Fatalf("%s: error %+v", tt.name, res.Error)
		}
		if tt.result != "" && res.Result != tt.result {
			t.Errorf("%s: result = %q, want %q", tt.name, res.Result, tt.result)
		}
		var got []disp
		for _, d := range res.Display {
			got = append(got, disp{d.MIME, string(d.Data)})
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: display = %q, want %q", tt.name, got, tt.want)
		}
		if string(res.Stderr) != tt.stderr {
			t.Errorf("%s: stderr = %q, want %q", tt.name, res.Stderr, tt.stderr)
		}
	}
}

func TestOutputLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		limit       int64
		code        string
		wantOut     int
		truncated   bool
		wantStderr  string
		maxDuration time.Duration
	}{
		{"50 MB in one write", 0, "import sys\nsys.stdout.write('x' * (50 << 20))\nsys.stderr.write('y' * 10)", 1 << 20, true, "yyyyyyyyyy", 20 * time.Second},
		{"50 MB of os.write", 0, "import os\nb = b'z' * (1 << 20)\nfor _ in range(50):\n    os.write(1, b)", 1 << 20, true, "", 20 * time.Second},
		{"many prints past a small limit", 100, "for i in range(10000):\n    print(i)", 100, true, "", 20 * time.Second},
		{"exactly the limit", 100, "import sys; sys.stdout.write('a' * 100); sys.stderr.write('b' * 101)", 100, false, strings.Repeat("b", 100), 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ip := start(t, Config{OutputLimit: tt.limit})
			t0 := time.Now()
			res := run(t, ip, tt.code)
			if d := time.Since(t0); d > tt.maxDuration {
				t.Errorf("cell took %v", d)
			}
			if len(res.Stdout) != tt.wantOut || res.StdoutTruncated != tt.truncated {
				t.Errorf("stdout: %d bytes, truncated=%v; want %d, %v", len(res.Stdout), res.StdoutTruncated, tt.wantOut, tt.truncated)
			}
			if string(res.Stderr) != tt.wantStderr {
				t.Errorf("stderr = %q, want %q", res.Stderr, tt.wantStderr)
			}
			step{code: "print('next')", stdout: "next\n"}.check(t, run(t, ip, "print('next')"))
		})
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"negative output limit", Config{OutputLimit: -1}, false},
		{"negative display limit", Config{DisplayLimit: -1}, false},
		{"negative grace", Config{InterruptGrace: -time.Second}, false},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, api.ErrInvalidArgument) {
			t.Errorf("%s: Validate() = %v, want it to wrap api.ErrInvalidArgument", tt.name, err)
		}
	}
}

func TestSysProcAttr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        *syscall.SysProcAttr
		setpgid   bool
		group     bool
		keepCreds bool
	}{
		{"nil", nil, true, true, false},
		{"credentials", &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}, true, true, true},
		{"setsid", &syscall.SysProcAttr{Setsid: true}, false, true, false},
		{"join a group", &syscall.SysProcAttr{Setpgid: true, Pgid: 42}, true, false, false},
	}
	for _, tt := range tests {
		got, group := sysProcAttr(tt.in)
		if got.Setpgid != tt.setpgid || group != tt.group {
			t.Errorf("%s: Setpgid=%v group=%v, want %v, %v", tt.name, got.Setpgid, group, tt.setpgid, tt.group)
		}
		if tt.keepCreds && (got.Credential == nil || got.Credential.Uid != 1000) {
			t.Errorf("%s: credentials lost: %+v", tt.name, got.Credential)
		}
		if tt.in != nil && got == tt.in {
			t.Errorf("%s: the caller's SysProcAttr was modified in place", tt.name)
		}
	}
}

func BenchmarkCellXPlus1(b *testing.B) {
	ip := start(b, Config{})
	run(b, ip, "x = 1")
	for b.Loop() {
		res, err := ip.Run(b.Context(), "x + 1", time.Minute)
		if err != nil || res.Result != "2" {
			b.Fatalf("Run = %+v, %v", res, err)
		}
	}
}

// BenchmarkStart reports the start of an interpreter (Start plus Close) and its ratio to starting
// a bare `python3 -c pass`, measured in the same run.
func BenchmarkStart(b *testing.B) {
	py := testPython(b)
	const bareRuns = 20
	t0 := time.Now()
	for range bareRuns {
		if err := exec.Command(py, "-c", "pass").Run(); err != nil {
			b.Fatal(err)
		}
	}
	bare := time.Since(t0) / bareRuns
	b.ResetTimer()
	for b.Loop() {
		ip, err := Start(b.Context(), Config{Python: py})
		if err != nil {
			b.Fatal(err)
		}
		ip.Close()
	}
	b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(bare), "x-bare-python")
}

func TestResultAndDisplayLimits(t *testing.T) {
	t.Parallel()
	ip := start(t, Config{OutputLimit: 100, DisplayLimit: 50})
	for _, code := range []string{"'x' * 1000", "'✓' * 1000"} {
		res := run(t, ip, code)
		if len(res.Result) > 100 || len(res.Result) < 90 {
			t.Errorf("%s: result of %d bytes, want about the output limit, 100", code, len(res.Result))
		}
		if !utf8.ValidString(res.Result) {
			t.Errorf("%s: result %q is not valid UTF-8", code, res.Result)
		}
	}
	res := run(t, ip, "display({'text/html': 'a' * 40}, raw=True)\ndisplay({'text/html': 'b' * 40}, raw=True)")
	if len(res.Display) != 1 || string(res.Display[0].Data) != strings.Repeat("a", 40) {
		t.Errorf("display = %+v, want only the first output (the second is over the limit)", res.Display)
	}
	if !strings.Contains(string(res.Stderr), "over the per-cell display limit") {
		t.Errorf("stderr = %q, want a note about the dropped output", res.Stderr)
	}
	res = run(t, ip, "display({'text/html': 'c' * 40}, raw=True)")
	if len(res.Display) != 1 {
		t.Errorf("display limit is per cell: next cell got %d outputs, want 1", len(res.Display))
	}
}
