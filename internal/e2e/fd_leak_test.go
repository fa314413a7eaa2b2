package e2e

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/testutil"
)

// The attack of review finding C1: whoever starts the daemon (or `airlock run`) leaves a
// descriptor open on a root-only host file (fd 7) and on a host directory (fd 8). User code
// lists its descriptors and tries to read fd 7 and list fd 8.

// fdProbe defines _airlock_fd_report(), which returns one line "FDREPORT {json}": the
// process's open descriptors with their targets, and what reading fd 7 and listing fd 8 gave.
const fdProbe = `import os, json
def _airlock_fd_report():
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass  # the listing's own descriptor, closed by now
    r = {"fds": fds}
    try:
        r["read7"] = os.pread(7, 4096, 0).decode("utf-8", "replace")
    except OSError as e:
        r["read7"] = "error: " + e.strerror
    try:
        r["list8"] = repr(os.listdir(8))
    except (OSError, TypeError) as e:
        r["list8"] = "error: " + str(e)
    return "FDREPORT " + json.dumps(r)
`

const fdProbeMain = fdProbe + "print(_airlock_fd_report())\n"

// leakedFDs is the host side of the attack: a secret file and a directory the test opens for
// the daemon at fds 7 and 8.
type leakedFDs struct {
	secret, secretPath, dir string
	files                   []*os.File // ExtraFiles: nil closes 3…6 in the child, then 7 and 8
}

func newLeakedFDs(t *testing.T) *leakedFDs {
	t.Helper()
	dir := mkdirTraversable(t, "airlock-fdsecret-")
	l := &leakedFDs{secret: "host-secret-" + rand.Text(), secretPath: filepath.Join(dir, "host-secret"), dir: dir}
	if err := os.WriteFile(l.secretPath, []byte(l.secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sf, err := os.OpenFile(l.secretPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	df, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sf.Close(); df.Close() })
	l.files = []*os.File{nil, nil, nil, nil, sf, df}
	return l
}

// mkdirTraversable makes a temporary directory others may traverse (t.TempDir's parent is
// 0700, and sandboxes start as an unprivileged uid), removed at the end of the test.
func mkdirTraversable(t *testing.T, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// holdsLeak reports which of the host pids hold a descriptor on the secret file or directory.
func (l *leakedFDs) holders(pids []int) []string {
	var out []string
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if link, _ := os.Readlink(filepath.Join(dir, e.Name())); link == l.secretPath || link == l.dir {
				out = append(out, fmt.Sprintf("pid %d fd %s -> %s", pid, e.Name(), link))
			}
		}
	}
	return out
}

// check fails the test unless the probe's output shows exactly fds 0, 1, 2 plus extra (fd →
// target prefix), and neither the secret nor the directory's contents.
func (l *leakedFDs) check(t *testing.T, path, out string, extra map[int]string) {
	t.Helper()
	if strings.Contains(out, l.secret) {
		t.Errorf("%s: the host secret reached user code: %q", path, out)
	}
	_, line, ok := strings.Cut(out, "FDREPORT ")
	if !ok {
		t.Errorf("%s: no report in the output %q", path, out)
		return
	}
	line, _, _ = strings.Cut(line, "\n")
	var r struct {
		FDs   map[string]string `json:"fds"`
		Read7 string            `json:"read7"`
		List8 string            `json:"list8"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &r); err != nil {
		t.Errorf("%s: report %q: %v", path, line, err)
		return
	}
	var got []int
	for name, link := range r.FDs {
		fd, _ := strconv.Atoi(name)
		if prefix, ok := extra[fd]; fd > 2 && (!ok || !strings.HasPrefix(link, prefix)) {
			got = append(got, fd)
		}
	}
	slices.Sort(got)
	if len(got) != 0 || len(r.FDs) != 3+len(extra) {
		t.Errorf("%s: user process holds unexpected fds %v (all: %v), want exactly 0, 1, 2 plus %v", path, got, r.FDs, extra)
	}
	if !strings.HasPrefix(r.Read7, "error: ") || !strings.HasPrefix(r.List8, "error: ") {
		t.Errorf("%s: os.read(7) gave %q and os.listdir(8) gave %q, want errors", path, r.Read7, r.List8)
	}
}

// replDriverFDs are the descriptors the REPL driver (internal/repl/driver.py) keeps in the
// interpreter while a cell runs: _CMD, _REP, _OUT and _ERR, moved to fds ≥ 100 with CLOEXEC, all
// pipes to the agent.
var replDriverFDs = map[int]string{100: "pipe:", 101: "pipe:", 102: "pipe:", 103: "pipe:"}

func TestInheritedFDsNeverReachSandboxes(t *testing.T) {
	testutil.MustHaveRoot(t)
	leak := newLeakedFDs(t)
	wheels := mkdirTraversable(t, "airlock-fdwheels-")
	// A wheel whose .pth runs the probe in every later Python start-up in the session, pip's own
	// included: the only way to run code inside the install path's process.
	writeWheelFiles(t, filepath.Join(wheels, "airlock_fdprobe-1.0-py3-none-any.whl"), "airlock_fdprobe", map[string]string{
		"airlock_fdprobe.py": fdProbe + "_r = _airlock_fd_report()\n" +
			"if b'pip' in open('/proc/self/cmdline', 'rb').read():\n" +
			"    with open('/workspace/fdprobe-%d.txt' % os.getpid(), 'w') as _f:\n" +
			"        _f.write(_r)\n",
		"airlock_fdprobe.pth": "import airlock_fdprobe\n",
	})
	state := mkdirTraversable(t, "airlock-fdleak-")
	cg := fmt.Sprintf("airlock-fdleak-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	d := startDaemon(t, state, cg, freeAddr(t), func(c *exec.Cmd) {
		c.ExtraFiles = leak.files
		c.Env = append(c.Env, "AIRLOCK_WHEEL_DIR="+wheels)
	})
	t.Cleanup(d.stop)
	if got := leak.holders([]int{d.cmd.Process.Pid}); len(got) != 2 {
		t.Fatalf("the daemon should hold the leaked fds 7 and 8 (the attack's premise): %v", got)
	}
	a := &apiServer{t: t, url: d.url}

	t.Run("one-shot execute", func(t *testing.T) {
		var res api.ExecuteResponse
		b, _ := json.Marshal(api.ExecuteRequest{Code: fdProbeMain, Timeout: 20})
		if st := a.call("POST", "/v1/execute", bytes.NewReader(b), &res); st != 200 {
			t.Fatalf("execute: %d %+v", st, res)
		}
		leak.check(t, "one-shot", res.Stdout+res.Stderr, nil)
	})

	sb := a.create(`{"timeout":120}`)
	t.Run("sandbox exec", func(t *testing.T) {
		res := a.exec(sb, "python3", "-c", fdProbeMain)
		leak.check(t, "exec", res.Stdout+res.Stderr, nil)
	})

	t.Run("PTY exec over the WebSocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, strings.Replace(d.url, "http", "ws", 1)+"/v1/sandboxes/"+sb+"/exec/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		start, _ := json.Marshal(map[string]any{"cmd": []string{"python3", "-c", fdProbeMain}, "pty": map[string]int{"cols": 200, "rows": 50}})
		if err := c.Write(ctx, websocket.MessageText, start); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("read: %v; terminal so far %q", err, out.String())
			}
			if typ == websocket.MessageBinary {
				out.Write(data[1:])
				continue
			}
			var ev api.ExecEvent
			json.Unmarshal(data, &ev)
			if ev.Type == api.EventExit || ev.Type == api.EventError {
				break
			}
		}
		leak.check(t, "PTY exec", strings.ReplaceAll(out.String(), "\r\n", "\n"), nil)
	})

	sess := a.session(`{}`)
	t.Run("session cell", func(t *testing.T) {
		r := a.cell(sess, fdProbeMain, 20)
		leak.check(t, "REPL cell", r.Stdout+r.Stderr, replDriverFDs)
	})

	t.Run("session install", func(t *testing.T) {
		// The first install puts the probe in; the second one's pip runs it at start-up.
		for range 2 {
			var ir api.InstallResult
			a.call("POST", "/v1/sessions/"+sess+"/install", strings.NewReader(`{"packages":["airlock-fdprobe==1.0"]}`), &ir)
			if !ir.Success {
				t.Fatalf("install: %+v", ir)
			}
		}
		r := a.cell(sess, "import glob\nprint('\\n'.join(open(f).read() for f in glob.glob('/workspace/fdprobe-*.txt')))", 20)
		if !strings.Contains(r.Stdout, "FDREPORT") {
			t.Fatalf("pip did not run the probe: %+v", r)
		}
		// Python 3.11's site.py executes a .pth line while the .pth file is still open.
		leak.check(t, "pip install", r.Stdout, map[int]string{3: "/workspace/.local/lib/"})
	})

	t.Run("agent and every sandbox process on the host", func(t *testing.T) {
		pids := testutil.ProcsInCgroup(cg)
		if len(pids) < 2 {
			t.Fatalf("found %d sandbox processes in cgroup %s, want the sandbox's and the session's agents at least", len(pids), cg)
		}
		if got := leak.holders(pids); len(got) != 0 {
			t.Errorf("sandbox processes hold the host's leaked descriptors: %v", got)
		}
	})
}

func TestInheritedFDsNeverReachAirlockRun(t *testing.T) {
	testutil.MustHaveRoot(t)
	leak := newLeakedFDs(t)
	code := filepath.Join(mkdirTraversable(t, "airlock-fdrun-"), "probe.py")
	if err := os.WriteFile(code, []byte(fdProbeMain), 0o644); err != nil {
		t.Fatal(err)
	}
	state := mkdirTraversable(t, "airlock-fdrun-state-")
	cg := fmt.Sprintf("airlock-fdrun-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	exe, _ := os.Executable()
	cmd := exec.CommandContext(t.Context(), exe)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_DAEMON=run --json --file "+code, "AIRLOCK_STATE_DIR="+state, "AIRLOCK_CGROUP_ROOT="+cg)
	cmd.ExtraFiles = leak.files
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("airlock run: %v\n%s%s", err, out, stderr.Bytes())
	}
	var res api.ExecuteResponse
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("airlock run --json: %q: %v", out, err)
	}
	leak.check(t, "airlock run", res.Stdout+res.Stderr, nil)
}

// writeWheelFiles builds a minimal pure-Python wheel of package name 1.0 by hand (PyPI is
// unreachable here) holding files at the root of site-packages.
func writeWheelFiles(t *testing.T, path, name string, files map[string]string) {
	t.Helper()
	info := name + "-1.0.dist-info/"
	all := map[string]string{
		info + "METADATA": "Metadata-Version: 2.1\nName: " + strings.ReplaceAll(name, "_", "-") + "\nVersion: 1.0\n",
		info + "WHEEL":    "Wheel-Version: 1.0\nGenerator: airlock-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
	}
	for k, v := range files {
		all[k] = v
	}
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	var record strings.Builder
	for name, body := range all {
		w, _ := z.Create(name)
		w.Write([]byte(body))
		fmt.Fprintf(&record, "%s,,\n", name)
	}
	fmt.Fprintf(&record, "%sRECORD,,\n", info)
	w, _ := z.Create(info + "RECORD")
	w.Write([]byte(record.String()))
	z.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
